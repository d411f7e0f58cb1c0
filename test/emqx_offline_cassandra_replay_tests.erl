%% A replayed message never carries more time than it had left: its row's
%% TTL (Cassandra's TTL(), the seconds left) becomes a
%% Message-Expiry-Interval counted from the original timestamp, whether the
%% TTL came from the publisher's expiry or from message_ttl.
-module(emqx_offline_cassandra_replay_tests).

-include_lib("eunit/include/eunit.hrl").

-define(R, emqx_offline_cassandra_replay).
-define(FEATURES, {emqx_offline_cassandra_compat, features}).

replay_test_() ->
    {setup,
        fun() ->
            Old = persistent_term:get(?FEATURES, undefined),
            persistent_term:put(?FEATURES, #{emqx_version => <<"5.10.0">>, config_api => plain_map, message_extra => #{}}),
            Old
        end,
        fun
            (undefined) -> persistent_term:erase(?FEATURES);
            (Old) -> persistent_term:put(?FEATURES, Old)
        end,
        [
            fun the_time_left_is_counted_from_the_original_timestamp/0,
            fun a_row_without_ttl_carries_no_expiry/0
        ]}.

row(Ttl, Arrived) ->
    #{topic => <<"t/1">>, msgid => <<"000000000000000000000000000000AB">>, sender => <<"c">>, qos => 1,
      retain => false, payload => <<"p">>, arrived => Arrived, ttl => Ttl}.

interval(Msg) ->
    Props = maps:get(properties, element(6, Msg), #{}),
    maps:get('Message-Expiry-Interval', Props, none).

the_time_left_is_counted_from_the_original_timestamp() ->
    Now = erlang:system_time(millisecond),
    %% Published 10 s ago, 50 s left in its row: it expires 60 s after its
    %% publish, with or without message_ttl (which may have set the TTL).
    [
        begin
            {ok, Msg} = ?R:to_message(row(50, Now - 10000), #{message_ttl_s => Configured, now => Now}),
            ?assertEqual(60, interval(Msg)),
            ?assertEqual(Now - 10000, element(9, Msg))
        end
     || Configured <- [0, 60, 3600]
    ].

a_row_without_ttl_carries_no_expiry() ->
    Now = erlang:system_time(millisecond),
    {ok, Msg} = ?R:to_message(row(undefined, Now - 10000), #{message_ttl_s => 0, now => Now}),
    ?assertEqual(none, interval(Msg)).
