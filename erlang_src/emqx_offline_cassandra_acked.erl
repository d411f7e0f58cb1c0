%%--------------------------------------------------------------------
%% Message ids this node recently sent a delete for, so that the acks of
%% the other subscribers of the same message (N online subscribers ack one
%% message N times) send no more deletes.
%%
%% Bounded in time and size: two ETS generations, the current one taking
%% new ids, the previous one still read; every ?ROTATE_MS the previous one
%% is dropped, so an id is remembered for one to two periods. A generation
%% that reaches ?MAX_IDS takes no more ids: those acks just send their
%% delete again (harmless: deletes are idempotent). Forgetting only ever
%% costs a delete, never skips one.
%%
%% The hooks read and write the tables directly from the channels'
%% processes (public, concurrent); this process only owns and rotates them.
%% Rotation empties the previous table and makes it the current one.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_acked).

-behaviour(gen_server).

-export([start_link/0, start_link/1, first_delete/1, forget/1, remembered/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-define(GENERATIONS, {?MODULE, generations}).
-define(ROTATE_MS, 30000).
-define(MAX_IDS, 100000).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    start_link(#{}).

%% @doc With other limits (tests): rotate_ms, max_ids.
-spec start_link(map()) -> {ok, pid()} | {error, term()}.
start_link(Opts) ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, Opts, []).

%% @doc True when this node has not sent a delete for MsgId lately (it is
%% now recorded as sent); false when it has. True as well when the tables
%% are not there (not running) or full: in doubt, delete.
-spec first_delete(binary()) -> boolean().
first_delete(MsgId) ->
    case persistent_term:get(?GENERATIONS, undefined) of
        undefined ->
            true;
        {_, _, _, MaxIds} = Gens ->
            {Current, Previous} = generations(Gens),
            try
                case ets:member(Previous, MsgId) of
                    true -> false;
                    false -> remember(Current, MsgId, MaxIds)
                end
            catch
                %% The tables went away with their owner (plugin stopping).
                error:badarg -> true
            end
    end.

remember(Table, MsgId, MaxIds) ->
    case ets:info(Table, size) < MaxIds of
        true -> ets:insert_new(Table, {MsgId});
        false -> not ets:member(Table, MsgId)
    end.

%% @doc MsgId's delete was not sent after all (refused): the next ack of it
%% must send one.
-spec forget(binary()) -> ok.
forget(MsgId) ->
    case persistent_term:get(?GENERATIONS, undefined) of
        undefined ->
            ok;
        {A, B, _, _} ->
            try
                ets:delete(A, MsgId),
                ets:delete(B, MsgId)
            catch
                error:badarg -> ok
            end,
            ok
    end.

%% @doc Ids remembered now (both generations).
-spec remembered() -> non_neg_integer().
remembered() ->
    case persistent_term:get(?GENERATIONS, undefined) of
        undefined -> 0;
        {A, B, _, _} -> ets:info(A, size) + ets:info(B, size)
    end.

%% {Current, Previous}: which of the two tables is current is an atomic,
%% so a rotation never touches persistent_term (an update is a global GC).
generations({A, B, Which, _MaxIds}) ->
    case atomics:get(Which, 1) of
        1 -> {A, B};
        _ -> {B, A}
    end.

%%--------------------------------------------------------------------

init(Opts) ->
    process_flag(trap_exit, true),
    RotateMs = maps:get(rotate_ms, Opts, ?ROTATE_MS),
    A = ets:new(offline_cassandra_acked_a, [set, public, {read_concurrency, true}, {write_concurrency, true}]),
    B = ets:new(offline_cassandra_acked_b, [set, public, {read_concurrency, true}, {write_concurrency, true}]),
    Which = atomics:new(1, []),
    atomics:put(Which, 1, 1),
    Gens = {A, B, Which, maps:get(max_ids, Opts, ?MAX_IDS)},
    persistent_term:put(?GENERATIONS, Gens),
    erlang:send_after(RotateMs, self(), rotate),
    {ok, #{gens => Gens, rotate_ms => RotateMs}}.

handle_call(_Req, _From, State) ->
    {reply, {error, unknown_call}, State}.

handle_cast(_Msg, State) ->
    {noreply, State}.

%% The previous generation is emptied and becomes the current one.
handle_info(rotate, #{gens := {_, _, Which, _} = Gens, rotate_ms := RotateMs} = State) ->
    {_Current, Previous} = generations(Gens),
    true = ets:delete_all_objects(Previous),
    atomics:put(Which, 1, 3 - atomics:get(Which, 1)),
    erlang:send_after(RotateMs, self(), rotate),
    {noreply, State};
handle_info(_Info, State) ->
    {noreply, State}.

terminate(_Reason, _State) ->
    _ = persistent_term:erase(?GENERATIONS),
    ok.
