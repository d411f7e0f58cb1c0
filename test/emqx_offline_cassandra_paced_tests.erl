%%--------------------------------------------------------------------
%% Paced replay of a large backlog, against the real local Cassandra and
%% the EMQX double's session (inflight 32, queue 1,000, drop-oldest):
%% every stored message reaches the subscriber exactly once, in msgid
%% order, nothing is dropped, the VM's memory stays bounded; QoS 1 and 2;
%% a client that goes away after half and resumes its session gets exactly
%% the rest; a wildcard over 100 topics. Each on the common path (EMQX
%% 5.0-6.1.0: {deliver, ...} paced by completions) and on the 6.1.1+
%% external-subscription path.
%%
%% PACED_N (default 100000) sets the backlog of each test.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_paced_tests).

-include_lib("eunit/include/eunit.hrl").

-define(NIF, emqx_offline_cassandra_nif).
-define(D, emqx_double).
%% What the VM may grow by while a whole backlog is replayed, besides the
%% test client's own log of what it received (the backlog itself is N x
%% ~250 bytes of payload: 25 MB for 100,000).
-define(MEMORY_BOUND, 32 * 1024 * 1024).

paced_test_() ->
    Tests = [
        {"QoS 1: all, once, in order, none dropped, memory bounded", fun qos1_backlog/1},
        {"QoS 2: the same; slots freed at PUBCOMP", fun qos2_backlog/1},
        {"a client away after half resumes and gets exactly the rest", fun resume_after_half/1},
        {"a wildcard over 100 topics: all, once, in msgid order", fun wildcard_backlog/1},
        {"published during the replay: once, live", fun live_during_replay/1},
        {"an unsubscribe stops the replay", fun unsubscribe_stops/1},
        {"max_returned_count: the newest N across a wildcard's topics", fun newest_n/1}
    ],
    [
        {atom_to_list(Path), {inorder,
            {foreach, fun() -> setup(Path) end, fun cleanup/1, [
                {Name, {timeout, scaled(900), fun() -> Test(Path) end}}
             || {Name, Test} <- Tests
            ]}}}
     || Path <- paths()
    ].

%% Both paths (PACED_PATHS=deliver or =extsub runs one). The extsub path
%% used to stall now and then: the handler ended itself when the reader's
%% last page came back empty while messages of the page before still waited
%% in extsub's buffer, which a destroyed handler's messages leave.
paths() ->
    [list_to_atom(P) || P <- string:lexemes(os:getenv("PACED_PATHS", "deliver,extsub"), ",")].

%%--------------------------------------------------------------------

setup(Path) ->
    emqx_offline_cassandra_test_util:plugin_setup(Path, #{}).

cleanup(Servers) ->
    emqx_offline_cassandra_test_util:plugin_cleanup(Servers).

settings(Filter) ->
    #{topics => [Filter], max_returned_count => 0, time_range_ms => 0, message_ttl_s => 0}.

hook(Filter) ->
    ok = emqx_offline_cassandra_hooks:set_settings(settings(Filter)),
    ok = emqx_offline_cassandra_hooks:hook().

n() ->
    list_to_integer(os:getenv("PACED_N", "100000")).

scaled(T) -> emqx_offline_cassandra_test_util:scaled(T).

wait_until(Pred, Ms) -> emqx_offline_cassandra_test_util:wait_until(Pred, Ms).

root(Name) ->
    iolist_to_binary(io_lib:format("paced/~s/~b", [Name, erlang:unique_integer([positive]) + erlang:system_time(millisecond)])).

%% Stores N messages spread over Topics (round robin), published a second
%% ago or earlier, oldest first; returns their ids (16-byte GUIDs) in msgid
%% order. Written through the NIF's pipeline, which batches them.
store_backlog(Topics, N, QoS) ->
    Base = erlang:system_time(microsecond) - 1000000 - N,
    Tuple = list_to_tuple(Topics),
    Ids = [
        begin
            Id = <<(Base + I):64, 16#ABCDEF:48, 0:16>>,
            Topic = element(I rem tuple_size(Tuple) + 1, Tuple),
            store_one(Topic, Id, I, QoS),
            Id
        end
     || I <- lists:seq(1, N)
    ],
    ok = wait_until(fun() -> written() >= N end, 600000),
    Ids.

store_one(Topic, Id, I, QoS) ->
    Msg = #{topic => Topic, msgid => Id, sender => <<"paced-pub">>, qos => QoS, retain => false,
            payload => <<(integer_to_binary(I))/binary, ":", (binary:copy(<<"p">>, 200))/binary>>,
            arrived => erlang:system_time(millisecond)},
    case ?NIF:store(Msg) of
        ok -> ok;
        {error, overloaded} -> timer:sleep(5), store_one(Topic, Id, I, QoS);
        {error, buffer_full} -> timer:sleep(5), store_one(Topic, Id, I, QoS);
        Other -> error({store_failed, Other})
    end.

