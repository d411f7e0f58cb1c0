%% Topic matching, filter intersection and filter validity
%% (emqx_offline_cassandra_topic); no NIF, no Cassandra.
-module(emqx_offline_cassandra_topic_tests).

-include_lib("eunit/include/eunit.hrl").

-define(T, emqx_offline_cassandra_topic).

match_exact_test() ->
    ?assert(?T:match(<<"a/b">>, <<"a/b">>)),
    ?assertNot(?T:match(<<"a/b">>, <<"a/c">>)),
    ?assertNot(?T:match(<<"a/b">>, <<"a">>)),
    ?assertNot(?T:match(<<"a">>, <<"a/b">>)),
    %% Levels are case sensitive and may be empty.
    ?assertNot(?T:match(<<"A/b">>, <<"a/b">>)),
    ?assert(?T:match(<<"a//b">>, <<"a//b">>)),
    ?assertNot(?T:match(<<"a//b">>, <<"a/b">>)).

match_plus_is_one_level_test() ->
    ?assert(?T:match(<<"a/b/c">>, <<"a/+/c">>)),
    ?assert(?T:match(<<"a//c">>, <<"a/+/c">>)),
    ?assertNot(?T:match(<<"a/b/x/c">>, <<"a/+/c">>)),
    ?assertNot(?T:match(<<"a/c">>, <<"a/+/c">>)),
    ?assert(?T:match(<<"a">>, <<"+">>)),
    ?assertNot(?T:match(<<"a/b">>, <<"+">>)),
    ?assert(?T:match(<<"a/b">>, <<"+/+">>)).

match_hash_is_the_rest_and_the_parent_test() ->
    ?assert(?T:match(<<"t/1">>, <<"t/#">>)),
    ?assert(?T:match(<<"t/2/x">>, <<"t/#">>)),
    ?assert(?T:match(<<"t">>, <<"t/#">>)),
    ?assertNot(?T:match(<<"u/1">>, <<"t/#">>)),
    ?assertNot(?T:match(<<"tt/1">>, <<"t/#">>)),
    ?assert(?T:match(<<"a/b/c">>, <<"#">>)),
    ?assert(?T:match(<<"a/b/c">>, <<"a/+/#">>)),
    ?assertNot(?T:match(<<"a">>, <<"a/+/#">>)).

match_dollar_topics_need_a_literal_first_level_test() ->
    ?assertNot(?T:match(<<"$SYS/brokers">>, <<"#">>)),
    ?assertNot(?T:match(<<"$SYS/brokers">>, <<"+/brokers">>)),
    ?assert(?T:match(<<"$SYS/brokers">>, <<"$SYS/#">>)),
    ?assert(?T:match(<<"$SYS/brokers">>, <<"$SYS/+">>)),
    %% Only the first level is special.
    ?assert(?T:match(<<"a/$x">>, <<"a/+">>)).

matches_any_test() ->
    ?assert(?T:matches_any(<<"b/1">>, [<<"a/#">>, <<"b/+">>])),
    ?assertNot(?T:matches_any(<<"c/1">>, [<<"a/#">>, <<"b/+">>])),
    ?assertNot(?T:matches_any(<<"c/1">>, [])).

intersects_test_() ->
    Yes = [
        {<<"t/1">>, <<"t/1">>},
        {<<"t/#">>, <<"t/1">>},
        {<<"t/+">>, <<"t/1">>},
        {<<"#">>, <<"t/1/2">>},
        {<<"+/1">>, <<"t/+">>},
        {<<"t/+/x">>, <<"t/#">>},
        %% both match `t' (the parent of t/#)
        {<<"t">>, <<"t/#">>},
        {<<"+/#">>, <<"a/b/c">>}
    ],
    No = [
        {<<"t/1">>, <<"t/2">>},
        {<<"u/#">>, <<"t/#">>},
        {<<"t/+">>, <<"t/1/2">>},
        {<<"t/+/x">>, <<"t/1/y">>},
        {<<"t/1">>, <<"t">>},
        {<<"+">>, <<"a/b">>}
    ],
    [
        {iolist_to_binary([A, " ", B]), fun() ->
            ?assert(?T:intersects(A, B)),
            ?assert(?T:intersects(B, A))
        end}
     || {A, B} <- Yes
    ] ++
        [
            {iolist_to_binary([A, " x ", B]), fun() ->
                ?assertNot(?T:intersects(A, B)),
                ?assertNot(?T:intersects(B, A))
            end}
         || {A, B} <- No
        ].

valid_filters_test() ->
    [
        ?assert(?T:is_valid_filter(F))
     || F <- [<<"t/#">>, <<"#">>, <<"+">>, <<"a/+/b">>, <<"a/b">>, <<"+/+/#">>, <<"/">>, <<"a//b">>, <<"$SYS/#">>]
    ].

invalid_filters_test() ->
    [
        ?assertNot(?T:is_valid_filter(F))
     || F <- [<<>>, <<"t/#/x">>, <<"#/a">>, <<"a/b#">>, <<"a/+b">>, <<"a/b+/c">>, <<"a/#x">>, <<"a", 0, "b">>, "t/#", 42, undefined]
    ].
