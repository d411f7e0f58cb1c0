%%--------------------------------------------------------------------
%% The replays running on this node, by client id, so that a channel's
%% hooks (disconnect, resume after a reconnect) reach the replays of its
%% session, whichever channel process started them.
%%
%% Also the boundary between replay and live routing (docs/design.md,
%% "Paced replay"): while a replay runs, the publish hook marks the
%% messages it stores on topics the replay reads that are older than the
%% replay's boundary - they were routed after the subscription existed, so
%% the subscriber gets them live - and the replay skips those rows.
%%
%% Entries are written by the replay processes themselves (an ETS insert,
%% no call); this process owns the table and removes the entries of a
%% replay that ends, however it ends.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_replays).

-behaviour(gen_server).

-export([start_link/0, register/1, unregister/1, of_client/1, count/0]).
-export([watch/2, set_boundary/2, note_published/2, is_live/2]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-define(SERVER, ?MODULE).
-define(TAB, emqx_offline_cassandra_replays).
%% {TopicOrWild, Replay, Filter}: what each running replay reads.
-define(WATCH, emqx_offline_cassandra_replay_watch).
%% {{boundary, Replay}, Below} and {{Replay, MsgIdHex}}: marked live.
-define(LIVE, emqx_offline_cassandra_replay_live).
-define(WILD, '$wildcard').

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?SERVER}, ?MODULE, [], []).

%% @doc Registers the calling replay process under ClientId (undefined:
%% only so that what it leaves here is removed when it ends).
-spec register(term()) -> ok.
register(ClientId) ->
    try
        ClientId =:= undefined orelse ets:insert(?TAB, {ClientId, self()}),
        gen_server:cast(?SERVER, {watch, ClientId, self()})
    catch
        error:badarg -> ok
    end.

-spec unregister(term()) -> ok.
unregister(ClientId) ->
    _ = (catch ets:delete_object(?TAB, {ClientId, self()})),
    ok.

%% @doc The replay processes of ClientId's session.
-spec of_client(term()) -> [pid()].
of_client(ClientId) ->
    try
        [Pid || {_, Pid} <- ets:lookup(?TAB, ClientId)]
    catch
        error:badarg -> []
    end.

%% @doc In the subscriber's channel, before the replay's boundary is taken:
%% from now on the publish hook marks what Replay would read twice.
-spec watch(pid(), binary()) -> ok.
watch(Replay, Filter) ->
    Key =
        case binary:match(Filter, [<<"+">>, <<"#">>]) of
            nomatch -> Filter;
            _ -> ?WILD
        end,
    _ = (catch ets:insert(?WATCH, {Key, Replay, Filter})),
    ok.

%% @doc The replay's boundary (16-byte msgid): only older messages are marked.
-spec set_boundary(pid(), binary()) -> ok.
set_boundary(Replay, Below) ->
    _ = (catch ets:insert(?LIVE, {{boundary, Replay}, Below})),
    ok.

%% @doc The publish hook stored Msg (16-byte Id, Topic): marks it for every
%% replay reading Topic whose boundary is above it. Costs one size check
%% while no replay runs.
-spec note_published(binary(), binary()) -> ok.
note_published(Topic, Id) ->
    case ets:info(?WATCH, size) of
        N when is_integer(N), N > 0 ->
            Watching = ets:lookup(?WATCH, Topic) ++ ets:lookup(?WATCH, ?WILD),
            [mark(Replay, Id) || {_, Replay, Filter} <- Watching, emqx_offline_cassandra_topic:matches_any(Topic, [Filter])],
            ok;
        _ ->
            ok
    end.

mark(Replay, Id) ->
    case ets:lookup(?LIVE, {boundary, Replay}) of
        [{_, Below}] when Id >= Below -> ok;
        _ -> ets:insert(?LIVE, {{Replay, binary:encode_hex(Id)}})
    end.

%% @doc True when the row MsgIdHex reached Replay's subscriber live: the
%% replay skips it (the mark is used up).
-spec is_live(pid(), binary()) -> boolean().
is_live(Replay, MsgIdHex) ->
    try
        ets:take(?LIVE, {Replay, MsgIdHex}) =/= []
    catch
        error:badarg -> false
    end.

%% @doc Replays running on this node.
-spec count() -> non_neg_integer().
count() ->
    case ets:info(?TAB, size) of
        undefined -> 0;
        N -> N
    end.

%%--------------------------------------------------------------------

init([]) ->
    _ = ets:new(?TAB, [named_table, public, bag, {write_concurrency, true}, {read_concurrency, true}]),
    _ = ets:new(?WATCH, [named_table, public, bag, {write_concurrency, true}, {read_concurrency, true}]),
    _ = ets:new(?LIVE, [named_table, public, set, {write_concurrency, true}, {read_concurrency, true}]),
    {ok, #{}}.

handle_call(_Req, _From, Watched) ->
    {reply, {error, unknown_call}, Watched}.

handle_cast({watch, ClientId, Pid}, Watched) ->
    MRef = erlang:monitor(process, Pid),
    {noreply, Watched#{MRef => ClientId}};
handle_cast(_Msg, Watched) ->
    {noreply, Watched}.

handle_info({'DOWN', MRef, process, Pid, _Reason}, Watched) ->
    case maps:take(MRef, Watched) of
        {ClientId, Rest} ->
            _ = ets:delete_object(?TAB, {ClientId, Pid}),
            forget(Pid),
            {noreply, Rest};
        error ->
            {noreply, Watched}
    end;
handle_info(_Info, Watched) ->
    {noreply, Watched}.

%% What an ended replay left.
forget(Pid) ->
    _ = ets:match_delete(?WATCH, {'_', Pid, '_'}),
    _ = ets:match_delete(?LIVE, {{Pid, '_'}}),
    _ = ets:delete(?LIVE, {boundary, Pid}),
    ok.
