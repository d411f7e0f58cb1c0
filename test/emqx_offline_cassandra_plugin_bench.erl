%%--------------------------------------------------------------------
%% Benchmark of the packaged plugin in the EMQX double (scripts/bench.sh),
%% each figure with its baseline from the same run:
%% - the message.publish hook's wall time as a publisher's process sees it,
%%   against a hook that awaits one synchronous INSERT per message;
%% - stored messages/s through the hook path, against the core pipeline
%%   alone (CORE_CEILING_MSG_S, measured by the core benchmark just before);
%% - replay latency from subscribe to the last {deliver, ...} for 1,000
%%   stored messages on one topic and 10 on each of 100 topics (wildcard);
%% - run_outage/0, in a VM of its own (so that no earlier phase has grown
%%   its allocators): resident memory through a Cassandra outage of
%%   BENCH_OUTAGE_SECS (600) at 1,000 msg/s, against the buffer's cap;
%% - run_outage_large/0, in a VM of its own: 1 MB payloads at 20 msg/s
%%   through an outage of BENCH_OUTAGE_LARGE_SECS (60): the memory the
%%   buffer takes stays under buffer_max_size (BENCH_BUFFER_MAX_SIZE,
%%   64MB), whatever buffer_capacity allows (100,000 writes: 100 GB of
%%   such payloads).
%% - run_cpu/0, in a VM of its own: CPU per stored + acked message of the
%%   whole VM (BEAM schedulers, the NIF's runtime threads, the rest) and of
%%   the Cassandra process, at fixed 500 and 5,000 msg/s over 100 topics,
%%   against the same run with hooks that store nothing (issue 17).
%% Each appends a JSON line to bench-results/plugin.jsonl, outage.jsonl,
%% outage_large.jsonl or plugin_cpu.jsonl.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_plugin_bench).

-export([run/0, run_outage/0, run_outage_large/0, run_cpu/0]).
%% The baseline hook callback (called through emqx_hooks).
-export([sync_insert/1]).

-define(D, emqx_double).

run() ->
    NV = start_bench_plugin(),
    Run = integer_to_binary(erlang:system_time(millisecond)),
    {P50, P99, Max, N} = hook_times(<<"t/bench/", Run/binary, "/hook">>, 10000),
    {PP50, PP99, PMax, PN} = hook_times(<<"t/bench/", Run/binary, "/paced">>, 10000, 5),
    HookRate = hook_rate(<<"t/bench/", Run/binary, "/rate">>, 50000),
    Replay1000 = replay_ms(<<"t/bench/", Run/binary, "/one">>, [<<>>], 1000),
    Topics = [<<"/", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 100)],
    Wildcard = replay_ms(<<"t/bench/", Run/binary, "/many">>, Topics, 10),
    {SP50, SP99, SMax, SN} = sync_hook_times(<<"t/bench/", Run/binary, "/sync">>, 2000),
    ok = ?D:stop_plugin(NV),
    Ceiling = list_to_integer(os:getenv("CORE_CEILING_MSG_S", "0")),
    io:format("~nThe plugin in the EMQX double against Cassandra~n"),
    io:format("| figure | value | target |~n|---|---|---|~n"),
    io:format("| message.publish hook, ~b QoS 1 calls: p50 / p99 / max | ~.1f / ~.1f / ~.1f us | p99 <= 20 us |~n",
              [N, P50 / 1000, P99 / 1000, Max / 1000]),
    io:format("| message.publish hook at 5,000 msg/s, ~b calls: p50 / p99 / max | ~.1f / ~.1f / ~.1f us | p99 <= 20 us |~n",
              [PN, PP50 / 1000, PP99 / 1000, PMax / 1000]),
    io:format("| baseline: hook awaiting one INSERT, ~b calls: p50 / p99 / max | ~.1f / ~.1f / ~.1f us | |~n",
              [SN, SP50 / 1000, SP99 / 1000, SMax / 1000]),
    io:format("| baseline / plugin hook, p50 and p99 | ~.1fx / ~.1fx | >= 50x |~n", [SP50 / max(1, P50), SP99 / max(1, P99)]),
    io:format("| stored through the hook path | ~b msg/s | |~n", [HookRate]),
    io:format("| hook path / core pipeline (~b msg/s) | ~.2fx | >= 0.9x |~n", [Ceiling, HookRate / max(1, Ceiling)]),
    io:format("| replay of 1,000 stored messages: subscribe -> last deliver | ~b ms | <= 50 ms |~n", [Replay1000]),
    io:format("| wildcard replay, 100 topics x 10: subscribe -> last deliver | ~b ms | <= 150 ms |~n", [Wildcard]),
    Line = io_lib:format(
        "{\"bench\":\"plugin\",\"unix_ms\":~s,\"hook_ns_p50\":~b,\"hook_ns_p99\":~b,\"hook_ns_max\":~b,"
        "\"paced_hook_ns_p50\":~b,\"paced_hook_ns_p99\":~b,\"paced_hook_ns_max\":~b,"
        "\"sync_hook_ns_p50\":~b,\"sync_hook_ns_p99\":~b,\"sync_hook_ns_max\":~b,"
        "\"hook_path_msg_s\":~b,\"core_ceiling_msg_s\":~b,"
        "\"replay_1000_ms\":~b,\"wildcard_100x10_ms\":~b}~n",
        [Run, P50, P99, Max, PP50, PP99, PMax, SP50, SP99, SMax, HookRate, Ceiling, Replay1000, Wildcard]
    ),
    File = "bench-results/plugin.jsonl",
    ok = filelib:ensure_dir(File),
    ok = file:write_file(File, Line, [append]),
    io:format("results appended to ~s~n", [File]),
    ok.

