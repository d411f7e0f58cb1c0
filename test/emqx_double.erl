%%--------------------------------------------------------------------
%% A small double of the EMQX node the plugin runs in, faithful to EMQX's
%% source (emqx_plugins install and load, emqx_hooks, delivery to a channel)
%% and to what a real EMQX 5.3.2 node showed:
%%
%% - plugins: install a tarball the way EMQX does (extract in memory, write
%%   regular files, add the ebin path, purge + load every beam, load the app,
%%   start it within 10 s), config through emqx_plugins:get_config/1,
%%   on_config_changed/2 and on_health_check/1 with 5.9 semantics;
%% - a broker: message.publish run as a fold in the publisher's process,
%%   allow_publish honoured, routing to matching subscribers (one member per
%%   shared group), message.dropped when nobody subscribes;
%% - channels: client processes that run session.subscribed inside
%%   themselves, accept {deliver, TopicFilter, Msg}, cap QoS by the
%%   subscription found by that TopicFilter, clear retain for rap = 0, use
%%   inflight (32) and an mqueue (1000), run message.delivered, and run
%%   message.acked on PUBACK (QoS 1) or PUBREC (QoS 2).
%%
%% Modes play EMQX versions: '5.3' (extra = [], share in SubOpts), '5.8'
%% (get_config/1 -> {ok, Map}) and '5.10' (plain map, #share{}).
%%--------------------------------------------------------------------
-module(emqx_double).

-export([start/1, stop/0, mode/0, version/0, extra_default/0, config_api/0, data_dir/0, write_config_file/2]).
-export([install_plugin/1, start_plugin/1, stop_plugin/1, plugin_config/1, update_config/2, health/1]).
-export([connect/1, connect/2, subscribe/3, unsubscribe/2, publish/4, publish/5, received/1, raw_delivered/1,
         ack/2, pubrec/2, pubcomp/2, ack_all/1, disconnect/1, disconnect/2, inflight/1, stats/1]).
-export([init_channel/2, deliver/3, publish_message/1]).

-define(ROUTES, emqx_double_routes).
-define(CHANNELS, emqx_double_channels).
%% The received log of clients with log => ids, outside their heaps.
-define(LOG, emqx_double_log).
-define(MODE, {?MODULE, mode}).
-define(DIR, {?MODULE, dir}).
-define(START_TIMEOUT, 10000).

%%--------------------------------------------------------------------
%% The node
%%--------------------------------------------------------------------

%% @doc Starts a fresh node double. Opts: mode ('5.3' | '5.8' | '5.10').
start(Opts) ->
    Mode = maps:get(mode, Opts, '5.10'),
    persistent_term:put(?MODE, Mode),
    Dir = filename:join(["/tmp", "emqx_double_" ++ os:getpid(), atom_to_list(Mode)]),
    os:cmd("rm -rf " ++ Dir),
    ok = filelib:ensure_dir(filename:join(Dir, "x")),
    persistent_term:put(?DIR, Dir),
    emqx_hooks:reset(),
    ok = load_plugins_module(Mode),
    ok = load_extsub_modules(Mode),
    case ets:whereis(?ROUTES) of
        undefined ->
            Parent = self(),
            spawn(fun() ->
                ets:new(?ROUTES, [named_table, public, bag]),
                ets:new(?CHANNELS, [named_table, public, set]),
                ets:new(?LOG, [named_table, public, ordered_set, {write_concurrency, true}]),
                Parent ! routes_ready,
                receive stop -> ok end
            end),
            receive routes_ready -> ok end;
        _ ->
            ets:delete_all_objects(?ROUTES),
            ets:delete_all_objects(?CHANNELS),
            ets:delete_all_objects(?LOG)
    end,
    ok.

%% EMQX before 5.7 has no plugin configuration: emqx_plugins exports only
%% get_config/2, which reads the plugin subsystem's own settings (the trap
%% §8 describes). 5.7+ use the emqx_plugins double from test/.
load_plugins_module('5.3') ->
    Forms = [
        {attribute, 1, module, emqx_plugins},
        {attribute, 2, export, [{get_config, 2}]},
        {function, 3, get_config, 2, [
            {clause, 3, [{atom, 3, install_dir}, {var, 3, '_'}], [], [{string, 3, "plugins"}]},
            {clause, 4, [{var, 4, '_'}, {var, 4, 'Default'}], [], [{var, 4, 'Default'}]}
        ]}
    ],
    {ok, emqx_plugins, Bin} = compile:forms(Forms),
    code:purge(emqx_plugins),
    {module, emqx_plugins} = code:load_binary(emqx_plugins, "emqx_plugins_5_3", Bin),
    ok;
load_plugins_module(_) ->
    code:purge(emqx_plugins),
    {module, emqx_plugins} = code:load_file(emqx_plugins),
    ok.

