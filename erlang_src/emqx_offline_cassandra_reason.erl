%%--------------------------------------------------------------------
%% One voice for reasons: every reason or connection status the plugin
%% shows a person (health check, logs, `emqx ctl offline_cassandra') is
%% turned into a sentence here, so the same failure reads the same way
%% everywhere. Pure; never crashes, whatever the term.
%%
%% Reasons are the NIF's (see emqx_offline_cassandra_nif): an atom
%% (not_connected, timeout, overloaded, shutdown, not_started,
%% already_started) or {Kind, Detail}, where Detail is the storage core's
%% own sentence, written to say what to fix. Statuses are connecting |
%% {connecting, LastError} | connected | {degraded, Waiting, Why} |
%% {disconnected, Why} | {error, Reason} | not_started.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_reason).

-export([describe/1]).

%% @doc A sentence (without a final full stop) for a reason or a status.
-spec describe(term()) -> binary().
describe(Term) ->
    try
        iolist_to_binary(sentence(Term))
    catch
        _:_ -> raw(Term)
    end.

%%--------------------------------------------------------------------

%% Connection statuses.
sentence(connected) ->
    <<"connected">>;
sentence(connecting) ->
    <<"connecting to Cassandra">>;
sentence({connecting, LastError}) ->
    [<<"Cassandra unreachable: ">>, sentence(LastError), <<" (still trying)">>];
sentence({disconnected, Why}) ->
    [<<"Cassandra unreachable: ">>, sentence(Why)];
%% Connected, but writes wait: Cassandra cannot take them now (replicas
%% down, overloaded, timeouts). Why is the core's short reason.
sentence({degraded, Waiting, Why}) when is_integer(Waiting), Waiting >= 0 ->
    [<<"degraded: ">>, thousands(Waiting), <<" write">>, [<<"s">> || Waiting =/= 1], <<" waiting (">>, detail(Why), <<")">>];
sentence({error, Reason}) ->
    sentence(Reason);
%% This node's clock against Cassandra's (the NIF's stats).
sentence({clock_skew, OffsetMs, LimitMs}) when is_integer(OffsetMs), is_integer(LimitMs) ->
    Side = case OffsetMs > 0 of true -> <<" ahead of">>; false -> <<" behind">> end,
    [<<"this node's clock is ">>, seconds(abs(OffsetMs)), Side, <<" Cassandra's (more than the ">>,
        seconds(LimitMs), <<" the replay floor allows): replay floors stay where they are until it is back; check the node's time sync (NTP)">>];
%% The disk buffer (buffer_mode = disk) cannot be used; Why names its
%% directory and the system's error.
sentence({spool_failed, Why}) ->
    [<<"disk buffer unusable, writes are kept in memory only (lost if EMQX stops before Cassandra takes them): ">>,
        detail(Why)];
%% Writes an earlier run left in the disk buffer, found at start.
sentence({spool_recovered, Dir, Records, Torn, TornBytes}) when is_integer(Records), is_integer(Torn) ->
    [thousands(Records), <<" write">>, [<<"s">> || Records =/= 1], <<" left in the disk buffer ">>, detail(Dir),
        <<" by an earlier run, sent to Cassandra next">>,
        case Torn of
            0 -> [];
            _ -> [<<"; ">>, thousands(Torn), <<" torn tail">>, [<<"s">> || Torn =/= 1], <<" (">>, thousands(TornBytes),
                  <<" bytes of a record cut short by a crash) cut off">>]
        end];
%% Rows replay leaves out: their msgid is not EMQX's.
sentence({unreadable_rows, Topic, Count, Example}) when is_integer(Count) ->
    [thousands(Count), <<" stored row">>, [<<"s">> || Count =/= 1], <<" of topic ">>, detail(Topic),
        <<" ha">>, case Count of 1 -> <<"s">>; _ -> <<"ve">> end,
        <<" a msgid that is not EMQX's 32 upper-case hex digits (e.g. ">>, detail(Example),
        <<"): not replayed, left stored; delete them with `emqx ctl offline_cassandra purge` or cqlsh">>];
%% Reasons.
sentence({panic, Msg}) ->
    [<<"the storage library failed unexpectedly (a bug, please report it): ">>, detail(Msg)];
sentence({Kind, Detail}) when is_atom(Kind) ->
    case {kind(Kind), Detail} of
        {undefined, _} -> [atom_to_binary(Kind, utf8), <<": ">>, detail(Detail)];
        %% The core's sentence already says what happened and what to fix.
        {_, <<_, _/binary>>} -> Detail;
        {Sentence, <<>>} -> Sentence;
        {Sentence, _} -> [Sentence, <<": ">>, detail(Detail)]
    end;
sentence(Reason) when is_atom(Reason) ->
    case kind(Reason) of
        undefined -> atom_to_binary(Reason, utf8);
        Sentence -> Sentence
    end;
sentence(Text) when is_binary(Text) ->
    Text;
sentence(Text) when is_list(Text) ->
    detail(Text);
sentence(Other) ->
    raw(Other).

%% What each kind means, for an atom reason or a {Kind, Detail} without
%% a usable detail.
kind(tls_unverified) ->
    <<"ssl.verify is false: the connection to Cassandra is encrypted, but its certificate is not checked, "
      "so the password goes to whoever answers; set ssl.verify = true and ssl.cafile">>;
kind(not_connected) -> <<"not connected to Cassandra (unreachable, or still connecting)">>;
kind(timeout) -> <<"Cassandra did not answer within request_timeout">>;
kind(overloaded) -> <<"the write buffer is full, so the write was dropped (see buffer_capacity, buffer_max_size and overflow_policy)">>;
kind(shutdown) -> <<"the storage is shutting down, so the request was not carried out">>;
kind(not_started) -> <<"the storage is not started (the plugin is stopped, or its config is invalid)">>;
kind(already_started) -> <<"the storage is already started">>;
kind(invalid_config) -> <<"the config is invalid">>;
kind(invalid_input) -> <<"a call got an argument it cannot use">>;
kind(runtime_failed) -> <<"the storage's async runtime failed to start (check thread and memory limits)">>;
kind(auth_failed) -> <<"Cassandra refused the username or password">>;
kind(tls_failed) -> <<"TLS to Cassandra failed (certificate, server name, or a plain-text port)">>;
kind(keyspace_missing) -> <<"the configured keyspace does not exist">>;
kind(table_missing) -> <<"the table mqtt_msg does not exist in the keyspace">>;
kind(schema_mismatch) -> <<"the table mqtt_msg does not match the expected schema">>;
kind(index_unavailable) -> <<"the topic index table mqtt_msg_topic_index is unavailable (needed for wildcard replay)">>;
kind(floor_unavailable) -> <<"the replay floor table mqtt_msg_floor is unavailable">>;
kind(payload_too_large) -> <<"the payload is larger than max_payload_size">>;
kind(invalid_msgid) -> <<"a message id is not 32 hexadecimal characters">>;
kind(invalid_row) -> <<"a stored row cannot be turned back into a message">>;
kind(db_error) -> <<"Cassandra reported an error">>;
kind(_) -> undefined.

%% 1500 -> "1.5 s".
seconds(Ms) ->
    io_lib:format("~.1f s", [Ms / 1000]).

%% 1234567 -> "1,234,567".
thousands(N) ->
    Digits = integer_to_list(N),
    Lead = case length(Digits) rem 3 of 0 -> 3; R -> R end,
    {First, Rest} = lists:split(Lead, Digits),
    [First | [[$, | Group] || Group <- groups_of_three(Rest)]].

groups_of_three([]) -> [];
groups_of_three([A, B, C | Rest]) -> [[A, B, C] | groups_of_three(Rest)].

detail(Text) when is_binary(Text) ->
    Text;
detail(Text) when is_list(Text) ->
    case io_lib:printable_unicode_list(Text) of
        true -> unicode:characters_to_binary(Text);
        false -> raw(Text)
    end;
detail(Other) ->
    raw(Other).

%% Anything else, printed as Erlang would, on one line.
raw(Term) ->
    iolist_to_binary(io_lib:format("~0tp", [Term])).
