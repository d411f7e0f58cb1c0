%%--------------------------------------------------------------------
%% Erlang face of the Rust NIF (native/offline_nif): storage of offline
%% messages in Cassandra, never blocking the calling process.
%%
%% - store/1 and delete/2 hand work to a bounded pipeline in Rust and
%%   return within microseconds; outcomes are counted (stats/0).
%% - fetch/4 replies by message: {offline_cassandra, Ref, {ok, Rows} |
%%   {error, Reason}}; fetch_sync/3 waits for it with a timeout.
%% - Errors are atoms or {Kind, Detail} tuples with the storage core's
%%   words: not_connected, timeout, overloaded, shutdown, not_started,
%%   {auth_failed, Msg}, {schema_mismatch, What}, {invalid_config, Why}, ...
%%--------------------------------------------------------------------
-module(emqx_offline_cassandra_nif).

-export([
    start/1,
    set_event_pid/1,
    validate/1,
    config_problem/1,
    default_config/0,
    reconfigure/2,
    stop/0,
    stop/1,
    status/0,
    spool_status/0,
    store/1,
    delete/2,
    delete/3,
    fetch/4,
    fetch_sync/3,
    replay_plan/5,
    replay_pages/5,
    replay_claim/6,
    count/2,
    purge/2,
    await_reply/2,
    start_request/2,
    collect_reply/2,
    cancel_request/1,
    stats/0
]).

%% Raw NIFs (also used by tests and benchmarks).
-export([
    nif_store/8,
    nif_store_large/8,
    nif_fetch/5,
    nif_replay_plan/7,
    nif_replay_pages/6,
    nif_replay_claim/7,
    nif_insert_awaited/5,
    debug_panicking_fetch/2,
    debug_sleeping_fetch/3,
    debug_panic/0,
    debug_clock_offset/1
]).

-on_load(init/0).

-define(APP, emqx_offline_cassandra).
-define(LIB, "libemqx_offline_cassandra_nif").
%% Payloads above this are copied on a dirty scheduler: a normal NIF call
%% must stay far below a millisecond.
-define(LARGE_PAYLOAD, 65536).
-define(REPLY_TAG, offline_cassandra).

-type reason() :: atom() | {atom(), binary()}.
-type row() :: #{
    topic := binary(),
    msgid := binary(),
    sender := binary(),
    qos := integer(),
    retain := boolean(),
    payload := binary(),
    arrived := integer(),
    %% seconds until Cassandra expires the row, undefined without a TTL
    ttl := integer() | undefined,
    %% the row's write time (µs) when later than its msgid's: a row EMQX 4.x
    %% wrote (Cassandra stamped it); its delete goes through delete/3
    written_us := integer() | undefined,
    %% the msgid as EMQX holds it (16 bytes), undefined when msgid is not
    %% the 32 upper-case hex digits EMQX writes
    guid := binary() | undefined
}.
-type message() :: #{
    topic := binary(),
    %% 32 hex digits, or EMQX's 16-byte GUID
    msgid := binary(),
    payload := binary(),
    sender => binary(),
    qos => 0..2,
    retain => boolean(),
    %% publish time, ms since the epoch
    arrived => integer(),
    %% seconds until Cassandra expires the row; 0 = never
    ttl => non_neg_integer()
}.
-type fetch_opts() :: #{limit => non_neg_integer(), since => non_neg_integer()}.
%% A request running in its helper process (start_request/2).
-opaque pending_reply() :: {pid(), reference()}.
-export_type([reason/0, row/0, message/0, fetch_opts/0, pending_reply/0]).

%%--------------------------------------------------------------------
%% Loading
%%--------------------------------------------------------------------

init() ->
    erlang:load_nif(lib_path(), 0).

%% code:priv_dir/1 works once the app's ebin is in the code path under its
%% name; the fallback next to this beam covers installs it does not know.
lib_path() ->
    Fallback = filename:join([filename:dirname(filename:dirname(code:which(?MODULE))), "priv", ?LIB]),
    case code:priv_dir(?APP) of
        {error, _} ->
            Fallback;
        Dir ->
            Path = filename:join(Dir, ?LIB),
            case filelib:is_regular(Path ++ ".so") of
                true -> Path;
                false -> Fallback
            end
    end.

%%--------------------------------------------------------------------
%% API
%%--------------------------------------------------------------------

