%%--------------------------------------------------------------------
%% Owns the plugin's lifecycle: reads and checks the config, starts the NIF
%% (which connects in the background), registers the hooks, applies config
%% changes, and watches the connection (alarm, log). start/2 never waits
%% for Cassandra; readiness shows through health/0.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_server).

-behaviour(gen_server).

-export([start_link/0, config_changed/1, health/0, running_config/0]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2, format_status/1]).

-define(SERVER, ?MODULE).
-define(REASON, emqx_offline_cassandra_reason).
-define(CONFIG_ERROR, {?MODULE, config_error}).
%% How long a config change waits for writes to the old cluster before the
%% rest moves to the new store.
-define(RECONFIGURE_GRACE_MS, 5000).
-define(STOP_GRACE_MS, 5000).
-define(RUNNING_CONFIG, {?MODULE, running_config}).
-define(ALARM, offline_cassandra_unreachable).
%% Raised while Cassandra answers but writes wait (replicas down, overloaded,
%% timeouts); they land when it recovers.
-define(DEGRADED_ALARM, offline_cassandra_degraded).
%% Raised while this node's clock is further from Cassandra's than
%% max_clock_skew: its replay floors stay where they are until it is back.
-define(CLOCK_ALARM, offline_cassandra_clock_skew).
-define(CHECK_INTERVAL_MS, 1000).
%% Health turns red when the write buffer is fuller than this.
-define(BUFFER_ALERT, 0.8).

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?SERVER}, ?MODULE, [], []).

%% @doc Validates NewConfig and applies it: `ok' or `{error, Reason}' (EMQX
%% 5.9+ rejects the change on an error; 5.7-5.8 ignore the result). When
%% the plugin is not running, only validates: the config is read at start.
-spec config_changed(map()) -> ok | {error, binary()}.
config_changed(NewConfig) ->
    try
        gen_server:call(?SERVER, {config_changed, NewConfig}, 30000)
    catch
        exit:{noproc, _} -> validation_result(validate(NewConfig));
        exit:{timeout, _} -> {error, <<"timed out applying the config">>}
    end.

validation_result({ok, _}) -> ok;
validation_result({error, _} = Error) -> Error.

%% @doc `ok' when the config is valid and Cassandra answers; otherwise
%% `{error, Reason}' in one line. Reads state directly (no call), so it is
%% fast even while a config change is being applied.
-spec health() -> ok | {error, binary()}.
health() ->
    case persistent_term:get(?CONFIG_ERROR, undefined) of
        undefined ->
            case nif_health(emqx_offline_cassandra_nif:status()) of
                ok ->
                    Stats = emqx_offline_cassandra_nif:stats(),
                    case {spool_health(), buffer_health(Stats)} of
                        {ok, ok} -> clock_health(Stats);
                        {ok, Error} -> Error;
                        {Error, _} -> Error
                    end;
                Error ->
                    Error
            end;
        Why ->
            {error, <<"invalid config: ", Why/binary>>}
    end.

%% buffer_mode = disk with a disk buffer that cannot be used (unwritable
%% directory, full disk): the plugin works, from memory only.
spool_health() ->
    case emqx_offline_cassandra_nif:spool_status() of
        {spool_failed, _} = Failed -> {error, ?REASON:describe(Failed)};
        _ -> ok
    end.

