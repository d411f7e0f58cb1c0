%%--------------------------------------------------------------------
%% The plugin's configuration, on its one way from the dashboard form to
%% the storage core: defaults (EMQX hands over the raw map, with binary
%% keys and without Avro defaults), conversion of the form's values to
%% typed terms, the core's check, and the split into what the NIF gets
%% and what the hooks use.
%%
%% The rules for the storage settings live once, in the core
%% (StoreConfig::from_map + validate): this module only converts values
%% and turns the core's key in a reason back into the form's name, both
%% through the one table in fields/0. The hook-only settings (topics,
%% max_returned_count, time_range, message_ttl, wildcard_replay) never reach the core and
%% are checked here.
%% Pure: no network, no files (on_config_changed runs on every node); the
%% core's check is a NIF call that returns within microseconds.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_config).

-export([parse/1, defaults/0, fields/0, redact/1, duration_ms/1, size_bytes/1, dashboard_text/1]).

-type settings() :: #{
    topics := [binary()],
    max_returned_count := non_neg_integer(),
    time_range_ms := non_neg_integer(),
    message_ttl_s := non_neg_integer(),
    wildcard_replay := all | no_leading_wildcard | none
}.
-export_type([settings/0]).

%% How a form value becomes the core's typed value:
%% string, optional_string (empty: not set, left out), boolean, integer,
%% duration (whole milliseconds) and size (whole bytes).
-type kind() :: string | optional_string | boolean | integer | duration | size.

%% The first wait between connection attempts: reconnect_interval is the
%% longest, and waits double from this one up to it.
-define(FIRST_RECONNECT_WAIT_MS, 100).

%% The longest message_ttl: 20 years, Cassandra's largest TTL.
-define(MAX_MESSAGE_TTL_S, 630720000).

%% @doc Every form field with its default: what priv/config.hocon ships
%% (a test compares the two), except the credentials, which are empty
%% here because a config without them means a cluster without auth.
-spec defaults() -> map().
defaults() ->
    #{
        <<"servers">> => <<"127.0.0.1:9042">>,
        <<"keyspace">> => <<"mqtt">>,
        <<"username">> => <<"">>,
        <<"password">> => <<"">>,
        <<"pool_size">> => 8,
        <<"compression">> => <<"none">>,
        <<"auto_reconnect">> => true,
        <<"reconnect_interval">> => <<"2s">>,
        <<"request_timeout">> => <<"5s">>,
        <<"write_consistency">> => <<"local_quorum">>,
        <<"read_consistency">> => <<"local_quorum">>,
        <<"local_datacenter">> => <<"">>,
        <<"ssl">> => #{
            <<"enable">> => false,
            <<"cafile">> => <<"">>,
            <<"certfile">> => <<"">>,
            <<"keyfile">> => <<"">>,
            <<"verify">> => true,
            <<"server_name">> => <<"">>
        },
        <<"topics">> => [<<"t/#">>],
        <<"max_returned_count">> => 0,
        <<"time_range">> => <<"">>,
        <<"message_ttl">> => <<"">>,
        <<"wildcard_replay">> => <<"all">>,
        <<"max_concurrent_replay_reads">> => 32,
        <<"buffer_capacity">> => 100000,
        <<"buffer_max_size">> => <<"256MB">>,
        <<"overflow_policy">> => <<"drop_new">>,
        <<"write_give_up_after">> => <<"24h">>,
        <<"batch_linger">> => <<"100ms">>,
        <<"topic_index">> => true,
        <<"buffer_mode">> => <<"disk">>,
        <<"spool_dir">> => <<"">>,
        <<"spool_max_size">> => <<"1GB">>,
        <<"spool_sync_interval">> => <<"100ms">>,
        <<"replay_floor">> => true,
        <<"max_payload_size">> => <<"8MB">>
    }.

