%%--------------------------------------------------------------------
%% A shared group's replay, claimed across the EMQX cluster (issue 15
%% part 4; the core's claims.rs). The node-local claim
%% (emqx_offline_cassandra_groups) picks one member per node; before that
%% member's replay reads anything, it claims (Group, Filter) in Cassandra
%% for this node, with a TTL. The node that wins replays; the others do not
%% (and give their local claim back, so that a later member may try again).
%%
%% The claim is kept (refreshed every third of its TTL) by a small process
%% for as long as the member holding the local claim is subscribed; it is
%% released when that member unsubscribes or its channel ends, and runs
%% out by itself (the TTL) when this node dies. Cassandra unreachable: the
%% replay goes ahead on the node-local claim alone (the group may get the
%% backlog once per node, as before, but nothing is held back).
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_cluster_claims).

-export([for_replay/3, release/2, holder/0, ttl_ms/0]).
-export([keep/4]).

-define(TTL_MS, 30000).
-define(REPLY_TIMEOUT_MS, 30000).
%% Keepers by {Group, Filter}: the groups server owns the table.
-define(KEEPERS, emqx_offline_cassandra_cluster_keepers).

%% @doc This node's name as claims record it.
-spec holder() -> binary().
holder() ->
    atom_to_binary(node(), utf8).

-spec ttl_ms() -> pos_integer().
ttl_ms() ->
    ?TTL_MS.

%% @doc In a replay process, before it reads: ours (replay; kept while
%% Member stays subscribed) or elsewhere (another node replays: do not).
%% Not a shared subscription (Group undefined): ours.
-spec for_replay(binary() | undefined, binary(), pid()) -> ours | elsewhere.
for_replay(undefined, _Filter, _Member) ->
    ours;
for_replay(Group, Filter, Member) ->
    case call(claim, Group, Filter) of
        {ok, held} ->
            start_keeper(Group, Filter, Member),
            ours;
        {ok, {held_by, Node}} ->
            emqx_offline_cassandra_metrics:inc(replay_claimed_elsewhere),
            logger:debug(#{msg => offline_cassandra_replay_claimed_elsewhere, group => Group,
                           filter => Filter, node => Node}),
            emqx_offline_cassandra_groups:release(Group, Filter, Member),
            elsewhere;
        {error, Reason} ->
            emqx_offline_cassandra_log:burst(offline_cassandra_replay_claim_failed, #{
                reason => emqx_offline_cassandra_reason:describe(Reason), group => Group, filter => Filter
            }),
            ours
    end.

%% @doc The local claim on Group and Filter ended: the cluster claim too.
-spec release(binary(), binary()) -> ok.
release(Group, Filter) ->
    case catch ets:take(?KEEPERS, {Group, Filter}) of
        [{_, Keeper}] -> Keeper ! release;
        _ -> ok
    end,
    ok.

%%--------------------------------------------------------------------

start_keeper(Group, Filter, Member) ->
    Keeper = proc_lib:spawn(?MODULE, keep, [Group, Filter, Member, erlang:monotonic_time(millisecond)]),
    _ = (catch ets:insert(?KEEPERS, {{Group, Filter}, Keeper})),
    ok.

%% @private Refreshes the claim while Member lives; releases it when
%% Member ends or release/2 says so; stops when the claim was lost.
keep(Group, Filter, Member, _Since) ->
    MRef = erlang:monitor(process, Member),
    keep_loop(Group, Filter, MRef).

keep_loop(Group, Filter, MRef) ->
    receive
        release ->
            _ = call(release, Group, Filter),
            ok;
        {'DOWN', MRef, process, _, _} ->
            _ = (catch ets:delete_object(?KEEPERS, {{Group, Filter}, self()})),
            _ = call(release, Group, Filter),
            ok
    after ?TTL_MS div 3 ->
        case call(refresh, Group, Filter) of
            {ok, false} ->
                %% Taken over (this node was cut off longer than the TTL).
                _ = (catch ets:delete_object(?KEEPERS, {{Group, Filter}, self()})),
                ok;
            _ ->
                keep_loop(Group, Filter, MRef)
        end
    end.

call(Op, Group, Filter) ->
    emqx_offline_cassandra_nif:await_reply(
        fun(Pid, Ref) -> emqx_offline_cassandra_nif:replay_claim(Pid, Ref, Op, {Group, Filter}, holder(), ?TTL_MS) end,
        ?REPLY_TIMEOUT_MS
    ).
