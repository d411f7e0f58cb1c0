%%--------------------------------------------------------------------
%% The backlog of one replay, read from Cassandra oldest first, a page at
%% a time, below the msgid taken when the subscription started.
%%
%% A wildcard's topics each keep a cursor and a small buffer; take/2 merges
%% their heads by msgid, so rows come out in msgid (publish) order across
%% topics, and the position of the whole replay is one msgid: everything up
%% to it was taken. The heads are kept sorted (a gb_set of {MsgId, Topic}),
%% and the topics that must be read before the next pop in a map of their
%% own, so a row costs O(log topics), not a walk over all of them (a
%% wildcard may have 10,000).
%%
%% Read-ahead: after each take, the topics whose buffer is down to a page
%% are read in the background (one request for all of them, one such
%% request at a time), so the next page is there, or on its way, when the
%% replay needs it: reading and delivering overlap instead of taking turns
%% (a 500-row read takes milliseconds, as long as delivering the page).
%% A topic holds at most two pages. Memory: at most max(?ROW_BUDGET,
%% 4 x topics) rows.
%%
%% Runs in a replay process, never in a channel: it waits for the NIF's
%% replies.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_backlog).

-export([open/4, skip_to/2, take/2, is_done/1, position/1, topic_count/1, held/1]).

-export_type([backlog/0]).

%% Rows one replay holds at most (beside one per wildcard topic).
-define(ROW_BUDGET, 1000).
%% Rows one topic read returns at most.
-define(MAX_PAGE, 500).
-define(MIN_PAGE, 2).
%% Above the 60 s a replay read keeps retrying in the core (replay_limit.rs).
-define(REPLY_TIMEOUT_MS, 90000).
%% A topic read that comes back short is only the end of that topic when it
%% started this long after the subscription: a row published just before it
%% can still be on its way to Cassandra (the write pipeline lingers, retries).
-define(SETTLE_MS, 2000).

-opaque backlog() :: #{
    %% Topic => {After, Buffered rows (oldest first), Done}
    topics := #{binary() => {binary() | undefined, [map()], more | settle | done}},
    from := binary() | undefined,
    below := binary(),
    below_ms := integer(),
    page := pos_integer(),
    position := binary() | undefined,
    %% {Head msgid, Topic} of every topic with buffered rows.
    heads := gb_sets:set({binary(), binary()}),
    %% Topics with nothing buffered that are not done: read before a pop.
    empty := #{binary() => true},
    %% The read-ahead in flight: its request, its topics, and whether it
    %% started after the settle time (a short page is then the end).
    ahead := none | {emqx_offline_cassandra_nif:pending_reply(), [binary()], boolean()}
}.

%% @doc Plans the replay of Filter below Below (a 32-hex msgid): which
%% topics, from where (Opts: newest, since as for
%% emqx_offline_cassandra_nif:replay_plan/5).
-spec open(binary(), map(), binary(), integer()) -> {ok, backlog()} | {error, term()}.
open(Filter, Opts, Below, BelowMs) ->
    case call(fun(Pid, Ref) -> emqx_offline_cassandra_nif:replay_plan(Pid, Ref, Filter, Opts, Below) end) of
        {ok, {Topics, From}} ->
            N = max(1, length(Topics)),
            Page = max(?MIN_PAGE, min(?MAX_PAGE, ?ROW_BUDGET div (2 * N))),
            {ok, #{
                topics => maps:from_list([{T, {undefined, [], more}} || T <- Topics]),
                heads => gb_sets:empty(),
                empty => maps:from_list([{T, true} || T <- Topics]),
                from => From,
                below => Below,
                below_ms => BelowMs,
                page => Page,
                position => undefined,
                ahead => none,
                replay => maps:get(replay, Opts, undefined)
            }};
        {error, _} = Error ->
            Error
    end.

%% @doc Continues after Position (a msgid taken before: a resumed replay).
-spec skip_to(binary() | undefined, backlog()) -> backlog().
skip_to(undefined, B) ->
    B;
skip_to(Position, #{topics := Topics} = B0) ->
    B = cancel_ahead(B0),
    B#{
        topics := maps:map(fun(_T, {_After, _Buf, _Status}) -> {Position, [], more} end, Topics),
        heads := gb_sets:empty(),
        empty := maps:map(fun(_T, _) -> true end, Topics),
        position := Position
    }.

