%%--------------------------------------------------------------------
%% The plugin's configuration: defaults (EMQX hands over the raw map, with
%% binary keys and without Avro defaults), validation with reasons a person
%% can read, and the split into what the NIF gets and what the hooks use.
%% Pure: no network, no files (on_config_changed runs on every node).
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_config).

-export([parse/1, defaults/0, redact/1, duration_ms/1]).

-type settings() :: #{
    topics := [binary()],
    max_returned_count := non_neg_integer(),
    time_range_ms := non_neg_integer(),
    message_ttl_s := non_neg_integer()
}.
-export_type([settings/0]).

%% @doc Every field with its default (what config.hocon ships).
-spec defaults() -> map().
defaults() ->
    #{
        <<"servers">> => <<"127.0.0.1:9042">>,
        <<"keyspace">> => <<"mqtt">>,
        <<"username">> => <<"">>,
        <<"password">> => <<"">>,
        <<"pool_size">> => 8,
        <<"auto_reconnect">> => true,
        <<"reconnect_interval">> => <<"2s">>,
        <<"request_timeout">> => <<"5s">>,
        <<"write_consistency">> => <<"local_quorum">>,
        <<"read_consistency">> => <<"local_quorum">>,
        <<"ssl">> => #{
            <<"enable">> => false,
            <<"cafile">> => <<"">>,
            <<"certfile">> => <<"">>,
            <<"keyfile">> => <<"">>,
            <<"verify">> => false,
            <<"server_name">> => <<"">>
        },
        <<"topics">> => [<<"t/#">>],
        <<"max_returned_count">> => 0,
        <<"time_range">> => <<"">>,
        <<"message_ttl">> => <<"">>,
        <<"buffer_capacity">> => 100000,
        <<"overflow_policy">> => <<"drop_new">>,
        <<"topic_index">> => true,
        <<"replay_floor">> => true,
        <<"max_payload_size">> => <<"8MB">>
    }.

