%%--------------------------------------------------------------------
%% What a replay may send (issue 15 part 5): rows replayed through a
%% wildcard obey the `topics' configured now (rows stored while an older
%% configuration kept their topic are not sent, and stay stored), and
%% wildcard_replay restricts which wildcard subscriptions replay at all.
%% Against the real local Cassandra and the EMQX double, on both replay
%% paths (5.x {deliver, ...} and 6.1.1+ extsub).
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_replay_scope_tests).

-include_lib("eunit/include/eunit.hrl").

-define(NIF, emqx_offline_cassandra_nif).
-define(D, emqx_double).
-define(H, emqx_offline_cassandra_hooks).

%%--------------------------------------------------------------------
%% The policy alone (no Cassandra)
%%--------------------------------------------------------------------

wildcard_replay_allows_test() ->
    Exact = [<<"a/b">>, <<"a">>],
    Inner = [<<"a/+">>, <<"a/#">>, <<"a/+/c">>],
    Leading = [<<"#">>, <<"+">>, <<"+/b">>, <<"+/#">>],
    [?assert(?H:wildcard_replay_allows(P, F)) || P <- [all, no_leading_wildcard, none], F <- Exact],
    [?assert(?H:wildcard_replay_allows(P, F)) || P <- [all, no_leading_wildcard], F <- Inner],
    [?assert(?H:wildcard_replay_allows(all, F)) || F <- Leading],
    [?assertNot(?H:wildcard_replay_allows(no_leading_wildcard, F)) || F <- Leading],
    [?assertNot(?H:wildcard_replay_allows(none, F)) || F <- Inner ++ Leading].

replay_wanted_follows_the_policy_test() ->
    Sub = #{qos => 1, is_new => true},
    S = fun(Policy) -> #{topics => [<<"t/#">>], max_returned_count => 0, time_range_ms => 0, message_ttl_s => 0,
                         wildcard_replay => Policy} end,
    ?assertEqual({true, <<"#">>}, ?H:replay_wanted(<<"#">>, Sub, S(all))),
    ?assertEqual(false, ?H:replay_wanted(<<"#">>, Sub, S(no_leading_wildcard))),
    ?assertEqual({true, <<"t/+">>}, ?H:replay_wanted(<<"t/+">>, Sub, S(no_leading_wildcard))),
    ?assertEqual(false, ?H:replay_wanted(<<"t/+">>, Sub, S(none))),
    ?assertEqual({true, <<"t/1">>}, ?H:replay_wanted(<<"t/1">>, Sub, S(none))).

%%--------------------------------------------------------------------
%% Live: the double and the local Cassandra
%%--------------------------------------------------------------------

scope_test_() ->
    Tests = [
        {"a wildcard replays only topics the current config keeps", fun current_topics_only/1},
        {"wildcard_replay none: a wildcard gets nothing, an exact topic its rows", fun policy_none/1}
    ],
    [
        {atom_to_list(Path), {inorder,
            {foreach, fun() -> setup(Path) end, fun cleanup/1, [
                {Name, {timeout, scaled(120), fun() -> Test(Path) end}}
             || {Name, Test} <- Tests
            ]}}}
     || Path <- [deliver, extsub]
    ].

setup(Path) ->
    emqx_offline_cassandra_test_util:plugin_setup(Path, #{}).

cleanup(Servers) ->
    emqx_offline_cassandra_test_util:plugin_cleanup(Servers).

scaled(T) -> emqx_offline_cassandra_test_util:scaled(T).

wait_until(Pred, Ms) -> emqx_offline_cassandra_test_util:wait_until(Pred, Ms).

settings(Filters, Policy) ->
    #{topics => Filters, max_returned_count => 0, time_range_ms => 0, message_ttl_s => 0, wildcard_replay => Policy}.

root(Name) ->
    iolist_to_binary(io_lib:format("scope/~s/~b", [Name, erlang:unique_integer([positive]) + erlang:system_time(millisecond)])).

%% Publishes N QoS 1 messages to each topic through the double (so the
%% publish hook stores them under the settings of the moment), and waits
%% until they are stored.
publish(Topics, N) ->
    Pub = ?D:connect(<<"scope-pub">>),
    [{ok, _} = ?D:publish(Pub, T, integer_to_binary(I), 1) || T <- Topics, I <- lists:seq(1, N)],
    ?D:disconnect(Pub),
    [ok = wait_until(fun() -> stored(T) =:= N end, 20000) || T <- Topics],
    ok.

stored(T) ->
    {ok, C} = ?NIF:count(T, 10000),
    C.

received_topics(Sub) ->
    [emqx_message:topic(M) || {_PacketId, M} <- ?D:received(Sub)].

%% u/# was configured when u/1's rows were stored, then removed: a
%% subscriber to Root/# gets t/1's rows only, and u/1's stay stored (a
%% publish to u/1 would not be stored now, so their acks would delete
%% nothing new and they would come back to every such subscriber).
current_topics_only(_Path) ->
    Root = root(<<"current">>),
    [U, T] = [<<Root/binary, "/u/1">>, <<Root/binary, "/t/1">>],
    ok = ?H:set_settings(settings([<<Root/binary, "/u/#">>, <<Root/binary, "/t/#">>], all)),
    ok = ?H:hook(),
    ok = publish([U, T], 5),
    ok = ?H:set_settings(settings([<<Root/binary, "/t/#">>], all)),
    Sub = ?D:connect(Root, #{auto_ack => true}),
    ok = ?D:subscribe(Sub, <<Root/binary, "/#">>, 1),
    ok = wait_until(fun() -> stored(T) =:= 0 end, 20000),
    %% Past the replay's settle time: nothing more comes.
    timer:sleep(scaled(3000)),
    ?assertEqual(lists:duplicate(5, T), received_topics(Sub)),
    ?assertEqual(5, stored(U)),
    ?D:disconnect(Sub).

policy_none(_Path) ->
    Root = root(<<"none">>),
    T = <<Root/binary, "/t/1">>,
    ok = ?H:set_settings(settings([<<Root/binary, "/#">>], none)),
    ok = ?H:hook(),
    ok = publish([T], 3),
    Wild = ?D:connect(<<Root/binary, "-wild">>, #{auto_ack => true}),
    ok = ?D:subscribe(Wild, <<Root/binary, "/+/1">>, 1),
    timer:sleep(scaled(3000)),
    ?assertEqual([], received_topics(Wild)),
    ?assertEqual(3, stored(T)),
    Exact = ?D:connect(<<Root/binary, "-exact">>, #{auto_ack => true}),
    ok = ?D:subscribe(Exact, T, 1),
    ok = wait_until(fun() -> stored(T) =:= 0 end, 20000),
    ?assertEqual(lists:duplicate(3, T), received_topics(Exact)),
    ?D:disconnect(Wild),
    ?D:disconnect(Exact).
