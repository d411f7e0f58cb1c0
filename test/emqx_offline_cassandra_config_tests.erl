%% Plugin config parsing: defaults, every field's checks (the storage ones
%% made by the core through the NIF, named by the form), the NIF map, and
%% that every layer's defaults are those of priv/config.hocon.
-module(emqx_offline_cassandra_config_tests).

-include_lib("eunit/include/eunit.hrl").

-define(C, emqx_offline_cassandra_config).

defaults_parse_test() ->
    {ok, #{nif := Nif, settings := S}} = ?C:parse(#{}),
    ?assertEqual(<<"127.0.0.1:9042">>, maps:get(<<"servers">>, Nif)),
    ?assertNot(maps:is_key(<<"username">>, Nif)),
    ?assertEqual(#{topics => [<<"t/#">>], max_returned_count => 0, time_range_ms => 0, message_ttl_s => 0,
                   wildcard_replay => all}, S).

seed_config_test() ->
    {ok, #{nif := Nif, settings := S}} = ?C:parse(#{
        <<"servers">> => <<"10.0.0.1:9042,10.0.0.2">>,
        <<"username">> => <<"root">>,
        <<"password">> => <<"public">>,
        <<"topics">> => [<<"t/#">>, <<"a/+/b">>],
        <<"max_returned_count">> => 500,
        <<"time_range">> => <<"2h">>,
        <<"message_ttl">> => <<"7d">>,
        <<"wildcard_replay">> => <<"no_leading_wildcard">>,
        <<"reconnect_interval">> => <<"2s">>,
        <<"ssl">> => #{<<"enable">> => false}
    }),
    ?assertEqual(<<"root">>, maps:get(<<"username">>, Nif)),
    ?assertEqual(2000, maps:get(<<"reconnect_max_backoff">>, Nif)),
    ?assertEqual(#{topics => [<<"t/#">>, <<"a/+/b">>], max_returned_count => 500,
                   time_range_ms => 7200000, message_ttl_s => 604800, wildcard_replay => no_leading_wildcard}, S).

