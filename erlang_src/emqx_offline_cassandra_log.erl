%%--------------------------------------------------------------------
%% Logging through OTP logger with structured reports. Failures that can
%% repeat per message (a full buffer, Cassandra down) are logged once per
%% burst: the first at once, then at most one line per kind every 10 s with
%% the number suppressed meanwhile. Counts live in an ETS table owned by
%% the plugin's server.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_log).

-export([init/0, burst/2, counts/0]).

-define(TAB, emqx_offline_cassandra_log).
-define(INTERVAL_MS, 10000).

%% @doc Creates the table; called by the server that owns it.
-spec init() -> ok.
init() ->
    _ = ets:new(?TAB, [named_table, public, set, {write_concurrency, true}]),
    ok.

%% @doc Counts one event of Kind and logs it unless Kind was logged in the
%% last 10 s.
-spec burst(atom(), map()) -> ok.
burst(Kind, Report) ->
    Now = erlang:monotonic_time(millisecond),
    try ets:update_counter(?TAB, Kind, [{2, 1}, {3, 1}], {Kind, 0, 0, Now - ?INTERVAL_MS}) of
        [_Total, Since] ->
            [{_, _, _, Last}] = ets:lookup(?TAB, Kind),
            case Now - Last >= ?INTERVAL_MS of
                true ->
                    ets:update_element(?TAB, Kind, [{3, 0}, {4, Now}]),
                    logger:warning(Report#{msg => Kind, events_since_last_log => Since});
                false ->
                    ok
            end
    catch
        error:badarg ->
            %% No table (plugin stopping): still say it.
            logger:warning(Report#{msg => Kind})
    end,
    ok.

%% @doc Total events per kind since start.
-spec counts() -> #{atom() => non_neg_integer()}.
counts() ->
    try
        maps:from_list([{K, N} || {K, N, _, _} <- ets:tab2list(?TAB)])
    catch
        error:badarg -> #{}
    end.