%% @doc Starts the runtime and connects in the background (with retry).
%% Config: a map with binary keys (as EMQX hands plugin config); values are
%% binaries, integers or booleans. Keys: docs/design.md, "Configuration of the core".
-spec start(#{binary() => binary() | integer() | boolean()}) -> ok | {error, reason()}.
start(Config) when is_map(Config) ->
    nif_start(Config).

%% @doc Pid receives the store's events as {offline_cassandra_event, Kind,
%% Detail}: state_changed (the new status), writes_failed ({Count, Reason})
%% and writes_requeued (Count).
-spec set_event_pid(pid()) -> ok.
set_event_pid(Pid) when is_pid(Pid) ->
    nif_set_event_pid(Pid).

%% @doc Checks a config without applying it.
-spec validate(map()) -> ok | {error, reason()}.
validate(Config) when is_map(Config) ->
    nif_validate(Config).

%% @doc The core's verdict on a config: `ok', or the core's key and why
%% (the plugin's config module shows it under the form's name). Pure and
%% fast: nothing is built or opened.
-spec config_problem(map()) -> ok | {binary(), binary()}.
config_problem(Config) when is_map(Config) ->
    nif_config_problem(Config).

%% @doc Every core key with its default, typed as start/1 takes it.
-spec default_config() -> #{binary() => integer() | boolean() | binary()}.
default_config() ->
    nif_default_config().

%% @doc Swaps in a store built from Config on the running runtime. The old
%% store flushes for at most GraceMs; what it still buffers moves to the new
%% one. Runs on a dirty scheduler.
-spec reconfigure(map(), non_neg_integer()) -> {ok, map()} | ok | {error, reason()}.
reconfigure(Config, GraceMs) when is_map(Config), is_integer(GraceMs), GraceMs >= 0 ->
    nif_reconfigure(Config, GraceMs).

