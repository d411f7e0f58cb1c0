%%--------------------------------------------------------------------
%% The seed scenario, end to end: the packaged plugin
%% (_build/plugin/emqx_offline_cassandra-<vsn>.tar.gz) installed into the
%% EMQX double the way EMQX installs it, against the real local Cassandra,
%% rows checked with cqlsh. Runs in a VM of its own (scripts/test.sh):
%% only the double is on the code path, the plugin's code comes from the
%% tarball.
%%
%%   erl -pa _build/test/lib/emqx_offline_cassandra/test \
%%       -eval 'emqx_offline_cassandra_e2e:run()'
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_e2e).

-include_lib("eunit/include/eunit.hrl").

-export([run/0, run/1, block_publish/2, log/2]).

-define(D, emqx_double).
-define(NIF, emqx_offline_cassandra_nif).

%% @doc Runs the scenario against every EMQX behaviour the double plays:
%% 5.3-like (no plugin config API, extra = [], share in SubOpts), 5.8-like
%% (get_config/1 -> {ok, Map}, on_config_changed result ignored, beams
%% reloaded on start) and 5.10/6.x-like (plain map, #share{}, results
%% enforced).
run() ->
    run(['5.3', '5.8', '5.10']).

run(Modes) ->
    Results = [eunit:test({timeout, emqx_offline_cassandra_test_util:scaled(600), scenario(Mode)}, [verbose]) || Mode <- Modes],
    case lists:all(fun(R) -> R =:= ok end, Results) of
        true -> halt(0);
        false -> halt(1)
    end.

scenario(Mode) ->
    {setup, fun() -> setup(Mode) end, fun teardown/1, fun(Ctx) ->
        {inorder, [
            {timeout, emqx_offline_cassandra_test_util:scaled(60), {atom_to_list(Mode) ++ ": " ++ Name, fun() -> F(Ctx) end}}
         || {Name, F} <- [
                {"one start log line: EMQX version, config source, features", fun start_log_line/1},
                {"hooks registered with their priorities", fun hooks_registered/1},
                {"1. publish QoS 1 on t/1, no subscriber: the row is in mqtt.mqtt_msg", fun seed_publish_stored/1},
                {"2. subscribe t/1: delivered; ack: the row is gone", fun seed_subscribe_and_ack/1},
                {"3. 200 messages in publish order, no duplicates; re-subscribe replays nothing", fun order_and_no_second_replay/1},
                {"4a. t/# replays t/1 and t/2/x", fun wildcard_replay/1},
                {"4b. a QoS 0 subscriber gets no redelivery loop", fun qos0_no_loop/1},
                {"5. a second subscriber after the first acked gets nothing", fun consume_once/1},
                {"3 online subscribers ack one message: one delete", fun one_delete_for_three_acks/1},
                {"acks of messages never stored send no delete (other topic then, refused)", fun no_delete_when_never_stored/1},
                {"a replayed message's ack deletes even after this node deleted it once", fun replayed_ack_always_deletes/1},
                {"rows EMQX 4.x wrote (plain INSERT, no timestamp) replay in order among ours; acks remove them", fun legacy_rows_replayed_and_deleted/1},
                {"shared subscription: replayed once for the group", fun shared_once/1},
                {"message keeps msgid, qos, retain, sender and timestamp", fun message_fields_kept/1},
                {"not stored: QoS 0, $SYS, other topics, allow_publish = false", fun not_stored/1},
                {"Max Returned Count: the newest N, oldest first", fun max_returned_count/1},
                {"Time Range: only recent messages", fun time_range/1},
                {"MQTT 5 Message-Expiry-Interval: expired never delivered", fun expiry/1},
                {"6. a bad config is rejected with a clear reason; the node keeps running", fun bad_config/1},
                {"TLS without ssl.verify: a warning in the log; the default verifies", fun tls_unverified_warning/1},
                {"emqx ctl offline_cassandra status | stats | count | peek | purge", fun admin_command/1},
                {"Cassandra away: health red, alarm raised; back: green, cleared", fun alarm_and_health/1},
                {"status with a bad password: sentences, every setting, password hidden", fun status_bad_password/1},
                {"stats: every counter under its full name, a refused store too", fun stats_full_names/1},
                {"after a restart the hooks' and the storage's counters count together", fun counters_agree_after_restart/1},
                {"stop removes every hook and the NIF", fun stop_removes_hooks/1}
            ]
        ]}
    end}.

%%--------------------------------------------------------------------
%% Setup
%%--------------------------------------------------------------------

