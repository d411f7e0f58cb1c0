%%--------------------------------------------------------------------
%% Replay on EMQX 6.1.1+: an external-subscription handler (emqx_extsub).
%%
%% EMQX calls the handler in the subscriber's channel and takes messages
%% from it as the session has room for them (demand: the handler's
%% desired_message_count), so nothing overflows the session's queue. The
%% callbacks must not wait for Cassandra: a reader process per replay
%% (started at subscribe, ended with the subscription) reads the backlog
%% (emqx_offline_cassandra_backlog) one page per request and sends it back
%% through the channel (the ctx's send fun), where handle_info/3 hands it
%% to EMQX. The next page is asked for when EMQX reports demand again.
%%
%% Persistent sessions: when the client goes away EMQX ends the handler,
%% and asks it first (handle_save_subopts/3) for a term to keep in the
%% subscription: the msgid of the last message the session took (it keeps
%% and resends those itself) and the replay's boundary. On resume the
%% handler starts again after that msgid: nothing is delivered twice,
%% nothing is skipped. The "last taken" position is noted by
%% message.delivered (note_delivered/1), in the channel, in msgid order.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_extsub).

-export([register/0, unregister/0, note_delivered/1]).
-export([
    handle_subscribe/4,
    handle_unsubscribe/4,
    handle_terminate/1,
    handle_delivered/4,
    handle_info/3,
    handle_save_subopts/3
]).
-export([reader/1]).

%% Messages EMQX buffers for this handler (per subscription).
-define(BUFFER_SIZE, 100).
-define(POSITION(TF), {?MODULE, position, TF}).

%% @doc Offers every new subscription to this handler (EMQX 6.1.1+).
-spec register() -> ok | {error, term()}.
register() ->
    Opts = #{buffer_size => ?BUFFER_SIZE, handle_generic_messages => false, multi_topic => false,
             ignore_resubscribe => true},
    case emqx_extsub_handler_registry:register(?MODULE, Opts) of
        ok -> ok;
        {error, extsub_handler_already_registered} -> ok;
        Error -> Error
    end.

-spec unregister() -> ok.
unregister() ->
    _ = (catch emqx_extsub_handler_registry:unregister(?MODULE)),
    ok.

%% @doc message.delivered of a replayed message, in the channel: the
%% session took it (it is in flight; EMQX resends it after a reconnect).
-spec note_delivered(tuple()) -> ok.
note_delivered(Msg) ->
    case emqx_message:get_header(emqx_offline_cassandra_replay:header(), Msg, undefined) of
        {extsub, TF} ->
            Id = binary:encode_hex(emqx_message:id(Msg)),
            case get(?POSITION(TF)) of
                Old when is_binary(Old), Old >= Id -> ok;
                _ -> put(?POSITION(TF), Id)
            end,
            ok;
        _ ->
            ok
    end.

%%--------------------------------------------------------------------
%% Callbacks (run in the channel)
%%--------------------------------------------------------------------