%% EMQX 6.1.1+ ships emqx_extsub: the registry and the behaviour (whose
%% callbacks tell 6.1.1+ from 6.1.0), backed by emqx_double_extsub. Other
%% modes have neither.
load_extsub_modules('6.2') ->
    ok = emqx_double_extsub:start(),
    compile_module([
        "-module(emqx_extsub_handler_registry).",
        "-export([register/2, unregister/1]).",
        "register(M, O) -> emqx_double_extsub:register(M, O).",
        "unregister(M) -> emqx_double_extsub:unregister(M)."
    ]),
    compile_module([
        "-module(emqx_extsub_handler).",
        "-export([behaviour_info/1]).",
        "behaviour_info(callbacks) -> [{handle_subscribe, 4}, {handle_unsubscribe, 4}, {handle_terminate, 1},"
        " {handle_delivered, 4}, {handle_info, 3}]; behaviour_info(_) -> undefined."
    ]);
load_extsub_modules(_) ->
    [begin code:purge(M), code:delete(M), code:purge(M) end
     || M <- [emqx_extsub_handler_registry, emqx_extsub_handler]],
    ok.

compile_module(Lines) ->
    Forms = [begin {ok, Ts, _} = erl_scan:string(L), {ok, F} = erl_parse:parse_form(Ts), F end || L <- Lines],
    {ok, Mod, Bin} = compile:forms(Forms),
    code:purge(Mod),
    {module, Mod} = code:load_binary(Mod, atom_to_list(Mod) ++ ".erl", Bin),
    ok.

stop() ->
    emqx_hooks:reset(),
    catch ets:delete_all_objects(?ROUTES),
    ok.

mode() -> persistent_term:get(?MODE, '5.10').

version() ->
    case mode() of
        '5.3' -> "5.3.2";
        '5.8' -> "5.8.9";
        '5.10' -> "5.10.4";
        '6.2' -> "6.2.2"
    end.

extra_default() ->
    case mode() of
        '5.3' -> [];
        _ -> #{}
    end.

config_api() ->
    case mode() of
        '5.10' -> plain_map;
        '6.2' -> plain_map;
        _ -> tuple_ok
    end.

data_dir() -> filename:join(persistent_term:get(?DIR), "data").

%% @doc Writes <data_dir>/plugins/<name>/config.hocon (JSON syntax), where a
%% plugin on EMQX 5.0-5.6 finds its config.
write_config_file(Name, Config) ->
    File = filename:join([data_dir(), "plugins", Name, "config.hocon"]),
    ok = filelib:ensure_dir(File),
    ok = file:write_file(File, encode_json(Config)).

encode_json(M) when is_map(M) ->
    ["{", lists:join(",", [[encode_json(K), ":", encode_json(V)] || {K, V} <- maps:to_list(M)]), "}"];
encode_json(L) when is_list(L) -> ["[", lists:join(",", [encode_json(V) || V <- L]), "]"];
encode_json(B) when is_binary(B) -> [$", string:replace(string:replace(B, "\\", "\\\\", all), "\"", "\\\"", all), $"];
encode_json(true) -> "true";
encode_json(false) -> "false";
encode_json(null) -> "null";
encode_json(I) when is_integer(I) -> integer_to_list(I);
encode_json(F) when is_float(F) -> float_to_list(F, [short]).

%%--------------------------------------------------------------------
%% Plugins (emqx_plugins_fs / emqx_plugins_apps behaviour)
%%--------------------------------------------------------------------

%% @doc Installs a plugin tarball: {ok, NameVsn} or {error, Why}.
install_plugin(TarGz) ->
    NameVsn = list_to_binary(filename:basename(TarGz, ".tar.gz")),
    InstallDir = filename:join(persistent_term:get(?DIR), "plugins"),
    {ok, Bin} = file:read_file(TarGz),
    %% erl_tar in memory returns regular files only (symlinks and directory
    %% entries are dropped); each is written with file:write_file/2.
    {ok, Files} = erl_tar:extract({binary, Bin}, [compressed, memory]),
    lists:foreach(
        fun({Name, Content}) ->
            Path = filename:join(InstallDir, Name),
            ok = filelib:ensure_dir(Path),
            ok = file:write_file(Path, Content)
        end,
        Files
    ),
    PluginDir = filename:join(InstallDir, NameVsn),
    {ok, RelJson} = file:read_file(filename:join(PluginDir, "release.json")),
    Rel = emqx_double_json:decode(RelJson),
    [Name, Vsn, RelApps, _Desc] = [maps:get(K, Rel) || K <- [<<"name">>, <<"rel_vsn">>, <<"rel_apps">>, <<"description">>]],
    NameVsn =:= <<Name/binary, "-", Vsn/binary>> orelse error({name_vsn_mismatch, NameVsn}),
    [load_app(PluginDir, AppVsn) || AppVsn <- RelApps],
    %% The main app is the single rel_app whose name starts with the plugin name.
    [MainApp] = [A || A <- RelApps, binary:match(A, Name) =:= {0, byte_size(Name)}],
    ConfigFile = filename:join([PluginDir, MainApp, "priv", "config.hocon"]),
    Config =
        case file:read_file(ConfigFile) of
            {ok, Hocon} -> emqx_double_json:decode(Hocon);
            {error, _} -> #{}
        end,
    persistent_term:put({?MODULE, plugin_config, NameVsn}, Config),
    persistent_term:put({?MODULE, plugin_app, NameVsn}, binary_to_atom(Name)),
    persistent_term:put({?MODULE, plugin_apps, NameVsn}, {PluginDir, RelApps}),
    {ok, NameVsn}.

