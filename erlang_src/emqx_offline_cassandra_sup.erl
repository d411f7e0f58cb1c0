%%--------------------------------------------------------------------
%% Top supervisor: the shared-group replay claims and the recently deleted
%% message ids, then the server that owns config, NIF and hooks. Started in that order (the hooks the server
%% registers take claims), stopped in the reverse one.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_sup).

-behaviour(supervisor).

-export([start_link/0, init/1]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

init([]) ->
    %% A child that keeps crashing means something is badly wrong (the NIF,
    %% or EMQX itself); give up after 3 restarts in 10 s so EMQX reports the
    %% plugin as stopped instead of looping.
    Flags = #{strategy => one_for_one, intensity => 3, period => 10},
    {ok, {Flags, [
        worker(emqx_offline_cassandra_groups, 5000),
        worker(emqx_offline_cassandra_acked, 5000),
        worker(emqx_offline_cassandra_replays, 5000),
        worker(emqx_offline_cassandra_server, 15000)
    ]}}.

%% Shutdown: the server may flush writes to Cassandra for a few seconds.
worker(Module, ShutdownMs) ->
    #{
        id => Module,
        start => {Module, start_link, []},
        restart => permanent,
        shutdown => ShutdownMs,
        type => worker,
        modules => [Module]
    }.