handle_subscribe(subscribe, #{subopts := SubOpts} = Ctx, undefined, TF) ->
    case emqx_offline_cassandra_hooks:settings() of
        undefined ->
            ignore;
        Settings ->
            case emqx_offline_cassandra_hooks:replay_wanted(TF, SubOpts, Settings) of
                {true, Filter} ->
                    start(Ctx, TF, Filter, Settings, new, undefined);
                false ->
                    ignore
            end
    end;
handle_subscribe(resume, #{subopts := SubOpts} = Ctx, undefined, TF) ->
    case {emqx_offline_cassandra_hooks:settings(), saved(SubOpts)} of
        {Settings, #{filter := Filter, boundary := Boundary, position := Position}} when Settings =/= undefined ->
            start(Ctx, TF, Filter, Settings, Boundary, Position);
        _ ->
            ignore
    end;
handle_subscribe(_Type, _Ctx, _State, _TF) ->
    ignore.

handle_unsubscribe(_Type, _Ctx, State, _TF) ->
    stop(State),
    State.

handle_terminate(State) ->
    stop(State),
    ok.

%% A message left the session (PUBACK, PUBCOMP): ask for more when EMQX
%% wants more; done once the reader is done and nothing of this handler's
%% is pending (delivering_count: handed over and not completed; the
%% channel-wide unacked_count stands in where a release lacks it).
handle_delivered(#{done := true, tf := TF} = State, Ctx, _Msg, _RC) ->
    case maps:get(delivering_count, Ctx, maps:get(unacked_count, Ctx, 0)) of
        0 -> {destroy, [TF]};
        _ -> {ok, State}
    end;
handle_delivered(State, Ctx, _Msg, _RC) ->
    {ok, ask(State, Ctx)}.

handle_info(#{reader := Reader} = State, Ctx, {page, Reader, Rows, Done}) ->
    #{settings := Settings, tf := TF} = State,
    Now = erlang:system_time(millisecond),
    Msgs = lists:filtermap(
        fun(Row) ->
            case emqx_offline_cassandra_replay:to_message(Row, Settings#{now => Now}) of
                {ok, M} -> {true, emqx_message:set_header(emqx_offline_cassandra_replay:header(), {extsub, TF}, M)};
                {error, _} -> false
            end
        end,
        Rows
    ),
    emqx_offline_cassandra_metrics:inc(replayed, length(Msgs)),
    case {Done, Msgs} of
        %% Nothing more to read. Ends here only when nothing handed over
        %% earlier is still on its way: a destroyed handler's buffered
        %% messages are dropped (the double's stall: the last page came back
        %% empty while 19 of the page before still waited for inflight room).
        %% Otherwise the last completion ends it (handle_delivered/4).
        {true, []} ->
            case maps:get(delivering_count, Ctx, 0) of
                0 -> {destroy, [TF]};
                _ -> {ok, State#{asked := false, done := true}}
            end;
        %% Nothing to hand over, so no delivery will ask for the next page:
        %% ask now while there is demand (a lost wake-up otherwise stalls the
        %% replay for good).
        {false, []} -> {ok, ask(State#{asked := false, done := false}, Ctx)};
        _ -> {ok, State#{asked := false, done := Done}, Msgs}
    end;
handle_info(#{reader := Reader, filter := Filter, tf := TF}, _Ctx, {failed, Reader, Reason}) ->
    emqx_offline_cassandra_metrics:inc(replay_failed),
    emqx_offline_cassandra_log:burst(offline_cassandra_replay_failed, #{
        reason => emqx_offline_cassandra_reason:describe(Reason), filter => Filter
    }),
    %% What was handed over stays with EMQX; the rest stays stored.
    {destroy, [TF]};
handle_info(State, _Ctx, _Info) ->
    {ok, State}.

%% What the subscription keeps over a reconnect: where the replay was.
handle_save_subopts(#{tf := TF, filter := Filter, boundary := Boundary, done := Done} = State, _Ctx, _SubOpts) ->
    case Done of
        true ->
            {ok, State};
        false ->
            Position = get(?POSITION(TF)),
            {ok, State, #{filter => Filter, boundary => Boundary, position => Position}}
    end.

%%--------------------------------------------------------------------

start(#{send := Send} = Ctx, TF, Filter, Settings, Boundary0, Position) ->
    emqx_offline_cassandra_metrics:inc(replays),
    Job = #{channel => self(), send => Send, filter => Filter, settings => Settings, position => Position,
            group => group_of(TF, Ctx)},
    Reader = proc_lib:spawn(?MODULE, reader, [Job]),
    %% A new replay is watched for live messages before its boundary is
    %% taken; a resumed one keeps the boundary it had.
    {Below, BelowMs} = Boundary =
        case Boundary0 of
            new ->
                emqx_offline_cassandra_replay:watched_boundary(Reader, Filter);
            {Below0, _} ->
                ok = emqx_offline_cassandra_replays:watch(Reader, Filter),
                ok = emqx_offline_cassandra_replays:set_boundary(Reader, Below0),
                Boundary0
        end,
    Reader ! {boundary, Below, BelowMs},
    Position =/= undefined andalso put(?POSITION(TF), Position),
    State = #{tf => TF, filter => Filter, settings => Settings, boundary => Boundary, reader => Reader,
              asked => true, done => false},
    Reader ! {more, ?BUFFER_SIZE},
    {ok, State}.

%% The shared group of the subscription (undefined: not shared).
group_of(TF, Ctx) ->
    case catch emqx_offline_cassandra_compat:parse_subscription(TF, maps:get(subopts, Ctx, #{})) of
        {_Filter, Group} -> Group;
        _ -> undefined
    end.

%% Demand is a level (the buffer size, or 0): one page at a time.
ask(#{asked := false, done := false, reader := Reader} = State, #{desired_message_count := N}) when N > 0 ->
    Reader ! {more, N},
    State#{asked := true};
ask(State, _Ctx) ->
    State.

stop(#{reader := Reader}) ->
    exit(Reader, shutdown),
    ok;
stop(_) ->
    ok.

saved(SubOpts) when is_map(SubOpts) ->
    case maps:get(?MODULE, SubOpts, undefined) of
        #{} = Saved -> Saved;
        _ -> undefined
    end;
saved(_) ->
    undefined.

%% @private The reader: one page per request, sent back through the channel.
reader(#{channel := Channel, send := Send, filter := Filter, settings := Settings, position := Position} = Job) ->
    ok = emqx_offline_cassandra_replays:register(undefined),
    MRef = erlang:monitor(process, Channel),
    {Below, BelowMs} =
        receive
            {boundary, B, BMs} -> {B, BMs}
        end,
    Opts = (emqx_offline_cassandra_replay:options(Settings))#{replay => self()},
    %% A shared group replays on one node of the cluster: elsewhere, this
    %% handler ends with nothing to deliver.
    case emqx_offline_cassandra_cluster_claims:for_replay(maps:get(group, Job, undefined), Filter, Channel) of
        elsewhere ->
            Send({page, self(), [], true});
        ours ->
            case emqx_offline_cassandra_backlog:open(Filter, Opts, binary:encode_hex(Below), BelowMs) of
                {ok, Backlog} ->
                    serve(emqx_offline_cassandra_backlog:skip_to(Position, Backlog), Send, MRef);
                {error, Reason} ->
                    Send({failed, self(), Reason})
            end
    end.

serve(Backlog, Send, MRef) ->
    receive
        {more, N} ->
            case emqx_offline_cassandra_backlog:take(N, Backlog) of
                {ok, Rows, B1} ->
                    Done = emqx_offline_cassandra_backlog:is_done(B1),
                    Send({page, self(), Rows, Done}),
                    Done orelse serve(B1, Send, MRef);
                {error, Reason, _} ->
                    Send({failed, self(), Reason})
            end;
        {'DOWN', MRef, process, _, _} ->
            ok
    end.
