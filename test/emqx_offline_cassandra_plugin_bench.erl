%%--------------------------------------------------------------------
%% Benchmark of the packaged plugin in the EMQX double (scripts/bench.sh):
%% the message.publish hook's wall time as a publisher's process sees it,
%% and replay latency from subscribe to the last {deliver, ...} for 1,000
%% stored messages on one topic and 10 on each of 100 topics (wildcard).
%% Appends a JSON line to bench-results/plugin.jsonl.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_plugin_bench).

-export([run/0]).

-define(D, emqx_double).

run() ->
    ok = ?D:start(#{mode => '5.10'}),
    [Tar] = filelib:wildcard("_build/plugin/emqx_offline_cassandra-*.tar.gz"),
    {ok, NV} = ?D:install_plugin(Tar),
    Config = (?D:plugin_config(NV))#{
        <<"servers">> => list_to_binary(os:getenv("CASSANDRA_NODE", "127.0.0.1:9042")),
        <<"max_returned_count">> => 0
    },
    persistent_term:put({emqx_double, plugin_config, NV}, Config),
    ok = ?D:start_plugin(NV),
    ok = emqx_offline_cassandra_test_util:wait_until(fun() -> ?D:health(NV) =:= ok end, 30000),
    Run = integer_to_binary(erlang:system_time(millisecond)),
    {P50, P99, Max, N} = hook_times(<<"t/bench/", Run/binary, "/hook">>, 10000),
    Replay1000 = replay_ms(<<"t/bench/", Run/binary, "/one">>, [<<>>], 1000),
    Topics = [<<"/", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 100)],
    Wildcard = replay_ms(<<"t/bench/", Run/binary, "/many">>, Topics, 10),
    ok = ?D:stop_plugin(NV),
    io:format("~nThe plugin in the EMQX double against Cassandra~n"),
    io:format("| figure | value | target |~n|---|---|---|~n"),
    io:format("| message.publish hook, ~b QoS 1 calls: p50 / p99 / max | ~.1f / ~.1f / ~.1f us | p99 <= 20 us |~n",
              [N, P50 / 1000, P99 / 1000, Max / 1000]),
    io:format("| replay of 1,000 stored messages: subscribe -> last deliver | ~b ms | <= 50 ms |~n", [Replay1000]),
    io:format("| wildcard replay, 100 topics x 10: subscribe -> last deliver | ~b ms | <= 150 ms |~n", [Wildcard]),
    Line = io_lib:format(
        "{\"bench\":\"plugin\",\"unix_ms\":~s,\"hook_ns_p50\":~b,\"hook_ns_p99\":~b,\"hook_ns_max\":~b,"
        "\"replay_1000_ms\":~b,\"wildcard_100x10_ms\":~b}~n",
        [Run, P50, P99, Max, Replay1000, Wildcard]
    ),
    File = "bench-results/plugin.jsonl",
    ok = filelib:ensure_dir(File),
    ok = file:write_file(File, Line, [append]),
    io:format("results appended to ~s~n", [File]),
    ok.

%% The fold EMQX runs for every publish, timed around the whole chain, in a
%% process with a large heap so that the benchmark's own garbage collection
%% does not land inside the timed calls.
hook_times(Topic, N) ->
    Parent = self(),
    Pid = spawn_opt(fun() -> Parent ! {self(), hook_times_(Topic, N)} end, [{min_heap_size, 16 * 1024 * 1024}]),
    receive
        {Pid, Result} -> Result
    end.

hook_times_(Topic, N) ->
    Payload = binary:copy(<<"x">>, 100),
    Msgs = [emqx_message:make(<<"bench">>, 1, Topic, Payload) || _ <- lists:seq(1, N)],
    Times = lists:sort([
        begin
            T = erlang:monotonic_time(nanosecond),
            _ = emqx_hooks:run_fold('message.publish', [], M),
            erlang:monotonic_time(nanosecond) - T
        end
     || M <- Msgs
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
    Sub = ?D:connect(<<"bench-subscriber">>),
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

pct(Sorted, P) ->
    lists:nth(max(1, round(length(Sorted) * P)), Sorted).
