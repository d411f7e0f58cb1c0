%%--------------------------------------------------------------------
%% EMQX API double: emqx_hooks, with the semantics of apps/emqx/src/
%% emqx_hooks.erl (5.x): higher priority first, then MFA order; put/3
%% replaces an existing {M, F}; run/2 stops on `stop'; run_fold/3 follows
%% {ok, Acc} / {stop, Acc} / stop / anything else = unchanged; a crashing
%% callback is logged and the chain goes on; unknown hookpoints raise.
%% Callbacks get HookArgs ++ [Acc] ++ ExtraArgs (fold) or HookArgs ++
%% ExtraArgs (run).
%%--------------------------------------------------------------------
-module(emqx_hooks).

-export([put/3, put/4, add/3, add/4, del/2, run/2, run_fold/3, lookup/1, callbacks/0, reset/0]).

-define(TAB, emqx_double_hooks).

%% Hookpoints registered by EMQX 5.x (emqx_hookpoints.erl).
-define(HOOKPOINTS, [
    'client.connect', 'client.connack', 'client.connected', 'client.disconnected',
    'client.authenticate', 'client.authorize', 'client.check_authz_complete', 'client.subscribe',
    'client.unsubscribe', 'client.timeout', 'client.monitored_process_down',
    'session.created', 'session.subscribed', 'session.unsubscribed', 'session.resumed',
    'session.discarded', 'session.takenover', 'session.terminated',
    'message.publish', 'message.puback', 'message.dropped', 'message.transformation_failed',
    'schema.validation_failed', 'message.delivered', 'message.acked', 'delivery.dropped',
    'delivery.completed', 'cm.channel.unregistered', 'tls_handshake.psk_lookup'
]).

put(HP, MFA, Prio) -> put(HP, MFA, undefined, Prio).
put(HP, {M, F, A}, Filter, Prio) ->
    verify(HP),
    ensure_table(),
    Others = [C || {_, {M1, F1, _}, _, _} = C <- entries(HP), {M1, F1} =/= {M, F}],
    store(HP, [{Prio, {M, F, A}, Filter, erlang:unique_integer([monotonic])} | Others]),
    ok.

add(HP, MFA, Prio) -> add(HP, MFA, undefined, Prio).
add(HP, {M, F, _} = MFA, Filter, Prio) ->
    verify(HP),
    ensure_table(),
    case [x || {_, {M1, F1, _}, _, _} <- entries(HP), {M1, F1} =:= {M, F}] of
        [] -> put(HP, MFA, Filter, Prio);
        _ -> {error, already_exists}
    end.

del(HP, {M, F}) ->
    ensure_table(),
    store(HP, [C || {_, {M1, F1, _}, _, _} = C <- entries(HP), {M1, F1} =/= {M, F}]),
    ok;
del(HP, {M, F, _A}) ->
    del(HP, {M, F}).

run(HP, Args) ->
    verify(HP),
    run_(callbacks_of(HP), Args).

run_([], _Args) ->
    ok;
run_([{M, F, A} | Rest], Args) ->
    case safe_execute({M, F, A}, Args ++ A) of
        stop -> ok;
        _ -> run_(Rest, Args)
    end.

run_fold(HP, Args, Acc) ->
    verify(HP),
    fold_(callbacks_of(HP), Args, Acc).

fold_([], _Args, Acc) ->
    Acc;
fold_([{M, F, A} | Rest], Args, Acc) ->
    case safe_execute({M, F, A}, Args ++ [Acc] ++ A) of
        {ok, NewAcc} -> fold_(Rest, Args, NewAcc);
        {stop, NewAcc} -> NewAcc;
        stop -> Acc;
        _ -> fold_(Rest, Args, Acc)
    end.

%% @doc [{Priority, MFA}] of a hookpoint, in run order.
lookup(HP) ->
    ensure_table(),
    [{P, MFA} || {P, MFA, _, _} <- sorted(HP)].

%% @doc Every registration: [{HookPoint, Priority, MFA}].
callbacks() ->
    ensure_table(),
    [{HP, P, MFA} || {HP, Entries} <- ets:tab2list(?TAB), {P, MFA, _, _} <- Entries].

reset() ->
    ensure_table(),
    ets:delete_all_objects(?TAB),
    ok.

%%--------------------------------------------------------------------

callbacks_of(HP) ->
    [MFA || {_, MFA, _, _} <- sorted(HP)].

%% Higher priority first; equal priority by MFA term order (add_callback/3).
sorted(HP) ->
    lists:sort(fun({P1, MFA1, _, _}, {P2, MFA2, _, _}) -> {-P1, MFA1} =< {-P2, MFA2} end, entries(HP)).

safe_execute({M, F, _A}, Args) ->
    try
        erlang:apply(M, F, Args)
    catch
        Class:Reason:Stack ->
            logger:error(#{msg => failed_to_execute, module => M, function => F, exception => Class,
                           reason => Reason, stacktrace => Stack}),
            ok
    end.

verify(HP) when is_binary(HP) -> ok;
verify(HP) ->
    lists:member(HP, ?HOOKPOINTS) orelse error({invalid_hookpoint, HP}),
    ok.

entries(HP) ->
    case ets:lookup(?TAB, HP) of
        [{_, Entries}] -> Entries;
        [] -> []
    end.

store(HP, Entries) ->
    ets:insert(?TAB, {HP, Entries}).

%% The table lives in a process of its own, so it outlives test processes.
ensure_table() ->
    case ets:whereis(?TAB) of
        undefined ->
            Parent = self(),
            spawn(fun() ->
                _ = (catch ets:new(?TAB, [named_table, public, set])),
                Parent ! {?TAB, ready},
                receive stop -> ok end
            end),
            receive {?TAB, ready} -> ok after 1000 -> ok end;
        _ ->
            ok
    end.