each_bad_value_names_its_field_test_() ->
    Cases = [
        {<<"servers">>, 9042},
        {<<"servers">>, <<>>},
        {<<"keyspace">>, <<>>},
        {<<"pool_size">>, 0},
        {<<"pool_size">>, <<"8">>},
        {<<"auto_reconnect">>, <<"yes">>},
        {<<"reconnect_interval">>, <<"soon">>},
        {<<"reconnect_interval">>, <<"0s">>},
        {<<"topics">>, []},
        {<<"topics">>, <<"t/#">>},
        {<<"topics">>, [<<"t/#/x">>]},
        {<<"topics">>, [<<"t/a+">>]},
        {<<"max_returned_count">>, -1},
        {<<"time_range">>, <<"2 weeks">>},
        {<<"message_ttl">>, true},
        {<<"message_ttl">>, <<"500ms">>},
        {<<"message_ttl">>, <<"999">>},
        {<<"message_ttl">>, <<"50000d">>},
        {<<"message_ttl">>, <<"7301d">>},
        {<<"buffer_capacity">>, 0},
        {<<"wildcard_replay">>, <<"some">>},
        {<<"wildcard_replay">>, 1},
        {<<"no_such_field">>, 1}
    ],
    [
        ?_assertMatch({error, <<Field:(byte_size(Field))/binary, ": ", _/binary>>}, ?C:parse(#{Field => Value}))
     || {Field, Value} <- Cases
    ].

%% message_ttl from 1 s to 20 years (Cassandra's largest TTL): "500ms"
%% would round to 0 (= forever) and "50000d" would overflow every store.
message_ttl_bounds_test() ->
    Ttl = fun(V) ->
        {ok, #{settings := #{message_ttl_s := S}}} = ?C:parse(#{<<"message_ttl">> => V}),
        S
    end,
    ?assertEqual(0, Ttl(<<"">>)),
    ?assertEqual(0, Ttl(<<"0">>)),
    ?assertEqual(1, Ttl(<<"1s">>)),
    ?assertEqual(1, Ttl(<<"1500ms">>)),
    ?assertEqual(630720000, Ttl(<<"7300d">>)),
    Refused = <<"message_ttl: must be from 1s to 7300d (20 years), or empty to keep messages until acknowledged">>,
    ?assertEqual({error, Refused}, ?C:parse(#{<<"message_ttl">> => <<"500ms">>})),
    ?assertEqual({error, Refused}, ?C:parse(#{<<"message_ttl">> => <<"50000d">>})),
    ?assertEqual({error, Refused}, ?C:parse(#{<<"message_ttl">> => <<"630720001s">>})).

ssl_maps_to_the_nif_tls_fields_test() ->
    {ok, #{nif := Nif}} = ?C:parse(#{<<"ssl">> => #{<<"enable">> => true, <<"verify">> => true,
        <<"cafile">> => <<"/etc/ca.pem">>, <<"certfile">> => <<"/etc/c.pem">>, <<"keyfile">> => <<"/etc/c.key">>,
        <<"server_name">> => <<"cassandra.example">>}}),
    ?assertMatch(#{<<"tls_enable">> := true, <<"tls_verify">> := true, <<"tls_ca_file">> := <<"/etc/ca.pem">>,
                   <<"tls_cert_file">> := <<"/etc/c.pem">>, <<"tls_key_file">> := <<"/etc/c.key">>,
                   <<"tls_server_name">> := <<"cassandra.example">>}, Nif),
    ?assertMatch({error, <<"ssl.cafile: ", _/binary>>}, ?C:parse(#{<<"ssl">> => #{<<"enable">> => true, <<"verify">> => true}})),
    ?assertMatch({error, <<"ssl.keyfile: ", _/binary>>},
                 ?C:parse(#{<<"ssl">> => #{<<"enable">> => true, <<"verify">> => false, <<"certfile">> => <<"/c">>}})),
    ?assertMatch({error, <<"ssl.enable: ", _/binary>>}, ?C:parse(#{<<"ssl">> => #{<<"enable">> => <<"yes">>}})),
    ?assertMatch({error, <<"ssl.bogus: ", _/binary>>}, ?C:parse(#{<<"ssl">> => #{<<"bogus">> => 1}})).

%% Verification is the default: TLS turned on without a word about verify
%% needs the CA file; verify = false (an earlier version's config) is kept.
tls_verifies_by_default_test() ->
    ?assertEqual({error, <<"ssl.cafile: is required when ssl.verify is true">>},
                 ?C:parse(#{<<"ssl">> => #{<<"enable">> => true}})),
    {ok, #{nif := Nif}} = ?C:parse(#{<<"ssl">> => #{<<"enable">> => true, <<"cafile">> => <<"/etc/ca.pem">>}}),
    ?assertMatch(#{<<"tls_verify">> := true}, Nif),
    {ok, #{nif := Old}} = ?C:parse(#{<<"ssl">> => #{<<"enable">> => true, <<"verify">> => false}}),
    ?assertMatch(#{<<"tls_enable">> := true, <<"tls_verify">> := false}, Old).

credentials_in_pairs_test() ->
    ?assertMatch({error, <<"password: ", _/binary>>}, ?C:parse(#{<<"username">> => <<"root">>})).

redact_test() ->
    ?assertEqual(#{<<"password">> => <<"******">>}, ?C:redact(#{<<"password">> => <<"public">>})),
    ?assertEqual(#{<<"password">> => <<>>}, ?C:redact(#{<<"password">> => <<>>})).

durations_test() ->
    ?assertEqual({ok, 0}, ?C:duration_ms(<<>>)),
    ?assertEqual({ok, 500}, ?C:duration_ms(<<"500ms">>)),
    ?assertEqual({ok, 500}, ?C:duration_ms(<<"500">>)),
    ?assertEqual({ok, 86400000}, ?C:duration_ms(<<"1d">>)),
    ?assertEqual(error, ?C:duration_ms(<<"1w">>)).

sizes_test() ->
    ?assertEqual({ok, 8388608}, ?C:size_bytes(<<"8MB">>)),
    ?assertEqual({ok, 524288}, ?C:size_bytes(<<"512KB">>)),
    ?assertEqual({ok, 1048576}, ?C:size_bytes(<<"1MiB">>)),
    ?assertEqual({ok, 100}, ?C:size_bytes(<<"100">>)),
    ?assertEqual({ok, 100}, ?C:size_bytes(100)),
    %% GB for the disk buffer's size (spool_max_size, 1GB by default).
    ?assertEqual({ok, 1073741824}, ?C:size_bytes(<<"1GB">>)),
    ?assertEqual(error, ?C:size_bytes(<<"1TB">>)),
    ?assertEqual(error, ?C:size_bytes(-1)).

%% The NIF gets typed values: whole milliseconds, whole bytes, booleans.
typed_values_for_the_core_test() ->
    {ok, #{nif := Nif}} = ?C:parse(#{<<"request_timeout">> => <<"3s">>, <<"max_payload_size">> => <<"1MB">>,
                                     <<"reconnect_interval">> => <<"50ms">>, <<"batch_linger">> => <<"250ms">>}),
    ?assertMatch(#{<<"request_timeout">> := 3000, <<"max_payload_bytes">> := 1048576, <<"batch_linger">> := 250,
                   <<"reconnect_max_backoff">> := 50, <<"reconnect_min_backoff">> := 50,
                   <<"replay_floor_lag">> := 60000, <<"tls_enable">> := false}, Nif),
    {ok, #{nif := Defaults}} = ?C:parse(#{}),
    ?assertMatch(#{<<"reconnect_max_backoff">> := 2000, <<"reconnect_min_backoff">> := 100}, Defaults),
    %% Empty credentials and TLS files are left out (the core's "not set").
    ?assertEqual([], [K || {K, <<>>} <- maps:to_list(Defaults)]).

%% The core checks, Erlang words it as the form names it.
core_reasons_use_the_form_names_test() ->
    ?assertEqual({error, <<"ssl.cafile: is required when ssl.verify is true">>},
                 ?C:parse(#{<<"ssl">> => #{<<"enable">> => true, <<"verify">> => true}})),
    ?assertEqual({error, <<"ssl.keyfile: ssl.certfile and ssl.keyfile go together">>},
                 ?C:parse(#{<<"ssl">> => #{<<"enable">> => true, <<"verify">> => false, <<"keyfile">> => <<"/k">>}})),
    ?assertEqual({error, <<"reconnect_interval: must be greater than 0">>},
                 ?C:parse(#{<<"reconnect_interval">> => <<"0s">>})),
    ?assertMatch({error, <<"max_payload_size: must be between 1 and 10485760", _/binary>>},
                 ?C:parse(#{<<"max_payload_size">> => <<"11MB">>})),
    ?assertMatch({error, <<"max_payload_size: must be a size", _/binary>>},
                 ?C:parse(#{<<"max_payload_size">> => <<"lots">>})),
    ?assertMatch({error, <<"write_consistency: \"most\" is not a consistency level", _/binary>>},
                 ?C:parse(#{<<"write_consistency">> => <<"most">>})),
    ?assertMatch({error, <<"request_timeout: ", _/binary>>},
                 ?C:parse(#{<<"request_timeout">> => <<"31d">>})),
    ?assertEqual({error, <<"batch_linger: must be at most 1s">>},
                 ?C:parse(#{<<"batch_linger">> => <<"2s">>})),
    %% TLS off: its fields are not checked.
    ?assertMatch({ok, _}, ?C:parse(#{<<"ssl">> => #{<<"enable">> => false, <<"verify">> => true}})).

%% The replay floor needs reads that see every write (docs/tombstones.md):
%% the core refuses other pairs, naming the keys to change; local_datacenter
%% makes LOCAL_QUORUM on both sides one of them.
floor_needs_overlapping_consistency_test() ->
    Levels = fun(W, R, Dc) ->
        ?C:parse(#{<<"write_consistency">> => W, <<"read_consistency">> => R, <<"local_datacenter">> => Dc})
    end,
    ?assertMatch({error, <<"read_consistency: one with write_consistency one does not see", _/binary>>},
                 Levels(<<"one">>, <<"one">>, <<"">>)),
    ?assertMatch({ok, #{nif := #{<<"read_consistency">> := <<"local_quorum">>}}},
                 Levels(<<"local_quorum">>, <<"local_quorum">>, <<"">>)),
    {error, Several} = Levels(<<"local_quorum">>, <<"local_quorum">>, <<"dc1">>),
    ?assertMatch({match, _}, re:run(Several, <<"every datacenter.*replay_floor">>)),
    ?assertMatch({ok, #{nif := #{<<"local_datacenter">> := <<"dc1">>}}},
                 Levels(<<"each_quorum">>, <<"local_quorum">>, <<"dc1">>)),
    ?assertMatch({ok, _}, ?C:parse(#{<<"write_consistency">> => <<"one">>, <<"read_consistency">> => <<"one">>,
                                     <<"replay_floor">> => false})),
    ?assertMatch({error, <<"read_consistency: any is for writes only", _/binary>>},
                 ?C:parse(#{<<"read_consistency">> => <<"any">>, <<"replay_floor">> => false})).

%% max_returned_count: 0 means all (no hidden cap); the plugin and the form
%% share one bound, 1,000,000.
max_returned_count_is_what_a_replay_returns_test() ->
    MaxRows = 1000000,
    ?assertMatch({ok, #{settings := #{max_returned_count := 0}}}, ?C:parse(#{<<"max_returned_count">> => 0})),
    ?assertMatch({ok, #{settings := #{max_returned_count := MaxRows}}}, ?C:parse(#{<<"max_returned_count">> => MaxRows})),
    ?assertMatch({error, <<"max_returned_count: ", _/binary>>}, ?C:parse(#{<<"max_returned_count">> => MaxRows + 1})),
    [Field] = [F || #{<<"name">> := <<"max_returned_count">>} = F <- maps:get(<<"fields">>, priv_json("config_schema.avsc"))],
    [#{<<"min">> := 0, <<"max">> := FormMax}] = maps:get(<<"rules">>, maps:get(<<"$ui">>, Field)),
    ?assertEqual(MaxRows, FormMax).

%% One source of defaults, priv/config.hocon: the plugin's own defaults
%% map and the core's defaults for every key the form sets must agree with
%% it. (The form's defaults: test/check_plugin_config.py.) The shipped
%% file seeds the demo credentials root/public; without them a config
%% means a cluster without auth, so they are the one exception.
defaults_agree_with_config_hocon_test() ->
    Hocon = maps:without([<<"username">>, <<"password">>], priv_json("config.hocon")),
    ?assertEqual(Hocon, maps:without([<<"username">>, <<"password">>], ?C:defaults())),
    {ok, #{nif := FromHocon}} = ?C:parse(Hocon),
    Core = emqx_offline_cassandra_nif:default_config(),
    Disagree = [{K, {config_hocon, V}, {core, maps:get(K, Core, missing)}}
                || {K, V} <- maps:to_list(FromHocon), maps:get(K, Core, missing) =/= V],
    ?assertEqual([], Disagree),
    %% Every core key the table names is compared (none left out by accident).
    ?assertEqual([], [K || {_, K, _} <- ?C:fields(), not maps:is_key(K, Core),
                           K =/= <<"username">>, K =/= <<"password">>]).

%% Every storage field of the form is in the table once, and nothing else.
table_covers_the_form_test() ->
    Schema = maps:get(<<"fields">>, priv_json("config_schema.avsc")),
    Names = lists:append([form_names(F) || F <- Schema]),
    Hook = [<<"topics">>, <<"max_returned_count">>, <<"time_range">>, <<"message_ttl">>, <<"wildcard_replay">>],
    Table = [F || {F, _, _} <- ?C:fields()],
    ?assertEqual(lists:sort(Names -- Hook), lists:sort(Table)),
    ?assertEqual(length(Table), length(lists:usort(Table))).

form_names(#{<<"name">> := Name, <<"type">> := #{<<"type">> := <<"record">>, <<"fields">> := Fields}}) ->
    [<<Name/binary, ".", N/binary>> || #{<<"name">> := N} <- Fields];
form_names(#{<<"name">> := Name}) ->
    [Name].

priv_json(File) ->
    {ok, Bin} = file:read_file(filename:join(code:priv_dir(emqx_offline_cassandra), File)),
    emqx_double_json:decode(Bin).
