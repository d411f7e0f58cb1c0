%% Reasons and statuses as sentences (emqx_offline_cassandra_reason).
-module(emqx_offline_cassandra_reason_tests).

-include_lib("eunit/include/eunit.hrl").

-define(R, emqx_offline_cassandra_reason).

-define(NIF_ATOMS, [not_connected, timeout, overloaded, shutdown, not_started, already_started]).
-define(KINDS, [
    invalid_config,
    invalid_input,
    runtime_failed,
    not_connected,
    auth_failed,
    tls_failed,
    keyspace_missing,
    table_missing,
    schema_mismatch,
    index_unavailable,
    floor_unavailable,
    timeout,
    overloaded,
    payload_too_large,
    invalid_msgid,
    invalid_row,
    db_error,
    shutdown
]).

%% Sentences, not Erlang terms: no tuple braces, no binary brackets, and
%% not just the atom's name again.
looks_like_a_sentence(Text) ->
    ?assert(is_binary(Text)),
    ?assertEqual(nomatch, binary:match(Text, [<<"{">>, <<"<<">>])),
    ?assertMatch({_, _}, binary:match(Text, <<" ">>)).

every_atom_reason_is_a_sentence_test() ->
    [looks_like_a_sentence(?R:describe(A)) || A <- ?NIF_ATOMS],
    ?assertMatch({_, _}, binary:match(?R:describe(timeout), <<"request_timeout">>)),
    ?assertMatch({_, _}, binary:match(?R:describe(overloaded), <<"buffer">>)).

the_cores_detail_is_the_sentence_test() ->
    Detail = <<"authentication failed: Provided username root and/or password are incorrect (check username and password)">>,
    ?assertEqual(Detail, ?R:describe({auth_failed, Detail})),
    ?assertEqual(Detail, ?R:describe({error, {auth_failed, Detail}})).

every_kind_without_a_detail_still_says_what_happened_test() ->
    Texts = [?R:describe({K, <<>>}) || K <- ?KINDS],
    [looks_like_a_sentence(T) || T <- Texts],
    %% one sentence per kind
    ?assertEqual(length(?KINDS), length(lists:usort(Texts))),
    ?assertMatch({_, _}, binary:match(?R:describe({auth_failed, <<>>}), <<"username or password">>)).

a_detail_that_is_not_text_is_printed_after_the_kind_test() ->
    ?assertEqual(<<"Cassandra refused the username or password: 42">>, ?R:describe({auth_failed, 42})).

statuses_test() ->
    ?assertEqual(<<"connected">>, ?R:describe(connected)),
    ?assertEqual(<<"connecting to Cassandra">>, ?R:describe(connecting)),
    ?assertEqual(
        <<"Cassandra unreachable: Connection refused (still trying)">>, ?R:describe({connecting, <<"Connection refused">>})
    ),
    ?assertEqual(<<"Cassandra unreachable: node down">>, ?R:describe({disconnected, <<"node down">>})),
    ?assertEqual(<<"keyspace `x` does not exist">>, ?R:describe({error, {keyspace_missing, <<"keyspace `x` does not exist">>}})),
    looks_like_a_sentence(?R:describe(not_started)).

a_panic_says_it_is_a_bug_test() ->
    Text = ?R:describe({panic, <<"index out of bounds">>}),
    ?assertMatch({_, _}, binary:match(Text, <<"a bug">>)),
    ?assertMatch({_, _}, binary:match(Text, <<"index out of bounds">>)).

text_stays_text_test() ->
    ?assertEqual(<<"servers: must be a string">>, ?R:describe(<<"servers: must be a string">>)),
    ?assertEqual(<<"plain words">>, ?R:describe("plain words")).

