%%--------------------------------------------------------------------
%% The plugin's application module; EMQX finds it as <name>_app. It only
%% delegates: the supervisor's server owns config, NIF and hooks; the
%% `emqx ctl offline_cassandra' command is registered here, above
%% everything it reports on.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_app).

-behaviour(application).

-export([start/2, prep_stop/1, stop/1]).
-export([on_config_changed/2, on_health_check/1]).

%% @doc Returns well within EMQX's 10 s start limit: connecting to Cassandra
%% happens in the background.
start(_Type, _Args) ->
    case emqx_offline_cassandra_sup:start_link() of
        {ok, Sup} ->
            ok = emqx_offline_cassandra_cli:register(),
            {ok, Sup};
        Error ->
            Error
    end.

%% @doc The command goes before the server stops: nothing to report on.
prep_stop(State) ->
    ok = emqx_offline_cassandra_cli:unregister(),
    State.

%% @doc The server's terminate/2 already unhooked and stopped the NIF;
%% unhooking again is harmless and covers a server that died (then
%% prep_stop/1 was not called either).
stop(_State) ->
    ok = emqx_offline_cassandra_cli:unregister(),
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
