%%--------------------------------------------------------------------
%% The disk buffer (buffer_mode = disk) seen from Erlang, against the real
%% Cassandra:
%% - a VM killed with SIGKILL while Cassandra is away loses nothing that
%%   was spooled: 50,000 messages stored and 5,000 of them acked in a
%%   second VM (emqx_offline_cassandra_spool_child), kill -9, then this VM
%%   starts on the same spool directory with Cassandra reachable: exactly
%%   the 45,000 unacked rows are in Cassandra;
%% - a stop with Cassandra away (cut by the TCP proxy) leaves the writes in
%%   the spool, not abandoned, and the next start writes them;
%% - an unusable spool directory shows in the plugin's health, and the
%%   writes are stored from memory;
%% - the plugin's config puts the spool under EMQX's data dir.
%% Torn tails and a full spool: native/offline_store/tests/spool.rs.
%% Needs the local Cassandra (test/cassandra/cassandra.sh start).
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_spool_tests).

-include_lib("eunit/include/eunit.hrl").

-define(NIF, emqx_offline_cassandra_nif).
-define(UTIL, emqx_offline_cassandra_test_util).

spool_test_() ->
    {foreach, fun() -> ok end, fun(_) -> ?UTIL:stop_nif() end, [
        {"SIGKILL with Cassandra away: the 45,000 unacked of 50,000 are written at the next start",
            {timeout, scaled(600), fun killed_vm_loses_nothing_spooled/0}},
        {"stop with Cassandra away: writes stay in the spool, the next start writes them",
            {timeout, scaled(120), fun stop_and_start_while_away/0}},
        {"unusable spool directory: health says so, writes are stored from memory",
            {timeout, scaled(120), fun unusable_directory/0}},
        {"the plugin's config puts the spool under EMQX's data dir",
            fun spool_dir_defaults_to_the_data_dir/0}
    ]}.

