%%--------------------------------------------------------------------
%% Benchmark of the NIF from Erlang (scripts/bench.sh runs it after the
%% core's own benchmark, in the same run, and passes the core's ceiling).
%%
%% Prints: wall time per store/1 call (p50, p99, max) on a normal
%% scheduler, and end-to-end messages/s from Erlang into Cassandra against
%% the core's ceiling (env CORE_CEILING_MSG_S). Appends a JSON line to
%% bench-results/nif.jsonl.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_nif_bench).

-export([run/0, run_in_big_heap/0]).

-define(NIF, emqx_offline_cassandra_nif).

%% Runs in a process with a large young heap, so garbage collection of the
%% benchmark's own message lists does not land inside the timed calls.
run() ->
    {Pid, Ref} = spawn_monitor(?MODULE, run_in_big_heap, []),
    receive
        {'DOWN', Ref, process, Pid, normal} -> ok;
        {'DOWN', Ref, process, Pid, Reason} -> {error, Reason}
    end.

run_in_big_heap() ->
    process_flag(min_heap_size, 16 * 1024 * 1024),
    ok = measure().

measure() ->
    Isolated = isolated_call_times(),
    Node = list_to_binary(os:getenv("CASSANDRA_NODE", "127.0.0.1:9042")),
    Total = list_to_integer(os:getenv("BENCH_MESSAGES", "50000")),
    Topics = list_to_integer(os:getenv("BENCH_TOPICS", "100")),
    PayloadSize = list_to_integer(os:getenv("BENCH_PAYLOAD", "100")),
    Ceiling = list_to_float_or_undefined(os:getenv("CORE_CEILING_MSG_S")),
    ok = ?NIF:start(#{
        <<"servers">> => Node,
        <<"username">> => <<"root">>,
        <<"password">> => <<"public">>,
        <<"buffer_capacity">> => Total * 2,
        <<"max_in_flight">> => list_to_integer(os:getenv("BENCH_MAX_IN_FLIGHT", "64")),
        <<"worker_threads">> => list_to_integer(os:getenv("BENCH_WORKER_THREADS", "2"))
    }),
    ok = wait(fun() -> ?NIF:status() =:= connected end, 30000),
    Run = erlang:system_time(millisecond),
    TopicNames = list_to_tuple([iolist_to_binary(io_lib:format("bench/nif/~b/~b", [Run, I])) || I <- lists:seq(0, Topics - 1)]),
    Payload = binary:copy(<<"x">>, PayloadSize),
    Msgs = [message(element(1 + (I rem Topics), TopicNames), Payload) || I <- lists:seq(1, Total)],
    %% warm up
    %% Warm up (connections, both JITs) with a run of the same shape.
    Warm = list_to_integer(os:getenv("BENCH_WARMUP", "20000")),
    [ok = ?NIF:store(message(element(1 + (I rem Topics), TopicNames), Payload)) || I <- lists:seq(1, Warm)],
    ok = wait(fun() -> written() >= Warm end, 60000),

    {ok, #{written := Before, batches := BatchesBefore}} = ?NIF:stats(),
    T0 = erlang:monotonic_time(nanosecond),
    CallNs = [timed_store(M) || M <- Msgs],
    SubmitSecs = (erlang:monotonic_time(nanosecond) - T0) / 1.0e9,
    ok = wait(fun() -> written() >= Before + Total end, 300000),
    Elapsed = (erlang:monotonic_time(nanosecond) - T0) / 1.0e9,
    {ok, Stats} = ?NIF:stats(),
    0 = maps:get(failed, Stats),
    Rate = Total / Elapsed,
    RowsPerRequest = Total / max(1, maps:get(batches, Stats) - BatchesBefore),
    Sorted = lists:sort(CallNs),
    P50 = pct(Sorted, 0.50),
    P99 = pct(Sorted, 0.99),
    Max = lists:last(Sorted),
    Over100 = length([X || X <- Sorted, X > 100000]),
    {ok, _} = ?NIF:stop(5000),

    io:format("~nNIF from Erlang against Cassandra at ~s~n", [Node]),
    io:format("  ~b messages, ~b topics, ~b byte payloads, OTP ~s, ~b schedulers~n", [
        Total, Topics, PayloadSize, erlang:system_info(otp_release), erlang:system_info(schedulers)
    ]),
    io:format("| figure | value | budget |~n|---|---|---|~n"),
    io:format("| store/1 call p50 / p99 / max | ~.1f / ~.1f / ~.1f us | p99 <= 20 us, max < 100 us |~n", [
        P50 / 1000, P99 / 1000, Max / 1000
    ]),
    io:format("| store/1 calls over 100 us | ~b of ~b | 0 |~n", [Over100, Total]),
    {IP50, IP99, IMax, IOver} = Isolated,
    io:format("| same, nothing draining (NIF cost alone) p50 / p99 / max | ~.1f / ~.1f / ~.1f us, ~b over 100 us | |~n", [
        IP50 / 1000, IP99 / 1000, IMax / 1000, IOver
    ]),
    io:format("| end to end, Erlang -> Cassandra | ~b msg/s | |~n", [round(Rate)]),
    io:format("| rows per request | ~.1f | |~n", [RowsPerRequest]),
    io:format("| time to submit all / until all written | ~.3f s / ~.3f s | |~n", [SubmitSecs, Elapsed]),
    Ratio =
        case Ceiling of
            undefined ->
                io:format("| core ceiling (same run) | not given (CORE_CEILING_MSG_S) | |~n"),
                null;
            C ->
                R = Rate / C,
                io:format("| core ceiling (same run) | ~b msg/s | |~n", [round(C)]),
                io:format("| ratio end to end / ceiling | ~.2fx | >= 0.9x |~n", [R]),
                R
        end,
    Line = io_lib:format(
        "{\"bench\":\"nif_store\",\"unix_ms\":~b,\"messages\":~b,\"topics\":~b,\"payload_bytes\":~b,"
        "\"call_ns_p50\":~b,\"call_ns_p99\":~b,\"call_ns_max\":~b,\"calls_over_100us\":~b,"
        "\"end_to_end_msg_s\":~b,\"core_ceiling_msg_s\":~s,\"ratio\":~s}~n",
        [Run, Total, Topics, PayloadSize, P50, P99, Max, Over100, round(Rate), num(Ceiling), num(Ratio)]
    ),
    File = os:getenv("BENCH_RESULTS", "bench-results/nif.jsonl"),
    ok = filelib:ensure_dir(File),
    ok = file:write_file(File, Line, [append]),
    io:format("results appended to ~s~n", [File]),
    ok.

%% Call times with the store buffering only (no node to drain to): what the NIF itself
%% costs, without the writer and Cassandra competing for the two cores.
isolated_call_times() ->
    N = 50000,
    ok = ?NIF:start(#{<<"servers">> => <<"127.0.0.1:1">>, <<"buffer_capacity">> => N}),
    Payload = binary:copy(<<"x">>, 100),
    Msgs = [message(<<"bench/isolated">>, Payload) || _ <- lists:seq(1, N)],
    Sorted = lists:sort([timed_store(M) || M <- Msgs]),
    {ok, _} = ?NIF:stop(0),
    {pct(Sorted, 0.50), pct(Sorted, 0.99), lists:last(Sorted), length([X || X <- Sorted, X > 100000])}.

timed_store(Msg) ->
    T = erlang:monotonic_time(nanosecond),
    ok = ?NIF:store(Msg),
    erlang:monotonic_time(nanosecond) - T.

message(Topic, Payload) ->
    #{
        topic => Topic,
        msgid => guid(),
        payload => Payload,
        sender => <<"bench">>,
        qos => 1,
        arrived => erlang:system_time(millisecond),
        ttl => 3600
    }.

guid() ->
    Us = erlang:system_time(microsecond),
    Seq = erlang:unique_integer([positive, monotonic]) band 16#FFFF,
    <<Us:64, 16#BE0C11:48, Seq:16>>.

written() ->
    {ok, #{written := W}} = ?NIF:stats(),
    W.

pct(Sorted, P) ->
    lists:nth(max(1, round(length(Sorted) * P)), Sorted).

wait(Pred, Ms) ->
    emqx_offline_cassandra_test_util:wait_until(Pred, Ms).

list_to_float_or_undefined(false) -> undefined;
list_to_float_or_undefined("") -> undefined;
list_to_float_or_undefined(S) -> float(list_to_integer(hd(string:split(S, ".")))).

num(undefined) -> "null";
num(null) -> "null";
num(F) when is_float(F) -> io_lib:format("~.2f", [F]);
num(I) when is_integer(I) -> integer_to_list(I).
