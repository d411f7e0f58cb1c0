%%--------------------------------------------------------------------
%% The NIF through its Erlang module, against the real local Cassandra
%% (test/cassandra/cassandra.sh start; CASSANDRA_NODE overrides the
%% address). Run by `make test` with the fault-injection build
%% (FAULT_INJECTION=1), which adds the NIFs that panic on purpose.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_nif_tests).

-include_lib("eunit/include/eunit.hrl").

-define(NIF, emqx_offline_cassandra_nif).

%% The NIF holds one store per VM: the tests run one after another, and
%% each one's cleanup stops the NIF, so a failure never cascades.
nif_test_() ->
    {inorder,
        {foreach, fun() -> ok end, fun(_) -> emqx_offline_cassandra_test_util:stop_nif() end, [
            {timeout, scaled(60), fun round_trip/0},
            {timeout, scaled(60), fun random_binaries_round_trip/0},
            {timeout, scaled(120), fun ten_thousand_concurrent_fetches/0},
            {timeout, scaled(60), fun stop_answers_pending_fetches/0},
            {timeout, scaled(60), fun cassandra_absent/0},
            {timeout, scaled(60), fun cassandra_stops_and_comes_back/0},
            {timeout, scaled(60), fun bad_config_and_credentials/0},
            {timeout, scaled(60), fun bad_arguments_are_invalid_input/0},
            {timeout, scaled(60), fun reconfigure_keeps_buffered_writes/0},
            {timeout, scaled(60), fun wildcard_fetch/0},
            {timeout, scaled(60), fun panic_becomes_error_reply/0},
            {timeout, scaled(120), fun reload_ten_times/0}
        ]}}.

%%--------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------

node_addr() ->
    list_to_binary(os:getenv("CASSANDRA_NODE", "127.0.0.1:9042")).

config() ->
    #{
        <<"servers">> => node_addr(),
        <<"username">> => <<"root">>,
        <<"password">> => <<"public">>
    }.

start_connected() ->
    start_connected(config()).

start_connected(Config) ->
    ok = ?NIF:start(Config),
    ok = wait_until(fun() -> ?NIF:status() =:= connected end, 20000),
    ok.

wait_until(Pred, Ms) ->
    emqx_offline_cassandra_test_util:wait_until(Pred, Ms).

scaled(T) ->
    emqx_offline_cassandra_test_util:scaled(T).

unique_topic(Name) ->
    iolist_to_binary(io_lib:format("test/erl/~s/~b/~b", [Name, erlang:system_time(millisecond), erlang:unique_integer([positive])])).

%% An EMQX-shaped GUID: publish time in µs, node part, sequence.
guid() ->
    Us = erlang:system_time(microsecond),
    Seq = erlang:unique_integer([positive, monotonic]) band 16#FFFF,
    <<Us:64, 16#ABCDEF:48, Seq:16>>.

message(Topic, Payload) ->
    #{
        topic => Topic,
        msgid => guid(),
        payload => Payload,
        sender => <<"erl-client">>,
        qos => 1,
        retain => false,
        arrived => erlang:system_time(millisecond)
    }.

stat(Key) ->
    {ok, Stats} = ?NIF:stats(),
    maps:get(Key, Stats).

flush() ->
    ok = wait_until(fun() -> stat(buffered) =:= 0 andalso stat(in_flight) =:= 0 end, 30000).

stop() ->
    case ?NIF:stop(2000) of
        {ok, _} -> ok;
        ok -> ok;
        {error, not_started} -> ok
    end.

%%--------------------------------------------------------------------
%% Tests
%%--------------------------------------------------------------------

