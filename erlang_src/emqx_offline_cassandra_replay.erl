%%--------------------------------------------------------------------
%% Paced replay of stored messages to a new subscription (EMQX 5.0-6.1.0;
%% 6.1.1+ replays through emqx_offline_cassandra_extsub instead).
%%
%% EMQX 5 channels do not accept unknown messages and must not wait for
%% Cassandra, so the subscribe hook only spawns this process. It reads the
%% backlog page by page (emqx_offline_cassandra_backlog), rebuilds each row
%% as an EMQX message - same id, QoS, retain flag, sender and original
%% timestamp - and sends {deliver, Filter, Msg} to the subscriber's
%% channel, oldest first. The channel treats these like routed messages:
%% QoS is capped by the subscription, inflight and mqueue apply, and the
%% client's PUBACK/PUBREC fires message.acked, which deletes the row.
%%
%% Pacing: EMQX gives a sender no back-pressure, and a session whose queue
%% overflows drops its OLDEST message. So at most ?WINDOW replayed messages
%% are in the session at any time: each carries this process in a header,
%% and the channel's delivery.completed (PUBACK, or PUBCOMP for QoS 2) or
%% delivery.dropped hook gives its slot back (see _hooks; completions come
%% 10 at a time). The window stays
%% far below the default queue (1,000), and above the default inflight
%% (32), so the client is always busy and the queue never overflows.
%%
%% Persistent sessions: while the client is away (client.disconnected)
%% nothing is sent; what was sent stays in the session. After a reconnect,
%% session.resumed in the new channel hands it over, and the replay goes on
%% from where it was: no message is sent twice.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_replay).

-export([start/3, run/1, to_message/2, boundary/0, watched_boundary/2, options/1]).
-export([header/0]).

%% Replayed messages a session holds at once (inflight + queue).
-define(WINDOW, 100).
%% How long a replay whose channel ended waits for the session to resume
%% in another channel (a takeover hands it over within milliseconds).
-define(RESUME_WAIT_MS, 10000).
-define(TAG, offline_cassandra_replay).

%% @doc The header replayed messages carry: the replay process to tell
%% when the session is done with one.
-spec header() -> atom().
header() -> ?TAG.

%% @doc The replay's upper bound, taken in the subscriber's channel when
%% the subscription exists: a msgid (16 bytes) and its time (ms). Rows
%% below it are replayed; messages published after it are routed live.
-spec boundary() -> {binary(), integer()}.
boundary() ->
    Us = erlang:system_time(microsecond),
    {<<Us:64, 0:64>>, Us div 1000}.

