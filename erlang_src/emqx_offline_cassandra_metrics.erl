%%--------------------------------------------------------------------
%% Plugin-level counters (the NIF counts writes and reads; these count what
%% the hooks did). Lock-free `counters', kept in a persistent_term. The
%% server resets them whenever the NIF starts a new store, whose counters
%% start from zero too, so the two sets always cover the same period.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_metrics).

-export([init/0, reset/0, inc/1, inc/2, all/0]).

-define(KEY, {?MODULE, counters}).
-define(NAMES, [stored, store_refused, replays, replayed, replay_failed, replay_dropped, replay_claimed_elsewhere, deleted, delete_refused, delete_skipped]).

-spec init() -> ok.
init() ->
    case persistent_term:get(?KEY, undefined) of
        undefined -> persistent_term:put(?KEY, counters:new(length(?NAMES), [write_concurrency]));
        _ -> ok
    end.

%% @doc Sets every counter to zero (in place: the hooks keep counting).
-spec reset() -> ok.
reset() ->
    case persistent_term:get(?KEY, undefined) of
        undefined -> init();
        Ref -> lists:foreach(fun(I) -> counters:put(Ref, I, 0) end, lists:seq(1, length(?NAMES)))
    end.

-spec inc(atom()) -> ok.
inc(Name) -> inc(Name, 1).

-spec inc(atom(), non_neg_integer()) -> ok.
inc(Name, N) ->
    case persistent_term:get(?KEY, undefined) of
        undefined -> ok;
        Ref -> counters:add(Ref, index(Name, ?NAMES, 1), N)
    end.

%% @doc Every counter since the NIF's store started (see reset/0).
-spec all() -> #{atom() => non_neg_integer()}.
all() ->
    case persistent_term:get(?KEY, undefined) of
        undefined -> maps:from_list([{N, 0} || N <- ?NAMES]);
        Ref -> maps:from_list([{N, counters:get(Ref, I)} || {N, I} <- lists:zip(?NAMES, lists:seq(1, length(?NAMES)))])
    end.

index(Name, [Name | _], I) -> I;
index(Name, [_ | Rest], I) -> index(Name, Rest, I + 1).
