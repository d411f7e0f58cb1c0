%%--------------------------------------------------------------------
%% The backlog of one replay, read from Cassandra oldest first, a page at
%% a time, below the msgid taken when the subscription started.
%%
%% A wildcard's topics each keep a cursor and a small buffer; take/2 merges
%% their heads by msgid, so rows come out in msgid (publish) order across
%% topics, and the position of the whole replay is one msgid: everything up
%% to it was taken. Memory: at most max(?ROW_BUDGET, 2 x topics) rows.
%%
%% Runs in a replay process, never in a channel: it waits for the NIF's
%% replies.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_backlog).

-export([open/4, skip_to/2, take/2, is_done/1, position/1, topic_count/1]).

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
    position := binary() | undefined
}.

%% @doc Plans the replay of Filter below Below (a 32-hex msgid): which
%% topics, from where (Opts: newest, since as for
%% emqx_offline_cassandra_nif:replay_plan/5).
-spec open(binary(), map(), binary(), integer()) -> {ok, backlog()} | {error, term()}.
open(Filter, Opts, Below, BelowMs) ->
    case call(fun(Pid, Ref) -> emqx_offline_cassandra_nif:replay_plan(Pid, Ref, Filter, Opts, Below) end) of
        {ok, {Topics, From}} ->
            N = max(1, length(Topics)),
            Page = max(?MIN_PAGE, min(?MAX_PAGE, ?ROW_BUDGET div N)),
            {ok, #{
                topics => maps:from_list([{T, {undefined, [], more}} || T <- Topics]),
                from => From,
                below => Below,
                below_ms => BelowMs,
                page => Page,
                position => undefined,
                replay => maps:get(replay, Opts, undefined)
            }};
        {error, _} = Error ->
            Error
    end.

%% @doc Continues after Position (a msgid taken before: a resumed replay).
-spec skip_to(binary() | undefined, backlog()) -> backlog().
skip_to(undefined, B) ->
    B;
skip_to(Position, #{topics := Topics} = B) ->
    B#{
        topics := maps:map(fun(_T, {_After, _Buf, _Status}) -> {Position, [], more} end, Topics),
        position := Position
    }.

%% @doc Up to N rows, oldest first across all topics; fewer at the end, or
%% when the rest must wait for the settle time (only an empty take waits).
-spec take(non_neg_integer(), backlog()) -> {ok, [map()], backlog()} | {error, term(), backlog()}.
take(N, B) ->
    take(N, B, []).

take(0, B, Acc) ->
    {ok, lists:reverse(Acc), B};
take(N, B0, Acc) ->
    case refill(B0, Acc =:= []) of
        {ok, B} ->
            case pop(B) of
                {Row, B1} -> take(N - 1, B1, [Row | Acc]);
                empty -> {ok, lists:reverse(Acc), B}
            end;
        {error, Reason, B} when Acc =:= [] ->
            {error, Reason, B};
        {error, _Reason, B} ->
            %% What was taken goes out; the next take meets the error again.
            {ok, lists:reverse(Acc), B}
    end.

%% @doc True when every row below the boundary was taken.
-spec is_done(backlog()) -> boolean().
is_done(#{topics := Topics}) ->
    maps:fold(fun(_T, {_, Buf, Status}, All) -> All andalso Status =:= done andalso Buf =:= [] end, true, Topics).

%% @doc The msgid of the last row taken (undefined before the first).
-spec position(backlog()) -> binary() | undefined.
position(#{position := P}) -> P.

-spec topic_count(backlog()) -> non_neg_integer().
topic_count(#{topics := T}) -> map_size(T).

%%--------------------------------------------------------------------

%% Reads the next page of every topic whose buffer ran empty (one request
%% for all of them), so that each topic still open shows its oldest row.
%% When only topics waiting to settle are left, waits for that first.
refill(#{topics := Topics} = B, CanWait) ->
    Now = erlang:system_time(millisecond),
    Settled = Now >= settled_at(B),
    Due = [{T, After} || {T, {After, [], Status}} <- maps:to_list(Topics), due(Status, Settled)],
    Buffered = [x || {_, {_, [_ | _], _}} <- maps:to_list(Topics)],
    Settling = [x || {_, {_, [], settle}} <- maps:to_list(Topics)],
    case {Due, Buffered, Settling} of
        {[], [], [_ | _]} when CanWait ->
            timer:sleep(max(0, settled_at(B) - Now)),
            refill(B, CanWait);
        {[], _, _} ->
            {ok, B};
        _ ->
            read(Due, Settled, B)
    end.

due(more, _Settled) -> true;
due(settle, Settled) -> Settled;
due(done, _Settled) -> false.

read(Due, Settled, #{topics := Topics, from := From, below := Below, page := Page} = B) ->
    Request = fun(Pid, Ref) -> emqx_offline_cassandra_nif:replay_pages(Pid, Ref, Due, {From, Below}, Page) end,
    case call(Request) of
        {ok, Pages} ->
            {ok, B#{topics := lists:foldl(fun(P, Acc) -> fill(P, Page, Settled, Acc) end, Topics, Pages)}};
        {error, Reason} ->
            {error, Reason, B}
    end.

%% A full page: more may follow. A short one ends its topic once settled;
%% before, the topic is read once more after the settle time (only then
%% can its end be trusted).
fill({Topic, Rows}, Page, Settled, Topics) ->
    {After, [], _} = maps:get(Topic, Topics),
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
    Topics#{Topic := {Last, Rows, Status}}.

settled_at(#{below_ms := BelowMs}) -> BelowMs + ?SETTLE_MS.

%% The oldest head among the topics' buffers.
pop(#{topics := Topics} = B) ->
    Heads = [{maps:get(msgid, Row), T} || {T, {_, [Row | _], _}} <- maps:to_list(Topics)],
    case Heads of
        [] ->
            empty;
        _ ->
            {Id, T} = lists:min(Heads),
            {After, [Row | Rest], Status} = maps:get(T, Topics),
            B1 = B#{topics := Topics#{T := {After, Rest, Status}}, position := Id},
            case is_live(B1, Id) of
                %% Its subscriber got it live: not again.
                true -> pop(B1);
                false -> {Row, B1}
            end
    end.

is_live(#{replay := undefined}, _Id) -> false;
is_live(#{replay := Replay}, Id) -> emqx_offline_cassandra_replays:is_live(Replay, Id).

%% One NIF request and its reply.
call(Request) ->
    emqx_offline_cassandra_nif:await_reply(Request, ?REPLY_TIMEOUT_MS).