%% @doc The backlog options for the settings: the newest N
%% (max_returned_count, 0 = all), not older than time_range, only on
%% topics the `topics' configured now match (a wildcard finds the topics
%% of rows stored under an older configuration too).
-spec options(map()) -> map().
options(#{max_returned_count := Max, time_range_ms := Range} = Settings) ->
    Since =
        case Range of
            0 -> 0;
            _ -> erlang:system_time(millisecond) - Range
        end,
    #{newest => Max, since => Since, kept_by => maps:get(topics, Settings, [])}.

%% @doc Replays to the calling channel in a new process; returns at once.
%% Sub: #{clientid, deliver_topic, filter, qos}. Runs in the channel, after
%% EMQX made the subscription: the replay is watched for live messages
%% first, then its boundary is taken (docs/design.md, "Paced replay").
-spec start(pid(), map(), emqx_offline_cassandra_config:settings()) -> ok.
start(Channel, #{filter := Filter} = Sub, Settings) ->
    Pid = proc_lib:spawn(?MODULE, run, [Sub#{channel => Channel, settings => Settings}]),
    Pid ! {?TAG, boundary, watched_boundary(Pid, Filter)},
    ok.

%% @doc Registers Replay's filter for live marks, then takes its boundary.
-spec watched_boundary(pid(), binary()) -> {binary(), integer()}.
watched_boundary(Replay, Filter) ->
    ok = emqx_offline_cassandra_replays:watch(Replay, Filter),
    {Below, _} = Boundary = boundary(),
    ok = emqx_offline_cassandra_replays:set_boundary(Replay, Below),
    Boundary.

%% @private
run(#{channel := Channel, clientid := ClientId, filter := Filter, settings := Settings} = St) ->
    emqx_offline_cassandra_metrics:inc(replays),
    ok = emqx_offline_cassandra_replays:register(ClientId),
    {Below, BelowMs} =
        receive
            {?TAG, boundary, B} -> B
        end,
    MRef = erlang:monitor(process, Channel),
    Opts = (options(Settings))#{replay => self()},
    %% A shared group replays on one node of the cluster.
    case emqx_offline_cassandra_cluster_claims:for_replay(maps:get(group, St, undefined), Filter, Channel) of
        elsewhere ->
            emqx_offline_cassandra_replays:unregister(ClientId);
        ours ->
            case emqx_offline_cassandra_backlog:open(Filter, Opts, binary:encode_hex(Below), BelowMs) of
                {ok, Backlog} ->
                    loop(St#{backlog => Backlog, mref => MRef, outstanding => 0, connected => true, sent => 0});
                {error, Reason} ->
                    emqx_offline_cassandra_replays:unregister(ClientId),
                    failed(Reason, Filter)
            end
    end.

%% Done once every row is sent: the session owns what it holds.
loop(St0) ->
    case fill_window(St0) of
        {error, Reason, #{filter := Filter, channel := Channel} = St} ->
            stopped(St),
            %% A read cut off after the subscriber left failed nobody.
            is_process_alive(Channel) andalso failed(Reason, Filter),
            ok;
        #{backlog := Backlog} = St ->
            case emqx_offline_cassandra_backlog:is_done(Backlog) of
                true -> finish(St);
                false -> wait(St)
            end
    end.

%% Sends as many rows as the window has room for.
fill_window(#{connected := true, outstanding := Out, backlog := B} = St) when Out < ?WINDOW ->
    case emqx_offline_cassandra_backlog:is_done(B) of
        true ->
            St;
        false ->
            case emqx_offline_cassandra_backlog:take(?WINDOW - Out, B) of
                {ok, Rows, B1} -> send(Rows, St#{backlog := B1});
                {error, Reason, _} -> {error, Reason, St}
            end
    end;
fill_window(St) ->
    St.

send(Rows, #{channel := Channel, deliver_topic := DeliverTopic, qos := SubQoS, settings := Settings} = St) ->
    Now = erlang:system_time(millisecond),
    lists:foldl(
        fun(Row, #{outstanding := Out, sent := Sent} = Acc) ->
            case to_message(Row, Settings#{now => Now}) of
                {ok, Msg0} ->
                    Msg = emqx_message:set_header(?TAG, self(), Msg0),
                    Channel ! {deliver, DeliverTopic, Msg},
                    %% A QoS 0 delivery is never completed: it takes no slot.
                    Slot =
                        case min(SubQoS, maps:get(qos, Row)) of
                            0 -> 0;
                            _ -> 1
                        end,
                    Acc#{outstanding := Out + Slot, sent := Sent + 1};
                {error, Why} ->
                    emqx_offline_cassandra_log:burst(offline_cassandra_replay_row_skipped, #{
                        reason => emqx_offline_cassandra_reason:describe(Why)
                    }),
                    Acc
            end
        end,
        St,
        Rows
    ).

wait(#{mref := MRef, channel := Channel, outstanding := Out, deliver_topic := DeliverTopic} = St) ->
    receive
        {?TAG, completed, N} ->
            loop(St#{outstanding := max(0, Out - N)});
        {?TAG, dropped, _Reason} ->
            %% The session dropped one of ours (queue full, expired): its
            %% slot is free, the row stays stored for a later replay.
            emqx_offline_cassandra_metrics:inc(replay_dropped),
            loop(St#{outstanding := max(0, Out - 1)});
        {?TAG, disconnected, Channel} ->
            loop(St#{connected := false});
        {?TAG, {unsubscribed, DeliverTopic}, Channel} ->
            stopped(St);
        {?TAG, resumed, NewChannel} ->
            loop(follow(NewChannel, St));
        {'DOWN', MRef, process, _, _} ->
            await_resume(St)
    end.

%% The channel ended: its session may go on in a new channel (takeover).
await_resume(St) ->
    receive
        {?TAG, resumed, NewChannel} -> loop(follow(NewChannel, St))
    after ?RESUME_WAIT_MS ->
        stopped(St)
    end.

%% Completions of what the old channel had in flight now come from the
%% new one: the count of outstanding messages carries over.
follow(NewChannel, #{mref := MRef} = St) ->
    erlang:demonitor(MRef, [flush]),
    St#{channel := NewChannel, mref := erlang:monitor(process, NewChannel), connected := true}.

finish(#{sent := Sent, deliver_topic := DeliverTopic, clientid := ClientId}) ->
    emqx_offline_cassandra_replays:unregister(ClientId),
    emqx_offline_cassandra_metrics:inc(replayed, Sent),
    logger:debug(#{msg => offline_cassandra_replayed, filter => DeliverTopic, count => Sent}),
    ok.

%% The session ended before the replay did: the rest stays stored.
stopped(#{sent := Sent, clientid := ClientId}) ->
    emqx_offline_cassandra_replays:unregister(ClientId),
    emqx_offline_cassandra_metrics:inc(replayed, Sent),
    ok.

%% Every replay that stops on an error counts as failed.
failed(Reason, Filter) ->
    emqx_offline_cassandra_metrics:inc(replay_failed),
    emqx_offline_cassandra_log:burst(offline_cassandra_replay_failed, #{
        reason => emqx_offline_cassandra_reason:describe(Reason), filter => Filter
    }).

%% @doc An EMQX #message{} from a stored row. The record is built directly
%% (emqx_message:make/7 would reset the timestamp): {message, Id, QoS, From,
%% Flags, Headers, Topic, Payload, Timestamp, Extra}.
-spec to_message(map(), map()) -> {ok, tuple()} | {error, term()}.
to_message(Row, Settings) ->
    case guid(Row) of
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
            {error, {not_an_emqx_msgid, maps:get(msgid, Row)}}
    end.

%% The NIF gives the GUID with each row it reads (guid); rows built
%% elsewhere carry the hex only.
guid(#{guid := <<_:128>> = Guid}) ->
    {ok, Guid};
guid(#{msgid := Hex}) when byte_size(Hex) =:= 32 ->
    try
        {ok, binary:decode_hex(Hex)}
    catch
        error:badarg -> error
    end;
guid(_Row) ->
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
