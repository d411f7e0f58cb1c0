%% The memory of recent deletes (emqx_offline_cassandra_acked): one delete
%% per message, bounded in time and size, and in doubt a delete.
-module(emqx_offline_cassandra_acked_tests).

-include_lib("eunit/include/eunit.hrl").

-define(A, emqx_offline_cassandra_acked).

acked_test_() ->
    {foreach, fun() -> ok end, fun(_) -> stop() end, [
        {"the first ack of a message deletes, the next ones do not", fun first_only/0},
        {"an id is forgotten after two rotations", fun forgotten_in_time/0},
        {"a full generation remembers no more: those acks delete", fun bounded_in_size/0},
        {"a refused delete is forgotten: the next ack deletes", fun forget_after_refusal/0},
        {"not running: every ack deletes", fun not_running/0}
    ]}.

start(Opts) ->
    {ok, Pid} = ?A:start_link(Opts),
    unlink(Pid),
    Pid.

stop() ->
    case whereis(?A) of
        undefined ->
            ok;
        Pid ->
            gen_server:stop(Pid)
    end.

id(N) -> <<N:128>>.

first_only() ->
    start(#{}),
    ?assert(?A:first_delete(id(1))),
    ?assertNot(?A:first_delete(id(1))),
    ?assertNot(?A:first_delete(id(1))),
    ?assert(?A:first_delete(id(2))),
    ?assertEqual(2, ?A:remembered()).

forgotten_in_time() ->
    start(#{rotate_ms => 1000}),
    ?assert(?A:first_delete(id(1))),
    %% Still remembered right after one rotation (in the previous generation).
    timer:sleep(1200),
    ?assertNot(?A:first_delete(id(1))),
    ok = emqx_offline_cassandra_test_util:wait_until(fun() -> ?A:remembered() =:= 0 end, 5000),
    ?assert(?A:first_delete(id(1))).

bounded_in_size() ->
    start(#{max_ids => 3}),
    [?assert(?A:first_delete(id(N))) || N <- [1, 2, 3]],
    %% Full: a new id is not remembered, so each of its acks deletes.
    ?assert(?A:first_delete(id(4))),
    ?assert(?A:first_delete(id(4))),
    ?assertEqual(3, ?A:remembered()),
    ?assertNot(?A:first_delete(id(2))).

forget_after_refusal() ->
    start(#{}),
    ?assert(?A:first_delete(id(7))),
    ok = ?A:forget(id(7)),
    ?assert(?A:first_delete(id(7))),
    ?assertNot(?A:first_delete(id(7))).

not_running() ->
    ?assertEqual(undefined, whereis(?A)),
    ?assert(?A:first_delete(id(1))),
    ?assert(?A:first_delete(id(1))),
    ?assertEqual(ok, ?A:forget(id(1))),
    ?assertEqual(0, ?A:remembered()).