%% Connected but writes wait: how many (grouped by thousands) and why.
degraded_says_how_many_writes_wait_and_why_test() ->
    ?assertEqual(
        <<"degraded: 1,234 writes waiting (Unavailable: 1 replica alive, QUORUM needs 2)">>,
        ?R:describe({degraded, 1234, <<"Unavailable: 1 replica alive, QUORUM needs 2">>})
    ),
    ?assertEqual(<<"degraded: 1 write waiting (Overloaded)">>, ?R:describe({degraded, 1, <<"Overloaded">>})),
    ?assertEqual(<<"degraded: 0 writes waiting (x)">>, ?R:describe({degraded, 0, <<"x">>})),
    ?assertEqual(<<"degraded: 999 writes waiting (x)">>, ?R:describe({degraded, 999, <<"x">>})),
    ?assertEqual(<<"degraded: 1,000,000 writes waiting (x)">>, ?R:describe({degraded, 1000000, <<"x">>})).

unknown_terms_print_readably_test() ->
    ?assertEqual(<<"something_new">>, ?R:describe(something_new)),
    ?assertEqual(<<"something_new: the detail">>, ?R:describe({something_new, <<"the detail">>})),
    ?assertEqual(<<"{1,2,3}">>, ?R:describe({1, 2, 3})),
    ?assertEqual(<<"#{a => 1}">>, ?R:describe(#{a => 1})),
    ?assertEqual(<<"[1,2]">>, ?R:describe([1, 2])),
    ?assertEqual(<<"Cassandra unreachable: 42 (still trying)">>, ?R:describe({connecting, 42})),
    Pid = self(),
    ?assertEqual(iolist_to_binary(io_lib:format("~p", [Pid])), ?R:describe(Pid)),
    %% an improper list is no iolist: still no crash
    ?assert(is_binary(?R:describe([a | b]))).

%% The warning the server logs for TLS without verification says why and
%% what to set.
tls_unverified_says_what_to_set_test() ->
    T = ?R:describe(tls_unverified),
    looks_like_a_sentence(T),
    [?assertMatch({_, _}, binary:match(T, W)) || W <- [<<"password">>, <<"ssl.verify = true">>, <<"ssl.cafile">>]].

%% This node's clock against Cassandra's (the NIF's stats): by how much,
%% which way, the limit, and what to check.
clock_skew_says_how_far_which_way_and_what_to_check_test() ->
    ?assertEqual(
        <<"this node's clock is 42.5 s ahead of Cassandra's (more than the 15.0 s the replay floor allows): "
          "replay floors stay where they are until it is back; check the node's time sync (NTP)">>,
        ?R:describe({clock_skew, 42500, 15000})
    ),
    ?assertMatch({_, _}, binary:match(?R:describe({clock_skew, -20000, 15000}), <<"20.0 s behind Cassandra's">>)).

%% Rows replay leaves out for their msgid: how many, where, one id, and
%% how to remove them.
unreadable_rows_name_the_topic_an_id_and_the_remedy_test() ->
    T = ?R:describe({unreadable_rows, <<"t/1">>, 2, <<"msg-17">>}),
    looks_like_a_sentence(T),
    [?assertMatch({_, _}, binary:match(T, W)) || W <- [<<"2 stored rows of topic t/1 have">>, <<"msg-17">>, <<"purge">>]],
    ?assertMatch({_, _}, binary:match(?R:describe({unreadable_rows, <<"t">>, 1, <<"x">>}), <<"1 stored row of topic t has">>)).

%% The disk buffer: unusable (what it means for the writes, where, why),
%% and what an earlier run left in it (how many, torn tails cut).
spool_sentences_say_where_and_what_it_means_test() ->
    Failed = ?R:describe({spool_failed, <<"/data/spool: Permission denied (os error 13)">>}),
    looks_like_a_sentence(Failed),
    [?assertMatch({_, _}, binary:match(Failed, W)) || W <- [<<"disk buffer unusable">>, <<"memory">>, <<"/data/spool: Permission denied">>]],
    ?assertEqual(
        <<"1,234 writes left in the disk buffer /d by an earlier run, sent to Cassandra next">>,
        ?R:describe({spool_recovered, <<"/d">>, 1234, 0, 0})
    ),
    ?assertMatch({_, _}, binary:match(?R:describe({spool_recovered, <<"/d">>, 1, 1, 20}), <<"1 write left">>)),
    ?assertMatch({_, _}, binary:match(?R:describe({spool_recovered, <<"/d">>, 1, 1, 20}), <<"1 torn tail (20 bytes">>)).
