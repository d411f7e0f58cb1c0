%%--------------------------------------------------------------------
%% Thousands of subscribers at once (issue 15 part 3), against the real
%% local Cassandra and the EMQX double (5.x path): STORM_N clients (default
%% 10,000, the issue's figure; about 35 s) subscribe
%% within a second, each to its own topic holding 10 stored messages:
%% - every client gets its 10 messages, once; the replay reads running at
%%   once never exceeded max_concurrent_replay_reads (the core's
%%   replay_reads_peak), and the VM's memory stayed bounded;
%% - the same with Cassandra unreachable (a TCP proxy cut) for the first
%%   5 s: the reads are retried (replay_read_retries) and every replay
%%   completes after, none failed.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_storm_tests).

-include_lib("eunit/include/eunit.hrl").

-define(NIF, emqx_offline_cassandra_nif).
-define(D, emqx_double).
-define(H, emqx_offline_cassandra_hooks).
-define(PER_CLIENT, 10).
%% Below the default (32), so that the storm has to queue.
-define(LIMIT, 8).
-define(OUTAGE_MS, 5000).

storm_test_() ->
    {inorder, {foreach, fun setup/0, fun cleanup/1, [
        {"all subscribe at once: every message once, reads within the limit",
         {timeout, scaled(600), fun storm/0}},
        {"Cassandra away for the first 5 s: every replay completes after",
         {timeout, scaled(600), fun storm_during_outage/0}}
    ]}}.

