%%--------------------------------------------------------------------
%% Benchmark: paced replay of a 100,000-message backlog (BENCH_REPLAY_N)
%% to one QoS 1 client (inflight 32, queue 1,000) that acks as it
%% receives, in delivered-and-acked messages per second, against the EMQX
%% double's live delivery of as many messages to the same kind of client
%% (all routed at once, its queue large enough to hold them: the client's
%% and session's own pace, the ceiling a replay can reach), with the plugin
%% on (live messages stored and deleted on ack, as in production) and off.
%% Target: the replay at least half the live rate. Once on the common path (5.x) and
%% once through extsub (6.1.1+). Each figure is the median of BENCH_REPLAY_RUNS runs
%% (default 3; a run takes seconds, and one run's figures swing by 2x on a shared machine).
%%
%% Then a wildcard over BENCH_WILDCARD_TOPICS topics (default 10,000, the
%% default max_wildcard_topics) with 5 rows each, against one topic with
%% as many rows, in the same run (5.x path): what merging that many topics
%% costs.
%%
%% Appends a JSON line to bench-results/replay.jsonl.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_replay_bench).

-export([run/0]).

-define(NIF, emqx_offline_cassandra_nif).
-define(D, emqx_double).

run() ->
    N = list_to_integer(os:getenv("BENCH_REPLAY_N", "100000")),
    Runs = list_to_integer(os:getenv("BENCH_REPLAY_RUNS", "3")),
    Results = [{Path, measure(Path, N, Runs)} || Path <- [deliver, extsub]],
    NT = list_to_integer(os:getenv("BENCH_WILDCARD_TOPICS", "10000")),
    #{wildcard := Wild, one_topic := One} = wildcard(NT, 5),
    io:format("~nreplay of a ~b-message backlog, delivered and acked, msg/s, median of ~b runs "
              "(target: replay >= 0.5 x live)~n", [N, Runs]),
    io:format("~-8s ~12s ~12s ~8s ~16s~n", ["path", "replay", "live", "ratio", "live, plugin off"]),
    [io:format("~-8s ~12b ~12b ~8.2f ~16b   replay / plugin off ~.2f~n",
               [Path, round(R), round(L), R / L, round(B), R / B])
     || {Path, #{replay := R, live := L, bare := B}} <- Results],
    io:format("~nwildcard over ~b topics x 5 rows: ~b msg/s; one topic, ~b rows: ~b msg/s; ratio ~.2f~n",
              [NT, round(Wild), NT * 5, round(One), Wild / One]),
    Line = iolist_to_binary([
        "{\"n\":", integer_to_list(N),
        ",\"wildcard_topics\":", integer_to_list(NT),
        ",\"wildcard_replay_msg_s\":", integer_to_list(round(Wild)),
        ",\"wildcard_one_topic_msg_s\":", integer_to_list(round(One)),
        [[",\"", atom_to_list(P), "_replay_msg_s\":", integer_to_list(round(R)),
          ",\"", atom_to_list(P), "_live_msg_s\":", integer_to_list(round(L)),
          ",\"", atom_to_list(P), "_live_plugin_off_msg_s\":", integer_to_list(round(B))]
         || {P, #{replay := R, live := L, bare := B}} <- Results],
        "}\n"
    ]),
    ok = filelib:ensure_dir("bench-results/replay.jsonl"),
    ok = file:write_file("bench-results/replay.jsonl", Line, [append]),
    ok.

measure(Path, N, Runs) ->
    Servers = emqx_offline_cassandra_test_util:plugin_setup(Path, #{}),
    try
        Samples = [once(Path, N) || _ <- lists:seq(1, Runs)],
        io:format("~s runs (replay / live / plugin off): ~p~n",
                  [Path, [{round(R), round(L), round(B)} || #{replay := R, live := L, bare := B} <- Samples]]),
        maps:from_list([{K, median([maps:get(K, S) || S <- Samples])} || K <- [replay, live, bare]])
    after
        emqx_offline_cassandra_test_util:plugin_cleanup(Servers)
    end.

%% The replay of NT topics x R rows through a wildcard, and of NT x R rows
%% on one topic, msg/s.
wildcard(NT, R) ->
    Servers = emqx_offline_cassandra_test_util:plugin_setup(deliver, #{}),
    try
        Base = iolist_to_binary(io_lib:format("bench/wild/~b", [erlang:system_time(millisecond)])),
        hook(<<Base/binary, "/#">>),
        Topics = [<<Base/binary, "/t/", (integer_to_binary(I))/binary>> || I <- lists:seq(1, NT)],
        One = <<Base/binary, "/one">>,
        Start = erlang:system_time(microsecond) - 60000000,
        store_rows([{T, <<(Start + J * NT + I):64, 16#BE4C4:48, 0:16>>}
                    || {I, T} <- lists:enumerate(Topics), J <- lists:seq(1, R)] ++
                   [{One, <<(Start + I):64, 16#BE4C5:48, 0:16>>} || I <- lists:seq(1, NT * R)]),
        #{wildcard => replay_rate(NT * R, <<Base/binary, "/t/+">>, <<Base/binary, "-wild">>),
          one_topic => replay_rate(NT * R, One, <<Base/binary, "-one">>)}
    after
        emqx_offline_cassandra_test_util:plugin_cleanup(Servers)
    end.

median(Xs) ->
    lists:nth((length(Xs) + 1) div 2, lists:sort(Xs)).

%% One run on a topic of its own: the replay, then live with the plugin on and off.
once(Path, N) ->
    T = iolist_to_binary(io_lib:format("bench/replay/~s/~b", [Path, erlang:system_time(millisecond)])),
    hook(T),
    store_backlog(T, N),
    Replay = replay_rate(N, T, <<T/binary, "-replay">>),
    %% Live: the same number of messages routed to a subscriber at once,
    %% with the plugin on (stored as published, deleted as acked: what
    %% live traffic costs with the plugin), and with the plugin off.
    Live = live(T, N, <<"-live">>),
    emqx_offline_cassandra_hooks:unhook(),
    Bare = live(T, N, <<"-bare">>),
    #{replay => Replay, live => Live, bare => Bare}.

live(T, N, Suffix) ->
    Msgs = [emqx_message:make(<<"bench-pub">>, 1, T, binary:copy(<<"p">>, 200), #{}, #{}) || _ <- lists:seq(1, N)],
    rate(N, fun() ->
        Sub = ?D:connect(<<T/binary, Suffix/binary>>, #{auto_ack => true, log => ids, max_mqueue_len => N + 1}),
        ok = ?D:subscribe(Sub, T, 1),
        [?D:publish_message(M) || M <- Msgs],
        Sub
    end).

%% msg/s of a replay of N rows to a new QoS 1 subscriber of Filter that
%% acks as it receives.
replay_rate(N, Filter, ClientId) ->
    rate(N, fun() ->
        Sub = ?D:connect(ClientId, #{auto_ack => true, log => ids}),
        ok = ?D:subscribe(Sub, Filter, 1),
        Sub
    end).

%% msg/s from Start() until its client completed N messages.
rate(N, Start) ->
    T0 = erlang:monotonic_time(microsecond),
    Sub = Start(),
    wait(fun() -> maps:get(completed, ?D:stats(Sub)) >= N end),
    Us = erlang:monotonic_time(microsecond) - T0,
    ?D:disconnect(Sub),
    N * 1000000 / max(1, Us).

wait(Pred) ->
    case catch Pred() of
        true -> ok;
        false -> timer:sleep(20), wait(Pred)
    end.

hook(T) ->
    ok = emqx_offline_cassandra_hooks:set_settings(#{topics => [T], max_returned_count => 0, time_range_ms => 0,
                                                     message_ttl_s => 0}),
    ok = emqx_offline_cassandra_hooks:hook().

store_backlog(T, N) ->
    Base = erlang:system_time(microsecond) - 1000000 - N,
    store_rows([{T, <<(Base + I):64, 16#BE4C4:48, 0:16>>} || I <- lists:seq(1, N)]).

%% Stores the {Topic, Id} rows and waits until all are written (`written'
%% counts every run's writes, the live runs' too).
store_rows(Rows) ->
    {ok, #{written := W0}} = ?NIF:stats(),
    [store_one(T, Id) || {T, Id} <- Rows],
    wait(fun() -> {ok, #{written := W}} = ?NIF:stats(), W >= W0 + length(Rows) end).

store_one(T, Id) ->
    Msg = #{topic => T, msgid => Id, sender => <<"bench-pub">>, qos => 1, retain => false,
            payload => binary:copy(<<"p">>, 200), arrived => erlang:system_time(millisecond)},
    case ?NIF:store(Msg) of
        ok -> ok;
        {error, _} -> timer:sleep(5), store_one(T, Id)
    end.
