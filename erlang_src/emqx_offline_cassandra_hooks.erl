%%--------------------------------------------------------------------
%% The EMQX hook callbacks. Each runs inside a client's process (publisher
%% or subscriber channel), so each returns at once: writes go to the NIF's
%% pipeline, replays to a short-lived process. None may crash the channel:
%% failures are counted and logged once per burst.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_hooks).

-export([hook/0, unhook/0, set_settings/1, settings/0, mark_replayed/2, replay_wanted/3, wildcard_replay_allows/2]).
-export([on_message_publish/1, on_session_subscribed/3, on_session_unsubscribed/3, on_message_acked/2]).
-export([on_delivery_completed/2, on_delivery_dropped/3, on_client_disconnected/3, on_session_resumed/2,
         on_message_delivered/2]).

%% NOTE: message.publish runs late, at priority 10 (HP_LOWEST is 0). By then
%% schema validation (945), message transformation (943), the rule engine
%% (900), delayed publish (860) and exhook (100) have had their say: a
%% `$delayed/...' publish is stopped by the delayed module and stored when it
%% is really published, and a message a validator dropped
%% (allow_publish = false) is not stored at all.
-define(PRIO_PUBLISH, 10).
%% The other two only hand work off and return; nothing depends on their order.
-define(PRIO_SUBSCRIBED, 1000).
-define(PRIO_ACKED, 1000).
-define(SETTINGS, {?MODULE, settings}).
%% The publish hook's verdict, carried in the message's headers to every
%% node the message reaches, so the node that gets an ack knows whether a
%% row exists: stored | skipped (never stored) | replayed (read back from
%% Cassandra). No header (a message from before this version, or one the
%% plugin did not see): the ack deletes as it always did.
-define(MARK, offline_cassandra).
%% On a replayed message whose row Cassandra stamped later than its msgid's
%% time (written by EMQX 4.x without a timestamp): that write time (µs), so
%% the ack's delete is written after it.
-define(WRITTEN, offline_cassandra_written_us).

-define(HOOKS, [
    {'message.publish', on_message_publish, ?PRIO_PUBLISH},
    {'session.subscribed', on_session_subscribed, ?PRIO_SUBSCRIBED},
    {'session.unsubscribed', on_session_unsubscribed, ?PRIO_SUBSCRIBED},
    {'message.acked', on_message_acked, ?PRIO_ACKED},
    %% A paced replay's slots, and its session's moves (_replay).
    {'delivery.completed', on_delivery_completed, ?PRIO_ACKED},
    {'delivery.dropped', on_delivery_dropped, ?PRIO_ACKED},
    {'client.disconnected', on_client_disconnected, ?PRIO_ACKED},
    {'session.resumed', on_session_resumed, ?PRIO_ACKED},
    %% 6.1.1+: where an extsub replay stands (_extsub).
    {'message.delivered', on_message_delivered, ?PRIO_ACKED}
]).

%% @doc Registers every hook. put/3 replaces an existing registration, so a
%% restart after a crash does not fail on leftovers.
-spec hook() -> ok.
hook() ->
    [ok = emqx_hooks:put(HP, {?MODULE, Fun, []}, Prio) || {HP, Fun, Prio} <- ?HOOKS],
    case emqx_offline_cassandra_compat:replay_path() of
        extsub -> ok = emqx_offline_cassandra_extsub:register();
        deliver -> ok
    end.

%% @doc Removes every hook (idempotent).
-spec unhook() -> ok.
unhook() ->
    [emqx_hooks:del(HP, {?MODULE, Fun}) || {HP, Fun, _} <- ?HOOKS],
    emqx_offline_cassandra_extsub:unregister().

%% @doc The settings the callbacks read (topics, limits, TTL). Kept in a
%% persistent_term: read on every publish, written on config changes only.
-spec set_settings(emqx_offline_cassandra_config:settings()) -> ok.
set_settings(Settings) ->
    persistent_term:put(?SETTINGS, Settings).

-spec settings() -> emqx_offline_cassandra_config:settings() | undefined.
settings() ->
    persistent_term:get(?SETTINGS, undefined).

%%--------------------------------------------------------------------
%% message.publish: store QoS 1/2 messages on the configured topics
%%--------------------------------------------------------------------

on_message_publish(Msg) ->
    Verdict = guarded(offline_cassandra_store_crashed, fun(Settings) -> maybe_store(Msg, Settings) end, unknown),
    {ok, mark(Verdict, Msg)}.

%% A crash (or no settings) leaves the message unmarked: its acks delete.
%% QoS 0 messages stay unmarked too (no copy of the record on the hot path
%% of telemetry): only upgrade_qos gets them acked, and then the topic
%% decides, as before.
mark(unknown, Msg) ->
    Msg;
mark(Verdict, Msg) ->
    case emqx_message:qos(Msg) of
        0 -> Msg;
        _ -> emqx_message:set_header(?MARK, Verdict, Msg)
    end.

%% @doc Headers of a message replayed from Cassandra: its row exists, so
%% its ack always deletes; WrittenUs is the row's written_us.
-spec mark_replayed(map(), integer() | undefined) -> map().
mark_replayed(Headers, WrittenUs) when is_integer(WrittenUs) ->
    Headers#{?MARK => replayed, ?WRITTEN => WrittenUs};
mark_replayed(Headers, _) ->
    Headers#{?MARK => replayed}.

%% stored or skipped.
maybe_store(Msg, #{topics := Filters} = Settings) ->
    Topic = emqx_message:topic(Msg),
    Store =
        emqx_message:qos(Msg) > 0 andalso
            not emqx_message:is_sys(Msg) andalso
            emqx_message:get_header(allow_publish, Msg, true) =/= false andalso
            emqx_offline_cassandra_topic:matches_any(Topic, Filters),
    case Store of
        true -> store(Msg, Topic, Settings);
        false -> skipped
    end.

store(Msg, Topic, Settings) ->
    Entry = #{
        topic => Topic,
        msgid => emqx_message:id(Msg),
        sender => sender(emqx_message:from(Msg)),
        qos => emqx_message:qos(Msg),
        retain => emqx_message:get_flag(retain, Msg, false),
        payload => iolist_to_binary(emqx_message:payload(Msg)),
        arrived => emqx_message:timestamp(Msg),
        ttl => ttl(Msg, Settings)
    },
    case emqx_offline_cassandra_nif:store(Entry) of
        ok ->
            %% Routed after this: a replay running now must not send it too.
            emqx_offline_cassandra_replays:note_published(Topic, emqx_message:id(Msg)),
            emqx_offline_cassandra_metrics:inc(stored),
            stored;
        {error, Reason} ->
            emqx_offline_cassandra_metrics:inc(store_refused),
            emqx_offline_cassandra_log:burst(offline_cassandra_store_refused, #{
                reason => emqx_offline_cassandra_reason:describe(Reason), topic => Topic
            }),
            skipped
    end.

%% The row lives as long as the shorter of the configured message_ttl and
%% the message's own MQTT 5 Message-Expiry-Interval: an expired message is
%% gone from Cassandra, so it can never be replayed.
ttl(Msg, #{message_ttl_s := Configured}) ->
    Props = emqx_message:get_header(properties, Msg, #{}),
    Expiry =
        case is_map(Props) of
            true -> maps:get('Message-Expiry-Interval', Props, 0);
            false -> 0
        end,
    case {Configured, Expiry} of
        {0, E} -> E;
        {C, 0} -> C;
        {C, E} -> min(C, E)
    end.

sender(From) when is_binary(From) -> From;
sender(From) when is_atom(From) -> atom_to_binary(From, utf8);
sender(From) -> iolist_to_binary(io_lib:format("~0p", [From])).

%%--------------------------------------------------------------------
%% session.subscribed: replay stored messages to the new subscription
%%--------------------------------------------------------------------

on_session_subscribed(ClientInfo, TopicFilter, SubOpts) ->
    guarded(offline_cassandra_replay_crashed, fun(Settings) -> maybe_replay(ClientInfo, TopicFilter, SubOpts, Settings) end).

%% NOTE: replay happens only for
%% - new subscriptions (is_new): a re-subscribe must not replay twice;
%% - QoS 1/2 subscriptions: a QoS 0 subscriber cannot acknowledge, so its
%%   copies would never be deleted and every subscribe would redeliver them
%%   (the 4.x loop); QoS 0 subscribers get no replay;
%% - filters that can match a configured topic (others have nothing stored);
%% - wildcard filters as wildcard_replay allows (all; no_leading_wildcard:
%%   not `#', `+/...'; none: exact topics only), since a QoS 1 `#'
%%   subscriber is sent, and by its acks deletes, every stored message;
%% - one member per shared-subscription group on this node (the group gets
%%   the messages once, not once per member).
%% - EMQX before 6.1.1 (6.1.1+ replays through its external-subscription
%%   API: emqx_offline_cassandra_extsub, which asks replay_wanted/3).
maybe_replay(ClientInfo, TopicFilter, SubOpts, Settings) ->
    case emqx_offline_cassandra_compat:replay_path() =:= deliver andalso replay_wanted(TopicFilter, SubOpts, Settings) of
        {true, Filter} ->
            {_, Group} = emqx_offline_cassandra_compat:parse_subscription(TopicFilter, SubOpts),
            Sub = #{
                clientid => maps:get(clientid, ClientInfo, undefined),
                deliver_topic => TopicFilter,
                filter => Filter,
                group => Group,
                qos => maps:get(qos, SubOpts, 1)
            },
            emqx_offline_cassandra_replay:start(self(), Sub, Settings);
        false ->
            ok
    end.