%% @doc Up to N rows, oldest first across all topics; fewer at the end, or
%% when the rest must wait for the settle time (only an empty take waits).
-spec take(non_neg_integer(), backlog()) -> {ok, [map()], backlog()} | {error, term(), backlog()}.
take(N, B) ->
    case take(N, B, [], true) of
        {ok, Rows, B1} -> {ok, Rows, read_ahead(B1)};
        Error -> Error
    end.

%% Refill: a topic's buffer ran empty, so it is read before the next pop
%% (only then are the heads the oldest rows of every open topic).
take(0, B, Acc, _Refill) ->
    {ok, lists:reverse(Acc), B};
take(N, B0, Acc, true) ->
    case refill(B0, Acc =:= []) of
        {ok, B} ->
            take(N, B, Acc, false);
        {error, Reason, B} when Acc =:= [] ->
            {error, Reason, B};
        {error, _Reason, B} ->
            %% What was taken goes out; the next take meets the error again.
            {ok, lists:reverse(Acc), B}
    end;
take(N, B, Acc, false) ->
    case pop(B) of
        {live, Refill, B1} -> take(N, B1, Acc, Refill);
        {Row, Refill, B1} -> take(N - 1, B1, [Row | Acc], Refill);
        empty -> {ok, lists:reverse(Acc), B}
    end.