round_trip() ->
    start_connected(),
    Topic = unique_topic("round_trip"),
    Msg = (message(Topic, <<"{\"temp\": 21.5}">>))#{qos => 2, retain => true},
    ?assertEqual(ok, ?NIF:store(Msg)),
    flush(),
    {ok, [Row]} = ?NIF:fetch_sync(Topic, #{}, scaled(5000)),
    #{msgid := Guid} = Msg,
    ?assertMatch(
        #{
            topic := Topic,
            payload := <<"{\"temp\": 21.5}">>,
            qos := 2,
            retain := true,
            sender := <<"erl-client">>
        },
        Row
    ),
    ?assertEqual(binary:encode_hex(Guid), maps:get(msgid, Row)),
    %% The GUID as EMQX holds it, for the replayed message.
    ?assertEqual(Guid, maps:get(guid, Row)),
    ?assertEqual(maps:get(arrived, Msg), maps:get(arrived, Row)),
    ?assertEqual(ok, ?NIF:delete(Topic, Guid)),
    flush(),
    ?assertEqual({ok, []}, ?NIF:fetch_sync(Topic, #{}, scaled(5000))),
    %% The 16-byte GUID and its 32 hex digits name the same row.
    Hex = binary:encode_hex(guid()),
    ?assertEqual(ok, ?NIF:store((message(Topic, <<"by hex">>))#{msgid => Hex})),
    flush(),
    {ok, [#{msgid := Hex, guid := HexGuid}]} = ?NIF:fetch_sync(Topic, #{}, scaled(5000)),
    ?assertEqual(binary:decode_hex(Hex), HexGuid),
    ?assertEqual(ok, ?NIF:delete(Topic, HexGuid)),
    flush(),
    ?assertEqual({ok, []}, ?NIF:fetch_sync(Topic, #{}, scaled(5000))),
    stop().

random_binaries_round_trip() ->
    start_connected(),
    Topic = unique_topic("binary"),
    Sizes = [0, 1, 2, 3, 100, 4096, 65536, 65537, 1048576],
    Msgs = [message(Topic, rand:bytes(N)) || N <- Sizes],
    [?assertEqual(ok, ?NIF:store(M)) || M <- Msgs],
    flush(),
    ?assertEqual(0, stat(failed)),
    {ok, Rows} = ?NIF:fetch_sync(Topic, #{}, scaled(10000)),
    ?assertEqual([maps:get(payload, M) || M <- Msgs], [maps:get(payload, R) || R <- Rows]),
    [?assert(is_binary(maps:get(payload, R))) || R <- Rows],
    stop().

ten_thousand_concurrent_fetches() ->
    %% What is checked is that every fetch is answered, correctly and once;
    %% on a busy machine 10,000 reads may queue longer than the default
    %% request timeout, so this test allows each half a minute.
    Timeout = scaled(30000),
    start_connected((config())#{
        <<"request_timeout">> => Timeout,
        <<"replay_floor_lag">> => max(60000, 2 * Timeout + 1000)
    }),
    Topic = unique_topic("many_fetches"),
    [ok = ?NIF:store(message(Topic, integer_to_binary(I))) || I <- lists:seq(1, 5)],
    flush(),
    N = 10000,
    Refs = [make_ref() || _ <- lists:seq(1, N)],
    [ok = ?NIF:fetch(self(), R, Topic, #{limit => 3}) || R <- Refs],
    Replies = collect(Refs, scaled(60000)),
    ?assertEqual(N, length(Replies)),
    Expected = [<<"3">>, <<"4">>, <<"5">>],
    Bad = [R || {ok, Rows} = R <- Replies, [maps:get(payload, X) || X <- Rows] =/= Expected] ++
        [R || R <- Replies, element(1, R) =/= ok],
    ?assertEqual([], lists:sublist(Bad, 3)),
    stop().

%% Every ref gets exactly one reply; returns them in ref order.
collect(Refs, TimeoutMs) ->
    End = erlang:monotonic_time(millisecond) + TimeoutMs,
    [
        receive
            {offline_cassandra, R, Reply} -> Reply
        after max(0, End - erlang:monotonic_time(millisecond)) -> {missing, R}
        end
     || R <- Refs
    ].

stop_answers_pending_fetches() ->
    start_connected(),
    Topic = unique_topic("stop_pending"),
    Fast = [make_ref() || _ <- lists:seq(1, 1000)],
    [ok = ?NIF:fetch(self(), R, Topic, #{}) || R <- Fast],
    %% These are still running when stop comes (fault-injection build).
    Slow = [make_ref() || _ <- lists:seq(1, 100)],
    [ok = ?NIF:debug_sleeping_fetch(self(), R, 60000) || R <- Slow],
    {ok, _} = ?NIF:stop(0),
    FastReplies = collect(Fast, scaled(10000)),
    ?assertEqual([], [R || R <- FastReplies, R =/= {ok, []}, R =/= {error, shutdown}]),
    SlowReplies = collect(Slow, scaled(10000)),
    ?assertEqual([], [R || R <- SlowReplies, R =/= {error, shutdown}]),
    ?assertEqual(100, length(SlowReplies)),
    %% No second reply for any of them.
    receive
        {offline_cassandra, _, Extra} -> ?assertEqual(no_extra_reply, Extra)
    after scaled(200) -> ok
    end.

cassandra_absent() ->
    Config = (config())#{<<"servers">> => <<"127.0.0.1:1">>, <<"connect_timeout">> => 500},
    ok = ?NIF:start(Config),
    %% status answers at once and says why within a second
    ok = wait_until(fun() -> element(1, ensure_tuple(?NIF:status())) =:= connecting end, 2000),
    ok = wait_until(fun() -> is_tuple(?NIF:status()) end, 5000),
    {connecting, Why} = ?NIF:status(),
    ?assert(is_binary(Why)),
    %% writes are buffered (counted), reads fail fast
    Topic = unique_topic("absent"),
    {Micros, ok} = timer:tc(fun() -> ?NIF:store(message(Topic, <<"waits">>)) end),
    ?assert(Micros < scaled(100000)),
    ?assertEqual(1, stat(buffered)),
    ?assertEqual({error, not_connected}, ?NIF:fetch_sync(Topic, #{}, scaled(2000))),
    {ok, #{abandoned := 1}} = ?NIF:stop(100),
    %% never started at all
    ?assertEqual(not_started, ?NIF:status()),
    ?assertEqual({error, not_started}, ?NIF:store(message(Topic, <<"x">>))),
    ?assertEqual({error, not_started}, ?NIF:fetch_sync(Topic, #{}, scaled(1000))),
    ?assertEqual({error, not_started}, ?NIF:stats()).

%% Cassandra "stops" (a proxy in front of it cuts every connection) while
%% the store is connected, then comes back.
cassandra_stops_and_comes_back() ->
    [Host, PortStr] = string:split(binary_to_list(node_addr()), ":"),
    {ok, Proxy} = emqx_offline_cassandra_tcp_proxy:start(list_to_integer(PortStr)),
    ProxyAddr = iolist_to_binary([Host, ":", integer_to_list(emqx_offline_cassandra_tcp_proxy:port(Proxy))]),
    ok = ?NIF:set_event_pid(self()),
    start_connected((config())#{<<"servers">> => ProxyAddr}),
    Topic = unique_topic("outage"),
    ok = ?NIF:store(message(Topic, <<"before">>)),
    flush(),
    ok = emqx_offline_cassandra_tcp_proxy:cut(Proxy),
    %% The probe (every second) notices; how soon is a figure, not a claim a busy machine
    %% can keep: printed, with a generous deadline.
    {Micros, ok} = timer:tc(fun() -> wait_until(fun() -> ?NIF:status() =/= connected end, 15000) end),
    ?debugFmt("status red ~b ms after the cut", [Micros div 1000]),
    ?assertMatch({disconnected, _}, ?NIF:status()),
    %% Nothing hangs while it is down: writes are buffered, reads fail fast.
    {StoreMicros, ok} = timer:tc(fun() -> ?NIF:store(message(Topic, <<"during">>)) end),
    ?assert(StoreMicros < scaled(100000)),
    {FetchMicros, FetchResult} = timer:tc(fun() -> ?NIF:fetch_sync(Topic, #{}, scaled(10000)) end),
    ?assertEqual({error, not_connected}, FetchResult),
    ?assert(FetchMicros < scaled(1000000)),
    ?assertEqual(1, stat(buffered)),
    ok = emqx_offline_cassandra_tcp_proxy:restore(Proxy),
    %% Back soon after Cassandra answers again (0.4 s quiet: a fresh session every 0.2 s);
    %% 5 s tells that from the driver's pool refill (backs off up to 10 s) on a busy machine.
    {ReconnectMicros, ok} = timer:tc(fun() -> wait_until(fun() -> ?NIF:status() =:= connected end, 15000) end),
    ?debugFmt("reconnected ~b ms after Cassandra answered again", [ReconnectMicros div 1000]),
    ?assert(ReconnectMicros < scaled(5000000)),
    flush(),
    {ok, Rows} = ?NIF:fetch_sync(Topic, #{}, scaled(5000)),
    ?assertEqual([<<"before">>, <<"during">>], [maps:get(payload, R) || R <- Rows]),
    ?assertEqual(0, stat(failed)),
    %% The Rust side told us about both changes.
    receive {offline_cassandra_event, state_changed, {disconnected, _}} -> ok after scaled(1000) -> error(no_disconnected_event) end,
    receive {offline_cassandra_event, state_changed, connected} -> ok after scaled(1000) -> error(no_connected_event) end,
    ok = ?NIF:set_event_pid(spawn(fun Drop() -> receive _ -> Drop() end end)),
    stop(),
    emqx_offline_cassandra_tcp_proxy:stop(Proxy).

ensure_tuple(T) when is_tuple(T) -> T;
ensure_tuple(A) -> {A}.

bad_config_and_credentials() ->
    {error, {invalid_config, Msg}} = ?NIF:start(#{<<"servers">> => <<"host:notaport">>}),
    ?assertMatch({_, _}, binary:match(Msg, <<"servers">>)),
    ?assertMatch({error, {invalid_config, _}}, ?NIF:start(#{<<"max_batch_rows">> => <<"lots">>})),
    ?assertMatch({error, {invalid_config, _}}, ?NIF:start(#{<<"worker_threads">> => 0})),
    ?assertMatch({error, {invalid_config, _}}, ?NIF:start(#{<<"servers">> => {1, 2}})),
    ?assertEqual(not_started, ?NIF:status()),
    ok = ?NIF:start((config())#{<<"password">> => <<"wrong">>}),
    ok = wait_until(fun() -> element(1, ensure_tuple(?NIF:status())) =:= error end, 20000),
    {error, {auth_failed, Why}} = ?NIF:status(),
    ?assertMatch({_, _}, binary:match(Why, <<"authentication failed">>)),
    ?assertNotEqual(nomatch, binary:match(Why, <<"root">>)),
    ?assertEqual(nomatch, binary:match(Why, <<"wrong">>)),
    ?assertEqual({error, already_started}, ?NIF:start(config())),
    stop().

%% A wrong argument is answered {error, {invalid_input, Why}} naming it (not
%% badarg, not invalid_config) and nothing is accepted; what a msgid binary
%% holds stays the core's to judge.
bad_arguments_are_invalid_input() ->
    ok = ?NIF:start((config())#{<<"servers">> => <<"127.0.0.1:1">>}),
    Topic = unique_topic("bad_arguments"),
    Invalid = fun(Result, Arg) ->
        ?assertMatch({error, {invalid_input, _}}, Result),
        {error, {invalid_input, Why}} = Result,
        ?assertNotEqual(nomatch, binary:match(Why, Arg))
    end,
    Invalid(?NIF:store(message(<<255, 254>>, <<"x">>)), <<"topic">>),
    Invalid(?NIF:store((message(Topic, <<"x">>))#{qos => 3}), <<"qos">>),
    Invalid(?NIF:store((message(Topic, <<"x">>))#{retain => 1}), <<"retain">>),
    MsgId = binary:encode_hex(guid()),
    Invalid(?NIF:nif_store(Topic, MsgId, <<>>, 1, false, "x", 0, 0), <<"payload">>),
    Invalid(?NIF:nif_store(Topic, not_a_msgid, <<>>, 1, false, <<"x">>, 0, 0), <<"msgid">>),
    Invalid(?NIF:fetch(self(), make_ref(), Topic, #{limit => -1}), <<"limit">>),
    Invalid(?NIF:fetch(self(), make_ref(), Topic, #{since => yesterday}), <<"since">>),
    Invalid(?NIF:count(<<255>>, 5000), <<"topic">>),
    ?assertMatch({error, {invalid_msgid, _}}, ?NIF:delete(Topic, <<"not-a-guid">>)),
    %% 16 bytes are a GUID; 15 or 17 are neither that nor 32 hex digits.
    ?assertMatch({error, {invalid_msgid, _}}, ?NIF:delete(Topic, <<1:120>>)),
    ?assertMatch({error, {invalid_msgid, _}}, ?NIF:delete(Topic, <<1:136>>)),
    ?assertEqual(0, stat(accepted)),
    ok = ?NIF:store(message(Topic, <<"x">>)),
    ?assertEqual(1, stat(accepted)),
    stop().

reconfigure_keeps_buffered_writes() ->
    ok = ?NIF:start((config())#{<<"servers">> => <<"127.0.0.1:1">>}),
    Topic = unique_topic("reconfigure"),
    [ok = ?NIF:store(message(Topic, integer_to_binary(I))) || I <- lists:seq(1, 3)],
    ?assertEqual(3, stat(buffered)),
    ?assertMatch({error, {invalid_config, _}}, ?NIF:validate(#{<<"pool_size">> => 0})),
    ?assertMatch({error, {invalid_config, _}}, ?NIF:reconfigure(#{<<"pool_size">> => 0}, 100)),
    ?assertEqual(ok, ?NIF:validate(config())),
    {ok, #{handed_over := 3}} = ?NIF:reconfigure(config(), 100),
    ok = wait_until(fun() -> ?NIF:status() =:= connected end, 20000),
    flush(),
    {ok, Rows} = ?NIF:fetch_sync(Topic, #{}, scaled(5000)),
    ?assertEqual([<<"1">>, <<"2">>, <<"3">>], [maps:get(payload, R) || R <- Rows]),
    stop().

wildcard_fetch() ->
    start_connected(),
    Base = unique_topic("wildcard"),
    [
        ok = ?NIF:store(message(<<Base/binary, Suffix/binary>>, P))
     || {Suffix, P} <- [{<<"/1">>, <<"a">>}, {<<"/2/x">>, <<"b">>}, {<<"/3">>, <<"c">>}]
    ],
    flush(),
    {ok, All} = ?NIF:fetch_sync(<<Base/binary, "/#">>, #{}, scaled(5000)),
    ?assertEqual([<<"a">>, <<"b">>, <<"c">>], [maps:get(payload, R) || R <- All]),
    ?assertEqual(<<Base/binary, "/2/x">>, maps:get(topic, lists:nth(2, All))),
    {ok, Plus} = ?NIF:fetch_sync(<<Base/binary, "/+">>, #{limit => 1}, scaled(5000)),
    ?assertEqual([<<"c">>], [maps:get(payload, R) || R <- Plus]),
    stop().

panic_becomes_error_reply() ->
    start_connected(),
    Ref = make_ref(),
    case ?NIF:debug_panicking_fetch(self(), Ref) of
        ok -> ok;
        Other -> erlang:error({not_a_fault_injection_build, Other, "run with FAULT_INJECTION=1"})
    end,
    receive
        {offline_cassandra, Ref, Reply} ->
            ?assertEqual({error, {panic, <<"injected panic">>}}, Reply)
    after scaled(5000) -> erlang:error(no_reply_after_panic)
    end,
    ?assertError(nif_panicked, ?NIF:debug_panic()),
    %% Still serving after both panics.
    Topic = unique_topic("after_panic"),
    ok = ?NIF:store(message(Topic, <<"alive">>)),
    flush(),
    ?assertMatch({ok, [#{payload := <<"alive">>}]}, ?NIF:fetch_sync(Topic, #{}, scaled(5000))),
    stop().

%% What EMQX does to plugin code: load over a loaded module (5.8 and older on
%% every start; 5.9+ on reinstall), stop, soft purge, delete + purge, reload.
reload_ten_times() ->
    Mod = ?NIF,
    ThreadsBefore = os_threads(),
    lists:foreach(
        fun(I) ->
            start_connected(),
            Topic = unique_topic("reload"),
            ok = Mod:store(message(Topic, integer_to_binary(I))),
            flush(),
            ?assertMatch({ok, [_]}, Mod:fetch_sync(Topic, #{}, scaled(5000))),
            {ok, _} = Mod:stop(1000),
            %% load a new instance over the current one (the NIF's upgrade path)
            code:purge(Mod),
            ?assertEqual({module, Mod}, code:load_file(Mod)),
            _ = code:soft_purge(Mod),
            %% and the full unload/reload (uninstall then install)
            case I rem 2 of
                0 ->
                    true = code:delete(Mod),
                    _ = code:purge(Mod),
                    ?assertEqual({module, Mod}, code:load_file(Mod));
                1 ->
                    ok
            end
        end,
        lists:seq(1, 10)
    ),
    ?assertEqual(not_started, Mod:status()),
    %% stop frees the runtime's threads every time: none accumulate
    ?assertEqual(ThreadsBefore, os_threads()).

os_threads() ->
    {ok, Tasks} = file:list_dir("/proc/self/task"),
    length(Tasks).
