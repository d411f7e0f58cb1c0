%%--------------------------------------------------------------------
%% Replay of stored messages to a new subscription.
%%
%% EMQX 5 channels do not accept unknown messages and must not wait for
%% Cassandra, so the subscribe hook only spawns this short-lived process.
%% It asks the NIF for the rows (the reply comes to it, not to the
%% channel), rebuilds each row as an EMQX message - same id, QoS, retain
%% flag, sender and original timestamp - and sends {deliver, Filter, Msg}
%% to the subscriber's channel, oldest first. The channel treats these like
%% routed messages: QoS is capped by the subscription, inflight and mqueue
%% apply, and the client's PUBACK/PUBREC fires message.acked, which deletes
%% the row.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_replay).

-export([start/4, run/4, to_message/2]).

-define(REPLY_TIMEOUT_MS, 30000).

%% @doc Replays to Channel in a new process; returns at once.
-spec start(pid(), term(), binary(), emqx_offline_cassandra_config:settings()) -> ok.
start(Channel, DeliverTopic, Filter, Settings) ->
    _ = proc_lib:spawn(?MODULE, run, [Channel, DeliverTopic, Filter, Settings]),
    ok.

%% @private
run(Channel, DeliverTopic, Filter, #{max_returned_count := Max, time_range_ms := Range} = Settings) ->
    Since =
        case Range of
            0 -> 0;
            _ -> erlang:system_time(millisecond) - Range
        end,
    Ref = make_ref(),
    emqx_offline_cassandra_metrics:inc(replays),
    case emqx_offline_cassandra_nif:fetch(self(), Ref, Filter, #{limit => Max, since => Since}) of
        ok ->
            receive
                {offline_cassandra, Ref, {ok, Rows}} ->
                    deliver(Channel, DeliverTopic, Rows, Settings);
                {offline_cassandra, Ref, {error, Reason}} ->
                    failed(Reason, Filter)
            after ?REPLY_TIMEOUT_MS ->
                failed(timeout, Filter)
            end;
        {error, Reason} ->
            failed(Reason, Filter)
    end.

%% Every replay that delivers nothing counts as failed, whatever stopped it.
failed(Reason, Filter) ->
    emqx_offline_cassandra_metrics:inc(replay_failed),
    emqx_offline_cassandra_log:burst(offline_cassandra_replay_failed, #{
        reason => emqx_offline_cassandra_reason:describe(Reason), filter => Filter
    }).

deliver(Channel, DeliverTopic, Rows, Settings) ->
    Now = erlang:system_time(millisecond),
    Sent = lists:foldl(
        fun(Row, N) ->
            case to_message(Row, Settings#{now => Now}) of
                {ok, Msg} ->
                    Channel ! {deliver, DeliverTopic, Msg},
                    N + 1;
                {error, Why} ->
                    emqx_offline_cassandra_log:burst(offline_cassandra_replay_row_skipped, #{
                        reason => emqx_offline_cassandra_reason:describe(Why)
                    }),
                    N
            end
        end,
        0,
        Rows
    ),
    emqx_offline_cassandra_metrics:inc(replayed, Sent),
    logger:debug(#{msg => offline_cassandra_replayed, filter => DeliverTopic, count => Sent}),
    ok.

%% @doc An EMQX #message{} from a stored row. The record is built directly
%% (emqx_message:make/7 would reset the timestamp): {message, Id, QoS, From,
%% Flags, Headers, Topic, Payload, Timestamp, Extra}.
-spec to_message(map(), map()) -> {ok, tuple()} | {error, term()}.
to_message(#{msgid := Hex} = Row, Settings) ->
    case guid(Hex) of
        {ok, Id} ->
            #{topic := Topic, sender := Sender, qos := QoS, retain := Retain, payload := Payload, arrived := Arrived} =
                Row,
            %% Marked: the ack of a replayed message always deletes its row
            %% (after the row's own write time when Cassandra stamped it).
            Headers = emqx_offline_cassandra_hooks:mark_replayed(
                expiry_headers(Row, Settings), maps:get(written_us, Row, undefined)
            ),
            Extra = emqx_offline_cassandra_compat:message_extra(),
            {ok, {message, Id, QoS, Sender, #{retain => Retain}, Headers, Topic, Payload, Arrived, Extra}};
        error ->
            {error, {not_an_emqx_msgid, Hex}}
    end.

guid(Hex) when byte_size(Hex) =:= 32 ->
    try
        {ok, binary:decode_hex(Hex)}
    catch
        error:badarg -> error
    end;
guid(_) ->
    error.

%% A row with a TTL (Cassandra's TTL(): the seconds it has left) gives the
%% replayed message a Message-Expiry-Interval counted from its original
%% timestamp, as EMQX counts it, so that it expires when its row does and
%% never carries more time than it had left. The row's TTL is the shorter
%% of the publisher's Message-Expiry-Interval and message_ttl, counted from
%% the publish (the core takes off the time a write waited and clamps what
%% Cassandra would refuse), so with message_ttl set a message published
%% without an expiry is replayed with message_ttl's.
expiry_headers(#{ttl := Ttl, arrived := Arrived}, #{now := Now}) when is_integer(Ttl), Ttl > 0 ->
    Elapsed = max(0, Now - Arrived) div 1000,
    #{properties => #{'Message-Expiry-Interval' => Ttl + Elapsed}};
expiry_headers(_Row, _Settings) ->
    #{}.
