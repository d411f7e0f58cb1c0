%%--------------------------------------------------------------------
%% The EMQX hook callbacks. Each runs inside a client's process (publisher
%% or subscriber channel), so each returns at once: writes go to the NIF's
%% pipeline, replays to a short-lived process. None may crash the channel:
%% failures are counted and logged once per burst.
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_hooks).

-export([hook/0, unhook/0, set_settings/1, settings/0]).
-export([on_message_publish/1, on_session_subscribed/3, on_session_unsubscribed/3, on_message_acked/2]).

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

-define(HOOKS, [
    {'message.publish', on_message_publish, ?PRIO_PUBLISH},
    {'session.subscribed', on_session_subscribed, ?PRIO_SUBSCRIBED},
    {'session.unsubscribed', on_session_unsubscribed, ?PRIO_SUBSCRIBED},
    {'message.acked', on_message_acked, ?PRIO_ACKED}
]).

%% @doc Registers every hook. put/3 replaces an existing registration, so a
%% restart after a crash does not fail on leftovers.
-spec hook() -> ok.
hook() ->
    [ok = emqx_hooks:put(HP, {?MODULE, Fun, []}, Prio) || {HP, Fun, Prio} <- ?HOOKS],
    ok.

%% @doc Removes every hook (idempotent).
-spec unhook() -> ok.
unhook() ->
    [emqx_hooks:del(HP, {?MODULE, Fun}) || {HP, Fun, _} <- ?HOOKS],
    ok.

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
    guarded(offline_cassandra_store_crashed, fun(Settings) -> maybe_store(Msg, Settings) end),
    {ok, Msg}.

maybe_store(Msg, #{topics := Filters} = Settings) ->
    Topic = emqx_message:topic(Msg),
    Store =
        emqx_message:qos(Msg) > 0 andalso
            not emqx_message:is_sys(Msg) andalso
            emqx_message:get_header(allow_publish, Msg, true) =/= false andalso
            emqx_offline_cassandra_topic:matches_any(Topic, Filters),
    case Store of
        true -> store(Msg, Topic, Settings);
        false -> ok
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
            emqx_offline_cassandra_metrics:inc(stored);
        {error, Reason} ->
            emqx_offline_cassandra_metrics:inc(store_refused),
            emqx_offline_cassandra_log:burst(offline_cassandra_store_refused, #{
                reason => emqx_offline_cassandra_reason:describe(Reason), topic => Topic
            })
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
%% - one member per shared-subscription group on this node (the group gets
%%   the messages once, not once per member).
maybe_replay(_ClientInfo, TopicFilter, SubOpts, #{topics := Filters} = Settings) ->
    {Filter, Group} = emqx_offline_cassandra_compat:parse_subscription(TopicFilter, SubOpts),
    Wanted =
        maps:get(is_new, SubOpts, true) =:= true andalso
            maps:get(qos, SubOpts, 0) > 0 andalso
            lists:any(fun(F) -> emqx_offline_cassandra_topic:intersects(Filter, F) end, Filters),
    case Wanted andalso first_of_group(Group, Filter) of
        true -> emqx_offline_cassandra_replay:start(self(), TopicFilter, Filter, Settings);
        false -> ok
    end.

%% A member that leaves its shared group hands the group's replay claim on.
on_session_unsubscribed(_ClientInfo, TopicFilter, Opts) ->
    case catch emqx_offline_cassandra_compat:parse_subscription(TopicFilter, Opts) of
        {Filter, Group} when is_binary(Group) ->
            emqx_offline_cassandra_groups:release(Group, Filter, self());
        _ ->
            ok
    end,
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

maybe_delete(Msg, #{topics := Filters}) ->
    Topic = emqx_message:topic(Msg),
    case emqx_message:qos(Msg) > 0 andalso emqx_offline_cassandra_topic:matches_any(Topic, Filters) of
        true ->
            case emqx_offline_cassandra_nif:delete(Topic, emqx_message:id(Msg)) of
                ok ->
                    emqx_offline_cassandra_metrics:inc(deleted);
                {error, Reason} ->
                    emqx_offline_cassandra_metrics:inc(delete_refused),
                    emqx_offline_cassandra_log:burst(offline_cassandra_delete_refused, #{
                        reason => emqx_offline_cassandra_reason:describe(Reason), topic => Topic
                    })
            end;
        false ->
            ok
    end.

%% Runs a callback's work with the current settings (none: the plugin is
%% not configured, nothing to do). A crash is counted and logged once per
%% burst; it never reaches the client's process.
guarded(CrashKind, Work) ->
    case settings() of
        undefined ->
            ok;
        Settings ->
            try
                Work(Settings)
            catch
                Class:Reason:Stack ->
                    emqx_offline_cassandra_log:burst(CrashKind, #{
                        class => Class, reason => Reason, stacktrace => Stack
                    })
            end
    end,
    ok.
