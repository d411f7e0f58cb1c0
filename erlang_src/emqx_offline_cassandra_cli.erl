%%--------------------------------------------------------------------
%% `emqx ctl offline_cassandra ...': status, stats, count, peek, purge.
%% Registered with emqx_ctl while the plugin runs. Commands may block (an
%% operator waits for the answer), with a 15 s limit.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_cli).

-export([cmd/1, register/0, unregister/0]).

-define(NIF, emqx_offline_cassandra_nif).
-define(TIMEOUT, 15000).

register() ->
    catch emqx_ctl:register_command(offline_cassandra, {?MODULE, cmd}),
    ok.

unregister() ->
    catch emqx_ctl:unregister_command(offline_cassandra),
    ok.

cmd(["status"]) ->
    Health =
        case emqx_offline_cassandra_server:health() of
            ok -> "ok";
            {error, Why} -> ["unhealthy: ", Why]
        end,
    emqx_ctl:print("connection: ~ts~n", [format(?NIF:status())]),
    emqx_ctl:print("health:     ~ts~n", [Health]),
    emqx_ctl:print("config:     ~ts~n", [format(emqx_offline_cassandra_server:running_config())]);
cmd(["stats"]) ->
    Nif =
        case ?NIF:stats() of
            {ok, S} -> S;
            {error, _} -> #{}
        end,
    Stats = maps:merge(Nif, emqx_offline_cassandra_metrics:all()),
    [emqx_ctl:print("~-22s ~b~n", [K, V]) || {K, V} <- lists:sort(maps:to_list(Stats))],
    Reasons = emqx_offline_cassandra_log:counts(),
    [emqx_ctl:print("~-22s ~b~n", [K, V]) || {K, V} <- lists:sort(maps:to_list(Reasons))],
    ok;
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

format(B) when is_binary(B) -> B;
format(A) when is_atom(A) -> atom_to_binary(A, utf8);
format({A, B}) when is_atom(A), is_binary(B) -> [atom_to_binary(A, utf8), ": ", B];
format(T) -> io_lib:format("~0p", [T]).