setup(Mode) ->
    ok = ?D:start(#{mode => Mode}),
    ok = capture_logs(),
    [Tar] = filelib:wildcard("_build/plugin/emqx_offline_cassandra-*.tar.gz"),
    {ok, NameVsn} = ?D:install_plugin(Tar),
    %% The packaged config is the seed's (root/public, t/#); only the
    %% address may differ on a test machine.
    Config0 = ?D:plugin_config(NameVsn),
    Config = Config0#{<<"servers">> => list_to_binary(os:getenv("CASSANDRA_NODE", "127.0.0.1:9042"))},
    set_config(Mode, NameVsn, Config),
    cql("DELETE FROM mqtt.mqtt_msg WHERE topic = 't/1'"),
    {Micros, ok} = timer:tc(fun() -> ?D:start_plugin(NameVsn) end),
    ?assert(Micros < emqx_offline_cassandra_test_util:scaled(10000000)),
    ok = wait(fun() -> ?D:health(NameVsn) =:= ok end, 30000),
    Run = integer_to_binary(erlang:system_time(millisecond)),
    #{name_vsn => NameVsn, run => Run, mode => Mode}.

teardown(#{name_vsn := NameVsn}) ->
    catch ?D:stop_plugin(NameVsn),
    ?D:stop().

%% Where the plugin finds its config: EMQX's plugin config (5.7+), or the
%% file in the data dir (5.0-5.6).
set_config('5.3', NameVsn, Config) ->
    persistent_term:put({emqx_double, plugin_config, NameVsn}, Config),
    ?D:write_config_file("emqx_offline_cassandra", Config);
set_config(_Mode, NameVsn, Config) ->
    persistent_term:put({emqx_double, plugin_config, NameVsn}, Config).

%% Log events collected for the test (logger handler below).
capture_logs() ->
    case ets:whereis(e2e_logs) of
        undefined ->
            Parent = self(),
            spawn(fun() ->
                ets:new(e2e_logs, [named_table, public, bag]),
                Parent ! logs_ready,
                receive stop -> ok end
            end),
            receive logs_ready -> ok end;
        _ ->
            ets:delete_all_objects(e2e_logs)
    end,
    _ = logger:remove_handler(e2e_capture),
    ok = logger:add_handler(e2e_capture, ?MODULE, #{level => all}).

%% @private logger handler callback
log(#{msg := {report, #{msg := Kind} = Report}}, _Config) ->
    ets:insert(e2e_logs, {Kind, Report});
log(_Event, _Config) ->
    ok.

logged(Kind) ->
    [R || {_, R} <- ets:lookup(e2e_logs, Kind)].

%% A topic under t/ unique to this run.
topic(#{run := Run}, Suffix) ->
    <<"t/", Run/binary, "/", Suffix/binary>>.

%%--------------------------------------------------------------------
%% Scenario
%%--------------------------------------------------------------------

start_log_line(#{mode := Mode}) ->
    [Line | _] = logged(offline_cassandra_started),
    ?assertEqual(list_to_binary(?D:version()), maps:get(emqx_version, Line)),
    ?assertEqual(?D:extra_default(), maps:get(message_extra, Line)),
    case Mode of
        '5.3' ->
            ?assertEqual(none, maps:get(config_api, Line)),
            ?assertMatch({_, _}, binary:match(maps:get(config_source, Line), <<"data/plugins/emqx_offline_cassandra/config.hocon">>));
        '5.8' ->
            ?assertEqual(tuple_ok, maps:get(config_api, Line)),
            ?assertEqual(<<"emqx_plugins:get_config/1">>, maps:get(config_source, Line));
        '5.10' ->
            ?assertEqual(plain_map, maps:get(config_api, Line)),
            ?assertEqual(<<"emqx_plugins:get_config/1">>, maps:get(config_source, Line))
    end,
    %% The password never reaches the log.
    ?assertEqual(nomatch, binary:match(iolist_to_binary(io_lib:format("~p", [Line])), <<"public">>)).

hooks_registered(_Ctx) ->
    H = emqx_offline_cassandra_hooks,
    ?assert(lists:member({10, {H, on_message_publish, []}}, emqx_hooks:lookup('message.publish'))),
    ?assert(lists:member({1000, {H, on_session_subscribed, []}}, emqx_hooks:lookup('session.subscribed'))),
    ?assert(lists:member({1000, {H, on_message_acked, []}}, emqx_hooks:lookup('message.acked'))).

seed_publish_stored(_Ctx) ->
    Pub = ?D:connect(<<"publisher-1">>),
    ensure_routed(?D:publish(Pub, <<"t/1">>, <<"hello">>, 1)),
    ok = wait(fun() -> cql_count("t/1") =:= 1 end, 10000),
    Row = cql("SELECT payload, qos, retain, sender FROM mqtt.mqtt_msg WHERE topic = 't/1'"),
    ?assertMatch({match, _}, re:run(Row, "hello \\| +1 \\| +0 \\| +publisher-1")),
    ?D:disconnect(Pub).

seed_subscribe_and_ack(_Ctx) ->
    [MsgId] = cql_msgids("t/1"),
    Sub = ?D:connect(<<"subscriber-1">>),
    ok = ?D:subscribe(Sub, <<"t/1">>, 1),
    ok = wait(fun() -> length(?D:received(Sub)) =:= 1 end, 30000),
    [{PacketId, Msg}] = ?D:received(Sub),
    ?assertEqual(<<"hello">>, emqx_message:payload(Msg)),
    ?assertEqual(MsgId, binary:encode_hex(emqx_message:id(Msg))),
    ?assertEqual(1, emqx_message:qos(Msg)),
    ok = ?D:ack(Sub, PacketId),
    ok = wait(fun() -> cql_count("t/1") =:= 0 end, 10000),
    ?D:disconnect(Sub).

order_and_no_second_replay(Ctx) ->
    T = topic(Ctx, <<"order">>),
    Pub = ?D:connect(<<"publisher-2">>),
    [ensure_routed(?D:publish(Pub, T, integer_to_binary(I), 1)) || I <- lists:seq(1, 200)],
    ok = wait(fun() -> stored(T) =:= 200 end, 20000),
    Sub = ?D:connect(<<"subscriber-2">>),
    ok = ?D:subscribe(Sub, T, 1),
    %% Paced: at most 100 replayed messages are in the session at once (32
    %% in flight, the rest queued); each ack lets the next one follow.
    ok = wait(fun() -> {ok, _} = ?D:ack_all(Sub), length(?D:received(Sub)) =:= 200 end, 10000),
    ?assertEqual(0, maps:get(dropped, ?D:stats(Sub))),
    Payloads = [emqx_message:payload(M) || {_, M} <- ?D:received(Sub)],
    ?assertEqual([integer_to_binary(I) || I <- lists:seq(1, 200)], Payloads),
    ok = wait(fun() -> stored(T) =:= 0 end, 10000),
    %% Same client, same filter again: not new, nothing replayed.
    Pub2 = ?D:connect(<<"publisher-2b">>),
    ensure_routed(?D:publish(Pub2, T, <<"after">>, 1)),
    ok = wait(fun() -> stored(T) =:= 1 end, 10000),
    ok = ?D:subscribe(Sub, T, 1),
    timer:sleep(500),
    Raw = ?D:raw_delivered(Sub),
    ?assertEqual(201, length(Raw), "only the routed one arrived, no second replay"),
    [?D:disconnect(C) || C <- [Pub, Pub2, Sub]].

wildcard_replay(Ctx) ->
    Base = topic(Ctx, <<"w">>),
    Pub = ?D:connect(<<"publisher-3">>),
    [ensure_routed(?D:publish(Pub, <<Base/binary, S/binary>>, P, 1))
     || {S, P} <- [{<<"/1">>, <<"one">>}, {<<"/2/x">>, <<"two-x">>}, {<<"/1">>, <<"one-again">>}]],
    ok = wait(fun() -> stored(<<Base/binary, "/#">>) =:= 3 end, 10000),
    Sub = ?D:connect(<<"subscriber-3">>),
    Filter = <<Base/binary, "/#">>,
    ok = ?D:subscribe(Sub, Filter, 2),
    ok = wait(fun() -> length(?D:received(Sub)) =:= 3 end, 30000),
    Got = [{emqx_message:topic(M), emqx_message:payload(M)} || {_, M} <- ?D:received(Sub)],
    ?assertEqual([{<<Base/binary, "/1">>, <<"one">>}, {<<Base/binary, "/2/x">>, <<"two-x">>},
                  {<<Base/binary, "/1">>, <<"one-again">>}], Got),
    %% Delivered with the subscription's filter, so EMQX finds its options.
    ?assert(lists:all(fun({F, _}) -> F =:= Filter end, ?D:raw_delivered(Sub))),
    {ok, 3} = ?D:ack_all(Sub),
    ok = wait(fun() -> stored(Filter) =:= 0 end, 10000),
    [?D:disconnect(C) || C <- [Pub, Sub]].

qos0_no_loop(Ctx) ->
    T = topic(Ctx, <<"q0">>),
    Pub = ?D:connect(<<"publisher-4">>),
    ensure_routed(?D:publish(Pub, T, <<"kept">>, 1)),
    ok = wait(fun() -> stored(T) =:= 1 end, 10000),
    lists:foreach(
        fun(I) ->
            Sub = ?D:connect(<<"qos0-subscriber-", (integer_to_binary(I))/binary>>),
            ok = ?D:subscribe(Sub, T, 0),
            timer:sleep(300),
            ?assertEqual([], ?D:raw_delivered(Sub)),
            ?D:disconnect(Sub)
        end,
        [1, 2, 3]
    ),
    %% Still stored for a subscriber that can acknowledge it.
    ?assertEqual(1, stored(T)),
    Sub1 = ?D:connect(<<"qos1-subscriber">>),
    ok = ?D:subscribe(Sub1, T, 1),
    ok = wait(fun() -> length(?D:received(Sub1)) =:= 1 end, 30000),
    {ok, 1} = ?D:ack_all(Sub1),
    ok = wait(fun() -> stored(T) =:= 0 end, 10000),
    [?D:disconnect(C) || C <- [Pub, Sub1]].

consume_once(Ctx) ->
    T = topic(Ctx, <<"once">>),
    Pub = ?D:connect(<<"publisher-5">>),
    ensure_routed(?D:publish(Pub, T, <<"only once">>, 1)),
    ok = wait(fun() -> stored(T) =:= 1 end, 10000),
    A = ?D:connect(<<"first">>),
    ok = ?D:subscribe(A, T, 1),
    ok = wait(fun() -> length(?D:received(A)) =:= 1 end, 30000),
    {ok, 1} = ?D:ack_all(A),
    ok = wait(fun() -> stored(T) =:= 0 end, 10000),
    B = ?D:connect(<<"second">>),
    ok = ?D:subscribe(B, T, 1),
    timer:sleep(500),
    ?assertEqual([], ?D:raw_delivered(B)),
    [?D:disconnect(C) || C <- [Pub, A, B]].

%% The hooks' counters, read from the plugin itself.
hooks() ->
    emqx_offline_cassandra_metrics:all().

%% How much each of Names grew while Fun ran.
counted(Names, Fun) ->
    Before = hooks(),
    Fun(),
    After = hooks(),
    maps:from_list([{N, maps:get(N, After) - maps:get(N, Before)} || N <- Names]).

one_delete_for_three_acks(Ctx) ->
    T = topic(Ctx, <<"three">>),
    Subs = [?D:connect(<<"online-", (integer_to_binary(I))/binary>>) || I <- [1, 2, 3]],
    [ok = ?D:subscribe(S, T, 1) || S <- Subs],
    Pub = ?D:connect(<<"publisher-3s">>),
    Counted = counted([deleted, delete_skipped], fun() ->
        ensure_routed(?D:publish(Pub, T, <<"to three">>, 1)),
        [ok = wait(fun() -> length(?D:received(S)) =:= 1 end, 30000) || S <- Subs],
        [{ok, 1} = ?D:ack_all(S) || S <- Subs]
    end),
    ?assertEqual(#{deleted => 1, delete_skipped => 2}, Counted),
    ok = wait(fun() -> stored(T) =:= 0 end, 10000),
    [?D:disconnect(C) || C <- [Pub | Subs]].

no_delete_when_never_stored(#{name_vsn := NV} = Ctx) ->
    Other = <<"o/", (topic(Ctx, <<"later">>))/binary>>,
    Large = topic(Ctx, <<"large">>),
    Sub = ?D:connect(<<"subscriber-never">>),
    ok = ?D:subscribe(Sub, Other, 1),
    ok = ?D:subscribe(Sub, Large, 1),
    Pub = ?D:connect(<<"publisher-never">>),
    %% Published while o/# is not stored; acked once it is.
    ensure_routed(?D:publish(Pub, Other, <<"not stored">>, 1)),
    ok = wait(fun() -> length(?D:received(Sub)) =:= 1 end, 30000),
    with_config(NV, #{<<"topics">> => [<<"t/#">>, <<"o/#">>], <<"max_payload_size">> => <<"1KB">>}, fun() ->
        ?assertEqual(#{deleted => 0, delete_skipped => 1}, counted([deleted, delete_skipped], fun() ->
            {ok, 1} = ?D:ack_all(Sub)
        end)),
        %% Refused for its size: no row, no delete.
        ?assertEqual(#{deleted => 0, delete_skipped => 1, store_refused => 1},
            counted([deleted, delete_skipped, store_refused], fun() ->
                ensure_routed(?D:publish(Pub, Large, binary:copy(<<"x">>, 2048), 1)),
                ok = wait(fun() -> length(?D:received(Sub)) =:= 2 end, 30000),
                {ok, 1} = ?D:ack_all(Sub)
            end))
    end),
    [?D:disconnect(C) || C <- [Pub, Sub]].

replayed_ack_always_deletes(Ctx) ->
    T = topic(Ctx, <<"again">>),
    Pub = ?D:connect(<<"publisher-again">>),
    ensure_routed(?D:publish(Pub, T, <<"again">>, 1)),
    ok = wait(fun() -> stored(T) =:= 1 end, 10000),
    %% This node remembers deleting it, yet the row is there (that delete
    %% was lost in Cassandra, say).
    [Hex] = cql_msgids(binary_to_list(T)),
    ?assert(emqx_offline_cassandra_acked:first_delete(binary:decode_hex(Hex))),
    B = ?D:connect(<<"replayed-again">>),
    ?assertEqual(#{deleted => 1, delete_skipped => 0}, counted([deleted, delete_skipped], fun() ->
        ok = ?D:subscribe(B, T, 1),
        ok = wait(fun() -> length(?D:received(B)) =:= 1 end, 30000),
        {ok, 1} = ?D:ack_all(B)
    end)),
    ok = wait(fun() -> stored(T) =:= 0 end, 10000),
    [?D:disconnect(C) || C <- [Pub, B]].

%% Issue 16: EMQX 4.x inserted without USING TIMESTAMP, so Cassandra
%% stamped each row when it landed, after the publish time in its msgid;
%% the usual delete (msgid time + 1 us) would lose to it. Inserted here
%% through cqlsh as 4.x did (upper-case hex GUID, retain 0/1, arrived in
%% ms), before and after one of ours.
legacy_rows_replayed_and_deleted(Ctx) ->
    T = topic(Ctx, <<"legacy">>),
    Legacy = fun(Payload) ->
        Us = erlang:system_time(microsecond) - 2000,
        Hex = binary_to_list(binary:encode_hex(<<Us:64, 16#4A4A4A:48, 0:16>>)),
        _ = cql(io_lib:format(
            "INSERT INTO mqtt.mqtt_msg (topic, msgid, sender, qos, payload, arrived, retain) "
            "VALUES ('~ts', '~s', 'client-4x', 1, '~s', ~b, 0)",
            [T, Hex, Payload, Us div 1000]
        )),
        timer:sleep(5)
    end,
    Legacy("4x-first"),
    Pub = ?D:connect(<<"publisher-legacy">>),
    ensure_routed(?D:publish(Pub, T, <<"ours">>, 1)),
    ok = wait(fun() -> stored(T) =:= 2 end, 10000),
    Legacy("4x-last"),
    Sub = ?D:connect(<<"subscriber-legacy">>),
    ok = ?D:subscribe(Sub, T, 1),
    ok = wait(fun() -> length(?D:received(Sub)) =:= 3 end, 30000),
    ?assertEqual([<<"4x-first">>, <<"ours">>, <<"4x-last">>], [emqx_message:payload(M) || {_, M} <- ?D:received(Sub)]),
    {ok, 3} = ?D:ack_all(Sub),
    ok = wait(fun() -> cql_count(binary_to_list(T)) =:= 0 end, 10000),
    [?D:disconnect(C) || C <- [Pub, Sub]].

shared_once(Ctx) ->
    T = topic(Ctx, <<"shared">>),
    Pub = ?D:connect(<<"publisher-6">>),
    [ensure_routed(?D:publish(Pub, T, integer_to_binary(I), 1)) || I <- [1, 2, 3]],
    ok = wait(fun() -> stored(T) =:= 3 end, 10000),
    Members = [?D:connect(<<"member-", (integer_to_binary(I))/binary>>) || I <- [1, 2, 3]],
    [ok = ?D:subscribe(M, <<"$share/g/", T/binary>>, 1) || M <- Members],
    Delivered0 = fun() -> lists:append([?D:raw_delivered(M) || M <- Members]) end,
    ok = wait(fun() -> length(Delivered0()) >= 3 end, 10000),
    timer:sleep(800),
    Delivered = Delivered0(),
    ?assertEqual(3, length(Delivered)),
    [{ok, _} = ?D:ack_all(M) || M <- Members],
    ok = wait(fun() -> stored(T) =:= 0 end, 10000),
    [?D:disconnect(C) || C <- [Pub | Members]].

message_fields_kept(Ctx) ->
    T = topic(Ctx, <<"fields">>),
    Pub = ?D:connect(<<"field-publisher">>),
    Before = erlang:system_time(millisecond),
    ensure_routed(?D:publish(Pub, T, <<255, 0, 1, 2>>, 2, #{retain => true})),
    ok = wait(fun() -> stored(T) =:= 1 end, 10000),
    [MsgId] = cql_msgids(binary_to_list(T)),
    timer:sleep(20),
    Sub = ?D:connect(<<"field-subscriber">>),
    ok = ?D:subscribe(Sub, T, 2),
    ok = wait(fun() -> length(?D:raw_delivered(Sub)) =:= 1 end, 30000),
    [{T, Msg}] = ?D:raw_delivered(Sub),
    ?assertEqual(MsgId, binary:encode_hex(emqx_message:id(Msg))),
    ?assertEqual(2, emqx_message:qos(Msg)),
    ?assertEqual(true, emqx_message:get_flag(retain, Msg)),
    ?assertEqual(<<"field-publisher">>, emqx_message:from(Msg)),
    ?assertEqual(<<255, 0, 1, 2>>, emqx_message:payload(Msg)),
    Ts = emqx_message:timestamp(Msg),
    ?assert(Ts >= Before andalso Ts < Before + 1000),
    ?assertEqual(emqx_double:extra_default(), emqx_message:extra(Msg)),
    {ok, 1} = ?D:ack_all(Sub),
    ok = wait(fun() -> stored(T) =:= 0 end, 10000),
    [?D:disconnect(C) || C <- [Pub, Sub]].

not_stored(Ctx) ->
    T = topic(Ctx, <<"skip">>),
    Pub = ?D:connect(<<"publisher-7">>),
    ensure_routed(?D:publish(Pub, T, <<"qos0">>, 0)),
    ensure_routed(?D:publish(Pub, <<"$SYS/brokers/x">>, <<"sys">>, 1)),
    ensure_routed(?D:publish(Pub, <<"other/", (topic(Ctx, <<"x">>))/binary>>, <<"other">>, 1)),
    %% A validator at a higher priority drops this one.
    Blocked = topic(Ctx, <<"blocked">>),
    ok = emqx_hooks:put('message.publish', {?MODULE, block_publish, [Blocked]}, 945),
    ?assertEqual({dropped, not_allowed}, ?D:publish(Pub, Blocked, <<"blocked">>, 1)),
    emqx_hooks:del('message.publish', {?MODULE, block_publish}),
    %% A message that is stored, as a marker that the others had their chance.
    ensure_routed(?D:publish(Pub, T, <<"qos1">>, 1)),
    ok = wait(fun() -> stored(T) =:= 1 end, 10000),
    ?assertEqual(0, stored(Blocked)),
    ?assertEqual(0, cql_count("other/" ++ binary_to_list(topic(Ctx, <<"x">>)))),
    ?assertEqual(0, cql_count("$SYS/brokers/x")),
    cql("DELETE FROM mqtt.mqtt_msg WHERE topic = '" ++ binary_to_list(T) ++ "'"),
    ?D:disconnect(Pub).

max_returned_count(#{name_vsn := NV} = Ctx) ->
    with_config(NV, #{<<"max_returned_count">> => 2}, fun() ->
        T = topic(Ctx, <<"max">>),
        Pub = ?D:connect(<<"publisher-8">>),
        [ensure_routed(?D:publish(Pub, T, integer_to_binary(I), 1)) || I <- lists:seq(1, 5)],
        ok = wait(fun() -> stored(T) =:= 5 end, 10000),
        Sub = ?D:connect(<<"subscriber-8">>),
        ok = ?D:subscribe(Sub, T, 1),
        ok = wait(fun() -> length(?D:received(Sub)) =:= 2 end, 30000),
        ?assertEqual([<<"4">>, <<"5">>], [emqx_message:payload(M) || {_, M} <- ?D:received(Sub)]),
        {ok, 2} = ?D:ack_all(Sub),
        ok = wait(fun() -> stored(T) =:= 3 end, 10000),
        cql("DELETE FROM mqtt.mqtt_msg WHERE topic = '" ++ binary_to_list(T) ++ "'"),
        [?D:disconnect(C) || C <- [Pub, Sub]]
    end).

time_range(#{name_vsn := NV} = Ctx) ->
    with_config(NV, #{<<"time_range">> => <<"1s">>}, fun() ->
        T = topic(Ctx, <<"range">>),
        Pub = ?D:connect(<<"publisher-9">>),
        ensure_routed(?D:publish(Pub, T, <<"old">>, 1)),
        timer:sleep(1500),
        ensure_routed(?D:publish(Pub, T, <<"new">>, 1)),
        ok = wait(fun() -> stored(T) =:= 2 end, 10000),
        Sub = ?D:connect(<<"subscriber-9">>),
        ok = ?D:subscribe(Sub, T, 1),
        ok = wait(fun() -> length(?D:received(Sub)) =:= 1 end, 30000),
        timer:sleep(200),
        ?assertEqual([<<"new">>], [emqx_message:payload(M) || {_, M} <- ?D:received(Sub)]),
        cql("DELETE FROM mqtt.mqtt_msg WHERE topic = '" ++ binary_to_list(T) ++ "'"),
        [?D:disconnect(C) || C <- [Pub, Sub]]
    end).

expiry(Ctx) ->
    T = topic(Ctx, <<"expiry">>),
    Pub = ?D:connect(<<"publisher-10">>),
    T0 = erlang:monotonic_time(millisecond),
    ensure_routed(?D:publish(Pub, T, <<"short">>, 1, #{properties => #{'Message-Expiry-Interval' => 2}})),
    ensure_routed(?D:publish(Pub, T, <<"long">>, 1, #{properties => #{'Message-Expiry-Interval' => 100}})),
    ok = wait(fun() -> lists:member(<<"long">>, stored_payloads(T)) end, 10000),
    timer:sleep(max(0, T0 + 3000 - erlang:monotonic_time(millisecond))),
    Sub = ?D:connect(<<"subscriber-10">>),
    ok = ?D:subscribe(Sub, T, 1),
    ok = wait(fun() -> length(?D:raw_delivered(Sub)) >= 1 end, 30000),
    timer:sleep(200),
    [{_, Msg}] = ?D:raw_delivered(Sub),
    ?assertEqual(<<"long">>, emqx_message:payload(Msg)),
    %% Forwarded with the time left, counted from the original timestamp.
    #{'Message-Expiry-Interval' := Interval} = emqx_message:get_header(properties, Msg),
    ?assert(Interval >= 99 andalso Interval =< 101),
    ?assertEqual(false, emqx_message:is_expired(Msg)),
    {ok, 1} = ?D:ack_all(Sub),
    [?D:disconnect(C) || C <- [Pub, Sub]].

bad_config(#{mode := '5.10', name_vsn := NV} = Ctx) ->
    Good = ?D:plugin_config(NV),
    {error, Why1} = ?D:update_config(NV, Good#{<<"servers">> => 9042}),
    ?assertEqual(<<"servers: must be a string">>, Why1),
    {error, Why2} = ?D:update_config(NV, Good#{<<"topics">> => [<<"t/#/x">>]}),
    ?assertEqual(<<"topics: \"t/#/x\" is not a valid topic filter">>, Why2),
    {error, Why3} = ?D:update_config(NV, Good#{<<"servers">> => <<"host:notaport">>}),
    ?assertMatch({_, _}, binary:match(Why3, <<"servers">>)),
    {error, Why4} = ?D:update_config(NV, Good#{<<"pool_size">> => 0}),
    ?assertMatch({_, _}, binary:match(Why4, <<"pool_size">>)),
    %% Still healthy, still storing with the old config.
    ?assertEqual(Good, ?D:plugin_config(NV)),
    still_working(Ctx);
bad_config(#{mode := '5.8', name_vsn := NV} = Ctx) ->
    %% 5.7-5.8 write the config and ignore the callback's answer; the plugin
    %% refuses to apply it (logged) and keeps the config it runs with.
    Good = ?D:plugin_config(NV),
    ok = ?D:update_config(NV, Good#{<<"servers">> => 9042}),
    ?assertMatch([#{reason := <<"servers: must be a string">>} | _], logged(offline_cassandra_config_rejected)),
    still_working(Ctx),
    ok = ?D:update_config(NV, Good);
bad_config(#{mode := '5.3', name_vsn := NV} = Ctx) ->
    %% No config API: a bad config file is read at start. The plugin starts
    %% (unhooked), says why in its health, and the node keeps running.
    Good = ?D:plugin_config(NV),
    ok = restart_with(NV, Good#{<<"servers">> => 9042}),
    ?assertEqual({error, <<"invalid config: servers: must be a string">>}, ?D:health(NV)),
    ?assertEqual([], [C || {_, _, {emqx_offline_cassandra_hooks, _, _}} = C <- emqx_hooks:callbacks()]),
    ok = restart_with(NV, Good),
    ok = wait(fun() -> ?D:health(NV) =:= ok end, 30000),
    still_working(Ctx).

still_working(#{name_vsn := NV} = Ctx) ->
    ?assertEqual(ok, ?D:health(NV)),
    T = topic(Ctx, <<"after-bad-config">>),
    Pub = ?D:connect(<<"publisher-11">>),
    ensure_routed(?D:publish(Pub, T, <<"still here">>, 1)),
    ok = wait(fun() -> stored(T) =:= 1 end, 10000),
    cql("DELETE FROM mqtt.mqtt_msg WHERE topic = '" ++ binary_to_list(T) ++ "'"),
    ?D:disconnect(Pub).

tls_unverified_warning(#{name_vsn := NV}) ->
    Old = ?D:plugin_config(NV),
    %% The packaged config verifies (TLS off): nothing to warn about.
    ?assertMatch(#{<<"ssl">> := #{<<"verify">> := true}}, Old),
    ?assertEqual([], logged(offline_cassandra_tls_unverified)),
    Ssl = maps:get(<<"ssl">>, Old),
    ok = apply_config(NV, Old#{<<"ssl">> => Ssl#{<<"enable">> => true, <<"verify">> => false}}),
    ok = wait(fun() -> logged(offline_cassandra_tls_unverified) =/= [] end, 10000),
    [#{reason := Why}] = logged(offline_cassandra_tls_unverified),
    ?assertMatch({_, _}, binary:match(Why, <<"password">>)),
    ok = change_config(NV, Old),
    ok = wait(fun() -> ?D:health(NV) =:= ok end, 30000),
    ?assertEqual(1, length(logged(offline_cassandra_tls_unverified))).

restart_with(NV, Config) ->
    ok = ?D:stop_plugin(NV),
    set_config('5.3', NV, Config),
    ?D:start_plugin(NV).

admin_command(Ctx) ->
    T = topic(Ctx, <<"admin">>),
    Pub = ?D:connect(<<"publisher-12">>),
    [ensure_routed(?D:publish(Pub, T, P, 1)) || P <- [<<"first">>, <<255, 0, 7>>, <<"third">>]],
    ok = wait(fun() -> stored(T) =:= 3 end, 10000),
    Tl = binary_to_list(T),
    {ok, Status} = emqx_ctl:run_command(offline_cassandra, ["status"]),
    ?assertMatch({_, _}, binary:match(Status, <<"connection: connected">>)),
    ?assertMatch({_, _}, binary:match(Status, <<"health:     ok">>)),
    ?assertEqual(nomatch, binary:match(Status, <<"public">>), "the password never shows"),
    {ok, Stats} = emqx_ctl:run_command(offline_cassandra, ["stats"]),
    [?assertMatch({_, _}, binary:match(Stats, K)) || K <- [<<"written">>, <<"stored">>, <<"replayed">>, <<"deleted">>, <<"dropped">>, <<"write_latency_p99_us">>]],
    ?assertEqual({ok, <<T/binary, ": 3 stored message(s)
">>}, emqx_ctl:run_command(offline_cassandra, ["count", Tl])),
    {ok, Peek} = emqx_ctl:run_command(offline_cassandra, ["peek", Tl, "2"]),
    ?assertMatch({_, _}, binary:match(Peek, <<"2 message(s), oldest first">>)),
    ?assertMatch({_, _}, binary:match(Peek, <<"<3 bytes: FF0007...>">>)),
    ?assertMatch({_, _}, binary:match(Peek, <<"\"third\"">>)),
    ?assertEqual(nomatch, binary:match(Peek, <<"payload=\"first\"">>), "only the newest 2"),
    ?assertEqual({ok, <<"purged ", T/binary, ": 3 stored message(s) deleted
">>}, emqx_ctl:run_command(offline_cassandra, ["purge", Tl])),
    ?assertEqual(0, stored(T)),
    {ok, Usage} = emqx_ctl:run_command(offline_cassandra, ["help"]),
    ?assertMatch({_, _}, binary:match(Usage, <<"offline_cassandra purge <topic>">>)),
    ?D:disconnect(Pub).

alarm_and_health(#{name_vsn := NV}) ->
    Good = ?D:plugin_config(NV),
    [Host, Port] = string:split(os:getenv("CASSANDRA_NODE", "127.0.0.1:9042"), ":"),
    {ok, Proxy} = emqx_offline_cassandra_tcp_proxy:start(list_to_integer(Port)),
    ProxyAddr = iolist_to_binary([Host, ":", integer_to_list(emqx_offline_cassandra_tcp_proxy:port(Proxy))]),
    try
        ok = change_config(NV, Good#{<<"servers">> => ProxyAddr}),
        ok = wait(fun() -> ?D:health(NV) =:= ok end, 20000),
        ok = emqx_offline_cassandra_tcp_proxy:cut(Proxy),
        ok = wait(fun() -> is_tuple(?D:health(NV)) end, 15000),
        {error, Why} = ?D:health(NV),
        ?assertMatch({_, _}, binary:match(Why, <<"Cassandra unreachable">>)),
        ok = wait(fun() -> [A || #{name := offline_cassandra_unreachable} = A <- emqx_alarm:get_alarms(activated)] =/= [] end, 15000),
        ok = emqx_offline_cassandra_tcp_proxy:restore(Proxy),
        ok = wait(fun() -> ?D:health(NV) =:= ok end, 30000),
        ok = wait(fun() -> emqx_alarm:get_alarms(activated) =:= [] end, 15000),
        ?assertMatch([_ | _], logged(offline_cassandra_unreachable)),
        ?assertMatch([_ | _], logged(offline_cassandra_connected))
    after
        ok = change_config(NV, Good),
        emqx_offline_cassandra_tcp_proxy:stop(Proxy)
    end,
    ok = wait(fun() -> ?D:health(NV) =:= ok end, 20000).

status_bad_password(#{name_vsn := NV}) ->
    Good = ?D:plugin_config(NV),
    Wrong = <<"not-the-password">>,
    try
        ok = apply_config(NV, Good#{<<"password">> => Wrong}),
        %% The connection line speaks of the refused login.
        ok = wait(fun() -> binary:match(status_line(<<"connection: ">>), <<"password">>) =/= nomatch end, 30000),
        {ok, Status} = emqx_ctl:run_command(offline_cassandra, ["status"]),
        Connection = status_line(<<"connection: ">>),
        [?assertEqual(nomatch, binary:match(Connection, Raw), Connection) || Raw <- [<<"{">>, <<"<<">>, <<"auth_failed">>]],
        Health = status_line(<<"health: ">>),
        ?assertMatch({0, _}, binary:match(Health, <<"health:     unhealthy: ">>)),
        [?assertEqual(nomatch, binary:match(Health, Raw), Health) || Raw <- [<<"{">>, <<"<<">>]],
        [
            ?assertMatch({match, _}, re:run(Status, <<"\n  ", Name/binary, " +[^\n]+\n">>), Name)
         || Name <- [<<"servers">>, <<"username">>, <<"topics">>, <<"max_returned_count">>, <<"time_range">>, <<"message_ttl">>, <<"reconnect_interval">>, <<"ssl.enable">>]
        ],
        ?assertMatch({match, _}, re:run(Status, <<"\\n  password +\\*+\\n">>)),
        ?assertEqual(nomatch, binary:match(Status, Wrong), "the password never shows"),
        ?assertEqual(nomatch, binary:match(Status, <<"public">>), "the password never shows")
    after
        ok = change_config(NV, Good),
        ok = wait(fun() -> ?D:health(NV) =:= ok end, 30000)
    end.

stats_full_names(#{name_vsn := NV} = Ctx) ->
    with_config(NV, #{<<"max_payload_size">> => <<"1KB">>}, fun() ->
        T = topic(Ctx, <<"too-large">>),
        Pub = ?D:connect(<<"publisher-13">>),
        ensure_routed(?D:publish(Pub, T, binary:copy(<<"x">>, 2048), 1)),
        ok = wait(fun() -> stat(<<"store_refused">>) >= 1 end, 10000),
        {ok, Stats} = emqx_ctl:run_command(offline_cassandra, ["stats"]),
        %% Longer than the 22 characters names were once cut at.
        ?assertMatch({match, _}, re:run(Stats, <<"\n  offline_cassandra_store_refused +[1-9][0-9]*\n">>), Stats),
        ?assertMatch({match, _}, re:run(Stats, <<"\n  store_refused +[1-9][0-9]*\n">>), Stats),
        ?assertMatch({match, _}, re:run(Stats, <<"\n  rejected +[1-9][0-9]*\n">>), Stats),
        %% Every counter line is a whole name and a number (clock_offset_ms may be negative).
        Rows = [L || L <- binary:split(Stats, <<"\n">>, [global]), binary:match(L, <<"  ">>) =:= {0, 2}],
        ?assert(length(Rows) > 20),
        [?assertMatch({match, _}, re:run(R, <<"^  [a-z][a-z0-9_]* +-?[0-9]+$">>), R) || R <- Rows],
        %% (read once the new connection is up)
        ok = wait(fun() -> stored(T) =:= 0 end, 10000),
        ?D:disconnect(Pub)
    end).

counters_agree_after_restart(#{name_vsn := NV} = Ctx) ->
    Before = topic(Ctx, <<"before-restart">>),
    Pub0 = ?D:connect(<<"publisher-14a">>),
    ensure_routed(?D:publish(Pub0, Before, <<"counted before">>, 1)),
    ok = wait(fun() -> stored(Before) =:= 1 end, 10000),
    ?assert(stat(<<"stored">>) > 0),
    ?assert(stat(<<"accepted">>) > 0),
    ?D:disconnect(Pub0),
    %% Replays of earlier tests (one retrying through the outage test's cut,
    %% say) end first: one that delivers after the restart counts in the new
    %% run's counters (seen once: replayed 1).
    ok = wait(fun() -> emqx_offline_cassandra_replays:count() =:= 0 end, 120000),
    ok = ?D:stop_plugin(NV),
    ok = ?D:start_plugin(NV),
    ok = wait(fun() -> ?D:health(NV) =:= ok end, 30000),
    T = topic(Ctx, <<"restart">>),
    Pub = ?D:connect(<<"publisher-14">>),
    [ensure_routed(?D:publish(Pub, T, integer_to_binary(I), 1)) || I <- [1, 2]],
    ok = wait(fun() -> stored(T) =:= 2 end, 10000),
    ?assertEqual({2, 2}, {stat(<<"stored">>), stat(<<"accepted">>)}),
    ?assertEqual({0, 0, 0}, {stat(<<"replayed">>), stat(<<"deleted">>), stat(<<"store_refused">>)}),
    [cql("DELETE FROM mqtt.mqtt_msg WHERE topic = '" ++ binary_to_list(X) ++ "'") || X <- [Before, T]],
    ?D:disconnect(Pub).

stop_removes_hooks(#{name_vsn := NV}) ->
    ok = ?D:stop_plugin(NV),
    Ours = [C || {_, _, {emqx_offline_cassandra_hooks, _, _}} = C <- emqx_hooks:callbacks()],
    ?assertEqual([], Ours),
    ?assertNot(lists:member(offline_cassandra, emqx_ctl:commands())),
    ?assertEqual(not_started, ?NIF:status()),
    %% and it starts again in the same VM.
    ok = ?D:start_plugin(NV),
    ok = wait(fun() -> ?D:health(NV) =:= ok end, 30000),
    ok = ?D:stop_plugin(NV).

%%--------------------------------------------------------------------
%% Helpers
%%--------------------------------------------------------------------

%% A message.publish hook standing in for a schema validator.
block_publish(Msg, Topic) ->
    case emqx_message:topic(Msg) of
        Topic -> {stop, emqx_message:set_header(allow_publish, false, Msg)};
        _ -> {ok, Msg}
    end.

with_config(NV, Changes, Fun) ->
    Old = ?D:plugin_config(NV),
    ok = change_config(NV, maps:merge(Old, Changes)),
    try
        Fun()
    after
        ok = change_config(NV, Old)
    end.

%% A config that is valid but may not connect: applied without waiting
%% for health.
apply_config(NV, Config) ->
    case ?D:mode() of
        '5.3' -> restart_with(NV, Config);
        _ -> ?D:update_config(NV, Config)
    end.

%% One line of `emqx ctl offline_cassandra status', by its start.
status_line(Start) ->
    {ok, Status} = emqx_ctl:run_command(offline_cassandra, ["status"]),
    [Line] = [L || L <- binary:split(Status, <<"\n">>, [global]), binary:match(L, Start) =:= {0, byte_size(Start)}],
    Line.

%% One counter of `emqx ctl offline_cassandra stats', by its full name.
stat(Name) ->
    {ok, Stats} = emqx_ctl:run_command(offline_cassandra, ["stats"]),
    {match, [N]} = re:run(Stats, <<"\n  ", Name/binary, " +([0-9]+)\n">>, [{capture, all_but_first, binary}]),
    binary_to_integer(N).

%% 5.7+: through the config API; before: the file, then a restart.
change_config(NV, Config) ->
    case ?D:mode() of
        '5.3' ->
            ok = restart_with(NV, Config),
            wait(fun() -> ?D:health(NV) =:= ok end, 30000);
        _ ->
            ?D:update_config(NV, Config)
    end.

ensure_routed({ok, _} = R) -> R;
ensure_routed(Other) -> erlang:error({publish_failed, Other}).

%% Rows stored for a topic or filter, read through the installed plugin.
stored(TopicOrFilter) ->
    case ?NIF:fetch_sync(TopicOrFilter, #{}, 5000) of
        {ok, Rows} -> length(Rows);
        {error, Reason} -> {error, Reason}
    end.

stored_payloads(TopicOrFilter) ->
    {ok, Rows} = ?NIF:fetch_sync(TopicOrFilter, #{}, 5000),
    [maps:get(payload, R) || R <- Rows].

%% cqlsh to the node under test (CASSANDRA_NODE: also the Cassandra 4.1 node of scripts/test.sh).
cql(Statement) ->
    [_Host, Port] = string:split(os:getenv("CASSANDRA_NODE", "127.0.0.1:9042"), ":"),
    Cmd = "CASSANDRA_PORT=" ++ Port ++ " test/cassandra/cassandra.sh cqlsh -e \"" ++ Statement ++ "\" 2>&1",
    os:cmd(Cmd).

cql_count(Topic) ->
    Out = cql("SELECT count(*) FROM mqtt.mqtt_msg WHERE topic = '" ++ Topic ++ "'"),
    case re:run(Out, "-+\\s*\\n\\s*([0-9]+)", [{capture, all_but_first, list}]) of
        {match, [N]} -> list_to_integer(N);
        nomatch -> {cqlsh_failed, Out}
    end.

cql_msgids(Topic) ->
    Out = cql("SELECT msgid FROM mqtt.mqtt_msg WHERE topic = '" ++ Topic ++ "'"),
    {match, Ids} = re:run(Out, "\\b([0-9A-F]{32})\\b", [global, {capture, all_but_first, binary}]),
    lists:append(Ids).

wait(Pred, Ms) ->
    emqx_offline_cassandra_test_util:wait_until(Pred, Ms).
