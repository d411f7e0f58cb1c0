%%--------------------------------------------------------------------
%% `emqx ctl offline_cassandra ...': status, stats, count, peek, purge.
%% Registered with emqx_ctl by the application while the plugin runs.
%% Commands may block (an operator waits for the answer), with a 15 s
%% limit. What they print is built by pure functions (status_text/1,
%% stats_text/1): reasons as sentences, every setting and counter under
%% its full name.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_cli).

-export([cmd/1, register/0, unregister/0]).
-export([status_text/1, stats_text/1]).

-define(NIF, emqx_offline_cassandra_nif).
-define(REASON, emqx_offline_cassandra_reason).
-define(TIMEOUT, 15000).

-spec register() -> ok.
register() ->
    catch emqx_ctl:register_command(offline_cassandra, {?MODULE, cmd}),
    ok.

-spec unregister() -> ok.
unregister() ->
    catch emqx_ctl:unregister_command(offline_cassandra),
    ok.

%% @private emqx_ctl's callback, with the words after `offline_cassandra'.
cmd(["status"]) ->
    emqx_ctl:print("~ts", [
        status_text(#{
            connection => ?NIF:status(),
            health => emqx_offline_cassandra_server:health(),
            config => emqx_offline_cassandra_server:running_config(),
            settings => emqx_offline_cassandra_hooks:settings()
        })
    ]);
cmd(["stats"]) ->
    emqx_ctl:print("~ts", [
        stats_text(#{
            storage => ?NIF:stats(),
            hooks => emqx_offline_cassandra_metrics:all(),
            events => emqx_offline_cassandra_log:counts()
        })
    ]);
cmd(["count", Topic]) ->
    case ?NIF:count(bin(Topic), ?TIMEOUT) of
        {ok, N} -> emqx_ctl:print("~ts: ~b stored message(s)~n", [Topic, N]);
        {error, Reason} -> emqx_ctl:print("error: ~ts~n", [format(Reason)])
    end;
cmd(["peek", Topic]) ->
    cmd(["peek", Topic, "10"]);
