%%--------------------------------------------------------------------
%% The replay backlog against the local Cassandra: every row below the
%% boundary once, in msgid order across a wildcard's topics, with the
%% read-ahead running; what it holds stays within two pages per topic
%% (max(1,000, 4 x topics) rows); a resumed backlog whose read-ahead was
%% in flight goes on after its position, nothing twice.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_backlog_tests).

-include_lib("eunit/include/eunit.hrl").

-define(NIF, emqx_offline_cassandra_nif).
-define(B, emqx_offline_cassandra_backlog).
-import(emqx_offline_cassandra_test_util, [scaled/1, wait_until/2]).

backlog_test_() ->
    {foreach, fun setup/0, fun(_) -> emqx_offline_cassandra_test_util:stop_nif() end, [
        {"one topic: all, once, in order; at most two pages held", {timeout, scaled(120), fun one_topic/0}},
        {"a wildcard over 50 topics: all, once, in msgid order; bounded", {timeout, scaled(120), fun wildcard/0}},
        {"resumed while a read-ahead is in flight: the rest, once", {timeout, scaled(120), fun resumed/0}}
    ]}.

setup() ->
    Config = emqx_offline_cassandra_test_util:node_config(emqx_offline_cassandra_test_util:node_addr()),
    ok = ?NIF:start(Config),
    ok = wait_until(fun() -> ?NIF:status() =:= connected end, scaled(20000)).

one_topic() ->
    Topic = topic("one"),
    Ids = store(Topic, 2500),
    B0 = open(Topic),
    {ok, #{fetches := F0}} = ?NIF:stats(),
    {ok, First, B1} = ?B:take(100, B0),
    %% The first page (500) was read for the take; with 400 left the next
    %% one is read in the background, without another take.
    ?assertEqual(400, ?B:held(B1)),
    ok = wait_until(fun() -> {ok, #{fetches := F}} = ?NIF:stats(), F >= F0 + 2 end, scaled(30000)),
    {Rest, MaxHeld} = drain(B1, 100),
    ?assertEqual(Ids, [maps:get(msgid, R) || R <- First ++ Rest]),
    ?assert(MaxHeld =< 1000),
    purge([Topic]).

wildcard() ->
    Base = topic("wild"),
    Topics = [<<Base/binary, "/", (integer_to_binary(I))/binary>> || I <- lists:seq(1, 50)],
    %% Interleaved over the topics, so the merge has to pick across them.
    Ids = lists:sort(lists:append([store(T, 40) || T <- Topics])),
    B = open(<<Base/binary, "/+">>),
    ?assertEqual(50, ?B:topic_count(B)),
    {Rows, MaxHeld} = drain(B, 100),
    ?assertEqual(Ids, [maps:get(msgid, R) || R <- Rows]),
    ?assert(MaxHeld =< 1000),
    purge(Topics).

resumed() ->
    Topic = topic("resumed"),
    Ids = store(Topic, 1500),
    B0 = open(Topic),
    {ok, First, B1} = ?B:take(100, B0),
    %% The take started reading ahead; a resume at row 700 drops it.
    Position = lists:nth(700, Ids),
    ?assertEqual(lists:sublist(Ids, 100), [maps:get(msgid, R) || R <- First]),
    {Rest, _} = drain(?B:skip_to(Position, B1), 100),
    ?assertEqual(lists:nthtail(700, Ids), [maps:get(msgid, R) || R <- Rest]),
    purge([Topic]).

%%--------------------------------------------------------------------

%% A topic no other run used (unique_integer starts over in each VM).
topic(Name) ->
    iolist_to_binary(io_lib:format("test/backlog/~s/~b/~b", [Name, erlang:system_time(millisecond),
                                                             erlang:unique_integer([positive])])).

%% Stores N rows on Topic with increasing msgids published a minute ago
%% (settled: a short page is the end); returns their hex msgids in order.
store(Topic, N) ->
    {ok, #{written := W0}} = ?NIF:stats(),
    Base = erlang:system_time(microsecond) - 60000000,
    Guids = [<<(Base + I * 10 + erlang:unique_integer([positive]) rem 10):64, 16#BAC4:48, 0:16>> || I <- lists:seq(1, N)],
    [ok = ?NIF:store(#{topic => Topic, msgid => G, payload => <<"p">>, qos => 1}) || G <- Guids],
    ok = wait_until(fun() -> {ok, #{written := W}} = ?NIF:stats(), W >= W0 + N end, scaled(60000)),
    [binary:encode_hex(G) || G <- Guids].

%% The rows a test stored (a failed test leaves its own, under topics no
%% later run uses).
purge(Topics) ->
    [{ok, _} = ?NIF:purge(T, scaled(30000)) || T <- Topics],
    ok.

open(Filter) ->
    {BelowGuid, BelowMs} = emqx_offline_cassandra_replay:boundary(),
    {ok, B} = ?B:open(Filter, #{newest => 0, since => 0, kept_by => []}, binary:encode_hex(BelowGuid), BelowMs),
    B.

%% Takes Batch rows at a time until the backlog is done; returns the rows
%% and the most it held after any take.
drain(B, Batch) ->
    drain(B, Batch, [], ?B:held(B)).

drain(B, Batch, Acc, MaxHeld) ->
    case ?B:is_done(B) of
        true ->
            {lists:append(lists:reverse(Acc)), MaxHeld};
        false ->
            {ok, Rows, B1} = ?B:take(Batch, B),
            drain(B1, Batch, [Rows | Acc], max(MaxHeld, ?B:held(B1)))
    end.
