%%--------------------------------------------------------------------
%% A shared group replays once across two EMQX nodes (issue 15 part 4),
%% each its own Erlang VM (OTP's peer, distributed under its own name) with
%% the EMQX double, the plugin's servers and hooks, and the NIF connected to
%% the real local Cassandra. A backlog is stored through node A; members of
%% `$share/G/T' subscribe on A and on B at the same moment: the backlog
%% reaches the group exactly once, from exactly one node (the other counts
%% replay_claimed_elsewhere), and every row is deleted. Both replay paths.
%% The same in one VM with a stand-in for the other node:
%% emqx_offline_cassandra_cluster_claims_tests.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_two_nodes_tests).

-include_lib("eunit/include/eunit.hrl").

%% Run on each node through erpc.
-export([node_setup/1, publish/3, subscribe/2, received/1, stored/1, claimed_elsewhere/0]).

-define(NIF, emqx_offline_cassandra_nif).
-define(D, emqx_double).
-define(H, emqx_offline_cassandra_hooks).
-define(N, 200).

two_nodes_test_() ->
    [
        {atom_to_list(Path) ++ ": a shared group's backlog comes once, from one of two nodes",
         {timeout, scaled(240), fun() -> once_across_two_nodes(Path) end}}
     || Path <- [deliver, extsub]
    ].

once_across_two_nodes(Path) ->
    ok = ensure_distributed(),
    Root = iolist_to_binary(io_lib:format("two_nodes/~s/~b", [Path, erlang:system_time(millisecond)])),
    T = <<Root/binary, "/t">>,
    Group = iolist_to_binary(["g", integer_to_list(erlang:unique_integer([positive]))]),
    Share = <<"$share/", Group/binary, "/", T/binary>>,
    {A, B} = {start_node("a"), start_node("b")},
    try
        [ok = call(N, node_setup, [#{path => Path, filter => <<Root/binary, "/#">>}]) || N <- [A, B]],
        ok = call(A, publish, [T, ?N, <<Root/binary, "-pub">>]),
        ok = wait_until(fun() -> call(A, stored, [T]) =:= ?N end, 30000),
        %% One member on each node, at the same moment.
        Parent = self(),
        [spawn(fun() -> Parent ! {subscribed, N, call(N, subscribe, [<<Root/binary, "-", Name/binary>>, Share])} end)
         || {N, Name} <- [{A, <<"a">>}, {B, <<"b">>}]],
        Subs = [receive {subscribed, N, {ok, Sub}} -> {N, Sub} after scaled(30000) -> error({no_subscribe, N}) end
                || N <- [A, B]],
        ok = wait_until(fun() -> call(A, stored, [T]) =:= 0 end, 120000),
        %% Nothing more arrives later, from either node.
        timer:sleep(scaled(3000)),
        Got = [{N, call(N, received, [Sub])} || {N, Sub} <- Subs],
        Elsewhere = [{N, call(N, claimed_elsewhere, [])} || N <- [A, B]],
        ?debugFmt("~p: received ~p, claimed elsewhere ~p", [Path, Got, Elsewhere]),
        ?assertEqual(?N, lists:sum([R || {_, R} <- Got])),
        %% One node replayed it all; the other found the claim taken.
        ?assertEqual([0, ?N], lists:sort([R || {_, R} <- Got])),
        ?assertEqual([0, 1], lists:sort([E || {_, E} <- Elsewhere]))
    after
        [catch peer:stop(P) || {P, _} <- [A, B]]
    end.

%%--------------------------------------------------------------------
%% On a node

%% The EMQX double in Path's mode, the plugin's servers, the NIF connected,
%% and the hooks replaying Filter (as the plugin's application would), set
%% up by a process that stays: the tables it creates must outlive the call.
node_setup(Opts) ->
    Caller = self(),
    Keeper = spawn(fun() ->
        Caller ! {set_up, self(), catch set_up(Opts)},
        receive stop -> ok end
    end),
    receive
        {set_up, Keeper, Result} -> Result
    end.

set_up(#{path := Path, filter := Filter}) ->
    _ = emqx_offline_cassandra_test_util:plugin_setup(Path, #{servers => [emqx_offline_cassandra_replays,
        emqx_offline_cassandra_acked, emqx_offline_cassandra_groups]}),
    ok = ?H:set_settings(#{topics => [Filter], max_returned_count => 0, time_range_ms => 0,
                           message_ttl_s => 0, wildcard_replay => all}),
    ok = ?H:hook().

publish(T, N, ClientId) ->
    Pub = ?D:connect(ClientId),
    [{ok, _} = ?D:publish(Pub, T, integer_to_binary(I), 1) || I <- lists:seq(1, N)],
    ?D:disconnect(Pub),
    ok.

subscribe(ClientId, Share) ->
    Sub = ?D:connect(ClientId, #{auto_ack => true}),
    ok = ?D:subscribe(Sub, Share, 1),
    {ok, Sub}.

received(Sub) ->
    maps:get(received, ?D:stats(Sub)).

stored(T) ->
    {ok, C} = ?NIF:count(T, 10000),
    C.

claimed_elsewhere() ->
    maps:get(replay_claimed_elsewhere, emqx_offline_cassandra_metrics:all()).

%%--------------------------------------------------------------------

%% This VM needs a node name for peer's nodes to talk to it (epmd is
%% started if it is not running).
ensure_distributed() ->
    case node() of
        nonode@nohost ->
            _ = os:cmd("epmd -daemon"),
            Name = list_to_atom("two_nodes_" ++ os:getpid()),
            case net_kernel:start([Name, shortnames]) of
                {ok, _} -> ok;
                {error, {already_started, _}} -> ok
            end;
        _ ->
            ok
    end.

%% A node with this VM's code path and environment (CASSANDRA_NODE,
%% FAULT_INJECTION, TEST_TIME_SCALE are inherited).
start_node(Name) ->
    Args = lists:append([["-pa", P] || P <- code:get_path(), filelib:is_dir(P), P =/= "."]),
    {ok, Peer, Node} = peer:start_link(#{name => list_to_atom(Name ++ "_" ++ os:getpid()), args => Args,
                                         wait_boot => scaled(60000)}),
    unlink(Peer),
    {Peer, Node}.

call({_Peer, Node}, F, Args) ->
    erpc:call(Node, ?MODULE, F, Args, scaled(60000)).

scaled(T) -> emqx_offline_cassandra_test_util:scaled(T).

wait_until(Pred, Ms) -> emqx_offline_cassandra_test_util:wait_until(Pred, Ms).
