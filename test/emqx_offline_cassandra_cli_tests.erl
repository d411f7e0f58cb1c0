%% What `emqx ctl offline_cassandra status | stats' print
%% (emqx_offline_cassandra_cli:status_text/1, stats_text/1), from given
%% inputs: no NIF, no Cassandra. The end-to-end scenario runs the same
%% commands against the running plugin.
-module(emqx_offline_cassandra_cli_tests).

-include_lib("eunit/include/eunit.hrl").

-define(CLI, emqx_offline_cassandra_cli).

has(Text, Part) ->
    ?assertMatch({_, _}, binary:match(Text, Part), {missing, Part, Text}).

lacks(Text, Part) ->
    ?assertEqual(nomatch, binary:match(Text, Part), {present, Part, Text}).

settings() ->
    #{topics => [<<"t/#">>, <<"a/+">>], max_returned_count => 250, time_range_ms => 3600000, message_ttl_s => 0}.

%% As the NIF gets it: the core's keys, typed values, password redacted.
storage_config() ->
    #{<<"servers">> => <<"127.0.0.1:9042">>, <<"username">> => <<"root">>, <<"password">> => <<"******">>,
      <<"reconnect_max_backoff">> => 2000, <<"reconnect_min_backoff">> => 100, <<"tls_enable">> => false,
      <<"max_payload_bytes">> => 8388608, <<"request_timeout">> => 1500}.

status_with_a_bad_password_speaks_in_sentences_test() ->
    Detail = <<"authentication failed: Provided username root and/or password are incorrect (check username and password)">>,
    Text = ?CLI:status_text(#{
        connection => {error, {auth_failed, Detail}},
        health => {error, Detail},
        config => storage_config(),
        settings => settings()
    }),
    has(Text, <<"connection: ", Detail/binary, "\n">>),
    has(Text, <<"health:     unhealthy: ", Detail/binary, "\n">>),
    lacks(Text, <<"{error">>),
    lacks(Text, <<"<<">>).

status_shows_every_running_setting_under_the_forms_name_test() ->
    Text = ?CLI:status_text(#{connection => connected, health => ok, config => storage_config(), settings => settings()}),
    has(Text, <<"connection: connected\n">>),
    has(Text, <<"health:     ok\n">>),
    Row = fun(Name, Value) -> <<"\n  ", Name/binary, " +", Value/binary, "\n">> end,
    [
        ?assertMatch({match, _}, re:run(Text, Row(Name, Value)), Name)
     || {Name, Value} <- [
            {<<"servers">>, <<"127\\.0\\.0\\.1:9042">>},
            {<<"username">>, <<"root">>},
            {<<"password">>, <<"\\*\\*\\*\\*\\*\\*">>},
            {<<"reconnect_interval">>, <<"2s">>},
            {<<"request_timeout">>, <<"1500ms">>},
            {<<"max_payload_size">>, <<"8MB">>},
            {<<"ssl.enable">>, <<"false">>},
            %% not set: shown empty, as the form has it
            {<<"ssl.cafile">>, <<"\"\"">>},
            {<<"topics">>, <<"t/#, a/\\+">>},
            {<<"max_returned_count">>, <<"250">>},
            {<<"time_range">>, <<"1h">>},
            {<<"message_ttl">>, <<"none">>},
            {<<"reconnect_min_backoff">>, <<"100">>}
        ]
    ],
    %% every field of the form has its row
    [?assertMatch({match, _}, re:run(Text, Row(re_quote(Form), <<"[^\n]+">>)), Form) || {Form, _, _} <- emqx_offline_cassandra_config:fields()],
    %% derived keys come after the form's, under their own heading
    {Settings, _} = binary:match(Text, <<"settings (password hidden):">>),
    {DerivedAt, _} = binary:match(Text, <<"derived for the storage core:">>),
    {MinBackoff, _} = binary:match(Text, <<"reconnect_min_backoff">>),
    ?assert(Settings < DerivedAt andalso DerivedAt < MinBackoff),
    lacks(Text, <<"reconnect_max_backoff">>).

re_quote(Name) -> binary:replace(Name, <<".">>, <<"\\.">>, [global]).

status_without_a_running_config_says_so_test() ->
    Text = ?CLI:status_text(#{
        connection => not_started,
        health => {error, <<"invalid config: servers: must be a string">>},
        config => undefined,
        settings => undefined
    }),
    has(Text, <<"health:     unhealthy: invalid config: servers: must be a string\n">>),
    has(Text, <<"settings: none running (see health)\n">>),
    lacks(Text, <<"undefined">>),
    lacks(Text, <<"not_started">>).

stats_never_cut_a_name_test() ->
    Long = offline_cassandra_a_counter_with_a_very_long_name_indeed,
    Text = ?CLI:stats_text(#{
        storage => {ok, #{accepted => 5, written => 4, write_latency_p99_us => 1024}},
        hooks => #{stored => 3, deleted => 2},
        events => #{offline_cassandra_writes_failed => 1, Long => 7}
    }),
    [
        ?assertMatch({match, _}, re:run(Text, <<"\n  ", Name/binary, " +", Value/binary, "\n">>), Name)
     || {Name, Value} <- [
            {<<"accepted">>, <<"5">>},
            {<<"written">>, <<"4">>},
            {<<"write_latency_p99_us">>, <<"1024">>},
            {<<"stored">>, <<"3">>},
            {<<"deleted">>, <<"2">>},
            {<<"offline_cassandra_writes_failed">>, <<"1">>},
            {atom_to_binary(Long), <<"7">>}
        ]
    ],
    %% one column: every value starts where the longest name ends, plus one
    Column = 2 + length(atom_to_list(Long)) + 1,
    Rows = [L || L <- binary:split(Text, <<"\n">>, [global]), binary:match(L, <<"  ">>) =:= {0, 2}],
    ?assertEqual(7, length(Rows)),
    [?assertMatch({match, _}, re:run(binary:part(R, Column, byte_size(R) - Column), <<"^[0-9]+$">>), R) || R <- Rows].

stats_when_the_storage_is_not_started_test() ->
    Text = ?CLI:stats_text(#{storage => {error, not_started}, hooks => #{stored => 0}, events => #{}}),
    has(Text, <<"storage: the storage is not started">>),
    has(Text, <<"  stored 0\n">>).