buffer_health({ok, #{buffered := Buffered, buffer_capacity := Capacity}}) when
    Capacity > 0, Buffered > Capacity * ?BUFFER_ALERT
->
    {error,
        iolist_to_binary(
            io_lib:format("write buffer ~b% full (~b of ~b writes)", [Buffered * 100 div Capacity, Buffered, Capacity])
        )};
%% The byte bound (buffer_max_size) may fill first: 1 MB payloads.
buffer_health({ok, #{buffered_bytes := Bytes, buffer_max_bytes := Max}}) when
    Max > 0, Bytes > Max * ?BUFFER_ALERT
->
    {error,
        iolist_to_binary(
            io_lib:format("write buffer ~b% full (~b of ~b MB)", [Bytes * 100 div Max, Bytes div 1048576, Max div 1048576])
        )};
buffer_health(_) ->
    ok.

clock_health(Stats) ->
    case clock_skew(Stats) of
        undefined -> ok;
        Skew -> {error, ?REASON:describe(Skew)}
    end.

%% {clock_skew, OffsetMs, LimitMs} while the NIF finds this node's clock too
%% far from Cassandra's, else undefined.
clock_skew({ok, #{clock_skewed := 1, clock_offset_ms := Offset, clock_skew_limit_ms := Limit}}) ->
    {clock_skew, Offset, Limit};
clock_skew(_) ->
    undefined.

%% @doc The config the plugin runs with, as the NIF got it, password hidden.
-spec running_config() -> map() | undefined.
running_config() ->
    persistent_term:get(?RUNNING_CONFIG, undefined).

%%--------------------------------------------------------------------

init([]) ->
    process_flag(trap_exit, true),
    ok = emqx_offline_cassandra_log:init(),
    ok = emqx_offline_cassandra_metrics:init(),
    %% No store yet (the plugin starts): the hooks' counters start over too,
    %% even if an invalid config keeps the store from starting.
    _ = emqx_offline_cassandra_nif:status() =:= not_started andalso emqx_offline_cassandra_metrics:reset(),
    Features = emqx_offline_cassandra_compat:detect(),
    ok = emqx_offline_cassandra_nif:set_event_pid(self()),
    {Source, Result} =
        case emqx_offline_cassandra_compat:read_config() of
            {ok, Raw, Src} -> {Src, load_config(Raw)};
            {error, Why} -> {<<"none">>, {error, iolist_to_binary(io_lib:format("~0p", [Why]))}}
        end,
    logger:notice(#{
        msg => offline_cassandra_started,
        emqx_version => maps:get(emqx_version, Features),
        config_api => maps:get(config_api, Features),
        config_source => Source,
        message_extra => maps:get(message_extra, Features),
        config => config_result(Result)
    }),
    erlang:send_after(?CHECK_INTERVAL_MS, self(), check),
    {ok, #{nif => nif_of(Result), reachable => undefined}}.

handle_call({config_changed, NewConfig}, _From, #{nif := OldNif} = State) ->
    %% A rejected change leaves the running config (and its hooks) alone.
    case validate(NewConfig) of
        {ok, Parsed} ->
            Result = apply_valid(Parsed, OldNif),
            logger:notice(#{msg => offline_cassandra_config_applied, result => config_result(Result)}),
            case Result of
                {ok, _} -> {reply, ok, State#{nif => nif_of(Result)}};
                {error, Why} -> {reply, {error, Why}, State}
            end;
        {error, Why} ->
            logger:warning(#{msg => offline_cassandra_config_rejected, reason => Why}),
            {reply, {error, Why}, State}
    end;
handle_call(_Req, _From, State) ->
    {reply, {error, unknown_call}, State}.

handle_cast(_Msg, State) ->
    {noreply, State}.

%% Events from the Rust side reach the same logger: failures once per burst.
handle_info({offline_cassandra_event, state_changed, Status}, State) ->
    logger:debug(#{msg => offline_cassandra_state, status => ?REASON:describe(Status)}),
    {noreply, State};
handle_info({offline_cassandra_event, writes_failed, {Count, Reason}}, State) ->
    emqx_offline_cassandra_log:burst(offline_cassandra_writes_failed, #{count => Count, reason => ?REASON:describe(Reason)}),
    {noreply, State};
handle_info({offline_cassandra_event, writes_requeued, Count}, State) ->
    emqx_offline_cassandra_log:burst(offline_cassandra_writes_requeued, #{count => Count}),
    {noreply, State};
%% Reported once per topic by the core: rows replay leaves out (see README,
%% "Moving from EMQX 4.x").
handle_info({offline_cassandra_event, unreadable_rows, {Topic, Count, Example}}, State) ->
    logger:warning(#{
        msg => offline_cassandra_unreadable_rows,
        topic => Topic,
        reason => ?REASON:describe({unreadable_rows, Topic, Count, Example})
    }),
    {noreply, State};
handle_info({offline_cassandra_event, spool_recovered, {Dir, Records, Torn, TornBytes}}, State) ->
    Log = case Torn of 0 -> notice; _ -> warning end,
    logger:Log(#{
        msg => offline_cassandra_spool_recovered,
        records => Records,
        torn => Torn,
        reason => ?REASON:describe({spool_recovered, Dir, Records, Torn, TornBytes})
    }),
    {noreply, State};
handle_info({offline_cassandra_event, spool_failed, {Dir, Why}}, State) ->
    emqx_offline_cassandra_log:burst(offline_cassandra_spool_failed, #{
        reason => ?REASON:describe({spool_failed, <<Dir/binary, ": ", Why/binary>>})
    }),
    {noreply, State};
handle_info({offline_cassandra_event, writes_waiting, {Count, Why}}, State) ->
    emqx_offline_cassandra_log:burst(offline_cassandra_writes_waiting, #{count => Count, reason => Why}),
    {noreply, State};
handle_info(check, State) ->
    erlang:send_after(?CHECK_INTERVAL_MS, self(), check),
    {noreply, check_clock(check_connection(State))};
handle_info(_Info, State) ->
    {noreply, State}.

%% Crash reports never show the password: the state holds only a hash of
%% the NIF config, and a config_changed call being handled is redacted.
format_status(Status) ->
    maps:map(
        fun
            (message, {config_changed, Config}) when is_map(Config) ->
                {config_changed, emqx_offline_cassandra_config:redact(Config)};
            (message, {'$gen_call', From, {config_changed, Config}}) when is_map(Config) ->
                {'$gen_call', From, {config_changed, emqx_offline_cassandra_config:redact(Config)}};
            (_Key, Value) ->
                Value
        end,
        Status
    ).

terminate(_Reason, _State) ->
    ok = emqx_offline_cassandra_hooks:unhook(),
    _ = (catch emqx_alarm:ensure_deactivated(?ALARM)),
    _ = (catch emqx_alarm:ensure_deactivated(?DEGRADED_ALARM)),
    _ = (catch emqx_alarm:ensure_deactivated(?CLOCK_ALARM)),
    persistent_term:erase(?RUNNING_CONFIG),
    Stopped = emqx_offline_cassandra_nif:stop(?STOP_GRACE_MS),
    persistent_term:erase(?CONFIG_ERROR),
    logger:notice(#{msg => offline_cassandra_stopped, nif => Stopped}),
    ok.

%%--------------------------------------------------------------------

%% Pure (no network, no files). parse/1 has the storage core check the
%% storage fields (once) and names a problem by the form's field.
validate(Raw) ->
    emqx_offline_cassandra_config:parse(Raw).

%% At start: an invalid config leaves the plugin running but unhooked, with
%% the reason in its health.
load_config(Raw) ->
    case validate(Raw) of
        {ok, Parsed} ->
            apply_valid(Parsed, undefined);
        {error, Why} ->
            persistent_term:put(?CONFIG_ERROR, Why),
            ok = emqx_offline_cassandra_hooks:unhook(),
            {error, Why}
    end.

%% Starts or reconfigures the NIF, then publishes the settings and hooks.
apply_valid(#{nif := Nif, settings := Settings}, OldNif) ->
    case start_nif(Nif, OldNif) of
        ok ->
            erlang:phash2(Nif) =/= OldNif andalso warn_unverified_tls(Nif),
            persistent_term:erase(?CONFIG_ERROR),
            ok = emqx_offline_cassandra_hooks:set_settings(Settings),
            ok = emqx_offline_cassandra_hooks:hook(),
            persistent_term:put(?RUNNING_CONFIG, emqx_offline_cassandra_config:redact(Nif)),
            {ok, Nif};
        {error, Why} ->
            {error, Why}
    end.

start_nif(Nif, OldHash) ->
    case erlang:phash2(Nif) =:= OldHash of
        %% Only hook settings changed: the connection stays as it is.
        true -> ok;
        false -> restart_nif(Nif)
    end.

%% The NIF's counters start from zero with every new store (a start, or a
%% reconfigure that reconnects); the hooks' counters restart with them, so
%% `stats' shows both counting from the same moment.
restart_nif(Nif) ->
    case emqx_offline_cassandra_nif:status() of
        not_started ->
            ok = emqx_offline_cassandra_metrics:reset(),
            case emqx_offline_cassandra_nif:start(Nif) of
                ok -> ok;
                {error, Reason} -> {error, ?REASON:describe(Reason)}
            end;
        _Running ->
            ok = emqx_offline_cassandra_metrics:reset(),
            case emqx_offline_cassandra_nif:reconfigure(Nif, ?RECONFIGURE_GRACE_MS) of
                {ok, Report} ->
                    logger:notice(#{msg => offline_cassandra_reconnecting, buffered_writes => Report}),
                    ok;
                ok ->
                    ok;
                {error, Reason} ->
                    {error, ?REASON:describe(Reason)}
            end
    end.

%% TLS without verification sends the password to whoever answers: said
%% once per store start (not in health: the plugin works, EMQX's health is
%% only ok or error).
warn_unverified_tls(#{<<"tls_enable">> := true, <<"tls_verify">> := false}) ->
    logger:warning(#{msg => offline_cassandra_tls_unverified, reason => ?REASON:describe(tls_unverified)});
warn_unverified_tls(_Nif) ->
    ok.

%% An EMQX alarm is raised while Cassandra cannot be reached (connecting
%% with errors, disconnected), another while it answers but writes wait
%% (degraded: replicas down, overloaded, timeouts); each is cleared when
%% that ends, and each change is logged once.
check_connection(#{reachable := Was} = State) ->
    Status = emqx_offline_cassandra_nif:status(),
    Now =
        case Status of
            connected -> true;
            {degraded, _, _} -> degraded;
            {connecting, _} -> false;
            {disconnected, _} -> false;
            {error, _} -> false;
            _ -> Was
        end,
    case {Was, Now} of
        {Same, Same} ->
            State;
        {_, false} ->
            _ = (catch emqx_alarm:ensure_deactivated(?DEGRADED_ALARM)),
            Why = ?REASON:describe(element(2, Status)),
            _ = (catch emqx_alarm:activate(?ALARM, #{reason => Why}, <<"Cassandra unreachable: ", Why/binary>>)),
            logger:warning(#{msg => offline_cassandra_unreachable, reason => Why}),
            State#{reachable => false};
        {_, degraded} ->
            _ = (catch emqx_alarm:ensure_deactivated(?ALARM)),
            Why = ?REASON:describe(Status),
            _ = (catch emqx_alarm:activate(?DEGRADED_ALARM, #{reason => Why}, <<"Cassandra ", Why/binary>>)),
            logger:warning(#{msg => offline_cassandra_degraded, reason => Why}),
            State#{reachable => degraded};
        {_, true} ->
            _ = (catch emqx_alarm:ensure_deactivated(?ALARM)),
            _ = (catch emqx_alarm:ensure_deactivated(?DEGRADED_ALARM)),
            logger:notice(#{msg => offline_cassandra_connected}),
            State#{reachable => true}
    end.

%% The clock alarm is raised while the NIF finds this node's clock too far
%% from Cassandra's, cleared when it is back; each change is logged once.
check_clock(State) ->
    Skew = clock_skew(emqx_offline_cassandra_nif:stats()),
    case {maps:get(clock_skew, State, undefined), Skew} of
        {undefined, undefined} ->
            State;
        {_, undefined} ->
            _ = (catch emqx_alarm:ensure_deactivated(?CLOCK_ALARM)),
            logger:notice(#{msg => offline_cassandra_clock_in_bounds}),
            State#{clock_skew => undefined};
        {undefined, _} ->
            Why = ?REASON:describe(Skew),
            _ = (catch emqx_alarm:activate(?CLOCK_ALARM, #{reason => Why}, Why)),
            logger:warning(#{msg => offline_cassandra_clock_skew, reason => Why}),
            State#{clock_skew => Skew};
        {_, _} ->
            State#{clock_skew => Skew}
    end.

%% What the state keeps of the NIF config: enough to tell a change, no password.
nif_of({ok, Nif}) -> erlang:phash2(Nif);
nif_of({error, _}) -> undefined.

config_result({ok, Nif}) -> {ok, emqx_offline_cassandra_config:redact(Nif)};
config_result({error, Why}) -> {error, Why}.

nif_health(connected) -> ok;
nif_health(Status) -> {error, ?REASON:describe(Status)}.
