%%--------------------------------------------------------------------
%% Shared-subscription replay claims: a group gets its stored messages
%% once, through the first member on this node that subscribes to the
%% filter. The claim ends when that member unsubscribes or its process
%% ends, and the next member to subscribe claims it again.
%%
%% Claims are taken in the subscriber's own process (an ETS insert, no
%% call); this process owns the table and watches the claimants, so a
%% claim never outlives its member.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_groups).

-behaviour(gen_server).

-export([start_link/0, claim/3, release/3]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-define(SERVER, ?MODULE).
-define(TAB, emqx_offline_cassandra_groups).
%% The cluster claims' keepers (emqx_offline_cassandra_cluster_claims).
-define(KEEPERS, emqx_offline_cassandra_cluster_keepers).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?SERVER}, ?MODULE, [], []).

%% @doc True for the first member of Group on this node to subscribe to
%% Filter; it replays for the group. False for the others, and when the
%% plugin is not running.
-spec claim(binary(), binary(), pid()) -> boolean().
claim(Group, Filter, Pid) ->
    Key = {Group, Filter},
    try ets:insert_new(?TAB, {Key, Pid}) of
        true ->
            gen_server:cast(?SERVER, {watch, Key, Pid}),
            true;
        false ->
            false
    catch
        error:badarg -> false
    end.

%% @doc Ends Pid's claim on Group and Filter, if it holds it.
-spec release(binary(), binary(), pid()) -> ok.
release(Group, Filter, Pid) ->
    case catch ets:lookup(?TAB, {Group, Filter}) of
        [{_, Pid}] ->
            _ = (catch ets:delete_object(?TAB, {{Group, Filter}, Pid})),
            emqx_offline_cassandra_cluster_claims:release(Group, Filter);
        _ ->
            ok
    end.

%%--------------------------------------------------------------------

init([]) ->
    _ = ets:new(?TAB, [named_table, public, set]),
    _ = ets:new(?KEEPERS, [named_table, public, set]),
    {ok, #{}}.

handle_call(_Req, _From, Watched) ->
    {reply, {error, unknown_call}, Watched}.

handle_cast({watch, Key, Pid}, Watched) ->
    MRef = erlang:monitor(process, Pid),
    {noreply, Watched#{MRef => Key}};
handle_cast(_Msg, Watched) ->
    {noreply, Watched}.

handle_info({'DOWN', MRef, process, Pid, _Reason}, Watched) ->
    case maps:take(MRef, Watched) of
        {Key, Rest} ->
            _ = ets:delete_object(?TAB, {Key, Pid}),
            {noreply, Rest};
        error ->
            {noreply, Watched}
    end;
handle_info(_Info, Watched) ->
    {noreply, Watched}.