killed_vm_loses_nothing_spooled() ->
    Dir = temp_dir("sigkill"),
    Topic = topic("sigkill"),
    N = 50000,
    Every = 10,
    BaseUs = erlang:system_time(microsecond) - 10 * 1000000,
    Port = open_port({spawn_executable, os:find_executable("erl")}, [
        {args, ["-noshell" | lists:append([["-pa", P] || P <- code:get_path(), is_own(P)])] ++
            ["-eval", "emqx_offline_cassandra_spool_child:fill()"]},
        {env, [
            {"ERL_CRASH_DUMP_SECONDS", "0"},
            {"SPOOL_CHILD_DIR", Dir},
            {"SPOOL_CHILD_TOPIC", binary_to_list(Topic)},
            {"SPOOL_CHILD_BASE_US", integer_to_list(BaseUs)},
            {"SPOOL_CHILD_N", integer_to_list(N)},
            {"SPOOL_CHILD_ACK_EVERY", integer_to_list(Every)}
        ]},
        {line, 4096},
        exit_status,
        stderr_to_stdout
    ]),
    OsPid = await_ready(Port, erlang:monotonic_time(millisecond) + scaled(240000)),
    _ = os:cmd("kill -9 " ++ OsPid),
    ?assertEqual(137, await_exit(Port, scaled(30000))),
    ?assertNotEqual([], filelib:wildcard(filename:join(Dir, "*.seg"))),
    try
        ok = ?NIF:start(config(?UTIL:node_addr(), Dir)),
        Writes = N + N div Every,
        ok = wait_until(fun() -> drained(Writes) end, 180000),
        {ok, Stats} = ?NIF:stats(),
        ?assertMatch(#{spool_recovered := Writes, failed := 0, dropped := 0}, Stats),
        ?assertEqual({ok, N - N div Every}, ?NIF:count(Topic, scaled(60000))),
        %% The acked ones are not among them (spot checks at both ends).
        {ok, Rows} = ?NIF:fetch_sync(Topic, #{limit => 100}, scaled(30000)),
        Acked = [hex(emqx_offline_cassandra_spool_child:msgid(BaseUs, I)) || I <- lists:seq(N - 200, N), I rem Every =:= 0],
        ?assertEqual([], [Id || #{msgid := Id} <- Rows, lists:member(Id, Acked)]),
        ?assertEqual(100, length(Rows))
    after
        _ = (catch ?NIF:purge(Topic, scaled(60000))),
        remove_dir(Dir)
    end.

stop_and_start_while_away() ->
    Dir = temp_dir("stop"),
    Topic = topic("stop"),
    try
        ?UTIL:with_proxy(fun(Proxy, Addr) ->
            ok = ?NIF:start(config(Addr, Dir)),
            ok = wait_until(fun() -> ?NIF:status() =:= connected end, 20000),
            ok = emqx_offline_cassandra_tcp_proxy:cut(Proxy),
            ok = wait_until(fun() -> ?NIF:status() =/= connected end, 30000),
            [ok = ?NIF:store(message(Topic, I)) || I <- lists:seq(1, 2000)],
            ok = wait_until(fun() -> spooled(2000) end, 30000),
            %% Not abandoned: left in the spool.
            ?assertMatch({ok, #{spooled := 2000, abandoned := 0}}, ?NIF:stop(500)),
            ok = emqx_offline_cassandra_tcp_proxy:restore(Proxy),
            ok = ?NIF:start(config(Addr, Dir)),
            try
                ok = wait_until(fun() -> drained(2000) end, 60000),
                ?assertEqual({ok, 2000}, ?NIF:count(Topic, scaled(30000)))
            after
                _ = (catch ?NIF:purge(Topic, scaled(60000)))
            end
        end)
    after
        remove_dir(Dir)
    end.

unusable_directory() ->
    File = temp_dir("unusable"),
    ok = file:write_file(File, <<"a file where the spool directory should be">>),
    Topic = topic("unusable"),
    try
        ok = ?NIF:start(config(?UTIL:node_addr(), File)),
        ok = wait_until(fun() -> ?NIF:status() =:= connected end, 20000),
        ok = wait_until(fun() -> element(1, ?NIF:spool_status()) =:= spool_failed end, 20000),
        {error, Health} = emqx_offline_cassandra_server:health(),
        ?assertMatch({match, _}, re:run(Health, "^disk buffer unusable, writes are kept in memory only")),
        ?assertMatch({match, _}, re:run(Health, File)),
        [ok = ?NIF:store(message(Topic, I)) || I <- lists:seq(1, 100)],
        ok = wait_until(fun() -> drained(100) end, 30000),
        {ok, Stats} = ?NIF:stats(),
        ?assertMatch(#{spool_appended := 0, written := 100}, Stats),
        ?assertEqual({ok, 100}, ?NIF:count(Topic, scaled(30000)))
    after
        _ = (catch ?NIF:purge(Topic, scaled(30000))),
        file:delete(File)
    end.

spool_dir_defaults_to_the_data_dir() ->
    ok = emqx_double:start(#{}),
    try
        {ok, #{nif := Nif}} = emqx_offline_cassandra_config:parse(#{}),
        Expected = filename:absname(filename:join([emqx:data_dir(), "offline_cassandra", "spool"])),
        ?assertEqual(list_to_binary(Expected), maps:get(<<"spool_dir">>, Nif)),
        ?assertEqual(<<"disk">>, maps:get(<<"buffer_mode">>, Nif)),
        {ok, #{nif := Own}} = emqx_offline_cassandra_config:parse(#{<<"spool_dir">> => <<"/var/spool/x">>}),
        ?assertEqual(<<"/var/spool/x">>, maps:get(<<"spool_dir">>, Own))
    after
        emqx_double:stop()
    end.

%%--------------------------------------------------------------------

config(Servers, Dir) ->
    (?UTIL:node_config(Servers))#{
        <<"buffer_mode">> => <<"disk">>,
        <<"spool_dir">> => list_to_binary(Dir),
        <<"spool_sync_interval">> => 20,
        <<"reconnect_max_backoff">> => 500
    }.

%% Everything written, nothing left anywhere.
drained(Writes) ->
    {ok, #{written := W, buffered := B, in_flight := F}} = ?NIF:stats(),
    W =:= Writes andalso B =:= 0 andalso F =:= 0.

spooled(Writes) ->
    {ok, #{spooled := S, spool_unsynced := U}} = ?NIF:stats(),
    S =:= Writes andalso U =:= 0.

await_ready(Port, End) ->
    Left = max(0, End - erlang:monotonic_time(millisecond)),
    receive
        {Port, {data, {eol, "ready " ++ OsPid}}} -> OsPid;
        {Port, {data, {_, Line}}} -> io:format(user, "spool child: ~s~n", [Line]), await_ready(Port, End);
        {Port, {exit_status, S}} -> error({spool_child_exited, S})
    after Left ->
        catch port_close(Port),
        error(spool_child_not_ready)
    end.

await_exit(Port, Ms) ->
    receive
        {Port, {exit_status, S}} -> S;
        {Port, {data, _}} -> await_exit(Port, Ms)
    after Ms -> error(spool_child_still_running)
    end.

%% The code paths the child VM needs: this build's, not the system's.
is_own(Path) ->
    string:find(Path, "_build") =/= nomatch.

message(Topic, I) ->
    Us = erlang:system_time(microsecond),
    #{topic => Topic, msgid => <<Us:64, 16#ABCDEF:48, I:16>>, payload => integer_to_binary(I), qos => 1}.

hex(<<N:128>>) ->
    list_to_binary(io_lib:format("~32.16.0B", [N])).

topic(Test) ->
    iolist_to_binary(io_lib:format("test/erl/spool/~s/~b", [Test, erlang:system_time(millisecond)])).

temp_dir(Test) ->
    filename:join(["/tmp", lists:flatten(io_lib:format("offline_spool_erl_~s_~s_~b", [Test, os:getpid(), erlang:unique_integer([positive])]))]).

remove_dir(Dir) ->
    _ = os:cmd("rm -rf '" ++ lists:flatten(Dir) ++ "'"),
    ok.

wait_until(Pred, Ms) -> ?UTIL:wait_until(Pred, Ms).

scaled(Ms) -> ?UTIL:scaled(Ms).
