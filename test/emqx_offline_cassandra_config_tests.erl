%% Plugin config parsing: defaults, every field's checks, the NIF map.
-module(emqx_offline_cassandra_config_tests).

-include_lib("eunit/include/eunit.hrl").

-define(C, emqx_offline_cassandra_config).

defaults_parse_test() ->
    {ok, #{nif := Nif, settings := S}} = ?C:parse(#{}),
    ?assertEqual(<<"127.0.0.1:9042">>, maps:get(<<"servers">>, Nif)),
    ?assertNot(maps:is_key(<<"username">>, Nif)),
    ?assertEqual(#{topics => [<<"t/#">>], max_returned_count => 0, time_range_ms => 0, message_ttl_s => 0}, S).

seed_config_test() ->
    {ok, #{nif := Nif, settings := S}} = ?C:parse(#{
        <<"servers">> => <<"10.0.0.1:9042,10.0.0.2">>,
        <<"username">> => <<"root">>,
        <<"password">> => <<"public">>,
        <<"topics">> => [<<"t/#">>, <<"a/+/b">>],
        <<"max_returned_count">> => 500,
        <<"time_range">> => <<"2h">>,
        <<"message_ttl">> => <<"7d">>,
        <<"reconnect_interval">> => <<"2s">>,
        <<"ssl">> => #{<<"enable">> => false}
    }),
    ?assertEqual(<<"root">>, maps:get(<<"username">>, Nif)),
    ?assertEqual(<<"2000ms">>, maps:get(<<"reconnect_max_backoff">>, Nif)),
    ?assertEqual(#{topics => [<<"t/#">>, <<"a/+/b">>], max_returned_count => 500,
                   time_range_ms => 7200000, message_ttl_s => 604800}, S).

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
        {<<"buffer_capacity">>, 0},
        {<<"no_such_field">>, 1}
    ],
    [
        ?_assertMatch({error, <<Field:(byte_size(Field))/binary, ": ", _/binary>>}, ?C:parse(#{Field => Value}))
     || {Field, Value} <- Cases
    ].

ssl_maps_to_the_nif_tls_fields_test() ->
    {ok, #{nif := Nif}} = ?C:parse(#{<<"ssl">> => #{<<"enable">> => true, <<"verify">> => true,
        <<"cafile">> => <<"/etc/ca.pem">>, <<"certfile">> => <<"/etc/c.pem">>, <<"keyfile">> => <<"/etc/c.key">>,
        <<"server_name">> => <<"cassandra.example">>}}),
    ?assertMatch(#{<<"tls_enable">> := true, <<"tls_verify">> := true, <<"tls_ca_file">> := <<"/etc/ca.pem">>,
                   <<"tls_cert_file">> := <<"/etc/c.pem">>, <<"tls_key_file">> := <<"/etc/c.key">>,
                   <<"tls_server_name">> := <<"cassandra.example">>}, Nif),
    ?assertMatch({error, <<"ssl.cafile: ", _/binary>>}, ?C:parse(#{<<"ssl">> => #{<<"enable">> => true, <<"verify">> => true}})),
    ?assertMatch({error, <<"ssl.keyfile: ", _/binary>>}, ?C:parse(#{<<"ssl">> => #{<<"enable">> => true, <<"certfile">> => <<"/c">>}})),
    ?assertMatch({error, <<"ssl.enable: ", _/binary>>}, ?C:parse(#{<<"ssl">> => #{<<"enable">> => <<"yes">>}})),
    ?assertMatch({error, <<"ssl.bogus: ", _/binary>>}, ?C:parse(#{<<"ssl">> => #{<<"bogus">> => 1}})).

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
