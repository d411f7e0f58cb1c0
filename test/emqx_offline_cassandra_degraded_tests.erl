%%--------------------------------------------------------------------
%% Cassandra answers but cannot take writes, seen from Erlang: a real
%% `Unavailable' from the local node, provoked with a keyspace of
%% replication factor 3 written at QUORUM (2 replicas needed, 1 alive).
%% The NIF's status says degraded with the number of waiting writes and
%% why, the plugin's health turns that into its sentence, and after ALTER
%% KEYSPACE to RF 1 every write lands and the status is connected again.
%% Needs the local Cassandra (test/cassandra/cassandra.sh start).
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_degraded_tests).

-include_lib("eunit/include/eunit.hrl").

-define(NIF, emqx_offline_cassandra_nif).
-define(WAIT_REASON, <<"Unavailable: 1 replica alive, QUORUM needs 2">>).

degraded_test_() ->
    {setup, fun create_keyspace/0, fun drop_keyspace/1, fun(Ks) ->
        {foreach, fun() -> ok end, fun(_) -> emqx_offline_cassandra_test_util:stop_nif() end, [
            {"Unavailable: writes wait, status and health say degraded, all land after ALTER to RF 1",
                {timeout, scaled(120), fun() -> writes_wait_and_health_says_degraded(Ks) end}}
        ]}
    end}.

writes_wait_and_health_says_degraded(Ks) ->
    ok = ?NIF:start(config(Ks)),
    ok = wait_until(fun() -> ?NIF:status() =:= connected end, 20000),
    ?assertEqual(ok, emqx_offline_cassandra_server:health()),
    Topic = iolist_to_binary(io_lib:format("test/erl/degraded/~b", [erlang:system_time(millisecond)])),
    [ok = ?NIF:store(message(Topic, integer_to_binary(I))) || I <- lists:seq(1, 12)],
    ok = wait_until(fun() -> ?NIF:status() =:= {degraded, 12, ?WAIT_REASON} end, 20000),
    {ok, Stats} = ?NIF:stats(),
    ?assertMatch(#{waiting := 12, failed := 0, written := 0}, Stats),
    Sentence = <<"degraded: 12 writes waiting (", ?WAIT_REASON/binary, ")">>,
    ?assertEqual(Sentence, emqx_offline_cassandra_reason:describe(?NIF:status())),
    ?assertEqual({error, Sentence}, emqx_offline_cassandra_server:health()),

    cql(io_lib:format(
        "ALTER KEYSPACE ~s WITH replication = {'class': 'SimpleStrategy', 'replication_factor': '1'}", [Ks]
    )),
    ok = wait_until(fun() -> ?NIF:status() =:= connected end, 30000),
    {ok, After} = ?NIF:stats(),
    ?assertMatch(#{waiting := 0, failed := 0, written := 12}, After),
    ?assertEqual(ok, emqx_offline_cassandra_server:health()),
    {ok, Rows} = ?NIF:fetch_sync(Topic, #{}, scaled(10000)),
    ?assertEqual(12, length(Rows)).

%%--------------------------------------------------------------------

create_keyspace() ->
    Ks = "degraded_erl_" ++ integer_to_list(erlang:system_time(millisecond)),
    cql(io_lib:format(
        "CREATE KEYSPACE ~s WITH replication = {'class': 'SimpleStrategy', 'replication_factor': '3'}", [Ks]
    )),
    list_to_binary(Ks).

drop_keyspace(Ks) ->
    cql(io_lib:format("DROP KEYSPACE IF EXISTS ~s", [Ks])).

config(Ks) ->
    #{
        <<"servers">> => list_to_binary(os:getenv("CASSANDRA_NODE", "127.0.0.1:9042")),
        <<"username">> => <<"root">>,
        <<"password">> => <<"public">>,
        <<"keyspace">> => Ks,
        <<"create_table_if_missing">> => true,
        <<"write_consistency">> => <<"quorum">>,
        %% ONE reads do not overlap QUORUM writes, which the replay floor
        %% needs (refused with it); these tests are about the writes.
        <<"read_consistency">> => <<"one">>,
        <<"replay_floor">> => false
    }.

message(Topic, Payload) ->
    Us = erlang:system_time(microsecond),
    Seq = erlang:unique_integer([positive, monotonic]) band 16#FFFF,
    #{topic => Topic, msgid => <<Us:64, 16#ABCDEF:48, Seq:16>>, payload => Payload, qos => 1}.

%% cqlsh as root (the schema statements); fails the test when cqlsh does.
cql(Statement) ->
    Script = filename:join(root(), "test/cassandra/cassandra.sh"),
    Out = os:cmd(Script ++ " cqlsh -e \"" ++ lists:flatten(Statement) ++ "\" 2>&1; echo \"exit=$?\""),
    ?assertMatch({match, _}, re:run(Out, "exit=0\\s*$"), Out),
    Out.

%% The repository: this module's beam is in <root>/_build/test/lib/<app>/test.
root() ->
    Beam = code:which(?MODULE),
    Candidates = [
        filename:dirname(filename:dirname(filename:dirname(filename:dirname(filename:dirname(filename:dirname(Beam)))))),
        element(2, file:get_cwd())
    ],
    hd([D || D <- Candidates, filelib:is_file(filename:join(D, "test/cassandra/cassandra.sh"))] ++ ["."]).

wait_until(Pred, Ms) ->
    emqx_offline_cassandra_test_util:wait_until(Pred, Ms).

scaled(T) ->
    emqx_offline_cassandra_test_util:scaled(T).
