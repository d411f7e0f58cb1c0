%%--------------------------------------------------------------------
%% Differences between EMQX versions, decided once at start (detect/0)
%% and read from a persistent_term afterwards, never per message.
%%
%% - where the plugin config comes from: emqx_plugins:get_config/1 (5.7+;
%%   {ok, Map} before 5.9, a plain map from 5.9), or a HOCON file read with
%%   EMQX's own hocon library (5.0-5.6);
%% - the default of #message.extra: [] up to 5.3, #{} from 5.4 (read off a
%%   message made by the running EMQX);
%% - shared subscriptions: #share{group, topic} from 5.4, the plain filter
%%   with `share' in SubOpts before;
%% - how a backlog is replayed: through the external-subscription handler
%%   API (emqx_extsub) from 6.1.1, demand-driven; before, by sending
%%   {deliver, ...} to the channel, paced by completions (6.1.0 has an
%%   extsub with other callback signatures: it takes the common path).
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_compat).

-export([
    detect/0,
    features/0,
    name_vsn/0,
    read_config/0,
    message_extra/0,
    replay_path/0,
    parse_subscription/2
]).

-define(APP, emqx_offline_cassandra).
-define(KEY, {?MODULE, features}).

-type features() :: #{
    emqx_version := binary(),
    config_api := none | tuple_ok | plain_map,
    message_extra := [] | map(),
    replay_path := deliver | extsub
}.

%% @doc Looks at the running EMQX once; logs what it found in one line.
-spec detect() -> features().
detect() ->
    Features = #{
        emqx_version => emqx_version(),
        config_api => config_api(),
        message_extra => probe_message_extra(),
        replay_path => probe_replay_path()
    },
    persistent_term:put(?KEY, Features),
    Features.

-spec features() -> features().
features() ->
    case persistent_term:get(?KEY, undefined) of
        undefined -> detect();
        F -> F
    end.

%% @doc <<"emqx_offline_cassandra-<vsn>">>, as EMQX addresses the plugin.
-spec name_vsn() -> binary().
name_vsn() ->
    _ = application:load(?APP),
    {ok, Vsn} = application:get_key(?APP, vsn),
    iolist_to_binary([atom_to_list(?APP), "-", Vsn]).

%% @doc The plugin's raw config map (binary keys) and where it came from.
-spec read_config() -> {ok, map(), binary()} | {error, term()}.
read_config() ->
    case maps:get(config_api, features()) of
        plain_map ->
            {ok, emqx_plugins:get_config(name_vsn()), <<"emqx_plugins:get_config/1">>};
        tuple_ok ->
            case emqx_plugins:get_config(name_vsn()) of
                {ok, Map} -> {ok, Map, <<"emqx_plugins:get_config/1">>};
                Other -> {error, {bad_plugin_config, Other}}
            end;
        none ->
            read_config_file()
    end.

%% @doc The `extra' field of a rebuilt #message{} for this EMQX.
-spec message_extra() -> [] | map().
message_extra() ->
    maps:get(message_extra, features()).

%% @doc extsub on EMQX 6.1.1+ (emqx_offline_cassandra_extsub), else deliver
%% (emqx_offline_cassandra_replay).
-spec replay_path() -> deliver | extsub.
replay_path() ->
    maps:get(replay_path, features(), deliver).

%% @doc The filter to look up and the shared-subscription group, if any,
%% from what session.subscribed passed.
-spec parse_subscription(term(), map()) -> {binary(), undefined | binary()}.
parse_subscription({share, Group, Topic}, _SubOpts) when is_binary(Topic) ->
    {Topic, Group};
parse_subscription(Topic, #{share := Group}) when is_binary(Topic) ->
    {Topic, Group};
parse_subscription(Topic, _SubOpts) when is_binary(Topic) ->
    {Topic, undefined}.

%%--------------------------------------------------------------------

emqx_version() ->
    try
        iolist_to_binary(emqx_release:version())
    catch
        _:_ -> <<"unknown">>
    end.

%% 5.3 exports get_config/2 for the plugin subsystem's own settings, so only
%% get_config/1 says "plugin config API"; its result shape tells 5.7-5.8
%% ({ok, Map}) from 5.9+ (Map).
config_api() ->
    _ = code:ensure_loaded(emqx_plugins),
    case erlang:function_exported(emqx_plugins, get_config, 1) of
        false ->
            none;
        true ->
            case catch emqx_plugins:get_config(name_vsn()) of
                {ok, M} when is_map(M) -> tuple_ok;
                M when is_map(M) -> plain_map;
                _ -> tuple_ok
            end
    end.

probe_message_extra() ->
    try emqx_message:make(<<"emqx_offline_cassandra">>, <<"probe">>) of
        Msg when is_tuple(Msg), tuple_size(Msg) >= 10 -> element(10, Msg);
        _ -> #{}
    catch
        _:_ -> #{}
    end.

%% 6.1.1 changed the handler callbacks (handle_unsubscribe/4, the
%% {ok, State} results); 6.1.0's are not used.
probe_replay_path() ->
    _ = code:ensure_loaded(emqx_extsub_handler_registry),
    _ = code:ensure_loaded(emqx_extsub_handler),
    Callbacks =
        try
            emqx_extsub_handler:behaviour_info(callbacks)
        catch
            _:_ -> []
        end,
    case
        erlang:function_exported(emqx_extsub_handler_registry, register, 2) andalso
            lists:member({handle_unsubscribe, 4}, Callbacks)
    of
        true -> extsub;
        false -> deliver
    end.

%% EMQX before 5.7: <data_dir>/plugins/<name>/config.hocon if present, else
%% the packaged priv/config.hocon, parsed with the hocon library EMQX ships.
read_config_file() ->
    DataFile = filename:join([data_dir(), "plugins", atom_to_list(?APP), "config.hocon"]),
    PrivFile = filename:join(priv_dir(), "config.hocon"),
    File =
        case filelib:is_regular(DataFile) of
            true -> DataFile;
            false -> PrivFile
        end,
    case catch hocon:load(File) of
        {ok, Map} when is_map(Map) -> {ok, Map, iolist_to_binary(File)};
        Error -> {error, {cannot_read_config_file, iolist_to_binary(File), Error}}
    end.

data_dir() ->
    try
        emqx:data_dir()
    catch
        _:_ -> "data"
    end.

priv_dir() ->
    case code:priv_dir(?APP) of
        {error, _} -> filename:join(filename:dirname(filename:dirname(code:which(?MODULE))), "priv");
        Dir -> Dir
    end.