%% @doc The one table: each storage field of the form (ssl's as
%% `ssl.<name>'), the core's key for it, and how its value converts.
-spec fields() -> [{binary(), binary(), kind()}].
fields() ->
    [
        {<<"servers">>, <<"servers">>, string},
        {<<"keyspace">>, <<"keyspace">>, string},
        {<<"username">>, <<"username">>, optional_string},
        {<<"password">>, <<"password">>, optional_string},
        {<<"pool_size">>, <<"pool_size">>, integer},
        {<<"compression">>, <<"compression">>, string},
        {<<"auto_reconnect">>, <<"auto_reconnect">>, boolean},
        {<<"reconnect_interval">>, <<"reconnect_max_backoff">>, duration},
        {<<"request_timeout">>, <<"request_timeout">>, duration},
        {<<"write_consistency">>, <<"write_consistency">>, string},
        {<<"read_consistency">>, <<"read_consistency">>, string},
        {<<"local_datacenter">>, <<"local_datacenter">>, optional_string},
        {<<"ssl.enable">>, <<"tls_enable">>, boolean},
        {<<"ssl.cafile">>, <<"tls_ca_file">>, optional_string},
        {<<"ssl.certfile">>, <<"tls_cert_file">>, optional_string},
        {<<"ssl.keyfile">>, <<"tls_key_file">>, optional_string},
        {<<"ssl.verify">>, <<"tls_verify">>, boolean},
        {<<"ssl.server_name">>, <<"tls_server_name">>, optional_string},
        {<<"buffer_capacity">>, <<"buffer_capacity">>, integer},
        {<<"buffer_max_size">>, <<"buffer_max_bytes">>, size},
        {<<"overflow_policy">>, <<"overflow_policy">>, string},
        {<<"write_give_up_after">>, <<"write_give_up_after">>, duration},
        {<<"batch_linger">>, <<"batch_linger">>, duration},
        {<<"topic_index">>, <<"topic_index">>, boolean},
        {<<"buffer_mode">>, <<"buffer_mode">>, string},
        {<<"spool_dir">>, <<"spool_dir">>, optional_string},
        {<<"spool_max_size">>, <<"spool_max_bytes">>, size},
        {<<"spool_sync_interval">>, <<"spool_sync_interval">>, duration},
        {<<"replay_floor">>, <<"replay_floor">>, boolean},
        {<<"max_payload_size">>, <<"max_payload_bytes">>, size},
        {<<"max_concurrent_replay_reads">>, <<"max_concurrent_replay_reads">>, integer}
    ].

%% Core keys the plugin derives from a form field (see derived/1), with
%% the field a problem in them is reported under.
derived_fields() ->
    [
        {<<"reconnect_min_backoff">>, <<"reconnect_interval">>},
        {<<"replay_floor_lag">>, <<"request_timeout">>}
    ].

%% @doc Applies defaults, converts every field and has the core check the
%% storage ones. Returns the NIF's config (the core's keys, typed values)
%% and the hook settings, or the first problem found, naming its field.
-spec parse(map()) -> {ok, #{nif := map(), settings := settings()}} | {error, binary()}.
parse(Raw) when is_map(Raw) ->
    try
        Conf = with_defaults(Raw),
        Nif = core_config(Conf),
        Settings = settings(Conf),
        ok = core_check(Nif),
        {ok, #{nif => Nif, settings => Settings}}
    catch
        throw:{invalid, Field, Why} ->
            {error, iolist_to_binary([Field, ": ", Why])}
    end;
parse(_) ->
    {error, <<"config must be a map">>}.

%% @doc The config with the password replaced, for logs and status output.
-spec redact(map()) -> map().
redact(#{<<"password">> := P} = Conf) when P =/= <<>>, P =/= "" ->
    Conf#{<<"password">> => <<"******">>};
redact(Conf) ->
    Conf.

%% @doc A reason from the core with its keys replaced by the form's names
%% (`tls_ca_file' -> `ssl.cafile'), for what a user reads.
-spec dashboard_text(binary()) -> binary().
dashboard_text(Text) when is_binary(Text) ->
    lists:foldl(
        fun
            ({Same, Same, _}, Acc) -> Acc;
            ({Field, Key, _}, Acc) -> re:replace(Acc, ["\\b", Key, "\\b"], Field, [global, {return, binary}])
        end,
        Text,
        fields()
    ).

%%--------------------------------------------------------------------

