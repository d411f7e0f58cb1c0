%%--------------------------------------------------------------------
%% This node's clock against Cassandra's, seen from Erlang: with an offset
%% injected into the NIF's clock check (debug_clock_offset/1, a
%% FAULT_INJECTION=1 build), the stats show the skew, health says it in
%% one sentence, the server's periodic check raises the alarm
%% offline_cassandra_clock_skew, and both clear when the clock is back.
%% (That floors hold meanwhile is native/offline_store/tests/clock_skew.rs.)
%% Needs the local Cassandra (test/cassandra/cassandra.sh start).
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_clock_tests).

-include_lib("eunit/include/eunit.hrl").

-define(NIF, emqx_offline_cassandra_nif).
-define(SERVER, emqx_offline_cassandra_server).
-define(ALARM, offline_cassandra_clock_skew).

clock_test_() ->
    {foreach, fun() -> ok end, fun(_) -> emqx_offline_cassandra_test_util:stop_nif() end, [
        {"a skewed clock: stats, health and the alarm say so, and clear when it is back",
            {timeout, scaled(120), fun skew_shows_in_health_and_alarm/0}}
    ]}.

skew_shows_in_health_and_alarm() ->
    Config = emqx_offline_cassandra_test_util:node_config(emqx_offline_cassandra_test_util:node_addr()),
    ok = ?NIF:start(Config#{<<"clock_check_interval">> => 200}),
    ok = wait_until(fun() -> ?NIF:status() =:= connected end, 20000),
    ok = wait_until(fun() -> ?SERVER:health() =:= ok end, 10000),
    State = #{reachable => true},
    ?assertEqual([], alarms(check(State))),

    %% A minute ahead: beyond the default limit, a quarter of the 60 s lag.
    ok = ?NIF:debug_clock_offset(60000),
    ok = wait_until(fun() -> stat(clock_skewed) =:= 1 end, 10000),
    Offset = stat(clock_offset_ms),
    ?assert(Offset > 55000 andalso Offset < 65000),
    ?assertEqual({15000, 1}, {stat(clock_skew_limit_ms), stat(clock_skews)}),
    {error, Health} = ?SERVER:health(),
    ?assertMatch(<<"this node's clock is ", _/binary>>, Health),
    ?assertNotEqual(nomatch, binary:match(Health, <<"ahead of Cassandra's (more than the 15.0 s the replay floor allows)">>)),
    Skewed = check(State),
    ?assertEqual([Health], alarms(Skewed)),

    %% Behind reads the other way round.
    ok = ?NIF:debug_clock_offset(-30000),
    ok = wait_until(fun() -> stat(clock_offset_ms) < -25000 end, 10000),
    {error, Behind} = ?SERVER:health(),
    ?assertNotEqual(nomatch, binary:match(Behind, <<" behind Cassandra's">>)),

    ok = ?NIF:debug_clock_offset(0),
    ok = wait_until(fun() -> stat(clock_skewed) =:= 0 end, 10000),
    ?assertEqual(ok, ?SERVER:health()),
    ?assertEqual([], alarms(check(Skewed))),
    flush_checks().

%%--------------------------------------------------------------------

%% One round of the server's periodic check, as its timer runs it.
check(State) ->
    {noreply, Next} = ?SERVER:handle_info(check, State),
    Next.

%% The messages of the clock alarms now active (the emqx_alarm double).
alarms(_State) ->
    [Message || #{name := ?ALARM, message := Message} <- emqx_alarm:get_alarms(activated)].

stat(Key) ->
    {ok, Stats} = ?NIF:stats(),
    maps:get(Key, Stats).

%% handle_info(check, _) arms the next check on the caller (this process).
flush_checks() ->
    receive
        check -> flush_checks()
    after 0 -> ok
    end.

wait_until(Pred, Ms) ->
    emqx_offline_cassandra_test_util:wait_until(Pred, Ms).

scaled(T) ->
    emqx_offline_cassandra_test_util:scaled(T).