%% @doc Stops with a 5 s flush.
-spec stop() -> {ok, #{flushed := non_neg_integer(), abandoned := non_neg_integer()}} | ok | {error, reason()}.
stop() ->
    stop(5000).

%% @doc Flushes for at most GraceMs, answers what is still pending with
%% {error, shutdown}, then frees the runtime's threads. Runs on a dirty
%% scheduler.
-spec stop(non_neg_integer()) -> {ok, map()} | ok | {error, reason()}.
stop(GraceMs) when is_integer(GraceMs), GraceMs >= 0 ->
    nif_stop(GraceMs).

%% @doc connecting | {connecting, LastError} | connected |
%% {degraded, Waiting, Why} (connected, but writes wait: replicas down,
%% overloaded, timeouts) | {disconnected, Why} | {error, Reason} |
%% not_started. Immediate.
-spec status() -> connecting | connected | not_started | {atom(), term()} | {degraded, non_neg_integer(), binary()}.
status() ->
    nif_status().

%% @doc none | {spool_failed, Why}: the disk buffer (buffer_mode = disk)
%% cannot be used, writes are kept in memory meanwhile. Immediate.
-spec spool_status() -> none | {spool_failed, binary()}.
spool_status() ->
    nif_spool_status().

%% @doc Hands one message to the write pipeline. Returns at once.
-spec store(message()) -> ok | {error, reason()}.
store(#{topic := Topic, msgid := MsgId, payload := Payload} = Msg) ->
    Args = [
        Topic,
        MsgId,
        maps:get(sender, Msg, <<>>),
        maps:get(qos, Msg, 1),
        maps:get(retain, Msg, false),
        Payload,
        maps:get(arrived, Msg, erlang:system_time(millisecond)),
        maps:get(ttl, Msg, 0)
    ],
    case byte_size(Payload) > ?LARGE_PAYLOAD of
        true -> apply(fun nif_store_large/8, Args);
        false -> apply(fun nif_store/8, Args)
    end.

%% @doc Hands the delete of one acknowledged message to the pipeline.
-spec delete(binary(), binary()) -> ok | {error, reason()}.
delete(Topic, MsgId) ->
    nif_delete(Topic, MsgId).

%% @doc The delete of a replayed row whose write time WrittenUs (the row's
%% written_us) is later than its msgid's: written just after it, so it
%% removes rows EMQX 4.x wrote. undefined: as delete/2.
-spec delete(binary(), binary(), integer() | undefined) -> ok | {error, reason()}.
delete(Topic, MsgId, undefined) ->
    delete(Topic, MsgId);
delete(Topic, MsgId, WrittenUs) ->
    nif_delete_written(Topic, MsgId, WrittenUs).

%% @doc Asks for the newest `limit' messages of Topic - a topic, or a filter
%% with `+'/`#' whose topics come from the topic index - (0 or absent: the
%% configured maximum), not older than `since' (ms since the epoch). Pid
%% receives {offline_cassandra, Ref, {ok, [row()]} | {error, reason()}},
%% rows oldest first. Returns ok, or an error when nothing will be sent.
-spec fetch(pid(), reference(), binary(), fetch_opts()) -> ok | {error, reason()}.
fetch(Pid, Ref, Topic, Opts) ->
    nif_fetch(Pid, Ref, Topic, maps:get(limit, Opts, 0), maps:get(since, Opts, 0)).

%% @doc fetch/4 for callers that may block: waits at most Timeout ms. A
%% helper process receives the reply, so a late one never lands in the
%% caller's mailbox.
-spec fetch_sync(binary(), fetch_opts(), timeout()) -> {ok, [row()]} | {error, reason()}.
fetch_sync(Topic, Opts, Timeout) ->
    await_reply(fun(Pid, Ref) -> fetch(Pid, Ref, Topic, Opts) end, Timeout).

%% @doc Plans a paced replay of Filter (a topic or a wildcard filter) below
%% the msgid Below: Pid receives {offline_cassandra, Ref, {ok, {Topics,
%% From}}}, From the oldest msgid to deliver (undefined: all). Opts: newest
%% (the newest N only, 0 = all), since (ms since the epoch, 0 = any),
%% kept_by (the configured topic filters: only topics they match; [] = any).
-spec replay_plan(pid(), reference(), binary(), map(), binary()) -> ok | {error, reason()}.
replay_plan(Pid, Ref, Filter, Opts, Below) ->
    nif_replay_plan(
        Pid, Ref, Filter, maps:get(kept_by, Opts, []), maps:get(newest, Opts, 0), maps:get(since, Opts, 0), Below
    ).

%% @doc The next page of each {Topic, After} (After: the last msgid taken,
%% or undefined): Pid receives {offline_cassandra, Ref, {ok, [{Topic,
%% [row()]}]}}, each up to Limit rows oldest first, in [From, Below).
-spec replay_pages(pid(), reference(), [{binary(), binary() | undefined}], {binary() | undefined, binary()},
                   pos_integer()) -> ok | {error, reason()}.
replay_pages(Pid, Ref, Requests, {From, Below}, Limit) ->
    nif_replay_pages(Pid, Ref, Requests, From, Below, Limit).

%% @doc Op (claim | refresh | release) on the cluster-wide claim of a
%% shared group's replay (Key: {Group, Filter}) for Holder, with a TTL:
%% Pid receives {offline_cassandra, Ref, Reply}; Reply {ok, held} | {ok,
%% {held_by, Other}} for claim, {ok, boolean()} for refresh (false: lost),
%% {ok, true} for release, or {error, Reason}.
-spec replay_claim(pid(), reference(), claim | refresh | release, {binary(), binary()}, binary(), pos_integer()) ->
    ok | {error, reason()}.
replay_claim(Pid, Ref, Op, {Group, Filter}, Holder, TtlMs) ->
    nif_replay_claim(Pid, Ref, Op, Group, Filter, Holder, TtlMs).

%% @doc Live rows of a topic (waits at most Timeout ms).
-spec count(binary(), timeout()) -> {ok, non_neg_integer()} | {error, reason()}.
count(Topic, Timeout) ->
    admin_sync(count, Topic, Timeout).

%% @doc Deletes every stored message of a topic; returns how many there were.
-spec purge(binary(), timeout()) -> {ok, non_neg_integer()} | {error, reason()}.
purge(Topic, Timeout) ->
    admin_sync(purge, Topic, Timeout).

admin_sync(Op, Topic, Timeout) ->
    await_reply(fun(Pid, Ref) -> nif_admin(Pid, Ref, Op, Topic) end, Timeout).

%% @doc Runs Request(HelperPid, Ref) (one of the replying calls above) in
%% a helper process and waits at most Timeout ms for its one reply, so a
%% late reply never lands in the caller's mailbox.
-spec await_reply(fun((pid(), reference()) -> ok | {error, reason()}), timeout()) -> term().
await_reply(Request, Timeout) ->
    {done, Result} = collect_reply(start_request(Request, Timeout), infinity),
    Result.

%% @doc await_reply/2 in two steps: starts Request in its helper process
%% and returns at once, for a caller with other work meanwhile (a replay
%% reads its next page while it delivers the current one).
-spec start_request(fun((pid(), reference()) -> ok | {error, reason()}), timeout()) -> pending_reply().
start_request(Request, Timeout) ->
    spawn_monitor(fun() ->
        Ref = make_ref(),
        Result =
            case Request(self(), Ref) of
                ok ->
                    receive
                        {?REPLY_TAG, Ref, Reply} -> Reply
                    after Timeout -> {error, timeout}
                    end;
                Error ->
                    Error
            end,
        exit({reply, Result})
    end).

%% @doc The reply of a started request, waiting at most Wait ms for it.
-spec collect_reply(pending_reply(), timeout()) -> {done, term()} | pending.
collect_reply({Pid, MRef}, Wait) ->
    receive
        {'DOWN', MRef, process, Pid, {reply, Result}} -> {done, Result};
        {'DOWN', MRef, process, Pid, Other} -> {done, {error, {crashed, Other}}}
    after Wait -> pending
    end.

%% @doc Forgets a started request: its reply is dropped with the helper.
-spec cancel_request(pending_reply()) -> ok.
cancel_request({Pid, MRef}) ->
    erlang:demonitor(MRef, [flush]),
    exit(Pid, kill),
    ok.

%% @doc Counters (README, Counters): accepted, written, failed, dropped,
%% evicted, rejected, expired, in_flight, buffered, buffered_bytes, batches,
%% retries, fetches, fetch_failures, fetched_rows and the others there; plus
%% the bounds buffer_capacity and buffer_max_bytes.
-spec stats() -> {ok, #{atom() => non_neg_integer()}} | {error, reason()}.
stats() ->
    nif_stats().

%%--------------------------------------------------------------------
%% NIF stubs (replaced when the library loads)
%%--------------------------------------------------------------------

-define(NOT_LOADED, erlang:nif_error({not_loaded, [{module, ?MODULE}, {line, ?LINE}]})).

nif_start(_Config) -> ?NOT_LOADED.
nif_stop(_GraceMs) -> ?NOT_LOADED.
nif_validate(_Config) -> ?NOT_LOADED.
nif_config_problem(_Config) -> ?NOT_LOADED.
nif_default_config() -> ?NOT_LOADED.
nif_set_event_pid(_Pid) -> ?NOT_LOADED.
nif_reconfigure(_Config, _GraceMs) -> ?NOT_LOADED.
nif_status() -> ?NOT_LOADED.
nif_store(_Topic, _MsgId, _Sender, _Qos, _Retain, _Payload, _ArrivedMs, _Ttl) -> ?NOT_LOADED.
nif_store_large(_Topic, _MsgId, _Sender, _Qos, _Retain, _Payload, _ArrivedMs, _Ttl) -> ?NOT_LOADED.
nif_delete(_Topic, _MsgId) -> ?NOT_LOADED.
nif_spool_status() -> ?NOT_LOADED.
nif_delete_written(_Topic, _MsgId, _WrittenUs) -> ?NOT_LOADED.
nif_fetch(_Pid, _Ref, _Topic, _Limit, _SinceMs) -> ?NOT_LOADED.
nif_replay_plan(_Pid, _Ref, _Filter, _KeptBy, _Newest, _SinceMs, _Below) -> ?NOT_LOADED.
nif_replay_pages(_Pid, _Ref, _Requests, _From, _Below, _Limit) -> ?NOT_LOADED.
nif_replay_claim(_Pid, _Ref, _Op, _Group, _Filter, _Holder, _TtlMs) -> ?NOT_LOADED.
nif_stats() -> ?NOT_LOADED.
nif_admin(_Pid, _Ref, _Op, _Topic) -> ?NOT_LOADED.
nif_insert_awaited(_Pid, _Ref, _Topic, _MsgId, _Payload) -> ?NOT_LOADED.
%% Only in test builds (cargo feature fault_injection).
debug_panicking_fetch(_Pid, _Ref) -> ?NOT_LOADED.
debug_sleeping_fetch(_Pid, _Ref, _Ms) -> ?NOT_LOADED.
debug_panic() -> ?NOT_LOADED.
debug_clock_offset(_OffsetMs) -> ?NOT_LOADED.