with_defaults(Raw) ->
    Defaults = defaults(),
    Conf0 = maps:merge(Defaults, maps:without([<<"ssl">>], Raw)),
    Ssl = maps:merge(maps:get(<<"ssl">>, Defaults), ssl_map(maps:get(<<"ssl">>, Raw, #{}))),
    Conf = Conf0#{<<"ssl">> => Ssl},
    Unknown = maps:keys(maps:without(maps:keys(Defaults), Conf)),
    Unknown =:= [] orelse
        throw({invalid, hd(Unknown), <<"unknown field">>}),
    UnknownSsl = maps:keys(maps:without(maps:keys(maps:get(<<"ssl">>, Defaults)), Ssl)),
    UnknownSsl =:= [] orelse
        throw({invalid, <<"ssl.", (hd(UnknownSsl))/binary>>, <<"unknown field">>}),
    Conf.

ssl_map(M) when is_map(M) -> M;
ssl_map(_) -> throw({invalid, <<"ssl">>, <<"must be an object">>}).

%% The storage fields as the core's keys and typed values.
core_config(Conf) ->
    Typed = lists:foldl(
        fun({Field, Key, Kind}, Acc) ->
            case convert(Field, Kind, form_value(Field, Conf)) of
                omit -> Acc;
                Value -> Acc#{Key => Value}
            end
        end,
        #{},
        fields()
    ),
    with_spool_dir(maps:merge(Typed, derived(Typed))).

%% spool_dir: empty means <EMQX data dir>/offline_cassandra/spool (made
%% absolute: EMQX 5.3 answers "data", relative to its root).
with_spool_dir(#{<<"spool_dir">> := _} = Typed) ->
    Typed;
with_spool_dir(Typed) ->
    case catch emqx:data_dir() of
        Data when is_list(Data); is_binary(Data) ->
            Dir = filename:absname(filename:join([Data, "offline_cassandra", "spool"])),
            Typed#{<<"spool_dir">> => unicode:characters_to_binary(Dir)};
        _ ->
            Typed
    end.

%% reconnect_min_backoff: waits start at 100 ms (or at reconnect_interval
%% when that is shorter). replay_floor_lag follows request_timeout: half
%% the lag must cover one write attempt (see docs/tombstones.md).
derived(#{<<"reconnect_max_backoff">> := MaxWait, <<"request_timeout">> := Timeout}) ->
    #{
        <<"reconnect_min_backoff">> => min(?FIRST_RECONNECT_WAIT_MS, MaxWait),
        <<"replay_floor_lag">> => max(60000, 2 * Timeout + 1000)
    }.

form_value(<<"ssl.", Name/binary>>, #{<<"ssl">> := Ssl}) -> maps:get(Name, Ssl);
form_value(Field, Conf) -> maps:get(Field, Conf).

convert(Field, string, V) -> str(Field, V);
convert(Field, optional_string, V) ->
    case str(Field, V) of
        <<>> -> omit;
        S -> S
    end;
convert(_Field, boolean, B) when is_boolean(B) -> B;
convert(Field, boolean, _) -> throw({invalid, Field, <<"must be true or false">>});
convert(_Field, integer, I) when is_integer(I) -> I;
convert(Field, integer, _) -> throw({invalid, Field, <<"must be a whole number">>});
convert(Field, duration, V) -> duration(Field, V);
convert(Field, size, V) ->
    case size_bytes(V) of
        {ok, Bytes} -> Bytes;
        error -> throw({invalid, Field, <<"must be a size such as 1048576, 512KB or 8MB">>})
    end.

%% The core checks the storage fields, once; its key in the answer is
%% turned back into the form's name.
core_check(Nif) ->
    case emqx_offline_cassandra_nif:config_problem(Nif) of
        ok ->
            ok;
        {Key, Why} ->
            Field = proplists:get_value(Key, [{K, F} || {F, K, _} <- fields()] ++ derived_fields(), Key),
            throw({invalid, Field, dashboard_text(Why)})
    end.

%% max_returned_count: the newest N a replay delivers, 0 = all of them (a
%% replay is paced and paged: no cap hides in 0). The bound keeps the ids
%% a newest-N replay sorts to find its start (2 x N, 32 bytes each) small;
%% the form's bound (config_schema.avsc) is the same number (a test checks).
-define(MAX_RETURNED_COUNT, 1000000).

settings(Conf) ->
    #{
        topics => topics(maps:get(<<"topics">>, Conf)),
        max_returned_count => int(
            <<"max_returned_count">>, maps:get(<<"max_returned_count">>, Conf), 0, ?MAX_RETURNED_COUNT
        ),
        time_range_ms => duration(<<"time_range">>, maps:get(<<"time_range">>, Conf)),
        message_ttl_s => message_ttl_s(maps:get(<<"message_ttl">>, Conf)),
        wildcard_replay => wildcard_replay(maps:get(<<"wildcard_replay">>, Conf))
    }.

%% wildcard_replay: which wildcard subscriptions replay (exact topics
%% always do).
wildcard_replay(V) ->
    case str(<<"wildcard_replay">>, V) of
        <<"all">> -> all;
        <<"no_leading_wildcard">> -> no_leading_wildcard;
        <<"none">> -> none;
        _ -> throw({invalid, <<"wildcard_replay">>, <<"must be all, no_leading_wildcard or none">>})
    end.

%% message_ttl: empty (or 0) keeps messages until acknowledged; otherwise
%% from 1 s (a shorter one would round to 0, which means forever) to 20
%% years (Cassandra's largest TTL; a longer one overflows the NIF's
%% argument and every store would fail), in whole seconds (rounded down).
message_ttl_s(V) ->
    case duration(<<"message_ttl">>, V) of
        0 ->
            0;
        Ms when Ms >= 1000, Ms div 1000 =< ?MAX_MESSAGE_TTL_S ->
            Ms div 1000;
        _ ->
            throw({invalid, <<"message_ttl">>, <<"must be from 1s to 7300d (20 years), or empty to keep messages until acknowledged">>})
    end.

topics(L) when is_list(L), L =/= [] ->
    [topic_filter(T) || T <- L];
topics(_) ->
    throw({invalid, <<"topics">>, <<"must be a non-empty list of topic filters, e.g. [\"t/#\"]">>}).

topic_filter(T0) ->
    T = str(<<"topics">>, T0),
    emqx_offline_cassandra_topic:is_valid_filter(T) orelse
        throw({invalid, <<"topics">>, [$", T, "\" is not a valid topic filter"]}),
    T.

duration(Field, V) ->
    case duration_ms(V) of
        {ok, Ms} -> Ms;
        error -> throw({invalid, Field, <<"must be a duration such as 500ms, 30s, 2h or 7d (empty: none)">>})
    end.

%% @doc "" or "0" -> 0; "500ms", "30s", "5m", "2h", "7d"; a bare number is ms.
-spec duration_ms(term()) -> {ok, non_neg_integer()} | error.
duration_ms(V) when is_list(V) ->
    try unicode:characters_to_binary(V) of
        B when is_binary(B) -> duration_ms(B);
        _ -> error
    catch
        _:_ -> error
    end;
duration_ms(<<>>) ->
    {ok, 0};
duration_ms(V) when is_binary(V) ->
    case re:run(string:trim(V), <<"^([0-9]+)\\s*(ms|s|m|h|d)?$">>, [{capture, all_but_first, binary}]) of
        {match, [N]} -> {ok, binary_to_integer(N)};
        {match, [N, Unit]} -> {ok, binary_to_integer(N) * unit_ms(Unit)};
        nomatch -> error
    end;
duration_ms(V) when is_integer(V), V >= 0 ->
    {ok, V};
duration_ms(_) ->
    error.

unit_ms(<<"ms">>) -> 1;
unit_ms(<<"s">>) -> 1000;
unit_ms(<<"m">>) -> 60000;
unit_ms(<<"h">>) -> 3600000;
unit_ms(<<"d">>) -> 86400000.

%% @doc "1048576", "512KB", "8MB", "1GB" (binary units, any case; KiB,
%% MiB and GiB too); an integer is bytes.
-spec size_bytes(term()) -> {ok, non_neg_integer()} | error.
size_bytes(V) when is_list(V) ->
    try unicode:characters_to_binary(V) of
        B when is_binary(B) -> size_bytes(B);
        _ -> error
    catch
        _:_ -> error
    end;
size_bytes(V) when is_binary(V) ->
    case re:run(string:trim(V), <<"^([0-9]+)\\s*(b|kb|kib|mb|mib|gb|gib)?$">>, [caseless, {capture, all_but_first, binary}]) of
        {match, [N]} -> {ok, binary_to_integer(N)};
        {match, [N, Unit]} -> {ok, binary_to_integer(N) * unit_bytes(string:lowercase(Unit))};
        nomatch -> error
    end;
size_bytes(V) when is_integer(V), V >= 0 ->
    {ok, V};
size_bytes(_) ->
    error.

unit_bytes(<<"b">>) -> 1;
unit_bytes(<<"kb">>) -> 1024;
unit_bytes(<<"kib">>) -> 1024;
unit_bytes(<<"mb">>) -> 1048576;
unit_bytes(<<"mib">>) -> 1048576;
unit_bytes(<<"gb">>) -> 1073741824;
unit_bytes(<<"gib">>) -> 1073741824.

str(_Field, V) when is_binary(V) -> V;
str(Field, V) when is_list(V) ->
    try unicode:characters_to_binary(V) of
        B when is_binary(B) -> B;
        _ -> throw({invalid, Field, <<"must be a string">>})
    catch
        _:_ -> throw({invalid, Field, <<"must be a string">>})
    end;
str(Field, _) ->
    throw({invalid, Field, <<"must be a string">>}).

int(_Field, I, Min, Max) when is_integer(I), I >= Min, I =< Max -> I;
int(Field, _, Min, Max) ->
    throw({invalid, Field, io_lib:format("must be a whole number from ~b to ~b", [Min, Max])}).
