%%--------------------------------------------------------------------
%% The plugin's application module; EMQX finds it as <name>_app. It only
%% delegates: the server owns config, NIF and hooks.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_app).

-behaviour(application).

-export([start/2, stop/1]).
-export([on_config_changed/2, on_health_check/1]).

%% @doc Returns well within EMQX's 10 s start limit: connecting to Cassandra
%% happens in the background.
start(_Type, _Args) ->
    emqx_offline_cassandra_sup:start_link().

%% @doc The server's terminate/2 already unhooked and stopped the NIF;
%% unhooking again is harmless and covers a server that died.
stop(_State) ->
    emqx_offline_cassandra_hooks:unhook().

%% @doc Called by EMQX 5.7.2+ with the new config. Returns exactly `ok' or
%% `{error, Reason}', as EMQX 5.9+ requires.
-spec on_config_changed(map(), map()) -> ok | {error, binary()}.
on_config_changed(_OldConfig, NewConfig) ->
    emqx_offline_cassandra_server:config_changed(NewConfig).

%% @doc EMQX 5.9+: `ok', or `{error, Reason}' in one line (Cassandra
%% unreachable, authentication failed, schema mismatch, invalid config).
-spec on_health_check(map()) -> ok | {error, binary()}.
on_health_check(_Options) ->
    emqx_offline_cassandra_server:health().
