%% Shared by the test suites and the benchmark.
%%
%% Every deadline of the Erlang tests goes through scaled/1, so one knob,
%% TEST_TIME_SCALE (a number, default 1), stretches them all on a machine
%% that is busy with other work. Waits poll for a condition; a deadline only
%% bounds how long a test may take to show progress, it never measures speed.
-module(emqx_offline_cassandra_test_util).

-export([wait_until/2, scaled/1, time_scale/0, stop_nif/0, log_to_file/1]).
-export([node_addr/0, node_config/1, with_proxy/1]).
-export([plugin_setup/2, plugin_cleanup/1]).

%% @doc Polls Pred (which may crash: that counts as false) every 10 ms until
%% it holds, or returns {timeout, What} after scaled(Ms), with the NIF's
%% status and counters to explain it.
wait_until(Pred, Ms) ->
    wait_(Pred, erlang:monotonic_time(millisecond) + scaled(Ms)).

wait_(Pred, End) ->
    case catch Pred() of
        true ->
            ok;
        _ ->
            case erlang:monotonic_time(millisecond) > End of
                true ->
                    {timeout, #{status => catch emqx_offline_cassandra_nif:status(),
                                stats => catch emqx_offline_cassandra_nif:stats()}};
                false ->
                    timer:sleep(10),
                    wait_(Pred, End)
            end
    end.

%% @doc A time limit in ms (or s: any unit) stretched by TEST_TIME_SCALE.
-spec scaled(non_neg_integer()) -> non_neg_integer().
scaled(T) ->
    round(T * time_scale()).

%% @doc TEST_TIME_SCALE as a number (at least 1: it only ever stretches).
-spec time_scale() -> number().
time_scale() ->
    case os:getenv("TEST_TIME_SCALE") of
        false ->
            1;
        S ->
            N =
                try
                    list_to_float(S)
                catch
                    error:badarg -> list_to_integer(S)
                end,
            max(1, N)
    end.

%% @doc Leaves the NIF stopped, whatever state a test left it in: the
%% cleanup of every test that starts it, so one failure never cascades into
%% `already_started` in the tests after it.
stop_nif() ->
    _ = (catch emqx_offline_cassandra_nif:set_event_pid(spawn(fun() -> ok end))),
    _ = (catch emqx_offline_cassandra_nif:stop(0)),
    ok.

%% @doc Sends this VM's log lines to File instead of the terminal, so that
%% a benchmark's tables are not interleaved with the plugin's reports.
-spec log_to_file(file:filename()) -> ok.
log_to_file(File) ->
    ok = logger:remove_handler(default),
    ok = logger:add_handler(default, logger_std_h, #{config => #{file => File}}),
    ok.

%% @doc The local Cassandra the tests use (CASSANDRA_NODE, default 127.0.0.1:9042).
-spec node_addr() -> binary().
node_addr() ->
    list_to_binary(os:getenv("CASSANDRA_NODE", "127.0.0.1:9042")).

%% @doc The NIF's config for Servers, logged in as the test cluster's root.
-spec node_config(binary()) -> map().
node_config(Servers) ->
    #{<<"servers">> => Servers, <<"username">> => <<"root">>, <<"password">> => <<"public">>}.

%% @doc Runs Fun(Proxy, Addr) with a TCP proxy in front of the local
%% Cassandra (emqx_offline_cassandra_tcp_proxy, to cut or slow it); the NIF
%% is stopped and the proxy closed afterwards, also when Fun fails.
with_proxy(Fun) ->
    [Host, Port] = string:split(binary_to_list(node_addr()), ":"),
    {ok, Proxy} = emqx_offline_cassandra_tcp_proxy:start(list_to_integer(Port)),
    Addr = iolist_to_binary([Host, ":", integer_to_list(emqx_offline_cassandra_tcp_proxy:port(Proxy))]),
    try
        Fun(Proxy, Addr)
    after
        catch emqx_offline_cassandra_nif:stop(0),
        emqx_offline_cassandra_tcp_proxy:stop(Proxy)
    end.

%% @doc The plugin as its application runs it, in the EMQX double: the
%% double in the mode of the replay path (deliver: 5.10, extsub: 6.2), the
%% version detected, the metrics, the servers Servers (unlinked from the
%% caller) and, unless Opts says #{nif => false}, the NIF connected to the
%% local Cassandra. Returns what plugin_cleanup/1 takes. The hooks are the
%% test's to set (emqx_offline_cassandra_hooks:set_settings/1, hook/0).
-spec plugin_setup(deliver | extsub, #{servers => [module()], nif => boolean()}) -> [pid()].
plugin_setup(Path, Opts) ->
    Mode = case Path of deliver -> '5.10'; extsub -> '6.2' end,
    ok = emqx_double:start(#{mode => Mode}),
    persistent_term:erase({emqx_offline_cassandra_compat, features}),
    #{replay_path := Path} = emqx_offline_cassandra_compat:detect(),
    emqx_offline_cassandra_metrics:init(),
    emqx_offline_cassandra_metrics:reset(),
    Mods = maps:get(servers, Opts, [emqx_offline_cassandra_replays, emqx_offline_cassandra_acked]),
    Servers = [begin {ok, Pid} = M:start_link(), unlink(Pid), Pid end || M <- Mods],
    case maps:get(nif, Opts, true) of
        true ->
            ok = emqx_offline_cassandra_nif:start(node_config(node_addr())),
            ok = wait_until(fun() -> emqx_offline_cassandra_nif:status() =:= connected end, 20000);
        false ->
            ok
    end,
    Servers.

%% @doc Undoes plugin_setup/2 (and the test's hooks), whatever the test
%% left behind.
-spec plugin_cleanup([pid()]) -> ok.
plugin_cleanup(Servers) ->
    emqx_offline_cassandra_hooks:unhook(),
    persistent_term:erase({emqx_offline_cassandra_hooks, settings}),
    persistent_term:erase({emqx_offline_cassandra_compat, features}),
    lists:foreach(
        fun(Pid) ->
            MRef = erlang:monitor(process, Pid),
            exit(Pid, shutdown),
            receive {'DOWN', MRef, process, Pid, _} -> ok end
        end,
        Servers
    ),
    emqx_double:stop(),
    stop_nif().