%% The packaged plugin installed and started in a fresh double, healthy.
start_bench_plugin() ->
    ok = ?D:start(#{mode => '5.10'}),
    [Tar] = filelib:wildcard(package_dir() ++ "/emqx_offline_cassandra-*.tar.gz"),
    {ok, NV} = ?D:install_plugin(Tar),
    Config = (?D:plugin_config(NV))#{
        <<"servers">> => list_to_binary(os:getenv("CASSANDRA_NODE", "127.0.0.1:9042")),
        <<"max_returned_count">> => 0
    },
    persistent_term:put({emqx_double, plugin_config, NV}, Config),
    ok = ?D:start_plugin(NV),
    ok = emqx_offline_cassandra_test_util:wait_until(fun() -> ?D:health(NV) =:= ok end, 30000),
    NV.

%% The fold EMQX runs for every publish, timed around the whole chain, in a
%% process with a large heap so that the benchmark's own garbage collection
%% does not land inside the timed calls.
hook_times(Topic, N) ->
    hook_times(Topic, N, 0).

%% PerMs > 0: PerMs calls a millisecond (a steady rate) instead of back to back.
hook_times(Topic, N, PerMs) ->
    Parent = self(),
    Pid = spawn_opt(fun() -> Parent ! {self(), hook_times_(Topic, N, PerMs)} end, [{min_heap_size, 16 * 1024 * 1024}]),
    receive
        {Pid, Result} -> Result
    end.

hook_times_(Topic, N, PerMs) ->
    Payload = binary:copy(<<"x">>, 100),
    Msgs = lists:zip(lists:seq(1, N), [emqx_message:make(<<"bench">>, 1, Topic, Payload) || _ <- lists:seq(1, N)]),
    Times = lists:sort([
        begin
            PerMs > 0 andalso I rem PerMs =:= 0 andalso timer:sleep(1),
            T = erlang:monotonic_time(nanosecond),
            _ = emqx_hooks:run_fold('message.publish', [], M),
            erlang:monotonic_time(nanosecond) - T
        end
     || {I, M} <- Msgs
    ]),
    {ok, N} = wait_stored(Topic, N),
    {pct(Times, 0.5), pct(Times, 0.99), lists:last(Times), N}.

