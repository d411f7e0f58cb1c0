%%--------------------------------------------------------------------
%% A shared group replays once in a cluster (issue 15 part 4), against the
%% real local Cassandra and the EMQX double (both paths). The other EMQX node
%% is played by claims made through the NIF under another node's name
%% (`node-b@elsewhere'), on the same Cassandra table the plugin uses:
%% - while node B holds the group's claim, a member here gets nothing and
%%   gives its local claim back; the rows stay;
%% - once B released it, the next member here claims it and gets the
%%   backlog, once; B's claim is then refused, naming this node;
%% - when that member leaves, the claim is released and B can take it.
%% The core's own test (native/offline_store/tests/claims.rs) covers two
%% simultaneous claims and a dead holder's TTL.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_cluster_claims_tests).

-include_lib("eunit/include/eunit.hrl").

-define(NIF, emqx_offline_cassandra_nif).
-define(D, emqx_double).
-define(H, emqx_offline_cassandra_hooks).
-define(OTHER, <<"node-b@elsewhere">>).

cluster_claims_test_() ->
    [
        {atom_to_list(Path), {foreach, fun() -> setup(Path) end, fun cleanup/1, [
            {"a group claimed by another node replays here only after it let go",
             {timeout, scaled(120), fun claimed_elsewhere_then_here/0}}
        ]}}
     || Path <- [deliver, extsub]
    ].

setup(Path) ->
    emqx_offline_cassandra_test_util:plugin_setup(Path, #{servers => [emqx_offline_cassandra_replays, emqx_offline_cassandra_acked, emqx_offline_cassandra_groups]}).

cleanup(Servers) ->
    emqx_offline_cassandra_test_util:plugin_cleanup(Servers).

scaled(T) -> emqx_offline_cassandra_test_util:scaled(T).

wait_until(Pred, Ms) -> emqx_offline_cassandra_test_util:wait_until(Pred, Ms).

%% A claim op as node B.
as_other(Op, Group, Filter) ->
    Ref = make_ref(),
    ok = ?NIF:replay_claim(self(), Ref, Op, {Group, Filter}, ?OTHER, 30000),
    receive
        {offline_cassandra, Ref, Reply} -> Reply
    after 30000 -> error(no_reply)
    end.

stored(T) ->
    {ok, C} = ?NIF:count(T, 10000),
    C.

claimed_elsewhere_then_here() ->
    Root = iolist_to_binary(io_lib:format("claims/~b", [erlang:unique_integer([positive]) + erlang:system_time(millisecond)])),
    T = <<Root/binary, "/t">>,
    Group = <<"g", (binary:part(Root, 7, byte_size(Root) - 7))/binary>>,
    ok = ?H:set_settings(#{topics => [<<Root/binary, "/#">>], max_returned_count => 0, time_range_ms => 0,
                           message_ttl_s => 0, wildcard_replay => all}),
    ok = ?H:hook(),
    Pub = ?D:connect(<<Root/binary, "-pub">>),
    [{ok, _} = ?D:publish(Pub, T, integer_to_binary(I), 1) || I <- lists:seq(1, 20)],
    ?D:disconnect(Pub),
    ok = wait_until(fun() -> stored(T) =:= 20 end, 20000),
    Share = <<"$share/", Group/binary, "/", T/binary>>,
    %% Node B replays the group.
    ?assertEqual({ok, held}, as_other(claim, Group, T)),
    A1 = ?D:connect(<<Root/binary, "-a1">>, #{auto_ack => true}),
    ok = ?D:subscribe(A1, Share, 1),
    ok = wait_until(fun() -> maps:get(replay_claimed_elsewhere, emqx_offline_cassandra_metrics:all()) =:= 1 end, 20000),
    timer:sleep(scaled(1000)),
    ?assertEqual(0, maps:get(received, ?D:stats(A1))),
    ?assertEqual(20, stored(T)),
    %% B lets go (its last member left); the next member here replays.
    ?assertEqual({ok, true}, as_other(release, Group, T)),
    A2 = ?D:connect(<<Root/binary, "-a2">>, #{auto_ack => true}),
    ok = ?D:subscribe(A2, Share, 1),
    ok = wait_until(fun() -> stored(T) =:= 0 end, 20000),
    Here = emqx_offline_cassandra_cluster_claims:holder(),
    ?assertEqual({ok, {held_by, Here}}, as_other(claim, Group, T)),
    timer:sleep(scaled(2500)),
    Got = maps:get(received, ?D:stats(A1)) + maps:get(received, ?D:stats(A2)),
    ?assertEqual(20, Got),
    %% A2 leaves: the claim is released, B may take it.
    ok = ?D:unsubscribe(A2, Share),
    ok = wait_until(fun() -> as_other(claim, Group, T) =:= {ok, held} end, 20000),
    ?assertEqual({ok, true}, as_other(release, Group, T)),
    ?D:disconnect(A1),
    ?D:disconnect(A2).
