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
-export([connect/1, subscribe/3, unsubscribe/2, publish/4, publish/5, received/1, raw_delivered/1,
         ack/2, ack_all/1, disconnect/1, inflight/1]).
-export([init_channel/2]).

-define(ROUTES, emqx_double_routes).
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
    case ets:whereis(?ROUTES) of
        undefined ->
            Parent = self(),
            spawn(fun() ->
                ets:new(?ROUTES, [named_table, public, bag]),
                Parent ! routes_ready,
                receive stop -> ok end
            end),
            receive routes_ready -> ok end;
        _ ->
            ets:delete_all_objects(?ROUTES)
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

stop() ->
    emqx_hooks:reset(),
    catch ets:delete_all_objects(?ROUTES),
    ok.

mode() -> persistent_term:get(?MODE, '5.10').

version() ->
    case mode() of
        '5.3' -> "5.3.2";
        '5.8' -> "5.8.9";
        '5.10' -> "5.10.4"
    end.

extra_default() ->
    case mode() of
        '5.3' -> [];
        _ -> #{}
    end.

config_api() ->
    case mode() of
        '5.10' -> plain_map;
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
    case mode() =/= '5.10' andalso application:get_key(App, vsn) =:= undefined of
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
        '5.10' -> update_config_59(NameVsn, New)
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
%%--------------------------------------------------------------------

connect(ClientId) ->
    proc_lib:spawn(?MODULE, init_channel, [ClientId, self()]).

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
%% @doc PUBACK (QoS 1) or PUBREC (QoS 2) of one packet id.
ack(Pid, PacketId) -> call(Pid, {ack, PacketId}).
%% @doc Acks everything in flight, and what moves from the mqueue into
%% flight meanwhile, until nothing is left.
ack_all(Pid) -> call(Pid, ack_all).
disconnect(Pid) -> call(Pid, disconnect).

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

init_channel(ClientId, _Owner) ->
    channel_loop(#{
        clientid => ClientId,
        clientinfo => #{clientid => ClientId, username => undefined, zone => default, listener => 'tcp:default',
                        protocol => mqtt, peerhost => {127, 0, 0, 1}, mountpoint => undefined,
                        is_bridge => false, is_superuser => false},
        subs => #{},
        inflight => [],
        next_id => 1,
        mqueue => queue:new(),
        received => [],
        raw => []
    }).

channel_loop(St) ->
    receive
        {call, From, Ref, disconnect} ->
            ets:match_delete(?ROUTES, {'_', self(), '_'}),
            From ! {Ref, ok};
        {call, From, Ref, Req} ->
            {Reply, St1} = handle_call(Req, St),
            From ! {Ref, Reply},
            channel_loop(St1);
        {deliver, TopicFilter, Msg} ->
            channel_loop(handle_deliver(TopicFilter, Msg, St));
        _Unknown ->
            %% EMQX 5 channels log and drop what they do not know.
            channel_loop(St)
    end.

handle_call({subscribe, Filter0, QoS}, #{subs := Subs, clientinfo := CI} = St) ->
    {TopicFilter, Real, Group, Extra} = parse_share(Filter0),
    SubOpts0 = maps:merge(#{qos => QoS, nl => 0, rap => 0, rh => 0, sub_props => #{}}, Extra),
    IsNew = not maps:is_key(TopicFilter, Subs),
    SubOpts = SubOpts0#{is_new => IsNew},
    IsNew andalso ets:insert(?ROUTES, {Real, self(), Group}),
    %% Like emqx_session:subscribe/4: the hook runs in the channel, before SUBACK.
    emqx_hooks:run('session.subscribed', [CI, TopicFilter, SubOpts]),
    {ok, St#{subs => Subs#{TopicFilter => SubOpts0}}};
handle_call({unsubscribe, Filter0}, #{subs := Subs, clientinfo := CI} = St) ->
    {TopicFilter, Real, Group, _} = parse_share(Filter0),
    case maps:take(TopicFilter, Subs) of
        {SubOpts, Rest} ->
            ets:delete_object(?ROUTES, {Real, self(), Group}),
            emqx_hooks:run('session.unsubscribed', [CI, TopicFilter, SubOpts]),
            {ok, St#{subs => Rest}};
        error ->
            {{error, no_subscription}, St}
    end;
handle_call({publish, Topic, Payload, QoS, Opts}, #{clientid := ClientId} = St) ->
    Headers = #{proto_ver => 5, protocol => mqtt, username => undefined, peerhost => {127, 0, 0, 1},
                properties => maps:get(properties, Opts, #{})},
    Msg0 = emqx_message:make(ClientId, QoS, Topic, Payload, #{retain => maps:get(retain, Opts, false)}, Headers),
    {route(Msg0), St};
handle_call(received, #{received := R} = St) ->
    {lists:reverse(R), St};
handle_call(raw_delivered, #{raw := R} = St) ->
    {lists:reverse(R), St};
handle_call(inflight, #{inflight := I} = St) ->
    {I, St};
handle_call({ack, PacketId}, St) ->
    {Reply, St1} = do_ack(PacketId, St),
    {Reply, St1};
handle_call(ack_all, St) ->
    ack_all_(St, 0).

ack_all_(#{inflight := []} = St, N) ->
    {{ok, N}, St};
ack_all_(#{inflight := [{Id, _} | _]} = St, N) ->
    {ok, St1} = do_ack(Id, St),
    ack_all_(St1, N + 1).

do_ack(PacketId, #{inflight := Inflight, clientinfo := CI} = St) ->
    case lists:keytake(PacketId, 1, Inflight) of
        {value, {_, Msg}, Rest} ->
            emqx_hooks:run('message.acked', [CI, emqx_message:set_header(puback_props, #{}, Msg)]),
            {ok, dequeue(St#{inflight => Rest})};
        false ->
            {{error, packet_id_not_found}, St}
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

%% emqx_session:enrich_deliver/4 + emqx_session_mem:deliver_msg/3.
handle_deliver(TopicFilter, Msg0, #{subs := Subs, clientinfo := CI, raw := Raw} = St0) ->
    St = St0#{raw => [{TopicFilter, Msg0} | Raw]},
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
    case emqx_message:qos(Msg) of
        0 ->
            record(undefined, Msg, CI, St);
        _ ->
            case length(maps:get(inflight, St)) < 32 of
                true -> send_inflight(Msg, CI, St);
                false -> enqueue(Msg, CI, St)
            end
    end.

find_sub(TopicFilter, Subs) ->
    case maps:find(TopicFilter, Subs) of
        {ok, Opts} -> Opts;
        error -> undefined
    end.

send_inflight(Msg, CI, #{next_id := Id, inflight := I} = St) ->
    record(Id, Msg, CI, St#{next_id => (Id rem 65535) + 1, inflight => I ++ [{Id, Msg}]}).

enqueue(Msg, CI, #{mqueue := Q} = St) ->
    case queue:len(Q) >= 1000 of
        true ->
            emqx_hooks:run('delivery.dropped', [CI, Msg, queue_full]),
            St;
        false ->
            St#{mqueue => queue:in(Msg, Q)}
    end.

dequeue(#{mqueue := Q, clientinfo := CI} = St) ->
    case queue:out(Q) of
        {{value, Msg}, Q1} -> send_inflight(Msg, CI, St#{mqueue => Q1});
        {empty, _} -> St
    end.

record(PacketId, Msg0, CI, #{received := R} = St) ->
    Msg = emqx_hooks:run_fold('message.delivered', [CI], Msg0),
    St#{received => [{PacketId, Msg} | R]}.