written() ->
    {ok, S} = ?NIF:stats(),
    maps:get(written, S).

%% Runs Fun while sampling the VM's total memory, less the client's channel
%% (which logs every message it got: the test's instrument, not the
%% replay's); {Result, PeakGrowth}.
with_memory_peak(Client, Fun) ->
    erlang:garbage_collect(),
    Base = memory_less(Client),
    Self = self(),
    Sampler = spawn_link(fun() -> sample(Self, Client, Base) end),
    Result = Fun(),
    Sampler ! {stop, self()},
    Peak = receive {peak, P} -> P end,
    {Result, Peak - Base}.

memory_less(Client) ->
    Own = case erlang:process_info(Client, memory) of
        {memory, M} -> M;
        undefined -> 0
    end,
    Log = ets:info(emqx_double_log, memory) * erlang:system_info(wordsize),
    erlang:memory(total) - Own - Log.

sample(Owner, Client, Peak) ->
    receive
        {stop, Owner} -> Owner ! {peak, max(Peak, memory_less(Client))}
    after 20 ->
        sample(Owner, Client, max(Peak, memory_less(Client)))
    end.

received_ids(Sub) ->
    [Id || {_PacketId, Id, false} <- ?D:received(Sub)].

%% Waits until the client got N PUBLISHes that are not DUP resends.
wait_received(Sub, N) ->
    case wait_until(fun() -> #{received := R, dups := D} = ?D:stats(Sub), R - D >= N end, scaled(180000)) of
        ok -> ok;
        Timeout -> error({stalled, N, Timeout, stall_report(Sub)})
    end.

%% What a stalled replay looks like: the subscriber's counts, the double's
%% extsub state in its channel (buffer, unacked, delivering, handler
%% states) and every replay reader (where it waits, what it holds).
stall_report(Sub) ->
    Extsub =
        case erlang:process_info(Sub, dictionary) of
            {dictionary, Dict} ->
                case proplists:get_value(extsub_st, Dict) of
                    undefined -> undefined;
                    #{buffer := B} = St -> St#{buffer := gb_trees:size(B)}
                end;
            _ -> undefined
        end,
    Readers = [
        {P, erlang:process_info(P, [current_stacktrace, message_queue_len, messages])}
     || P <- erlang:processes(),
        case proc_lib:initial_call(P) of
            {emqx_offline_cassandra_extsub, reader, _} -> true;
            {emqx_offline_cassandra_replay, _, _} -> true;
            _ -> false
        end
    ],
    #{stats => catch ?D:stats(Sub), extsub => Extsub, readers => Readers,
      nif => catch ?NIF:stats()}.

assert_exactly(Expected, Got) ->
    ?assertEqual(length(Expected), length(Got)),
    %% Compare in chunks so a failure shows where it went wrong, not 100,000 ids.
    First = first_difference(Expected, Got, 1),
    ?assertEqual(none, First).

first_difference([X | A], [X | B], I) -> first_difference(A, B, I + 1);
first_difference([], [], _) -> none;
first_difference(A, B, I) -> {at, I, lists:sublist(A, 3), lists:sublist(B, 3)}.

%%--------------------------------------------------------------------

qos1_backlog(_Path) ->
    backlog(1).

qos2_backlog(_Path) ->
    backlog(2).

backlog(QoS) ->
    N = n(),
    T = root(<<"qos", (integer_to_binary(QoS))/binary>>),
    hook(T),
    Ids = store_backlog([T], N, QoS),
    Sub = ?D:connect(T, #{auto_ack => true, log => ids}),
    Started = erlang:monotonic_time(millisecond),
    {ok, Growth} = with_memory_peak(Sub, fun() ->
        ok = ?D:subscribe(Sub, T, QoS),
        wait_received(Sub, N)
    end),
    Ms = erlang:monotonic_time(millisecond) - Started,
    assert_exactly(Ids, received_ids(Sub)),
    #{dropped := Dropped} = Stats = ?D:stats(Sub),
    ?assertEqual(0, Dropped),
    ?assertEqual(0, maps:get(replay_dropped, emqx_offline_cassandra_metrics:all())),
    ?debugFmt("QoS ~b: ~b replayed in ~b ms (~b msg/s), VM grew by at most ~.1f MB; ~p",
              [QoS, N, Ms, N * 1000 div max(1, Ms), Growth / 1048576, Stats]),
    ?assert(Growth < ?MEMORY_BOUND),
    %% Every ack deleted its row.
    ok = wait_until(fun() -> ?NIF:count(T, 30000) =:= {ok, 0} end, 300000),
    ?D:disconnect(Sub).

resume_after_half(_Path) ->
    N = n(),
    Half = N div 2,
    T = root(<<"resume">>),
    hook(T),
    Ids = store_backlog([T], N, 1),
    Opts = #{auto_ack => true, log => ids},
    Sub = ?D:connect(T, Opts#{disconnect_after => Half}),
    ok = ?D:subscribe(Sub, T, 1),
    ok = wait_until(fun() -> maps:get(conn, ?D:stats(Sub)) =:= disconnected end, 600000),
    %% Away: the replay sends nothing more than what its window had out.
    timer:sleep(500),
    Away = maps:get(received, ?D:stats(Sub)),
    ?assertEqual(Half, Away),
    Sub2 = ?D:connect(T, Opts#{clean_start => false}),
    wait_received(Sub2, N),
    %% The rest, once each, in order; only the unacked in-flight PUBLISHes
    %% were resent (DUP), as MQTT requires.
    assert_exactly(Ids, received_ids(Sub2)),
    Dups = [Id || {_, Id, true} <- ?D:received(Sub2)],
    ?assert(length(Dups) =< 32),
    ?assertEqual(0, maps:get(dropped, ?D:stats(Sub2))),
    ?D:disconnect(Sub2).

%% Messages routed while the replay runs reach the subscriber live, and the
%% replay does not send them again - also those made before the
%% subscription (older than the replay's boundary) but routed after it,
%% whose rows the replay finds while the client has not acked them yet.
live_during_replay(_Path) ->
    N = 10,
    T = root(<<"live">>),
    hook(T),
    Backlog = store_backlog([T], N, 1),
    Early = [emqx_message:make(<<"early-pub">>, 1, T, <<"early">>, #{}, #{}) || _ <- lists:seq(1, 20)],
    %% Room for everything in flight: nothing is acked until the end.
    Sub = ?D:connect(T, #{max_inflight => 1000, log => ids}),
    ok = ?D:subscribe(Sub, T, 1),
    %% What is stored comes at once: the replay's later look for rows still
    %% on their way (2 s after the subscription) holds nothing back.
    ok = wait_until(fun() -> maps:get(received, ?D:stats(Sub)) >= N end, 1000),
    [{ok, 1} = ?D:publish_message(M) || M <- Early],
    Pub = ?D:connect(<<T/binary, "-pub">>),
    [{ok, 1} = ?D:publish(Pub, T, <<"late">>, 1) || _ <- lists:seq(1, 20)],
    ok = wait_until(fun() -> stored(T) =:= N + 40 end, 20000),
    %% Past the replay's settle time (its last read finds the early rows,
    %% still stored), and a margin for a second copy to arrive.
    timer:sleep(scaled(3000)),
    Got = received_ids(Sub),
    ?assertEqual(length(lists:usort(Got)), length(Got)),
    ?assertEqual(N + 40, length(Got)),
    InBacklog = sets:from_list(Backlog, [{version, 2}]),
    ?assertEqual(Backlog, [Id || Id <- Got, sets:is_element(Id, InBacklog)]),
    ?assert(lists:all(fun(M) -> lists:member(emqx_message:id(M), Got) end, Early)),
    {ok, _} = ?D:ack_all(Sub),
    ok = wait_until(fun() -> stored(T) =:= 0 end, 20000),
    ?D:disconnect(Pub),
    ?D:disconnect(Sub).

unsubscribe_stops(_Path) ->
    T = root(<<"unsub">>),
    hook(T),
    _ = store_backlog([T], 1000, 1),
    Sub = ?D:connect(T, #{log => ids}),
    ok = ?D:subscribe(Sub, T, 1),
    ok = wait_until(fun() -> maps:get(received, ?D:stats(Sub)) >= 32 end, 20000),
    ok = ?D:unsubscribe(Sub, T),
    {ok, _} = ?D:ack_all(Sub),
    timer:sleep(scaled(500)),
    #{received := Got, mqueue_len := 0} = ?D:stats(Sub),
    %% What the session held when the client unsubscribed (at most the
    %% window of 100), nothing after.
    ?assert(Got =< 100),
    timer:sleep(scaled(2500)),
    ?assertEqual(Got, maps:get(received, ?D:stats(Sub))),
    ?assertEqual(1000 - Got, stored(T)),
    ?D:disconnect(Sub).

newest_n(_Path) ->
    Root = root(<<"newest">>),
    Topics = [<<Root/binary, "/", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 7)],
    ok = emqx_offline_cassandra_hooks:set_settings((settings(<<Root/binary, "/#">>))#{max_returned_count => 250}),
    ok = emqx_offline_cassandra_hooks:hook(),
    Ids = store_backlog(Topics, 1000, 1),
    Sub = ?D:connect(Root, #{auto_ack => true, log => ids}),
    ok = ?D:subscribe(Sub, <<Root/binary, "/#">>, 1),
    wait_received(Sub, 250),
    timer:sleep(scaled(2500)),
    ?assertEqual(lists:nthtail(750, Ids), received_ids(Sub)),
    ?D:disconnect(Sub).

stored(T) ->
    {ok, C} = ?NIF:count(T, 10000),
    C.

wildcard_backlog(_Path) ->
    N = n(),
    Topics = 100,
    Root = root(<<"wild">>),
    TopicNames = [<<Root/binary, "/", (integer_to_binary(I))/binary>> || I <- lists:seq(1, Topics)],
    Filter = <<Root/binary, "/+">>,
    hook(<<Root/binary, "/#">>),
    Ids = store_backlog(TopicNames, N, 1),
    Sub = ?D:connect(Root, #{auto_ack => true, log => ids}),
    {ok, Growth} = with_memory_peak(Sub, fun() ->
        ok = ?D:subscribe(Sub, Filter, 1),
        wait_received(Sub, N)
    end),
    assert_exactly(Ids, received_ids(Sub)),
    ?assertEqual(0, maps:get(dropped, ?D:stats(Sub))),
    ?assert(Growth < ?MEMORY_BOUND),
    ?D:disconnect(Sub).