%% @doc True when every row below the boundary was taken.
-spec is_done(backlog()) -> boolean().
is_done(#{heads := Heads, empty := Empty}) ->
    map_size(Empty) =:= 0 andalso gb_sets:is_empty(Heads).

%% @doc The msgid of the last row taken (undefined before the first).
-spec position(backlog()) -> binary() | undefined.
position(#{position := P}) -> P.

-spec topic_count(backlog()) -> non_neg_integer().
topic_count(#{topics := T}) -> map_size(T).

%% @doc Rows read and not yet taken: what the replay holds in memory.
-spec held(backlog()) -> non_neg_integer().
held(#{topics := T}) -> maps:fold(fun(_, {_, Buf, _}, N) -> N + length(Buf) end, 0, T).

%%--------------------------------------------------------------------

%% Reads the next page of every topic whose buffer ran empty (one request
%% for all of them), so that each topic still open shows its oldest row;
%% a topic the read-ahead is reading waits for that instead. When only
%% topics waiting to settle are left, waits for that first.
refill(B0, CanWait) ->
    case collect_ahead(B0) of
        {ok, B} -> refill_due(B, CanWait);
        {error, _, _} = Error -> Error
    end.

refill_due(#{topics := Topics, empty := Empty, heads := Heads} = B, CanWait) ->
    Now = erlang:system_time(millisecond),
    Settled = Now >= settled_at(B),
    Unread = [{T, maps:get(T, Topics)} || T <- maps:keys(Empty)],
    Due = [{T, After} || {T, {After, [], Status}} <- Unread, due(Status, Settled)],
    Settling = [x || {_, {_, [], settle}} <- Unread],
    case {Due, gb_sets:is_empty(Heads), Settling} of
        {[], true, [_ | _]} when CanWait ->
            timer:sleep(max(0, settled_at(B) - Now)),
            refill_due(B, CanWait);
        {[], _, _} ->
            {ok, B};
        _ ->
            read(Due, Settled, B)
    end.

due(more, _Settled) -> true;
due(settle, Settled) -> Settled;
due(done, _Settled) -> false.

read(Due, Settled, B) ->
    case call(pages_request(Due, B)) of
        {ok, Pages} -> {ok, fill_all(Pages, Settled, B)};
        {error, Reason} -> {error, Reason, B}
    end.

pages_request(Due, #{from := From, below := Below, page := Page}) ->
    fun(Pid, Ref) -> emqx_offline_cassandra_nif:replay_pages(Pid, Ref, Due, {From, Below}, Page) end.

fill_all(Pages, Settled, B) ->
    lists:foldl(fun(P, Acc) -> fill(P, Settled, Acc) end, B, Pages).

%% Starts reading the next page of the topics whose buffer is down to a
%% page and that have more, unless a read-ahead is already in flight.
read_ahead(#{ahead := none, topics := Topics, page := Page} = B) ->
    Low = [{T, After} || {T, {After, Buf, more}} <- maps:to_list(Topics), length(Buf) =< Page],
    case Low of
        [] ->
            B;
        _ ->
            Settled = erlang:system_time(millisecond) >= settled_at(B),
            Pending = emqx_offline_cassandra_nif:start_request(pages_request(Low, B), ?REPLY_TIMEOUT_MS),
            B#{ahead := {Pending, [T || {T, _} <- Low], Settled}}
    end;
read_ahead(B) ->
    B.

%% Takes in the read-ahead's pages: waits for them when one of its topics
%% ran empty, else only if they are already there. Its error is the
%% replay's only when the replay waited for it; otherwise its topics are
%% read again when due.
collect_ahead(#{ahead := none} = B) ->
    {ok, B};
collect_ahead(#{ahead := {Pending, AheadTopics, Settled}, empty := Empty} = B) ->
    Needed = lists:any(fun(T) -> maps:is_key(T, Empty) end, AheadTopics),
    Wait =
        case Needed of
            true -> infinity;
            false -> 0
        end,
    case emqx_offline_cassandra_nif:collect_reply(Pending, Wait) of
        pending -> {ok, B};
        {done, {ok, Pages}} -> {ok, fill_all(Pages, Settled, B#{ahead := none})};
        {done, {error, Reason}} when Needed -> {error, Reason, B#{ahead := none}};
        {done, {error, _}} -> {ok, B#{ahead := none}}
    end.

cancel_ahead(#{ahead := none} = B) ->
    B;
cancel_ahead(#{ahead := {Pending, _, _}} = B) ->
    ok = emqx_offline_cassandra_nif:cancel_request(Pending),
    B#{ahead := none}.

%% A full page: more may follow. A short one ends its topic once settled;
%% before, the topic is read once more after the settle time (only then
%% can its end be trusted). A read-ahead's rows go behind what is left.
fill({Topic, Rows}, Settled, #{topics := Topics, heads := Heads, empty := Empty, page := Page} = B) ->
    {After, Buf, _} = maps:get(Topic, Topics),
    Last =
        case Rows of
            [] -> After;
            _ -> maps:get(msgid, lists:last(Rows))
        end,
    Status =
        if
            length(Rows) >= Page -> more;
            Settled -> done;
            true -> settle
        end,
    Heads1 =
        case {Buf, Rows} of
            {[], [First | _]} -> gb_sets:add({maps:get(msgid, First), Topic}, Heads);
            _ -> Heads
        end,
    Buf1 = Buf ++ Rows,
    Empty1 =
        case Buf1 =:= [] andalso Status =/= done of
            true -> Empty#{Topic => true};
            false -> maps:remove(Topic, Empty)
        end,
    B#{topics := Topics#{Topic := {Last, Buf1, Status}}, heads := Heads1, empty := Empty1}.

settled_at(#{below_ms := BelowMs}) -> BelowMs + ?SETTLE_MS.

%% The oldest head among the topics' buffers, `live' for one its
%% subscriber got live (not again), and whether its topic must be read
%% before the next pop (its buffer ran empty, and more may follow).
pop(#{topics := Topics, heads := Heads, empty := Empty} = B) ->
    case gb_sets:is_empty(Heads) of
        true ->
            empty;
        false ->
            {{Id, T}, Heads1} = gb_sets:take_smallest(Heads),
            {After, [Row | Rest], Status} = maps:get(T, Topics),
            {Heads2, Empty1, Refill} =
                case Rest of
                    [Next | _] -> {gb_sets:add({maps:get(msgid, Next), T}, Heads1), Empty, false};
                    [] when Status =:= done -> {Heads1, Empty, false};
                    [] -> {Heads1, Empty#{T => true}, true}
                end,
            B1 = B#{topics := Topics#{T := {After, Rest, Status}}, heads := Heads2, empty := Empty1, position := Id},
            case is_live(B1, Id) of
                true -> {live, Refill, B1};
                false -> {Row, Refill, B1}
            end
    end.

is_live(#{replay := undefined}, _Id) -> false;
is_live(#{replay := Replay}, Id) -> emqx_offline_cassandra_replays:is_live(Replay, Id).

%% One NIF request and its reply.
call(Request) ->
    emqx_offline_cassandra_nif:await_reply(Request, ?REPLY_TIMEOUT_MS).