cmd(["peek", Topic, N]) ->
    case string:to_integer(N) of
        {Limit, ""} when Limit > 0 ->
            case ?NIF:fetch_sync(bin(Topic), #{limit => Limit}, ?TIMEOUT) of
                {ok, Rows} ->
                    emqx_ctl:print("~b message(s), oldest first:~n", [length(Rows)]),
                    [print_row(R) || R <- Rows],
                    ok;
                {error, Reason} ->
                    emqx_ctl:print("error: ~ts~n", [format(Reason)])
            end;
        _ ->
            emqx_ctl:print("error: N must be a positive whole number~n")
    end;
cmd(["purge", Topic]) ->
    case ?NIF:purge(bin(Topic), ?TIMEOUT) of
        {ok, N} -> emqx_ctl:print("purged ~ts: ~b stored message(s) deleted~n", [Topic, N]);
        {error, Reason} -> emqx_ctl:print("error: ~ts~n", [format(Reason)])
    end;
cmd(_) ->
    emqx_ctl:usage([
        {"offline_cassandra status", "Connection, health and running config (password hidden)"},
        {"offline_cassandra stats", "Counters: stored, replayed, deleted, dropped, failed, latencies"},
        {"offline_cassandra count <topic>", "Number of messages stored for a topic"},
        {"offline_cassandra peek <topic> [N]", "The newest N (10) messages of a topic or filter"},
        {"offline_cassandra purge <topic>", "Delete every message stored for a topic"}
    ]).

print_row(#{msgid := Id, arrived := Arrived, qos := QoS, retain := Retain, sender := Sender, payload := Payload, topic := T}) ->
    emqx_ctl:print("~ts ~ts ~ts qos=~b retain=~p sender=~ts payload=~ts~n", [
        Id, calendar:system_time_to_rfc3339(Arrived, [{unit, millisecond}]), T, QoS, Retain, Sender, printable(Payload)
    ]).

%% Payloads as text when they are short printable UTF-8, else a size and hex head.
printable(P) when byte_size(P) =< 200 ->
    case unicode:characters_to_list(P) of
        L when is_list(L) ->
            case io_lib:printable_unicode_list(L) of
                true -> ["\"", P, "\""];
                false -> binary_summary(P)
            end;
        _ ->
            binary_summary(P)
    end;
printable(P) ->
    binary_summary(P).

binary_summary(P) ->
    Head = binary:part(P, 0, min(16, byte_size(P))),
    io_lib:format("<~b bytes: ~ts...>", [byte_size(P), binary:encode_hex(Head)]).

bin(S) -> unicode:characters_to_binary(S).

format(Reason) -> ?REASON:describe(Reason).

%%--------------------------------------------------------------------
%% What the commands print
%%--------------------------------------------------------------------

%% @doc `status': the connection and the health as sentences, then every
%% setting the plugin runs with, under the form's names and written as the
%% form takes them (`2s', `8MB'; password hidden), then what the plugin
%% derives from them for the storage core.
-spec status_text(#{
    connection := term(),
    health := ok | {error, term()},
    config := map() | undefined,
    settings := map() | undefined
}) -> binary().
status_text(#{connection := Connection, health := Health, config := Config, settings := Settings}) ->
    HealthText =
        case Health of
            ok -> <<"ok">>;
            {error, Why} -> [<<"unhealthy: ">>, format(Why)]
        end,
    {Form, Derived} = settings_rows(Config, Settings),
    Width = name_width([Name || {Name, _} <- Form ++ Derived]),
    iolist_to_binary([
        io_lib:format("connection: ~ts~n", [format(Connection)]),
        io_lib:format("health:     ~ts~n", [HealthText]),
        case Form of
            [] -> io_lib:format("settings: none running (see health)~n", []);
            _ -> rows(<<"settings (password hidden)">>, Form, Width)
        end,
        case Derived of
            [] -> [];
            _ -> rows(<<"derived for the storage core">>, Derived, Width)
        end
    ]).

%% The running config (the core's keys, as the NIF got them) back under the
%% form's names through the config's one table; keys the table does not
%% name were derived by the plugin.
settings_rows(undefined, _Settings) ->
    {[], []};
settings_rows(Config, Settings) ->
    Fields = emqx_offline_cassandra_config:fields(),
    Storage = [{Form, form_value(Kind, maps:get(Key, Config, <<>>))} || {Form, Key, Kind} <- Fields],
    Named = [Key || {_, Key, _} <- Fields],
    Derived = [{Key, value(V)} || {Key, V} <- lists:sort(maps:to_list(maps:without(Named, Config)))],
    {lists:sort(Storage ++ hook_rows(Settings)), Derived}.

hook_rows(#{topics := Topics, max_returned_count := Max, time_range_ms := Range, message_ttl_s := Ttl}) ->
    [
        {<<"topics">>, value(Topics)},
        {<<"max_returned_count">>, value(Max)},
        {<<"time_range">>, form_value(duration, Range)},
        {<<"message_ttl">>, form_value(duration, Ttl * 1000)}
    ];
hook_rows(_) ->
    [].

rows(Title, Rows, Width) ->
    [io_lib:format("~ts:~n", [Title]), [io_lib:format("  ~ts ~ts~n", [pad(K, Width), V]) || {K, V} <- Rows]].

%% A value as the form would take it: durations and sizes in their largest
%% whole unit, zero durations as none.
form_value(duration, 0) ->
    <<"none">>;
form_value(duration, Ms) when is_integer(Ms) ->
    largest_unit(Ms, [{86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}], "ms");
form_value(size, Bytes) when is_integer(Bytes), Bytes > 0 ->
    largest_unit(Bytes, [{1048576, "MB"}, {1024, "KB"}], "");
form_value(_Kind, V) ->
    value(V).

largest_unit(N, [{Unit, Name} | _], _Base) when N rem Unit =:= 0 -> [integer_to_binary(N div Unit), Name];
largest_unit(N, [_ | Units], Base) -> largest_unit(N, Units, Base);
largest_unit(N, [], Base) -> [integer_to_binary(N), Base].

%% @doc `stats': the storage's counters (the NIF's) and the hooks' ones,
%% which both start from zero when the storage starts, then how often each
%% kind of logged event happened since the plugin started.
-spec stats_text(#{
    storage := {ok, map()} | {error, term()},
    hooks := map(),
    events := map()
}) -> binary().
stats_text(#{storage := Storage, hooks := Hooks, events := Events}) ->
    StorageCounters =
        case Storage of
            {ok, Counters} -> Counters;
            {error, _} -> #{}
        end,
    Width = name_width(maps:keys(StorageCounters) ++ maps:keys(Hooks) ++ maps:keys(Events)),
    StorageSection =
        case Storage of
            {ok, _} -> counters_section(<<"storage (since it started)">>, StorageCounters, Width);
            {error, Why} -> io_lib:format("storage: ~ts~n", [format(Why)])
        end,
    iolist_to_binary([
        StorageSection,
        counters_section(<<"hooks (since the storage started)">>, Hooks, Width),
        counters_section(<<"logged events (since the plugin started)">>, Events, Width)
    ]).

counters_section(Title, Counters, Width) ->
    [
        io_lib:format("~ts:~n", [Title]),
        [io_lib:format("  ~ts ~ts~n", [pad(K, Width), value(V)]) || {K, V} <- lists:sort(maps:to_list(Counters))]
    ].

%% Names are never cut: the column is as wide as the longest one.
name_width(Names) ->
    lists:max([0 | [string:length(name(N)) || N <- Names]]).

pad(Name, Width) ->
    string:pad(name(Name), Width).

name(N) when is_atom(N) -> atom_to_binary(N, utf8);
name(N) when is_binary(N) -> N;
name(N) -> io_lib:format("~0tp", [N]).

value(<<>>) -> <<"\"\"">>;
value(V) when is_binary(V) -> V;
value(V) when is_integer(V) -> integer_to_binary(V);
value(V) when is_atom(V) -> atom_to_binary(V, utf8);
value([]) -> <<"(none)">>;
value([B | _] = L) when is_binary(B) -> lists:join(<<", ">>, [value(X) || X <- L]);
value(V) -> io_lib:format("~0tp", [V]).