%% @doc {true, Filter} when this subscription replays (see the NOTE above);
%% takes the shared group's claim when it does.
-spec replay_wanted(term(), map(), map()) -> {true, binary()} | false.
replay_wanted(TopicFilter, SubOpts, #{topics := Filters} = Settings) ->
    {Filter, Group} = emqx_offline_cassandra_compat:parse_subscription(TopicFilter, SubOpts),
    Wanted =
        maps:get(is_new, SubOpts, true) =:= true andalso
            maps:get(qos, SubOpts, 0) > 0 andalso
            wildcard_replay_allows(maps:get(wildcard_replay, Settings, all), Filter) andalso
            lists:any(fun(F) -> emqx_offline_cassandra_topic:intersects(Filter, F) end, Filters),
    case Wanted andalso first_of_group(Group, Filter) of
        true -> {true, Filter};
        false -> false
    end.

%% @doc Whether the wildcard_replay setting lets Filter replay: exact
%% topics always do.
-spec wildcard_replay_allows(all | no_leading_wildcard | none, binary()) -> boolean().
wildcard_replay_allows(all, _Filter) ->
    true;
wildcard_replay_allows(Policy, Filter) ->
    Levels = binary:split(Filter, <<"/">>, [global]),
    Wild = [L || L <- Levels, L =:= <<"+">> orelse L =:= <<"#">>],
    case {Policy, Wild, Levels} of
        {_, [], _} -> true;
        {no_leading_wildcard, _, [First | _]} -> First =/= <<"+">> andalso First =/= <<"#">>;
        {none, _, _} -> false
    end.

%% A member that leaves its shared group hands the group's replay claim on;
%% a replay to the filter stops (EMQX would deliver it without a
%% subscription).
on_session_unsubscribed(ClientInfo, TopicFilter, Opts) ->
    _ = (catch tell_replays(ClientInfo, {unsubscribed, TopicFilter})),
    case catch emqx_offline_cassandra_compat:parse_subscription(TopicFilter, Opts) of
        {Filter, Group} when is_binary(Group) ->
            emqx_offline_cassandra_groups:release(Group, Filter, self());
        _ ->
            ok
    end,
    ok.

%%--------------------------------------------------------------------
%% A paced replay's slots and its session's moves. Each runs in the
%% channel; only messages carrying a replay's header, and clients with a
%% replay running, cost more than a map lookup.
%%--------------------------------------------------------------------

%% PUBACK (QoS 1) or PUBCOMP (QoS 2): the message left the session.
on_delivery_completed(Msg, _Info) ->
    tell_replay(Msg, completed).

on_delivery_dropped(_ClientInfo, Msg, Reason) ->
    tell_replay(Msg, {dropped, Reason}).

%% A persistent session keeps what was sent; the replay waits meanwhile.
on_client_disconnected(ClientInfo, _Reason, _ConnInfo) ->
    tell_replays(ClientInfo, disconnected).

%% The session goes on in this (new) channel.
on_session_resumed(ClientInfo, _SessionInfo) ->
    tell_replays(ClientInfo, resumed).

%% A fold: the message goes on unchanged.
on_message_delivered(_ClientInfo, Msg) ->
    _ = (catch emqx_offline_cassandra_extsub:note_delivered(Msg)),
    ok.

%% Completions go to the replay 10 at a time (counted in the channel's
%% process dictionary): the replay then thinks at most 9 more are in the
%% session than are, which only ever holds it back.
-define(CREDITS_PER_MESSAGE, 10).

tell_replay(Msg, What) ->
    case catch emqx_message:get_header(emqx_offline_cassandra_replay:header(), Msg, undefined) of
        Pid when is_pid(Pid) ->
            case What of
                completed ->
                    Key = {emqx_offline_cassandra_replay, credits, Pid},
                    case get(Key) of
                        N when is_integer(N), N + 1 >= ?CREDITS_PER_MESSAGE ->
                            erase(Key),
                            Pid ! {emqx_offline_cassandra_replay:header(), completed, N + 1};
                        N when is_integer(N) ->
                            put(Key, N + 1);
                        undefined ->
                            put(Key, 1)
                    end;
                {dropped, Reason} ->
                    Pid ! {emqx_offline_cassandra_replay:header(), dropped, Reason}
            end,
            ok;
        _ ->
            ok
    end.

tell_replays(ClientInfo, What) ->
    ClientId = maps:get(clientid, ClientInfo, undefined),
    _ = [Pid ! {emqx_offline_cassandra_replay:header(), What, self()} || Pid <- emqx_offline_cassandra_replays:of_client(ClientId)],
    ok.

first_of_group(undefined, _Filter) ->
    true;
first_of_group(Group, Filter) ->
    emqx_offline_cassandra_groups:claim(Group, Filter, self()).

%%--------------------------------------------------------------------
%% message.acked: PUBACK (QoS 1) or PUBREC (QoS 2) deletes the row
%%--------------------------------------------------------------------

on_message_acked(_ClientInfo, Msg) ->
    guarded(offline_cassandra_delete_crashed, fun(Settings) -> maybe_delete(Msg, Settings) end).

%% NOTE: a delete is sent only when a row can exist and this node has not
%% just deleted it:
%% - skipped (refused, too large, not on `topics' when published): no row;
%% - stored: one delete per node, whatever the number of subscribers that
%%   ack it (emqx_offline_cassandra_acked remembers recent deletes);
%% - replayed: always (the row was read back, so it exists, even if an
%%   earlier delete of it was sent and lost);
%% - unmarked: as before, by the topic.
%% Skips are counted (delete_skipped).
maybe_delete(Msg, #{topics := Filters}) ->
    Topic = emqx_message:topic(Msg),
    Id = emqx_message:id(Msg),
    Send =
        emqx_message:qos(Msg) > 0 andalso
            case emqx_message:get_header(?MARK, Msg, unmarked) of
                skipped -> skip;
                replayed ->
                    _ = emqx_offline_cassandra_acked:first_delete(Id),
                    true;
                stored ->
                    first_or_skip(Id);
                unmarked -> emqx_offline_cassandra_topic:matches_any(Topic, Filters) andalso first_or_skip(Id)
            end,
    case Send of
        true -> delete(Topic, Id, emqx_message:get_header(?WRITTEN, Msg, undefined));
        skip -> emqx_offline_cassandra_metrics:inc(delete_skipped);
        false -> ok
    end.

first_or_skip(Id) ->
    emqx_offline_cassandra_acked:first_delete(Id) orelse skip.

delete(Topic, Id, WrittenUs) ->
    case emqx_offline_cassandra_nif:delete(Topic, Id, WrittenUs) of
        ok ->
            emqx_offline_cassandra_metrics:inc(deleted);
        {error, Reason} ->
            %% Not sent: the next ack of it must try again.
            emqx_offline_cassandra_acked:forget(Id),
            emqx_offline_cassandra_metrics:inc(delete_refused),
            emqx_offline_cassandra_log:burst(offline_cassandra_delete_refused, #{
                reason => emqx_offline_cassandra_reason:describe(Reason), topic => Topic
            })
    end.

%% Runs a callback's work with the current settings (none: the plugin is
%% not configured, nothing to do). A crash is counted and logged once per
%% burst; it never reaches the client's process.
guarded(CrashKind, Work) ->
    _ = guarded(CrashKind, Work, ok),
    ok.

%% The same, returning the work's result, or Default without settings or
%% after a crash.
guarded(CrashKind, Work, Default) ->
    case settings() of
        undefined ->
            Default;
        Settings ->
            try
                Work(Settings)
            catch
                Class:Reason:Stack ->
                    emqx_offline_cassandra_log:burst(CrashKind, #{
                        class => Class, reason => Reason, stacktrace => Stack
                    }),
                    Default
            end
    end.