%% Stores PerTopic messages under Base ++ each suffix, then times a new
%% subscription (Base itself, or Base/# for several topics) until all arrive.
replay_ms(Base, Suffixes, PerTopic) ->
    Pub = ?D:connect(<<"bench-publisher">>),
    [
        {ok, _} = ?D:publish(Pub, <<Base/binary, S/binary>>, integer_to_binary(I), 1)
     || S <- Suffixes, I <- lists:seq(1, PerTopic)
    ],
    Total = length(Suffixes) * PerTopic,
    Filter =
        case Suffixes of
            [<<>>] -> Base;
            _ -> <<Base/binary, "/#">>
        end,
    {ok, Total} = wait_stored(Filter, Total),
    %% Acking as it receives: the replay is paced by completions (issue 15),
    %% so a client that never acks gets its inflight window and no more.
    Sub = ?D:connect(<<"bench-subscriber">>, #{auto_ack => true}),
    T0 = erlang:monotonic_time(millisecond),
    ok = ?D:subscribe(Sub, Filter, 1),
    ok = emqx_offline_cassandra_test_util:wait_until(fun() -> length(?D:raw_delivered(Sub)) >= Total end, 60000),
    Ms = erlang:monotonic_time(millisecond) - T0,
    {ok, _} = ?D:ack_all(Sub),
    [?D:disconnect(C) || C <- [Pub, Sub]],
    Ms.

wait_stored(TopicOrFilter, N) ->
    ok = emqx_offline_cassandra_test_util:wait_until(
        fun() ->
            {ok, Rows} = emqx_offline_cassandra_nif:fetch_sync(TopicOrFilter, #{limit => N}, 10000),
            length(Rows) >= N
        end,
        60000
    ),
    {ok, N}.

%% scripts/bench.sh packages a plugin with the bench-only API apart from the
%% production package.
package_dir() ->
    os:getenv("PLUGIN_PACKAGE_DIR", "_build/plugin").

pct(Sorted, P) ->
    lists:nth(max(1, round(length(Sorted) * P)), Sorted).

%% The outage figure, in a fresh VM.
run_outage() ->
    ok = ?D:start(#{mode => '5.10'}),
    [Tar] = filelib:wildcard(package_dir() ++ "/emqx_offline_cassandra-*.tar.gz"),
    {ok, NV} = ?D:install_plugin(Tar),
    Config = ?D:plugin_config(NV),
    Secs = list_to_integer(os:getenv("BENCH_OUTAGE_SECS", "600")),
    #{rss_start := R0, rss_full := RFull, rss_max := RMax, cap := Cap, full_after_s := FullAfter,
      mem_start := M0, mem_full := MFull, mem_max := MMax,
      bytes_per_msg := BPM, dropped := Dropped, published := Published, written_after := WAfter} =
        outage_rss(NV, Config, Secs),
    io:format("~nThe plugin in the EMQX double through a Cassandra outage~n"),
    io:format("| figure | value | target |~n|---|---|---|~n"),
    io:format("| outage ~b s at 1,000 msg/s: VM RSS start / buffer full (after ~b s) / max | ~.1f / ~.1f / ~.1f MiB | flat once the cap (~b msgs) is reached |~n",
              [Secs, FullAfter, R0 / 1048576, RFull / 1048576, RMax / 1048576, Cap]),
    io:format("| outage: published / dropped (counted) / written after | ~b / ~b / ~b | |~n", [Published, Dropped, WAfter]),
    io:format("| outage: erlang:memory(total) (the NIF allocates through enif_alloc) start / full / max | ~.1f / ~.1f / ~.1f MiB | flat once the cap is reached |~n",
              [M0 / 1048576, MFull / 1048576, MMax / 1048576]),
    io:format("| outage: memory per buffered message | ~b bytes | |~n", [BPM]),
    Line = io_lib:format(
        "{\"bench\":\"outage\",\"unix_ms\":~b,\"outage_secs\":~b,\"rss_start\":~b,\"rss_full\":~b,"
        "\"rss_max\":~b,\"mem_start\":~b,\"mem_full\":~b,\"mem_max\":~b,\"full_after_s\":~b,\"cap_msgs\":~b,\"bytes_per_msg\":~b,\"published\":~b,"
        "\"dropped\":~b,\"written_after\":~b}~n",
        [erlang:system_time(millisecond), Secs, R0, RFull, RMax, M0, MFull, MMax, FullAfter, Cap, BPM, Published, Dropped, WAfter]),
    File = "bench-results/outage.jsonl",
    ok = filelib:ensure_dir(File),
    ok = file:write_file(File, Line, [append]),
    io:format("results appended to ~s~n", [File]),
    ok.

run_outage_large() ->
    ok = ?D:start(#{mode => '5.10'}),
    [Tar] = filelib:wildcard(package_dir() ++ "/emqx_offline_cassandra-*.tar.gz"),
    {ok, NV} = ?D:install_plugin(Tar),
    Config = ?D:plugin_config(NV),
    Secs = list_to_integer(os:getenv("BENCH_OUTAGE_LARGE_SECS", "60")),
    #{mem_start := M0, mem_max := MMax, rss_start := R0, rss_max := RMax, max_bytes := MaxBytes,
      buffered_bytes_max := BMax, full_after_s := FullAfter, dropped := Dropped, published := Published,
      written_after := WAfter} = outage_large(NV, Config, Secs),
    io:format("~nThe plugin in the EMQX double through a Cassandra outage, 1 MB payloads~n"),
    io:format("| figure | value | target |~n|---|---|---|~n"),
    io:format("| outage ~b s at 20 x 1 MB/s: erlang:memory(total) growth, max | ~.1f MiB | <= buffer_max_size (~b MiB) + 64 MiB |~n",
              [Secs, (MMax - M0) / 1048576, MaxBytes div 1048576]),
    io:format("| outage: VM RSS start / max | ~.1f / ~.1f MiB | |~n", [R0 / 1048576, RMax / 1048576]),
    io:format("| outage: buffered_bytes max (full after ~b s) | ~.1f MiB | <= ~b MiB |~n",
              [FullAfter, BMax / 1048576, MaxBytes div 1048576]),
    io:format("| outage: published / dropped (counted) / written after | ~b / ~b / ~b | |~n", [Published, Dropped, WAfter]),
    Line = io_lib:format(
        "{\"bench\":\"outage_large\",\"unix_ms\":~b,\"outage_secs\":~b,\"payload_bytes\":1048576,\"max_bytes\":~b,"
        "\"mem_start\":~b,\"mem_max\":~b,\"rss_start\":~b,\"rss_max\":~b,\"buffered_bytes_max\":~b,"
        "\"full_after_s\":~b,\"published\":~b,\"dropped\":~b,\"written_after\":~b}~n",
        [erlang:system_time(millisecond), Secs, MaxBytes, M0, MMax, R0, RMax, BMax, FullAfter, Published, Dropped, WAfter]),
    File = "bench-results/outage_large.jsonl",
    ok = filelib:ensure_dir(File),
    ok = file:write_file(File, Line, [append]),
    io:format("results appended to ~s~n", [File]),
    ok.

%% Stored messages/s through message.publish: N publishes as fast as one
%% process can make them, until Cassandra confirmed them all.
hook_rate(Topic, N) ->
    Payload = binary:copy(<<"x">>, 100),
    Msgs = [emqx_message:make(<<"bench">>, 1, Topic, Payload) || _ <- lists:seq(1, N)],
    {ok, #{written := W0}} = emqx_offline_cassandra_nif:stats(),
    T0 = erlang:monotonic_time(microsecond),
    [_ = emqx_hooks:run_fold('message.publish', [], M) || M <- Msgs],
    ok = emqx_offline_cassandra_test_util:wait_until(
        fun() -> {ok, #{written := W}} = emqx_offline_cassandra_nif:stats(), W - W0 >= N end, 300000),
    round(N * 1000000 / (erlang:monotonic_time(microsecond) - T0)).

%% The baseline: the plugin's publish hook swapped for one that awaits one
%% INSERT per message (the design of one-write-per-publish plugins).
sync_hook_times(Topic, N) ->
    ok = emqx_hooks:del('message.publish', {emqx_offline_cassandra_hooks, on_message_publish}),
    ok = emqx_hooks:put('message.publish', {?MODULE, sync_insert, []}, 10),
    try
        hook_times(Topic, N)
    after
        emqx_hooks:del('message.publish', {?MODULE, sync_insert}),
        emqx_hooks:put('message.publish', {emqx_offline_cassandra_hooks, on_message_publish, []}, 10)
    end.

sync_insert(Msg) ->
    Topic = emqx_message:topic(Msg),
    <<Id:128>> = emqx_message:id(Msg),
    MsgId = list_to_binary(io_lib:format("~32.16.0B", [Id])),
    Ref = make_ref(),
    ok = emqx_offline_cassandra_nif:nif_insert_awaited(self(), Ref, Topic, MsgId, emqx_message:payload(Msg)),
    receive
        {offline_cassandra, Ref, {ok, _}} -> {ok, Msg}
    after 10000 -> error(insert_timeout)
    end.

%% Cassandra away (a TCP proxy cut) for Secs while 1,000 msg/s are published
%% through the hook: the VM's resident memory grows with the buffer and stops
%% when the buffer reaches its cap; drops are counted; all that fit is written
%% after.
outage_rss(NV, Config, Secs) ->
    [Host, Port] = string:split(os:getenv("CASSANDRA_NODE", "127.0.0.1:9042"), ":"),
    {ok, Proxy} = emqx_offline_cassandra_tcp_proxy:start(list_to_integer(Port)),
    Addr = iolist_to_binary([Host, ":", integer_to_list(emqx_offline_cassandra_tcp_proxy:port(Proxy))]),
    Cap = 100000,
    %% The memory buffer's bound is what this measures: the disk buffer stays off.
    persistent_term:put({emqx_double, plugin_config, NV},
                        Config#{<<"servers">> => Addr, <<"buffer_capacity">> => Cap,
                                <<"buffer_mode">> => <<"memory">>}),
    ok = ?D:start_plugin(NV),
    try
        ok = emqx_offline_cassandra_test_util:wait_until(fun() -> ?D:health(NV) =:= ok end, 30000),
        Topic = iolist_to_binary(["t/bench/outage/", integer_to_list(erlang:system_time(millisecond))]),
        Pub = spawn_link(fun() -> publish_steadily(Topic, 0) end),
        timer:sleep(5000),
        erlang:garbage_collect(),
        Rss0 = rss(),
        Mem0 = erlang:memory(total),
        {ok, #{written := W0}} = emqx_offline_cassandra_nif:stats(),
        ok = emqx_offline_cassandra_tcp_proxy:cut(Proxy),
        Samples = [begin
                       timer:sleep(1000),
                       {ok, S} = emqx_offline_cassandra_nif:stats(),
                       {rss(), maps:get(buffered, S), erlang:memory(total)}
                   end
                   || _ <- lists:seq(1, Secs)],
        Pub ! {stop, self()},
        Published = receive {published, P} -> P after 10000 -> error(publisher_stuck) end,
        {ok, #{dropped := Dropped, buffered := Buffered}} = emqx_offline_cassandra_nif:stats(),
        ok = emqx_offline_cassandra_tcp_proxy:restore(Proxy),
        ok = emqx_offline_cassandra_test_util:wait_until(fun() ->
            {ok, S} = emqx_offline_cassandra_nif:stats(), maps:get(buffered, S) + maps:get(in_flight, S) =:= 0 end, 300000),
        {ok, #{written := W1, failed := Failed}} = emqx_offline_cassandra_nif:stats(),
        0 = Failed,
        RssMax = lists:max([R || {R, _, _} <- Samples]),
        MemMax = lists:max([M || {_, _, M} <- Samples]),
        {FullAfter, RssFull, MemFull} =
            case [{I, R, M} || {I, {R, B, M}} <- lists:enumerate(Samples), B >= Cap] of
                [] -> {Secs, RssMax, MemMax};
                [F | _] -> F
            end,
        #{secs => Secs, rss_start => Rss0, rss_full => RssFull, rss_max => RssMax, cap => Cap,
          mem_start => Mem0, mem_full => MemFull, mem_max => MemMax,
          full_after_s => FullAfter,
          bytes_per_msg => (MemFull - Mem0) div max(1, min(Buffered, Cap)),
          dropped => Dropped, published => Published, written_after => W1 - W0}
    after
        ?D:stop_plugin(NV),
        emqx_offline_cassandra_tcp_proxy:stop(Proxy)
    end.

%% Cassandra away for Secs while 20 one-megabyte messages a second are
%% published through the hook: the byte bound fills long before
%% buffer_capacity (100,000), and the memory stops growing there. What fit
%% is written after, then the topic is purged. The bound is 64MB, not the
%% shipped 256MB: writing 256 MB of 1.33 MB rows at once after the outage
%% ran the test node (1 GB heap, shared with the other runs) out of memory.
outage_large(NV, Config, Secs) ->
    [Host, Port] = string:split(os:getenv("CASSANDRA_NODE", "127.0.0.1:9042"), ":"),
    {ok, Proxy} = emqx_offline_cassandra_tcp_proxy:start(list_to_integer(Port)),
    Addr = iolist_to_binary([Host, ":", integer_to_list(emqx_offline_cassandra_tcp_proxy:port(Proxy))]),
    MaxSize = list_to_binary(os:getenv("BENCH_BUFFER_MAX_SIZE", "64MB")),
    persistent_term:put({emqx_double, plugin_config, NV},
                        Config#{<<"servers">> => Addr, <<"buffer_max_size">> => MaxSize,
                                <<"buffer_mode">> => <<"memory">>}),
    ok = ?D:start_plugin(NV),
    Topic = iolist_to_binary(["t/bench/outage_large/", integer_to_list(erlang:system_time(millisecond))]),
    try
        ok = emqx_offline_cassandra_test_util:wait_until(fun() -> ?D:health(NV) =:= ok end, 30000),
        {ok, #{written := W0, buffer_max_bytes := MaxBytes}} = emqx_offline_cassandra_nif:stats(),
        erlang:garbage_collect(),
        Rss0 = rss(),
        Mem0 = erlang:memory(total),
        ok = emqx_offline_cassandra_tcp_proxy:cut(Proxy),
        %% Not valid UTF-8: stored as base64, 4/3 of it (the largest rows).
        Payload = crypto:strong_rand_bytes(1048576),
        Pub = spawn_link(fun() -> publish_large(Topic, Payload, 0) end),
        Samples = [begin
                       timer:sleep(1000),
                       {ok, S} = emqx_offline_cassandra_nif:stats(),
                       {rss(), maps:get(buffered_bytes, S), erlang:memory(total)}
                   end
                   || _ <- lists:seq(1, Secs)],
        Pub ! {stop, self()},
        Published = receive {published, P} -> P after 10000 -> error(publisher_stuck) end,
        {ok, #{dropped := Dropped}} = emqx_offline_cassandra_nif:stats(),
        ok = emqx_offline_cassandra_tcp_proxy:restore(Proxy),
        ok = emqx_offline_cassandra_test_util:wait_until(fun() ->
            {ok, S} = emqx_offline_cassandra_nif:stats(), maps:get(buffered, S) + maps:get(in_flight, S) =:= 0 end, 300000),
        {ok, #{written := W1, failed := Failed}} = emqx_offline_cassandra_nif:stats(),
        0 = Failed,
        BMax = lists:max([B || {_, B, _} <- Samples]),
        FullAfter =
            case [I || {I, {_, B, _}} <- lists:enumerate(Samples), B + 2 * 1048576 > MaxBytes] of
                [] -> Secs;
                [F | _] -> F
            end,
        #{mem_start => Mem0, mem_max => lists:max([M || {_, _, M} <- Samples]),
          rss_start => Rss0, rss_max => lists:max([R || {R, _, _} <- Samples]),
          max_bytes => MaxBytes, buffered_bytes_max => BMax, full_after_s => FullAfter,
          dropped => Dropped, published => Published, written_after => W1 - W0}
    after
        _ = (catch emqx_offline_cassandra_nif:purge(Topic, 60000)),
        ?D:stop_plugin(NV),
        emqx_offline_cassandra_tcp_proxy:stop(Proxy)
    end.

%% 20 publishes of Payload a second, one every 50 ms.
publish_large(Topic, Payload, N) ->
    receive
        {stop, From} -> From ! {published, N}
    after 50 ->
        _ = emqx_hooks:run_fold('message.publish', [], emqx_message:make(<<"bench">>, 1, Topic, Payload)),
        publish_large(Topic, Payload, N + 1)
    end.

%% 1,000 publishes a second, in bursts of 10 every 10 ms.
publish_steadily(Topic, N) ->
    receive
        {stop, From} -> From ! {published, N}
    after 10 ->
        Payload = binary:copy(<<"x">>, 100),
        [_ = emqx_hooks:run_fold('message.publish', [], emqx_message:make(<<"bench">>, 1, Topic, Payload))
         || _ <- lists:seq(1, 10)],
        publish_steadily(Topic, N + 10)
    end.

rss() ->
    {ok, Status} = file:read_file("/proc/self/status"),
    {match, [Kb]} = re:run(Status, "VmRSS:\\s+(\\d+) kB", [{capture, all_but_first, binary}]),
    binary_to_integer(Kb) * 1024.

%%--------------------------------------------------------------------
%% CPU per stored + acked message (issue 17)
%%--------------------------------------------------------------------

%% For each rate of BENCH_CPU_RATES (500,5000): BENCH_CPU_IDLE_SECS (10) of
%% publishes on topics outside `topics' (t/#), which the hooks see and store
%% nothing of, then BENCH_CPU_SECS (25) on stored topics; every message is
%% acked (message.acked) 50 ms after its publish, as a subscriber would. The
%% figures per message are the stored run's CPU minus the other's per second
%% (so the publisher's own work and an idle Cassandra cancel out), medians of
%% BENCH_CPU_ROUNDS (2) such pairs.
run_cpu() ->
    NV = start_bench_plugin(),
    Rates = [list_to_integer(R) || R <- string:lexemes(os:getenv("BENCH_CPU_RATES", "500,5000"), ",")],
    Secs = list_to_integer(os:getenv("BENCH_CPU_SECS", "25")),
    IdleSecs = list_to_integer(os:getenv("BENCH_CPU_IDLE_SECS", "10")),
    Cassandra = cassandra_pid(os:getenv("CASSANDRA_NODE", "127.0.0.1:9042")),
    Run = integer_to_binary(erlang:system_time(millisecond)),
    Rounds = list_to_integer(os:getenv("BENCH_CPU_ROUNDS", "2")),
    Results = [median_of([cpu_at(Rate, Secs, IdleSecs, Cassandra, <<Run/binary, "/", (integer_to_binary(I))/binary>>)
                          || I <- lists:seq(1, Rounds)])
               || Rate <- Rates],
    ok = ?D:stop_plugin(NV),
    io:format("~nCPU per stored + acked message of the plugin in the EMQX double (storing minus storing nothing)~n"),
    io:format("| msg/s | VM us/msg | BEAM schedulers | dirty schedulers | NIF runtime threads | other threads "
              "| Cassandra us/msg | hooks us/msg (nothing: us) | rows/request | target |~n"
              "|---|---|---|---|---|---|---|---|---|---|~n"),
    [io:format("| ~b | ~.1f | ~.1f | ~.1f | ~.1f | ~.1f | ~.1f | ~.1f (~.1f) | ~.1f | <= ~b us |~n",
               [maps:get(rate, R), maps:get(vm_us, R), maps:get(schedulers_us, R), maps:get(dirty_us, R),
                maps:get(nif_us, R), maps:get(other_us, R), maps:get(cassandra_us, R), maps:get(hook_us, R),
                maps:get(nothing_hook_us, R), maps:get(rows_per_request, R), target_us(maps:get(rate, R))])
     || R <- Results],
    File = "bench-results/plugin_cpu.jsonl",
    ok = filelib:ensure_dir(File),
    [ok = file:write_file(File, [json_line(R#{bench => plugin_cpu, unix_ms => binary_to_integer(Run)}), "\n"], [append])
     || R <- Results],
    io:format("results appended to ~s~n", [File]),
    ok.

%% Each figure's median over the rounds (alternating phases on a busy
%% machine: one round's figure can be off by tens of us).
median_of([First | _] = Rounds) ->
    maps:map(
        fun
            (K, V) when is_float(V) ->
                Sorted = lists:sort([maps:get(K, R) || R <- Rounds]),
                N = length(Sorted),
                case N rem 2 of
                    1 -> lists:nth(N div 2 + 1, Sorted);
                    0 -> (lists:nth(N div 2, Sorted) + lists:nth(N div 2 + 1, Sorted)) / 2
                end;
            (_K, V) ->
                V
        end,
        First
    ).

target_us(5000) -> 15;
target_us(_) -> 30.

cpu_at(Rate, Secs, IdleSecs, Cassandra, Run) ->
    Base = <<"bench/cpu/", Run/binary, "/", (integer_to_binary(Rate))/binary, "/">>,
    Stored = list_to_tuple([<<"t/", Base/binary, (integer_to_binary(I))/binary>> || I <- lists:seq(0, 99)]),
    Skipped = list_to_tuple([<<"n/", Base/binary, (integer_to_binary(I))/binary>> || I <- lists:seq(0, 99)]),
    %% Warm-up: every stored topic indexed before the window.
    _ = paced(Stored, 100, 1, Cassandra),
    Idle = paced(Skipped, Rate, IdleSecs, Cassandra),
    Busy = paced(Stored, Rate, Secs, Cassandra),
    #{n := N, wall := Wall} = Busy,
    Net = fun(K) -> (maps:get(K, Busy) - maps:get(K, Idle) / maps:get(wall, Idle) * Wall) * 1.0e6 / N end,
    #{rate => Rate, messages => N, secs => Wall,
      vm_us => Net(process), schedulers_us => Net(schedulers), dirty_us => Net(dirty), nif_us => Net(nif),
      other_us => Net(other), cassandra_us => Net(cassandra),
      hook_us => maps:get(hook_s, Busy) * 1.0e6 / N,
      nothing_hook_us => maps:get(hook_s, Idle) * 1.0e6 / maps:get(n, Idle),
      nothing_vm_us => maps:get(process, Idle) * 1.0e6 / maps:get(n, Idle),
      idle_nif_pct => 100 * maps:get(nif, Idle) / maps:get(wall, Idle),
      rows_per_request => maps:get(written, Busy) / max(1, maps:get(batches, Busy)),
      cassandra_found => Cassandra =/= undefined}.

%% Publishes Rate msg/s on Topics for Secs from one process, acks each 50 ms
%% later, waits until the store has written what it took, and returns the CPU
%% (seconds) used meanwhile by thread group, the time inside the hooks, and
%% the store's written / batches.
paced(Topics, Rate, Secs, Cassandra) ->
    Total = Rate * Secs,
    {ok, #{written := W0, batches := B0}} = emqx_offline_cassandra_nif:stats(),
    Before = cpu_sample(Cassandra),
    Parent = self(),
    Pid = spawn_opt(
        fun() -> Parent ! {self(), publish_loop(Topics, Rate, Total)} end,
        [{min_heap_size, 1024 * 1024}]
    ),
    HookNs = receive {Pid, H} -> H end,
    ok = emqx_offline_cassandra_test_util:wait_until(
        fun() ->
            {ok, #{buffered := Buf, in_flight := InFlight}} = emqx_offline_cassandra_nif:stats(),
            Buf + InFlight =:= 0
        end,
        300000
    ),
    After = cpu_sample(Cassandra),
    {ok, #{written := W1, batches := B1}} = emqx_offline_cassandra_nif:stats(),
    Delta = maps:map(fun(K, V) -> V - maps:get(K, Before) end, After),
    Delta#{n => Total, hook_s => HookNs / 1.0e9, written => W1 - W0, batches => B1 - B0}.

%% A hook call longer than this was descheduled (the machine is shared): it
%% counts as this much.
-define(HOOK_CALL_CAP_NS, 50000).

publish_loop(Topics, Rate, Total) ->
    Payload = binary:copy(<<"x">>, 128),
    T0 = erlang:monotonic_time(microsecond),
    publish_loop(Topics, Rate, Total, Payload, T0, 0, queue:new(), 0).

publish_loop(Topics, Rate, Total, Payload, T0, Sent, Acks, HookNs) ->
    Now = erlang:monotonic_time(microsecond),
    Due = min(Total, (Now - T0) * Rate div 1000000),
    {Sent1, Acks1, HookNs1} = publish_due(Topics, Payload, Now, Sent, Due, Acks, HookNs),
    {Acks2, HookNs2} = ack_due(Now, Acks1, HookNs1),
    case Sent1 >= Total andalso queue:is_empty(Acks2) of
        true ->
            HookNs2;
        false ->
            timer:sleep(1),
            publish_loop(Topics, Rate, Total, Payload, T0, Sent1, Acks2, HookNs2)
    end.

publish_due(_Topics, _Payload, _Now, Sent, Due, Acks, HookNs) when Sent >= Due ->
    {Sent, Acks, HookNs};
publish_due(Topics, Payload, Now, Sent, Due, Acks, HookNs) ->
    Topic = element(Sent rem tuple_size(Topics) + 1, Topics),
    Msg = emqx_message:make(<<"bench">>, 1, Topic, Payload),
    T = erlang:monotonic_time(nanosecond),
    Published = emqx_hooks:run_fold('message.publish', [], Msg),
    Ns = min(?HOOK_CALL_CAP_NS, erlang:monotonic_time(nanosecond) - T),
    publish_due(Topics, Payload, Now, Sent + 1, Due, queue:in({Now + 50000, Published}, Acks), HookNs + Ns).

ack_due(Now, Acks, HookNs) ->
    case queue:peek(Acks) of
        {value, {At, Msg}} when At =< Now ->
            T = erlang:monotonic_time(nanosecond),
            ok = emqx_hooks:run('message.acked', [#{clientid => <<"bench-subscriber">>}, Msg]),
            Ns = min(?HOOK_CALL_CAP_NS, erlang:monotonic_time(nanosecond) - T),
            ack_due(Now, queue:drop(Acks), HookNs + Ns);
        _ ->
            {Acks, HookNs}
    end.

%% The clock and the CPU seconds so far: the whole VM (finished threads included), this VM's
%% threads by group, and the Cassandra process.
cpu_sample(Cassandra) ->
    Groups = lists:foldl(
        fun({Name, Cpu}, Acc) -> maps:update_with(thread_group(Name), fun(C) -> C + Cpu end, Cpu, Acc) end,
        #{schedulers => 0.0, dirty => 0.0, nif => 0.0, other => 0.0},
        threads()
    ),
    Groups#{wall => erlang:monotonic_time(microsecond) / 1.0e6,
            process => process_cpu("self"),
            cassandra => case Cassandra of undefined -> 0.0; Pid -> process_cpu(Pid) end}.

%% BEAM threads are named 1_scheduler, 2_dirty_cpu_sch(eduler), 3_dirty_io_sche(duler)
%% (15 characters at most), the NIF's runtime offline_cassandra.
thread_group(<<"offline_cassand", _/binary>>) -> nif;
thread_group(Name) ->
    case re:run(Name, "^[0-9]+_(scheduler|dirty)", [{capture, all_but_first, binary}]) of
        {match, [<<"scheduler">>]} -> schedulers;
        {match, [<<"dirty">>]} -> dirty;
        nomatch -> other
    end.

threads() ->
    {ok, Tids} = file:list_dir("/proc/self/task"),
    lists:filtermap(
        fun(Tid) ->
            Dir = "/proc/self/task/" ++ Tid,
            case {file:read_file(Dir ++ "/comm"), file:read_file(Dir ++ "/schedstat")} of
                {{ok, Comm}, {ok, Sched}} ->
                    [Ns | _] = binary:split(Sched, <<" ">>),
                    {true, {string:trim(Comm), binary_to_integer(Ns) / 1.0e9}};
                _ ->
                    false
            end
        end,
        Tids
    ).

%% utime + stime of /proc/PID/stat, in seconds (USER_HZ 100).
process_cpu(Pid) ->
    case file:read_file("/proc/" ++ Pid ++ "/stat") of
        {ok, Stat} ->
            [_, Rest] = string:split(Stat, ")", trailing),
            Fields = string:lexemes(Rest, " "),
            (binary_to_integer(lists:nth(12, Fields)) + binary_to_integer(lists:nth(13, Fields))) / 100;
        _ ->
            0.0
    end.

%% The process listening on the CQL port (BENCH_CASSANDRA_PID if set): the
%% socket's inode from /proc/net/tcp, then the process holding it.
cassandra_pid(Node) ->
    case os:getenv("BENCH_CASSANDRA_PID") of
        false ->
            [_, PortS] = string:split(Node, ":", trailing),
            Port = list_to_integer(PortS),
            Inodes = [Inode || Table <- ["/proc/net/tcp", "/proc/net/tcp6"], Inode <- listening(Table, Port)],
            {ok, Pids} = file:list_dir("/proc"),
            Found = [P || P <- Pids, lists:all(fun(C) -> C >= $0 andalso C =< $9 end, P), holds(P, Inodes)],
            case Found of
                [Pid | _] -> Pid;
                [] -> io:format("no Cassandra process found for ~s: its CPU is not measured~n", [Node]), undefined
            end;
        Pid ->
            Pid
    end.

listening(Table, Port) ->
    case file:read_file(Table) of
        {ok, Text} ->
            [Inode || Line <- tl(string:lexemes(Text, "\n")),
                      [_, Local, _, "0A" | Rest] <- [string:lexemes(binary_to_list(Line), " ")],
                      length(Rest) >= 6,
                      list_to_integer(lists:last(string:split(Local, ":", trailing)), 16) =:= Port,
                      Inode <- [lists:nth(6, Rest)]];
        _ ->
            []
    end.

holds(Pid, Inodes) ->
    case file:list_dir("/proc/" ++ Pid ++ "/fd") of
        {ok, Fds} ->
            lists:any(
                fun(Fd) ->
                    case file:read_link("/proc/" ++ Pid ++ "/fd/" ++ Fd) of
                        {ok, "socket:[" ++ Rest} -> lists:member(lists:droplast(Rest), Inodes);
                        _ -> false
                    end
                end,
                Fds
            );
        _ ->
            false
    end.

json_line(Map) ->
    Fields = [io_lib:format("\"~s\":~s", [K, json_value(V)]) || {K, V} <- lists:sort(maps:to_list(Map))],
    ["{", lists:join(",", Fields), "}"].

json_value(V) when is_float(V) -> io_lib:format("~.3f", [V]);
json_value(V) when is_integer(V) -> integer_to_list(V);
json_value(V) when is_boolean(V) -> atom_to_list(V);
json_value(V) when is_atom(V) -> ["\"", atom_to_list(V), "\""].
