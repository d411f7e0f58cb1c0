%% Shared-subscription replay claims (emqx_offline_cassandra_groups): one
%% member per group and filter replays; the claim ends with the member.
-module(emqx_offline_cassandra_groups_tests).

-include_lib("eunit/include/eunit.hrl").

-define(G, emqx_offline_cassandra_groups).

claims_test_() ->
    {foreach, fun start/0, fun stop/1, [
        {"the first member claims, the others do not", fun first_member_claims/0},
        {"groups and filters are claimed apart", fun claims_are_per_group_and_filter/0},
        {"a release lets the next member claim", fun release_hands_on/0},
        {"only the holder can release", fun only_the_holder_releases/0},
        {"a member that ends gives up its claim", fun an_ended_member_gives_up/0}
    ]}.

no_claims_while_not_running_test() ->
    ?assertEqual(undefined, whereis(?G)),
    ?assertNot(?G:claim(<<"g">>, <<"t/1">>, self())),
    ?assertEqual(ok, ?G:release(<<"g">>, <<"t/1">>, self())).

start() ->
    {ok, Pid} = ?G:start_link(),
    unlink(Pid),
    Pid.

stop(Pid) ->
    MRef = erlang:monitor(process, Pid),
    exit(Pid, shutdown),
    receive
        {'DOWN', MRef, process, Pid, _} -> ok
    end.

member() ->
    spawn(fun() ->
        receive
            stop -> ok
        end
    end).

first_member_claims() ->
    [A, B] = [member(), member()],
    ?assert(?G:claim(<<"g">>, <<"t/1">>, A)),
    ?assertNot(?G:claim(<<"g">>, <<"t/1">>, B)),
    ?assertNot(?G:claim(<<"g">>, <<"t/1">>, A)).

claims_are_per_group_and_filter() ->
    A = member(),
    ?assert(?G:claim(<<"g">>, <<"t/1">>, A)),
    ?assert(?G:claim(<<"h">>, <<"t/1">>, A)),
    ?assert(?G:claim(<<"g">>, <<"t/2">>, A)).

release_hands_on() ->
    [A, B] = [member(), member()],
    ?assert(?G:claim(<<"g">>, <<"t/1">>, A)),
    ok = ?G:release(<<"g">>, <<"t/1">>, A),
    ?assert(?G:claim(<<"g">>, <<"t/1">>, B)).

only_the_holder_releases() ->
    [A, B] = [member(), member()],
    ?assert(?G:claim(<<"g">>, <<"t/1">>, A)),
    ok = ?G:release(<<"g">>, <<"t/1">>, B),
    ?assertNot(?G:claim(<<"g">>, <<"t/1">>, B)).

an_ended_member_gives_up() ->
    [A, B] = [member(), member()],
    ?assert(?G:claim(<<"g">>, <<"t/1">>, A)),
    A ! stop,
    ok = emqx_offline_cassandra_test_util:wait_until(fun() -> ?G:claim(<<"g">>, <<"t/1">>, B) end, 5000).