load_app(PluginDir, AppVsn) ->
    Ebin = unicode:characters_to_list(filename:join([PluginDir, AppVsn, "ebin"])),
    true = code:add_patha(Ebin),
    Beams = filelib:wildcard(filename:join(Ebin, "*.beam")),
    lists:foreach(
        fun(Beam) ->
            Mod = list_to_atom(filename:basename(Beam, ".beam")),
            code:purge(Mod),
            case code:load_file(Mod) of
                {module, Mod} -> ok;
                {error, Reason} -> error({failed_to_load_plugin_beam, Mod, Reason})
            end
        end,
        Beams
    ),
    [App | _] = binary:split(AppVsn, <<"-">>),
    case application:load(binary_to_atom(App)) of
        ok -> ok;
        {error, {already_loaded, _}} -> ok
    end.

%% @doc Starts the plugin's app in another process, failing after 10 s (5.7.2+).
start_plugin(NameVsn) ->
    App = persistent_term:get({?MODULE, plugin_app, NameVsn}),
    %% 5.8 and older reload every beam when the app is not loaded (after a
    %% stop, which unloads it): the NIF module is loaded over its old self.
    case not lists:member(mode(), ['5.10', '6.2']) andalso application:get_key(App, vsn) =:= undefined of
        true ->
            {PluginDir, RelApps} = persistent_term:get({?MODULE, plugin_apps, NameVsn}),
            [load_app(PluginDir, A) || A <- RelApps];
        false ->
            ok
    end,
    Parent = self(),
    {Pid, MRef} = spawn_monitor(fun() -> Parent ! {self(), application:ensure_all_started(App)} end),
    receive
        {Pid, {ok, _}} -> ok;
        {Pid, Error} -> Error;
        {'DOWN', MRef, process, Pid, Reason} -> {error, Reason}
    after ?START_TIMEOUT ->
        exit(Pid, kill),
        {error, timeout}
    end.

%% @doc Stops the app; 5.8 and older also soft-purge its modules and unload it.
stop_plugin(NameVsn) ->
    App = persistent_term:get({?MODULE, plugin_app, NameVsn}),
    Result = application:stop(App),
    case mode() of
        '5.10' ->
            ok;
        '6.2' ->
            ok;
        _ ->
            {ok, Mods} = application:get_key(App, modules),
            [code:soft_purge(M) || M <- Mods],
            application:unload(App)
    end,
    Result.