setup() ->
    emqx_offline_cassandra_test_util:plugin_setup(deliver, #{nif => false}).

cleanup(Servers) ->
    emqx_offline_cassandra_test_util:plugin_cleanup(Servers).

scaled(T) -> emqx_offline_cassandra_test_util:scaled(T).

wait_until(Pred, Ms) -> emqx_offline_cassandra_test_util:wait_until(Pred, Ms).

n() ->
    list_to_integer(os:getenv("STORM_N", "10000")).

start_nif(Servers) ->
    Config = (emqx_offline_cassandra_test_util:node_config(Servers))#{<<"max_concurrent_replay_reads">> => ?LIMIT},
    ok = ?NIF:start(Config),
    ok = wait_until(fun() -> ?NIF:status() =:= connected end, 20000).

stat(Key) ->
    {ok, S} = ?NIF:stats(),
    maps:get(Key, S).

%%--------------------------------------------------------------------

storm() ->
    start_nif(emqx_offline_cassandra_test_util:node_addr()),
    {Topics, Clients} = prepare(),
    {Ms, Growth} = with_memory_peak(fun() ->
        subscribe_all(lists:zip(Topics, Clients)),
        wait_all_received(Clients)
    end),
    assert_each_got_its_own(Topics, Clients),
    report("storm", Ms, Growth),
    %% Bounded per subscriber, not by the backlog: the double's channels
    %% (each keeps what it received), the replay processes and the queued
    %% reads. Measured: ~41 MB for 1,000 clients, ~450 MB for 10,000
    %% (~45 KB per client, the double's channel included).
    ?assert(Growth < 32 * 1024 * 1024 + n() * 64 * 1024),
    [?D:disconnect(C) || C <- Clients].

storm_during_outage() ->
    emqx_offline_cassandra_test_util:with_proxy(fun(Proxy, Addr) ->
        start_nif(Addr),
        {Topics, Clients} = prepare(),
        ok = emqx_offline_cassandra_tcp_proxy:cut(Proxy),
        ok = wait_until(fun() -> ?NIF:status() =/= connected end, 10000),
        Started = erlang:monotonic_time(millisecond),
        subscribe_all(lists:zip(Topics, Clients)),
        timer:sleep(max(0, ?OUTAGE_MS - (erlang:monotonic_time(millisecond) - Started))),
        %% Nothing got through while Cassandra was away.
        ?assertEqual(0, lists:sum([maps:get(received, ?D:stats(C)) || C <- Clients])),
        ok = emqx_offline_cassandra_tcp_proxy:restore(Proxy),
        wait_all_received(Clients),
        assert_each_got_its_own(Topics, Clients),
        Retries = stat(replay_read_retries),
        ?debugFmt("outage: ~b replay reads retried", [Retries]),
        ?assert(Retries > 0),
        [?D:disconnect(C) || C <- Clients]
    end).

%% Stores ?PER_CLIENT messages on each client's topic and connects the
%% clients (auto-acking).
prepare() ->
    N = n(),
    Root = iolist_to_binary(io_lib:format("storm/~b", [erlang:unique_integer([positive]) + erlang:system_time(millisecond)])),
    ok = ?H:set_settings(#{topics => [<<Root/binary, "/#">>], max_returned_count => 0, time_range_ms => 0,
                           message_ttl_s => 0, wildcard_replay => all}),
    ok = ?H:hook(),
    Topics = [<<Root/binary, "/", (integer_to_binary(I))/binary>> || I <- lists:seq(1, N)],
    Written0 = stat(written),
    Base = erlang:system_time(microsecond) - 1000000 - N * ?PER_CLIENT,
    _ = [store_one(T, <<(Base + I * ?PER_CLIENT + J):64, 16#ABCDEF:48, 0:16>>)
         || {I, T} <- lists:enumerate(Topics), J <- lists:seq(1, ?PER_CLIENT)],
    ok = wait_until(fun() -> stat(written) - Written0 >= N * ?PER_CLIENT end, 300000),
    Clients = [?D:connect(T, #{auto_ack => true}) || T <- Topics],
    {Topics, Clients}.

store_one(Topic, Id) ->
    Msg = #{topic => Topic, msgid => Id, sender => <<"storm-pub">>, qos => 1, retain => false,
            payload => binary:copy(<<"s">>, 100), arrived => erlang:system_time(millisecond)},
    case ?NIF:store(Msg) of
        ok -> ok;
        {error, E} when E =:= overloaded; E =:= buffer_full -> timer:sleep(5), store_one(Topic, Id);
        Other -> error({store_failed, Other})
    end.

%% Every client subscribes to its topic, 100 at a time in parallel. The
%% hooks never wait for Cassandra: 10,000 take ~0.5 s on a quiet machine
%% (printed); the bound is generous for a busy one (2.5 s seen).
subscribe_all(Pairs) ->
    Started = erlang:monotonic_time(millisecond),
    Self = self(),
    Groups = chunks(Pairs, 100),
    Pids = [spawn_link(fun() ->
                [ok = ?D:subscribe(C, T, 1) || {T, C} <- Group],
                Self ! {subscribed, self()}
            end) || Group <- Groups],
    [receive {subscribed, P} -> ok end || P <- Pids],
    Took = erlang:monotonic_time(millisecond) - Started,
    ?debugFmt("~b clients subscribed in ~b ms", [length(Pairs), Took]),
    ?assert(Took =< scaled(15000)).

chunks([], _) -> [];
chunks(L, N) when length(L) =< N -> [L];
chunks(L, N) ->
    {A, B} = lists:split(N, L),
    [A | chunks(B, N)].

%% Polled every 200 ms: asking 10,000 channels costs.
wait_all_received(Clients) ->
    Want = length(Clients) * ?PER_CLIENT,
    ok = wait_until(fun() ->
        timer:sleep(200),
        lists:sum([maps:get(received, ?D:stats(C)) || C <- Clients]) >= Want
    end, 300000).

assert_each_got_its_own(Topics, Clients) ->
    %% Past the replays' settle time: nothing more comes.
    timer:sleep(scaled(2500)),
    Wrong = [{T, Got} || {T, C} <- lists:zip(Topics, Clients),
                         Got <- [[emqx_message:topic(M) || {_, M} <- ?D:received(C)]],
                         Got =/= lists:duplicate(?PER_CLIENT, T)],
    ?assertEqual([], lists:sublist(Wrong, 3)),
    Peak = stat(replay_reads_peak),
    ?debugFmt("replay reads at once: at most ~b (limit ~b)", [Peak, ?LIMIT]),
    ?assert(Peak =< ?LIMIT),
    %% The limit was reached: the storm really queued.
    ?assertEqual(?LIMIT, Peak),
    ?assertEqual(0, maps:get(replay_failed, emqx_offline_cassandra_metrics:all())).

report(What, Ms, Growth) ->
    ?debugFmt("~s: ~b clients x ~b messages replayed in ~b ms, VM grew by at most ~.1f MB",
              [What, n(), ?PER_CLIENT, Ms, Growth / 1048576]).

%% {Milliseconds, peak growth of the VM's memory} while Fun runs.
with_memory_peak(Fun) ->
    erlang:garbage_collect(),
    Base = erlang:memory(total),
    Self = self(),
    Sampler = spawn_link(fun() -> sample(Self, Base) end),
    Started = erlang:monotonic_time(millisecond),
    Fun(),
    Ms = erlang:monotonic_time(millisecond) - Started,
    Sampler ! {stop, self()},
    Peak = receive {peak, P} -> P end,
    {Ms, Peak - Base}.

sample(Owner, Peak) ->
    receive
        {stop, Owner} -> Owner ! {peak, max(Peak, erlang:memory(total))}
    after 20 ->
        sample(Owner, max(Peak, erlang:memory(total)))
    end.
