%%--------------------------------------------------------------------
%% Top supervisor: one server that owns config, NIF and hooks.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_sup).

-behaviour(supervisor).

-export([start_link/0, init/1]).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    supervisor:start_link({local, ?MODULE}, ?MODULE, []).

init([]) ->
    %% A server that keeps crashing means something is badly wrong (the NIF,
    %% or EMQX itself); give up after 3 restarts in 10 s so EMQX reports the
    %% plugin as stopped instead of looping.
    Flags = #{strategy => one_for_one, intensity => 3, period => 10},
    Server = #{
        id => emqx_offline_cassandra_server,
        start => {emqx_offline_cassandra_server, start_link, []},
        restart => permanent,
        shutdown => 15000,
        type => worker,
        modules => [emqx_offline_cassandra_server]
    },
    {ok, {Flags, [Server]}}.