plugin_config(NameVsn) ->
    persistent_term:get({?MODULE, plugin_config, NameVsn}, #{}).

%% @doc PUT /plugins/:name/config. 5.9+: the app's on_config_changed/2 must
%% return exactly ok to accept. 5.7-5.8: the config is written first and
%% the callback's result is ignored. Before 5.7 there is no such API.
update_config(NameVsn, New) ->
    case mode() of
        '5.3' -> {error, no_plugin_config_api};
        '5.8' -> update_config_58(NameVsn, New);
        '5.10' -> update_config_59(NameVsn, New);
        '6.2' -> update_config_59(NameVsn, New)
    end.

update_config_58(NameVsn, New) ->
    App = persistent_term:get({?MODULE, plugin_app, NameVsn}),
    Old = plugin_config(NameVsn),
    persistent_term:put({?MODULE, plugin_config, NameVsn}, New),
    Mod = list_to_atom(atom_to_list(App) ++ "_app"),
    _ = (catch Mod:on_config_changed(Old, New)),
    ok.

update_config_59(NameVsn, New) ->
    App = persistent_term:get({?MODULE, plugin_app, NameVsn}),
    Old = plugin_config(NameVsn),
    Mod = list_to_atom(atom_to_list(App) ++ "_app"),
    Result =
        try Mod:on_config_changed(Old, New) of
            ok -> ok;
            {error, Reason} -> {error, Reason};
            Other -> {error, {bad_callback_return_value, Other}}
        catch
            C:E -> {error, {C, E}}
        end,
    case Result of
        ok -> persistent_term:put({?MODULE, plugin_config, NameVsn}, New);
        _ -> ok
    end,
    Result.

%% @doc What GET /plugins shows as health_status (5.9+).
health(NameVsn) ->
    App = persistent_term:get({?MODULE, plugin_app, NameVsn}),
    Mod = list_to_atom(atom_to_list(App) ++ "_app"),
    Mod:on_health_check(#{}).

%%--------------------------------------------------------------------
%% Clients: one process per connection, as emqx_connection + emqx_channel
%% + emqx_session_mem (5.x; the facts in shared/reference/paced-replay.md):
%%
%% - inflight (max_inflight, default 32) holds QoS 1/2 PUBLISHes until
%%   PUBACK, or PUBREC then PUBCOMP (QoS 2: the slot is kept at PUBREC);
%% - the mqueue (max_mqueue_len, default 1000) holds the rest; when full it
%%   drops its OLDEST message and runs delivery.dropped(.., queue_full);
%% - message.acked runs on PUBACK and on PUBREC; delivery.completed on
%%   PUBACK and on PUBCOMP; each freed slot takes the next queued message;
%% - a persistent session survives a disconnect (the channel lives on, all
%%   deliveries go to the mqueue, client.disconnected runs); a connect with
%%   clean_start = false takes it over: session.takenover runs in the old
%%   channel, which hands over its session and the deliveries still in its
%%   mailbox and ends; session.resumed runs in the new one, which resends
%%   its inflight (DUP PUBLISH, or PUBREL);
%% - a client that acks by itself (auto_ack) answers every PUBLISH/PUBREL
%%   through the mailbox, like a network peer.
%%--------------------------------------------------------------------

connect(ClientId) -> connect(ClientId, #{}).

%% @doc Opts: max_inflight, max_mqueue_len, auto_ack (boolean), log
%% (full: [{PacketId, Msg}] | ids: [{PacketId, Id, Dup}] only, for long
%% runs), clean_start (false: take over the session ClientId left),
%% disconnect_after (the client goes away after this many PUBLISHes,
%% keeping its session).
connect(ClientId, Opts) ->
    Parent = self(),
    Ref = make_ref(),
    Pid = proc_lib:spawn(?MODULE, init_channel, [ClientId, {Parent, Ref, Opts}]),
    receive
        {Ref, ready} -> Pid
    after 10000 -> error(connect_timeout)
    end.

subscribe(Pid, Filter, QoS) -> call(Pid, {subscribe, Filter, QoS}).
unsubscribe(Pid, Filter) -> call(Pid, {unsubscribe, Filter}).
publish(Pid, Topic, Payload, QoS) -> publish(Pid, Topic, Payload, QoS, #{}).
%% Opts: retain (boolean), properties (MQTT 5 map).
publish(Pid, Topic, Payload, QoS, Opts) -> call(Pid, {publish, Topic, Payload, QoS, Opts}).
%% @doc [{PacketId | undefined, Msg}] as sent to the client (after QoS cap and rap).
received(Pid) -> call(Pid, received).
%% @doc [{TopicFilter, Msg}] exactly as the channel got them.
raw_delivered(Pid) -> call(Pid, raw_delivered).
inflight(Pid) -> call(Pid, inflight).
%% @doc #{inflight, mqueue_len, dropped, received (PUBLISHes sent), dups (of
%% them DUP resends), acked, completed, conn}.
stats(Pid) -> call(Pid, stats).
%% @doc The client's acks of one packet id: PUBACK (QoS 1), or PUBREC then
%% PUBCOMP (QoS 2; pubrec/2 and pubcomp/2 send one of the two).
ack(Pid, PacketId) -> call(Pid, {ack, PacketId}).
pubrec(Pid, PacketId) -> call(Pid, {pubrec, PacketId}).
pubcomp(Pid, PacketId) -> call(Pid, {pubcomp, PacketId}).
%% @doc Acks everything in flight, and what moves from the mqueue into
%% flight meanwhile, until nothing is left.
ack_all(Pid) -> call(Pid, ack_all).
%% @doc The connection ends; the session with it (disconnect/1), or kept
%% for a resume (disconnect(Pid, #{keep_session => true})).
disconnect(Pid) -> call(Pid, disconnect).
disconnect(Pid, #{keep_session := true}) -> call(Pid, keep_session_disconnect).

call(Pid, Req) ->
    Ref = monitor(process, Pid),
    Pid ! {call, self(), Ref, Req},
    receive
        {Ref, Reply} ->
            demonitor(Ref, [flush]),
            Reply;
        {'DOWN', Ref, process, Pid, Reason} ->
            {error, {channel_down, Reason}}
    after 10000 -> {error, timeout}
    end.

init_channel(ClientId, {Parent, Ref, Opts}) ->
    CI = #{clientid => ClientId, username => undefined, zone => default, listener => 'tcp:default',
           protocol => mqtt, peerhost => {127, 0, 0, 1}, mountpoint => undefined,
           is_bridge => false, is_superuser => false},
    Fresh = #{
        subs => #{},
        inflight => [],
        next_id => 1,
        mqueue => queue:new(),
        %% queue:len/1 walks the queue: its length is kept beside it.
        qlen => 0,
        received => [],
        raw => [],
        counts => #{dropped => 0, acked => 0, completed => 0, sent => 0, dups => 0}
    },
    St0 = #{
        clientid => ClientId,
        clientinfo => CI,
        conn => connected,
        max_inflight => maps:get(max_inflight, Opts, 32),
        max_mqueue_len => maps:get(max_mqueue_len, Opts, 1000),
        auto_ack => maps:get(auto_ack, Opts, false),
        log => maps:get(log, Opts, full),
        disconnect_after => maps:get(disconnect_after, Opts, infinity)
    },
    case maps:get(clean_start, Opts, true) of
        true ->
            register_channel(ClientId),
            Parent ! {Ref, ready},
            channel_loop(maps:merge(St0, Fresh));
        false ->
            {Session, Pendings} = take_over(ClientId, Fresh),
            register_channel(ClientId),
            St1 = maps:merge(St0, Session),
            %% Like emqx_session_mem:resume/2: the hook runs in the new channel.
            emqx_hooks:run('session.resumed', [CI, #{subscriptions => maps:get(subs, St1)}]),
            is_extsub() andalso emqx_double_extsub:resumed(St1),
            %% Resend what was in flight, then the deliveries the old channel had not handled.
            St2 = lists:foldl(fun resend/2, St1#{inflight := []}, maps:get(inflight, St1)),
            St3 = lists:foldl(fun({deliver, F, M}, A) -> handle_deliver(F, M, A) end, St2, Pendings),
            Parent ! {Ref, ready},
            channel_loop(dequeue(St3))
    end.

register_channel(ClientId) ->
    case ets:whereis(?CHANNELS) of
        undefined -> ok;
        _ -> ets:insert(?CHANNELS, {ClientId, self()})
    end.

%% emqx_cm:takeover_session: the old channel hands over its session and the
%% deliveries still in its mailbox, then ends.
take_over(ClientId, Fresh) ->
    case ets:whereis(?CHANNELS) =/= undefined andalso ets:lookup(?CHANNELS, ClientId) of
        [{_, Old}] when Old =/= self() ->
            case call(Old, {takeover, self()}) of
                {ok, Session, Pendings} -> {Session, Pendings};
                _ -> {Fresh, []}
            end;
        _ ->
            {Fresh, []}
    end.

resend({PacketId, Msg, wait_ack}, #{inflight := I} = St) ->
    %% DUP PUBLISH of the same packet id.
    record(PacketId, Msg, St#{inflight := I ++ [{PacketId, Msg, wait_ack}]}, true);
resend({PacketId, Msg, wait_comp}, #{inflight := I} = St) ->
    %% PUBREL again.
    St1 = St#{inflight := I ++ [{PacketId, Msg, wait_comp}]},
    client_auto(St1, {pubcomp, PacketId}),
    St1.

channel_loop(St) ->
    receive
        {call, From, Ref, disconnect} ->
            ets:match_delete(?ROUTES, {'_', self(), '_'}),
            catch ets:delete_object(?CHANNELS, {maps:get(clientid, St), self()}),
            emqx_hooks:run('client.disconnected', [maps:get(clientinfo, St), normal, #{}]),
            From ! {Ref, ok};
        {call, From, Ref, {takeover, _NewPid}} ->
            emqx_hooks:run('session.takenover', [maps:get(clientinfo, St), #{}]),
            ets:match_delete(?ROUTES, {'_', self(), '_'}),
            Session = maps:with([subs, inflight, next_id, mqueue, qlen, received, raw, counts], St),
            Pendings = drain_delivers([]),
            %% The routes follow the session to the new channel.
            [ets:insert(?ROUTES, {real_topic(F), From, group_of(F)}) || F <- maps:keys(maps:get(subs, St))],
            From ! {Ref, {ok, Session, Pendings}};
        {call, From, Ref, Req} ->
            {Reply, St1} = handle_call(Req, St),
            From ! {Ref, Reply},
            channel_loop(St1);
        {deliver, TopicFilter, Msg} ->
            channel_loop(handle_deliver(TopicFilter, Msg, St));
        {extsub_info, Ref, Info} ->
            channel_loop(emqx_double_extsub:info(Ref, Info, St));
        extsub_retry ->
            put(extsub_st, (get(extsub_st))#{retry := false}),
            channel_loop(emqx_double_extsub:try_deliver(St));
        {client, _Packet, _PacketId} when map_get(conn, St) =:= disconnected ->
            %% Lost with the connection.
            channel_loop(St);
        {client, puback, PacketId} ->
            {_, St1} = do_puback(PacketId, St),
            channel_loop(St1);
        {client, pubrec, PacketId} ->
            {_, St1} = do_pubrec(PacketId, St),
            channel_loop(St1);
        {client, pubcomp, PacketId} ->
            {_, St1} = do_pubcomp(PacketId, St),
            channel_loop(St1);
        _Unknown ->
            %% EMQX 5 channels log and drop what they do not know.
            channel_loop(St)
    end.

drain_delivers(Acc) ->
    receive
        {deliver, _, _} = D -> drain_delivers([D | Acc])
    after 0 -> lists:reverse(Acc)
    end.

real_topic({share, _G, T}) -> T;
real_topic(T) -> T.
group_of({share, G, _T}) -> G;
group_of(_) -> undefined.

handle_call({subscribe, Filter0, QoS}, #{subs := Subs, clientinfo := CI} = St) ->
    {TopicFilter, Real, Group, Extra} = parse_share(Filter0),
    SubOpts0 = maps:merge(#{qos => QoS, nl => 0, rap => 0, rh => 0, sub_props => #{}}, Extra),
    IsNew = not maps:is_key(TopicFilter, Subs),
    SubOpts = SubOpts0#{is_new => IsNew},
    IsNew andalso ets:insert(?ROUTES, {Real, self(), Group}),
    %% Like emqx_session:subscribe/4: the hook runs in the channel, before SUBACK.
    emqx_hooks:run('session.subscribed', [CI, TopicFilter, SubOpts]),
    St1 = St#{subs => Subs#{TopicFilter => SubOpts0}},
    %% 6.1.1+: emqx_extsub's own session.subscribed hook offers it to the handlers.
    IsNew andalso is_extsub() andalso emqx_double_extsub:subscribed(CI, TopicFilter, SubOpts, subscribe),
    {ok, St1};
handle_call({unsubscribe, Filter0}, #{subs := Subs, clientinfo := CI} = St) ->
    {TopicFilter, Real, Group, _} = parse_share(Filter0),
    case maps:take(TopicFilter, Subs) of
        {SubOpts, Rest} ->
            ets:delete_object(?ROUTES, {Real, self(), Group}),
            emqx_hooks:run('session.unsubscribed', [CI, TopicFilter, SubOpts]),
            is_extsub() andalso emqx_double_extsub:unsubscribed(TopicFilter),
            {ok, St#{subs => Rest}};
        error ->
            {{error, no_subscription}, St}
    end;
handle_call({publish, Topic, Payload, QoS, Opts}, #{clientid := ClientId} = St) ->
    Headers = #{proto_ver => 5, protocol => mqtt, username => undefined, peerhost => {127, 0, 0, 1},
                properties => maps:get(properties, Opts, #{})},
    Msg0 = emqx_message:make(ClientId, QoS, Topic, Payload, #{retain => maps:get(retain, Opts, false)}, Headers),
    {route(Msg0), St};
handle_call(received, #{log := ids, clientid := ClientId} = St) ->
    {ets:select(?LOG, [{{{ClientId, '_'}, '$1', '$2', '$3'}, [], [{{'$1', '$2', '$3'}}]}]), St};
handle_call(received, #{received := R} = St) ->
    {lists:reverse(R), St};
handle_call(raw_delivered, #{raw := R} = St) ->
    {lists:reverse(R), St};
handle_call(inflight, #{inflight := I} = St) ->
    {[{Id, Msg} || {Id, Msg, _} <- I], St};
handle_call(stats, #{inflight := I, mqueue := Q, counts := C, conn := Conn} = St) ->
    {C#{inflight => length(I), mqueue_len => maps:get(qlen, St, queue:len(Q)), received => maps:get(sent, C),
        conn => Conn}, St};
handle_call(keep_session_disconnect, St) ->
    {ok, go_away(St)};
handle_call({ack, PacketId}, St) ->
    case lists:keyfind(PacketId, 1, maps:get(inflight, St)) of
        {_, Msg, wait_ack} ->
            case emqx_message:qos(Msg) of
                2 ->
                    {ok, St1} = do_pubrec(PacketId, St),
                    do_pubcomp(PacketId, St1);
                _ ->
                    do_puback(PacketId, St)
            end;
        {_, _, wait_comp} ->
            do_pubcomp(PacketId, St);
        false ->
            {{error, packet_id_not_found}, St}
    end;
handle_call({pubrec, PacketId}, St) ->
    do_pubrec(PacketId, St);
handle_call({pubcomp, PacketId}, St) ->
    do_pubcomp(PacketId, St);
handle_call(ack_all, St) ->
    ack_all_(St, 0).

ack_all_(#{inflight := []} = St, N) ->
    {{ok, N}, St};
ack_all_(#{inflight := [{Id, _, _} | _]} = St, N) ->
    {ok, St1} = handle_call_ack(Id, St),
    ack_all_(St1, N + 1).

handle_call_ack(Id, St) ->
    handle_call({ack, Id}, St).

%% PUBACK: emqx_session:puback (delivery.completed, the next queued message
%% takes the slot), then the channel's message.acked.
do_puback(PacketId, #{inflight := Inflight, clientinfo := CI} = St) ->
    case lists:keytake(PacketId, 1, Inflight) of
        {value, {_, Msg, wait_ack}, Rest} ->
            St1 = completed(Msg, St#{inflight => Rest}),
            St2 = acked(CI, Msg, St1),
            {ok, dequeue(St2)};
        _ ->
            {{error, packet_id_not_found}, St}
    end.

%% PUBREC: the slot is kept (wait_comp); message.acked runs; PUBREL goes out.
do_pubrec(PacketId, #{inflight := Inflight, clientinfo := CI} = St) ->
    case lists:keyfind(PacketId, 1, Inflight) of
        {_, Msg, wait_ack} ->
            St1 = St#{inflight => lists:keyreplace(PacketId, 1, Inflight, {PacketId, Msg, wait_comp})},
            St2 = acked(CI, Msg, St1),
            client_auto(St2, {pubcomp, PacketId}),
            {ok, St2};
        _ ->
            {{error, packet_id_not_found}, St}
    end.

%% PUBCOMP: the slot is freed, delivery.completed runs, the queue moves on.
do_pubcomp(PacketId, #{inflight := Inflight} = St) ->
    case lists:keytake(PacketId, 1, Inflight) of
        {value, {_, Msg, wait_comp}, Rest} ->
            {ok, dequeue(completed(Msg, St#{inflight => Rest}))};
        _ ->
            {{error, packet_id_not_found}, St}
    end.

acked(CI, Msg, #{counts := C} = St) ->
    emqx_hooks:run('message.acked', [CI, emqx_message:set_header(puback_props, #{}, Msg)]),
    St#{counts := C#{acked := maps:get(acked, C) + 1}}.

completed(Msg, #{counts := C, clientid := ClientId} = St) ->
    emqx_hooks:run('delivery.completed', [Msg, #{session_birth_time => 0, clientid => ClientId}]),
    St1 = St#{counts := C#{completed := maps:get(completed, C) + 1}},
    case is_extsub() of
        true -> emqx_double_extsub:completed(Msg, St1);
        false -> St1
    end.

%% `$share/Group/Topic': EMQX 5.4+ hands #share{group, topic} to the hook;
%% 5.0-5.3 the plain topic with share => Group in SubOpts.
parse_share(<<"$share/", Rest/binary>>) ->
    [Group, Topic] = binary:split(Rest, <<"/">>),
    case mode() of
        '5.3' -> {Topic, Topic, Group, #{share => Group}};
        _ -> {{share, Group, Topic}, Topic, Group, #{}}
    end;
parse_share(Topic) ->
    {Topic, Topic, undefined, #{}}.

%% emqx_broker:publish/1: the message.publish fold runs in the publisher's
%% process; allow_publish = false drops it; then every matching subscriber
%% gets {deliver, Filter, Msg}, one member per shared group.
route(Msg0) ->
    Msg = emqx_hooks:run_fold('message.publish', [], Msg0),
    case emqx_message:get_header(allow_publish, Msg, true) of
        false ->
            {dropped, not_allowed};
        true ->
            Topic = emqx_message:topic(Msg),
            Matches = [R || {Filter, _, _} = R <- ets:tab2list(?ROUTES), emqx_topic:match(Topic, Filter)],
            Plain = [{F, P} || {F, P, undefined} <- Matches],
            Shared = maps:values(maps:from_list([{{G, F}, {F, P}} || {F, P, G} <- lists:reverse(Matches), G =/= undefined])),
            Targets = Plain ++ Shared,
            case Targets of
                [] -> emqx_hooks:run('message.dropped', [Msg, #{node => node()}, no_subscribers]);
                _ -> ok
            end,
            [P ! {deliver, deliver_filter(F, P), Msg} || {F, P} <- Targets],
            {ok, length(Targets)}
    end.

deliver_filter(Filter, _Pid) -> Filter.

%% @doc Publishes a message made earlier (emqx_message:make/6): its id and
%% timestamp are older than its routing, as for a publish that was on its
%% way through the hooks (or delayed) while a client subscribed.
publish_message(Msg) ->
    route(Msg).

%% @doc {deliver, TopicFilter, Msg} handled by this channel (extsub's path).
deliver(TopicFilter, Msg, St) ->
    handle_deliver(TopicFilter, Msg, St).

%% emqx_session:enrich_deliver/4 + emqx_session_mem:deliver_msg/3; while
%% disconnected, straight into the mqueue (emqx_channel:handle_deliver).
handle_deliver(TopicFilter, Msg0, #{subs := Subs, raw := Raw, log := Log} = St0) ->
    St =
        case Log of
            full -> St0#{raw => [{TopicFilter, Msg0} | Raw]};
            ids -> St0
        end,
    Msg =
        case find_sub(TopicFilter, Subs) of
            undefined ->
                Msg0;
            #{qos := SubQoS} = Opts ->
                M1 = setelement(3, Msg0, min(SubQoS, emqx_message:qos(Msg0))),
                case maps:get(rap, Opts, 0) =:= 0 andalso emqx_message:get_header(retained, M1, false) =/= true of
                    true -> emqx_message:set_flag(retain, false, M1);
                    false -> M1
                end
        end,
    Full = length(maps:get(inflight, St)) >= maps:get(max_inflight, St),
    %% 6.x message.nack: extsub takes back what the session cannot send now.
    Nack =
        is_extsub() andalso (maps:get(conn, St) =:= disconnected orelse Full) andalso
            emqx_message:get_header(extsub, Msg, undefined) =/= undefined,
    case {maps:get(conn, St), emqx_message:qos(Msg)} of
        _ when Nack ->
            true = emqx_double_extsub:nack(Msg),
            St;
        {disconnected, _} ->
            enqueue(Msg, St);
        {connected, 0} ->
            record(undefined, Msg, St, false);
        {connected, _} ->
            case length(maps:get(inflight, St)) < maps:get(max_inflight, St) of
                true -> send_inflight(Msg, St);
                false -> enqueue(Msg, St)
            end
    end.

find_sub(TopicFilter, Subs) ->
    case maps:find(TopicFilter, Subs) of
        {ok, Opts} -> Opts;
        error -> undefined
    end.

send_inflight(Msg, #{next_id := Id, inflight := I} = St) ->
    record(Id, Msg, St#{next_id => (Id rem 65535) + 1, inflight => I ++ [{Id, Msg, wait_ack}]}, false).

%% emqx_mqueue:in/2: a full queue drops its oldest message for the new one.
enqueue(Msg, #{mqueue := Q, clientinfo := CI, counts := C, max_mqueue_len := Max, qlen := Len} = St) ->
    case Len >= Max of
        true ->
            {{value, Oldest}, Q1} = queue:out(Q),
            emqx_hooks:run('delivery.dropped', [CI, Oldest, queue_full]),
            St#{mqueue => queue:in(Msg, Q1), counts := C#{dropped := maps:get(dropped, C) + 1}};
        false ->
            St#{mqueue => queue:in(Msg, Q), qlen := Len + 1}
    end.

dequeue(#{conn := disconnected} = St) ->
    St;
dequeue(#{mqueue := Q, inflight := I, max_inflight := Max} = St) when length(I) < Max ->
    case queue:out(Q) of
        {{value, Msg}, Q1} -> dequeue(send_inflight(Msg, St#{mqueue => Q1, qlen := maps:get(qlen, St) - 1}));
        {empty, _} -> St
    end;
dequeue(St) ->
    St.

%% The PUBLISH goes out: message.delivered, the client's log, and its ack
%% when it acks by itself.
record(PacketId, Msg0, #{received := R, clientinfo := CI, log := Log, counts := C} = St, Dup) ->
    Msg = emqx_hooks:run_fold('message.delivered', [CI], Msg0),
    R1 =
        case Log of
            full ->
                [{PacketId, Msg} | R];
            ids ->
                Key = {maps:get(clientid, St), erlang:unique_integer([monotonic, positive])},
                ets:insert(?LOG, {Key, PacketId, binary:copy(emqx_message:id(Msg)), Dup}),
                R
        end,
    Sent = maps:get(sent, C) + 1,
    Dups = maps:get(dups, C) + case Dup of true -> 1; false -> 0 end,
    St1 = St#{received => R1, counts := C#{sent := Sent, dups := Dups}},
    case PacketId of
        undefined -> ok;
        _ ->
            case emqx_message:qos(Msg) of
                1 -> client_auto(St1, {puback, PacketId});
                2 -> client_auto(St1, {pubrec, PacketId})
            end
    end,
    case Sent >= maps:get(disconnect_after, St1) andalso maps:get(conn, St1) =:= connected of
        true -> go_away(St1);
        false -> St1
    end.

%% The client is gone, its session stays (6.x: extsub saves and ends its
%% handlers on session.disconnected).
go_away(#{clientinfo := CI} = St) ->
    emqx_hooks:run('client.disconnected', [CI, normal, #{}]),
    St1 = St#{conn := disconnected},
    case is_extsub() of
        true -> emqx_double_extsub:disconnected(St1);
        false -> St1
    end.

is_extsub() -> mode() =:= '6.2'.

client_auto(#{auto_ack := true, conn := connected}, {Packet, PacketId}) ->
    self() ! {client, Packet, PacketId};
client_auto(_St, _) ->
    ok.