%% @doc Applies defaults and checks every field. Returns the NIF's config
%% (binary keys, the core's names) and the hook settings, or the first
%% problem found, naming its field.
-spec parse(map()) -> {ok, #{nif := map(), settings := settings()}} | {error, binary()}.
parse(Raw) when is_map(Raw) ->
    Defaults = defaults(),
    Conf0 = maps:merge(Defaults, maps:without([<<"ssl">>], Raw)),
    Ssl = maps:merge(maps:get(<<"ssl">>, Defaults), ssl_map(maps:get(<<"ssl">>, Raw, #{}))),
    Conf = Conf0#{<<"ssl">> => Ssl},
    try
        {ok, build(Conf)}
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

%%--------------------------------------------------------------------

ssl_map(M) when is_map(M) -> M;
ssl_map(_) -> throw({invalid, <<"ssl">>, <<"must be an object">>}).

build(Conf) ->
    Unknown = maps:keys(maps:without(maps:keys(defaults()), Conf)),
    Unknown =:= [] orelse
        throw({invalid, hd(Unknown), <<"unknown field">>}),
    Ssl = maps:get(<<"ssl">>, Conf),
    UnknownSsl = maps:keys(maps:without(maps:keys(maps:get(<<"ssl">>, defaults())), Ssl)),
    UnknownSsl =:= [] orelse
        throw({invalid, <<"ssl.", (hd(UnknownSsl))/binary>>, <<"unknown field">>}),
    TlsEnable = bool(<<"ssl.enable">>, maps:get(<<"enable">>, Ssl)),
    TlsVerify = bool(<<"ssl.verify">>, maps:get(<<"verify">>, Ssl)),
    [CaFile, CertFile, KeyFile, ServerName] =
        [str(<<"ssl.", K/binary>>, maps:get(K, Ssl)) || K <- [<<"cafile">>, <<"certfile">>, <<"keyfile">>, <<"server_name">>]],
    TlsEnable andalso TlsVerify andalso CaFile =:= <<>> andalso
        throw({invalid, <<"ssl.cafile">>, <<"is required when ssl.verify is true">>}),
    TlsEnable andalso (CertFile =:= <<>>) =/= (KeyFile =:= <<>>) andalso
        throw({invalid, <<"ssl.keyfile">>, <<"ssl.certfile and ssl.keyfile go together">>}),
    Username = str(<<"username">>, maps:get(<<"username">>, Conf)),
    Password = str(<<"password">>, maps:get(<<"password">>, Conf)),
    (Username =:= <<>>) =:= (Password =:= <<>>) orelse
        throw({invalid, <<"password">>, <<"username and password must be set together">>}),
    Reconnect = duration(<<"reconnect_interval">>, Conf),
    Reconnect > 0 orelse throw({invalid, <<"reconnect_interval">>, <<"must be greater than 0">>}),
    Timeout = duration(<<"request_timeout">>, Conf),
    Timeout > 0 orelse throw({invalid, <<"request_timeout">>, <<"must be greater than 0">>}),
    Nif0 = #{
        <<"servers">> => nonempty(<<"servers">>, maps:get(<<"servers">>, Conf)),
        <<"keyspace">> => nonempty(<<"keyspace">>, maps:get(<<"keyspace">>, Conf)),
        <<"pool_size">> => int(<<"pool_size">>, maps:get(<<"pool_size">>, Conf), 1, 64),
        <<"auto_reconnect">> => bool(<<"auto_reconnect">>, maps:get(<<"auto_reconnect">>, Conf)),
        <<"reconnect_min_backoff">> => ms(min(100, Reconnect)),
        <<"reconnect_max_backoff">> => ms(Reconnect),
        <<"request_timeout">> => ms(Timeout),
        <<"write_consistency">> => str(<<"write_consistency">>, maps:get(<<"write_consistency">>, Conf)),
        <<"read_consistency">> => str(<<"read_consistency">>, maps:get(<<"read_consistency">>, Conf)),
        <<"buffer_capacity">> => int(<<"buffer_capacity">>, maps:get(<<"buffer_capacity">>, Conf), 1, 10000000),
        <<"overflow_policy">> => str(<<"overflow_policy">>, maps:get(<<"overflow_policy">>, Conf)),
        <<"topic_index">> => bool(<<"topic_index">>, maps:get(<<"topic_index">>, Conf)),
        <<"replay_floor">> => bool(<<"replay_floor">>, maps:get(<<"replay_floor">>, Conf)),
        %% Half the lag must cover one write attempt (see docs/tombstones.md).
        <<"replay_floor_lag">> => ms(max(60000, 2 * Timeout + 1000)),
        <<"max_payload_bytes">> => str(<<"max_payload_size">>, maps:get(<<"max_payload_size">>, Conf)),
        <<"tls_enable">> => TlsEnable,
        <<"tls_verify">> => TlsVerify,
        <<"tls_ca_file">> => CaFile,
        <<"tls_cert_file">> => CertFile,
        <<"tls_key_file">> => KeyFile,
        <<"tls_server_name">> => ServerName
    },
    Nif =
        case Username of
            <<>> -> Nif0;
            _ -> Nif0#{<<"username">> => Username, <<"password">> => Password}
        end,
    Settings = #{
        topics => topics(maps:get(<<"topics">>, Conf)),
        max_returned_count => int(<<"max_returned_count">>, maps:get(<<"max_returned_count">>, Conf), 0, 1000000),
        time_range_ms => duration(<<"time_range">>, Conf),
        message_ttl_s => duration(<<"message_ttl">>, Conf) div 1000
    },
    #{nif => Nif, settings => Settings}.

topics(L) when is_list(L), L =/= [] ->
    [topic_filter(T) || T <- L];
topics(_) ->
    throw({invalid, <<"topics">>, <<"must be a non-empty list of topic filters, e.g. [\"t/#\"]">>}).

topic_filter(T0) ->
    T = str(<<"topics">>, T0),
    Levels = binary:split(T, <<"/">>, [global]),
    Valid =
        T =/= <<>> andalso
            binary:match(T, <<0>>) =:= nomatch andalso
            valid_levels(Levels),
    Valid orelse throw({invalid, <<"topics">>, [$", T, "\" is not a valid topic filter"]}),
    T.

valid_levels([<<"#">>]) -> true;
valid_levels([<<"#">> | _]) -> false;
valid_levels([L | Rest]) -> valid_level(L) andalso valid_levels(Rest);
valid_levels([]) -> true.

valid_level(<<"+">>) -> true;
valid_level(L) -> binary:match(L, [<<"+">>, <<"#">>]) =:= nomatch.

duration(Field, Conf) ->
    case duration_ms(maps:get(Field, Conf)) of
        {ok, Ms} -> Ms;
        error -> throw({invalid, Field, <<"must be a duration such as 500ms, 30s, 2h or 7d (empty: none)">>})
    end.

%% @doc "" or "0" -> 0; "500ms", "30s", "5m", "2h", "7d"; a bare number is ms.
-spec duration_ms(term()) -> {ok, non_neg_integer()} | error.
duration_ms(V) when is_list(V) ->
    duration_ms(list_to_binary(V));
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

ms(N) -> iolist_to_binary([integer_to_list(N), "ms"]).

str(_Field, V) when is_binary(V) -> V;
str(Field, V) when is_list(V) ->
    try
        unicode:characters_to_binary(V)
    catch
        _:_ -> throw({invalid, Field, <<"must be a string">>})
    end;
str(Field, _) ->
    throw({invalid, Field, <<"must be a string">>}).

nonempty(Field, V) ->
    case str(Field, V) of
        <<>> -> throw({invalid, Field, <<"must not be empty">>});
        S -> S
    end.

bool(_Field, B) when is_boolean(B) -> B;
bool(Field, _) -> throw({invalid, Field, <<"must be true or false">>}).

int(_Field, I, Min, Max) when is_integer(I), I >= Min, I =< Max -> I;
int(Field, _, Min, Max) ->
    throw({invalid, Field, io_lib:format("must be a whole number from ~b to ~b", [Min, Max])}).
