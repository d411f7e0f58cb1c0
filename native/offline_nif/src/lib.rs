//! NIF functions of `emqx_offline_cassandra_nif`: convert terms, call the storage core on a
//! Tokio runtime owned here, reply by message. Nothing here waits for Cassandra on a BEAM
//! scheduler: writes are handed to the core's bounded pipeline, reads reply later.
//!
//! The loadable library is the cdylib `emqx_offline_cassandra_nif`, which re-exports this
//! crate's entry with `upgrade`/`unload` callbacks (see that crate for why).

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use offline_store::{
    ConnState, FetchOptions, Message, MsgId, Store, StoreConfig, StoreError, StoreEvent,
};
use rustler::{Atom, Binary, Encoder, Env, LocalPid, NewBinary, OwnedEnv, Term};
use tokio::runtime::{Handle, Runtime};

mod atoms {
    rustler::atoms! {
        ok, error, undefined, true_ = "true", false_ = "false",
        connecting, connected, disconnected, not_started,
        already_started, not_connected, timeout, overloaded, shutdown, panic,
        offline_cassandra,
        topic, msgid, sender, qos, retain, payload, arrived, ttl,
        accepted, written, failed, dropped, evicted, rejected, in_flight, buffered,
        batches, retries, fetches, fetch_failures, fetched_rows,
        floor_scans, floor_resets, sliced_reads,
        flushed, abandoned, handed_over, invalid_config, requeued,
        offline_cassandra_event, state_changed, writes_failed, writes_requeued,
        write_latency_p50_us, write_latency_p99_us, read_latency_p50_us, read_latency_p99_us,
        buffer_capacity, purge, count, badarg,
    }
}

/// The running store and the runtime it lives on; `None` before `start` and after `stop`.
static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);
/// Hot-path copy of the store handle and runtime handle (a read lock per call).
static STORE: RwLock<Option<(Store, Handle)>> = RwLock::new(None);

/// Where store events go: `{offline_cassandra_event, Kind, Detail}` (see `set_event_pid`).
static EVENT_PID: Mutex<Option<LocalPid>> = Mutex::new(None);

/// Keys `start/1` takes besides the core's own (`offline_store::config::CONFIG_KEYS`).
const WORKER_THREADS_KEY: &str = "worker_threads";

fn load(_env: Env, _info: Term) -> bool {
    // Opens nothing: EMQX 5.9+ loads plugin code at install time, before any start.
    true
}

rustler::init!("emqx_offline_cassandra_nif", load = load);

fn running() -> Option<(Store, Handle)> {
    STORE.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// `{error, Reason}` with `Reason` an atom or `{Kind, Detail}` (the core's words).
fn error_reason<'a>(env: Env<'a>, err: &StoreError) -> Term<'a> {
    match err {
        StoreError::NotConnected { .. } => atoms::not_connected().encode(env),
        StoreError::Timeout(_) => atoms::timeout().encode(env),
        StoreError::Overloaded { .. } => atoms::overloaded().encode(env),
        StoreError::Shutdown => atoms::shutdown().encode(env),
        other => {
            let kind = Atom::from_str(env, other.kind()).unwrap_or(atoms::error());
            (kind, other.to_string()).encode(env)
        }
    }
}

fn error_term<'a>(env: Env<'a>, err: &StoreError) -> Term<'a> {
    (atoms::error(), error_reason(env, err)).encode(env)
}

/// Turns the config map (binary keys; binary, integer or boolean values) into strings.
fn config_strings(map: HashMap<String, Term>) -> Result<HashMap<String, String>, StoreError> {
    map.into_iter()
        .map(|(key, value)| {
            let text = if let Ok(s) = value.decode::<String>() {
                s
            } else if let Ok(i) = value.decode::<i64>() {
                i.to_string()
            } else if let Ok(b) = value.decode::<bool>() {
                b.to_string()
            } else {
                return Err(StoreError::InvalidConfig {
                    field: key,
                    reason: "must be a string, integer or boolean".into(),
                });
            };
            Ok((key, text))
        })
        .collect()
}

/// The core's config plus `worker_threads` (default 2).
fn parse_config(config: HashMap<String, Term>) -> Result<(StoreConfig, usize), StoreError> {
    let mut strings = config_strings(config)?;
    let workers = match strings.remove(WORKER_THREADS_KEY) {
        None => 2,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=64).contains(&n) => n,
            _ => {
                return Err(StoreError::InvalidConfig {
                    field: WORKER_THREADS_KEY.into(),
                    reason: format!("{v:?} is not a whole number between 1 and 64"),
                });
            }
        },
    };
    Ok((StoreConfig::from_map(&strings)?, workers))
}

/// Names the process that receives store events as `{offline_cassandra_event, Kind,
/// Detail}`: `state_changed` (the new status), `writes_failed` / `writes_requeued`
/// (`{Count, Reason}`). The plugin's server logs them.
#[rustler::nif(name = "nif_set_event_pid")]
fn set_event_pid(pid: LocalPid) -> Atom {
    *EVENT_PID.lock().unwrap_or_else(|e| e.into_inner()) = Some(pid);
    atoms::ok()
}

/// Forwards store events to the event process. Events raised on a BEAM thread (none are,
/// in practice) are dropped: rustler cannot send from there.
fn event_sink() -> offline_store::EventSink {
    Box::new(|event| {
        if rustler::thread::is_scheduler_thread() {
            return;
        }
        let Some(pid) = *EVENT_PID.lock().unwrap_or_else(|e| e.into_inner()) else {
            return;
        };
        let mut env = OwnedEnv::new();
        let _ = env.send_and_clear(&pid, |env| {
            let (kind, detail) = match &event {
                StoreEvent::StateChanged(state) => {
                    (atoms::state_changed(), status_term(env, state))
                }
                StoreEvent::WritesFailed { count, error } => (
                    atoms::writes_failed(),
                    (*count, error_reason(env, error)).encode(env),
                ),
                StoreEvent::WritesRequeued { count } => {
                    (atoms::writes_requeued(), count.encode(env))
                }
            };
            (atoms::offline_cassandra_event(), kind, detail).encode(env)
        });
    })
}

/// Checks a config without applying it: `ok | {error, {invalid_config, Why}}`.
#[rustler::nif(name = "nif_validate")]
fn validate<'a>(env: Env<'a>, config: HashMap<String, Term<'a>>) -> Term<'a> {
    match parse_config(config) {
        Ok(_) => atoms::ok().encode(env),
        Err(e) => error_term(env, &e),
    }
}

/// Replaces the running store with one built from `Config`, on the same runtime: the old
/// store flushes for at most `GraceMs`, and the writes it still holds move to the new one
/// (nothing buffered is lost). `{ok, #{flushed, handed_over}}`. `worker_threads` changes
/// take effect at the next `start`.
#[rustler::nif(name = "nif_reconfigure", schedule = "DirtyIo")]
fn reconfigure<'a>(env: Env<'a>, config: HashMap<String, Term<'a>>, grace_ms: u64) -> Term<'a> {
    let slot = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(rt) = slot.as_ref() else {
        return (atoms::error(), atoms::not_started()).encode(env);
    };
    let cfg = match parse_config(config) {
        Ok((cfg, _)) => cfg,
        Err(e) => return error_term(env, &e),
    };
    let new_store = {
        let _guard = rt.enter();
        match Store::start(cfg) {
            Ok(store) => store,
            Err(e) => return error_term(env, &e),
        }
    };
    new_store.set_event_sink(event_sink());
    let handle = rt.handle().clone();
    let old = STORE
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .replace((new_store.clone(), handle.clone()));
    let Some((old_store, _)) = old else {
        return atoms::ok().encode(env);
    };
    // Off the scheduler: waiting for the flush blocks.
    let joined = std::thread::spawn(move || {
        handle.block_on(async {
            let (report, handover) = old_store
                .shutdown_with_handover(Duration::from_millis(grace_ms))
                .await;
            let moved = handover.len();
            let refused = new_store.adopt(handover);
            (report.flushed, moved - refused)
        })
    })
    .join();
    match joined {
        Ok((flushed, moved)) => (
            atoms::ok(),
            Term::map_from_pairs(
                env,
                &[
                    (atoms::flushed(), flushed),
                    (atoms::handed_over(), moved as u64),
                ],
            )
            .unwrap_or_else(|_| atoms::ok().encode(env)),
        )
            .encode(env),
        Err(_) => (atoms::error(), atoms::panic()).encode(env),
    }
}

/// Starts the runtime and the store; connects in the background. Dirty: spawning the
/// runtime's threads takes longer than a normal NIF may.
#[rustler::nif(name = "nif_start", schedule = "DirtyIo")]
fn start<'a>(env: Env<'a>, config: HashMap<String, Term<'a>>) -> Term<'a> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_some() {
        return (atoms::error(), atoms::already_started()).encode(env);
    }
    let result = (|| {
        let (cfg, workers) = parse_config(config)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .max_blocking_threads(2)
            .thread_name("offline_cassandra")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Db(format!("cannot start the Tokio runtime: {e}")))?;
        let store = {
            let _guard = rt.enter();
            Store::start(cfg)?
        };
        store.set_event_sink(event_sink());
        Ok((rt, store))
    })();
    match result {
        Ok((rt, store)) => {
            *STORE.write().unwrap_or_else(|e| e.into_inner()) = Some((store, rt.handle().clone()));
            *slot = Some(rt);
            atoms::ok().encode(env)
        }
        Err(e) => error_term(env, &e),
    }
}

/// Stops the store: flushes for at most `GraceMs`, answers what is left with
/// `{error, shutdown}`, then ends the runtime's threads. `{ok, #{flushed, abandoned}}`.
#[rustler::nif(name = "nif_stop", schedule = "DirtyIo")]
fn stop(env: Env, grace_ms: u64) -> Term {
    let mut slot = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(rt) = slot.take() else {
        return (atoms::error(), atoms::not_started()).encode(env);
    };
    let taken = STORE.write().unwrap_or_else(|e| e.into_inner()).take();
    // Shut down from a thread the BEAM does not manage: dropping pending tasks sends their
    // error replies, and rustler refuses to send from a scheduler thread.
    let joined = std::thread::spawn(move || {
        let report =
            taken.map(|(store, _)| rt.block_on(store.shutdown(Duration::from_millis(grace_ms))));
        rt.shutdown_timeout(Duration::from_secs(2));
        report
    })
    .join();
    match joined {
        Ok(Some(report)) => (
            atoms::ok(),
            Term::map_from_pairs(
                env,
                &[
                    (atoms::flushed(), report.flushed),
                    (atoms::abandoned(), report.abandoned),
                ],
            )
            .unwrap_or_else(|_| atoms::ok().encode(env)),
        )
            .encode(env),
        Ok(None) => atoms::ok().encode(env),
        Err(_) => (atoms::error(), atoms::panic()).encode(env),
    }
}

/// `connecting | connected | {disconnected, Reason} | {error, Reason} | not_started`.
#[rustler::nif(name = "nif_status")]
fn status(env: Env) -> Term {
    let Some((store, _)) = running() else {
        return atoms::not_started().encode(env);
    };
    status_term(env, &store.state())
}

fn status_term<'a>(env: Env<'a>, state: &ConnState) -> Term<'a> {
    match state {
        ConnState::Connected => atoms::connected().encode(env),
        ConnState::Connecting {
            last_error: None, ..
        } => atoms::connecting().encode(env),
        ConnState::Connecting {
            last_error: Some(e),
            ..
        } => (atoms::connecting(), e.to_string()).encode(env),
        ConnState::Disconnected { reason } => {
            (atoms::disconnected(), reason.to_string()).encode(env)
        }
        ConnState::Error(e) => (atoms::error(), error_reason(env, e)).encode(env),
        ConnState::Stopped => atoms::not_started().encode(env),
    }
}

#[allow(clippy::too_many_arguments)]
fn submit_store<'a>(
    env: Env<'a>,
    topic: Binary<'a>,
    msgid: Binary<'a>,
    sender: Binary<'a>,
    qos: u8,
    retain: bool,
    payload: Binary<'a>,
    arrived_ms: i64,
    ttl_secs: u32,
) -> Term<'a> {
    let Some((store, _)) = running() else {
        return (atoms::error(), atoms::not_started()).encode(env);
    };
    let result = (|| {
        let msgid = MsgId::parse(std::str::from_utf8(msgid.as_slice()).unwrap_or(""))?;
        let topic = text(&topic, "topic")?;
        let sender = String::from_utf8_lossy(sender.as_slice()).into_owned();
        store.submit_store(Message {
            topic,
            msgid,
            sender,
            qos,
            retain,
            payload: payload.as_slice().to_vec(),
            arrived_ms,
            ttl_secs: (ttl_secs > 0).then_some(ttl_secs),
        })
    })();
    match result {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => error_term(env, &e),
    }
}

fn text(bin: &Binary, field: &str) -> Result<String, StoreError> {
    std::str::from_utf8(bin.as_slice())
        .map(str::to_owned)
        .map_err(|_| StoreError::InvalidConfig {
            field: field.into(),
            reason: "must be UTF-8".into(),
        })
}

/// Hands one message to the write pipeline: `ok | {error, Reason}` within microseconds.
#[rustler::nif(name = "nif_store")]
#[allow(clippy::too_many_arguments)]
fn store<'a>(
    env: Env<'a>,
    topic: Binary<'a>,
    msgid: Binary<'a>,
    sender: Binary<'a>,
    qos: u8,
    retain: bool,
    payload: Binary<'a>,
    arrived_ms: i64,
    ttl_secs: u32,
) -> Term<'a> {
    submit_store(
        env, topic, msgid, sender, qos, retain, payload, arrived_ms, ttl_secs,
    )
}

/// Same as `store`, on a dirty CPU scheduler: the Erlang side uses it for large payloads,
/// whose copy would take longer than a normal NIF may.
#[rustler::nif(name = "nif_store_large", schedule = "DirtyCpu")]
#[allow(clippy::too_many_arguments)]
fn store_large<'a>(
    env: Env<'a>,
    topic: Binary<'a>,
    msgid: Binary<'a>,
    sender: Binary<'a>,
    qos: u8,
    retain: bool,
    payload: Binary<'a>,
    arrived_ms: i64,
    ttl_secs: u32,
) -> Term<'a> {
    submit_store(
        env, topic, msgid, sender, qos, retain, payload, arrived_ms, ttl_secs,
    )
}

/// Hands one delete (the ack of `msgid` on `topic`) to the write pipeline.
#[rustler::nif(name = "nif_delete")]
fn delete<'a>(env: Env<'a>, topic: Binary<'a>, msgid: Binary<'a>) -> Term<'a> {
    let Some((store, _)) = running() else {
        return (atoms::error(), atoms::not_started()).encode(env);
    };
    let result = (|| {
        let msgid = MsgId::parse(std::str::from_utf8(msgid.as_slice()).unwrap_or(""))?;
        store.submit_delete(&text(&topic, "topic")?, msgid)
    })();
    match result {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => error_term(env, &e),
    }
}

/// Exactly one reply per request: sent by `send`, or by `Drop` with `{error, Reason}` when
/// the task is dropped unsent (runtime shut down, or a panic unwound through it).
struct Reply {
    target: Option<ReplyTarget>,
}

struct ReplyTarget {
    pid: LocalPid,
    env: OwnedEnv,
    reference: rustler::env::SavedTerm,
}

impl ReplyTarget {
    fn send<F>(mut self, body: F)
    where
        F: for<'b> FnOnce(Env<'b>) -> Term<'b>,
    {
        let reference = &self.reference;
        // Err only when the receiver is gone: nobody left to tell.
        let _ = self.env.send_and_clear(&self.pid, |env| {
            (atoms::offline_cassandra(), reference.load(env), body(env))
        });
    }
}

impl Reply {
    fn new(pid: LocalPid, reference: Term) -> Self {
        let env = OwnedEnv::new();
        let reference = env.save(reference);
        Reply {
            target: Some(ReplyTarget {
                pid,
                env,
                reference,
            }),
        }
    }

    fn send<F>(mut self, body: F)
    where
        F: for<'b> FnOnce(Env<'b>) -> Term<'b>,
    {
        if let Some(target) = self.target.take() {
            target.send(body);
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        let Some(target) = self.target.take() else {
            return;
        };
        let reason = if std::thread::panicking() {
            atoms::panic()
        } else {
            atoms::shutdown()
        };
        let send = move || target.send(|env| (atoms::error(), reason).encode(env));
        if rustler::thread::is_scheduler_thread() {
            // A task dropped on a BEAM thread (spawned while the runtime was stopping):
            // sending is not allowed here, so a short-lived thread sends the error.
            std::thread::spawn(send);
        } else {
            send();
        }
    }
}

fn rows_term<'a>(env: Env<'a>, rows: &[offline_store::StoredMessage]) -> Term<'a> {
    let list: Vec<Term<'a>> = rows
        .iter()
        .map(|r| {
            let keys = [
                atoms::topic().encode(env),
                atoms::msgid().encode(env),
                atoms::sender().encode(env),
                atoms::qos().encode(env),
                atoms::retain().encode(env),
                atoms::payload().encode(env),
                atoms::arrived().encode(env),
                atoms::ttl().encode(env),
            ];
            let values = [
                r.topic.encode(env),
                r.msgid.encode(env),
                r.sender.encode(env),
                r.qos.encode(env),
                r.retain.encode(env),
                Binary::from(NewBinary::from_slice(env, &r.payload)).encode(env),
                r.arrived_ms.encode(env),
                match r.ttl_secs {
                    Some(t) => t.encode(env),
                    None => atoms::undefined().encode(env),
                },
            ];
            Term::map_from_term_arrays(env, &keys, &values)
                .unwrap_or_else(|_| atoms::error().encode(env))
        })
        .collect();
    list.encode(env)
}

/// Reads the newest `Limit` (0 = the configured maximum) messages of `Topic` not older than
/// `SinceMs` (0 = any). `Topic` may be a filter with `+`/`#`: its topics come from the index. Returns `ok` at once; `Pid` later receives
/// `{offline_cassandra, Ref, {ok, [Row]} | {error, Reason}}`, rows oldest first.
#[rustler::nif(name = "nif_fetch")]
fn fetch<'a>(
    env: Env<'a>,
    pid: LocalPid,
    reference: Term<'a>,
    topic: Binary<'a>,
    limit: u32,
    since_ms: i64,
) -> Term<'a> {
    let Some((store, handle)) = running() else {
        return (atoms::error(), atoms::not_started()).encode(env);
    };
    let topic = match text(&topic, "topic") {
        Ok(t) => t,
        Err(e) => return error_term(env, &e),
    };
    let reply = Reply::new(pid, reference);
    let opts = FetchOptions {
        limit: (limit > 0).then_some(limit),
        since_ms: (since_ms > 0).then_some(since_ms),
    };
    spawn_replying(&handle, reply, async move {
        store.fetch_matching(&topic, opts).await
    });
    atoms::ok().encode(env)
}

/// Runs `work` on the runtime and replies with its result. A panic inside `work` is caught
/// (tokio reports it through the join handle) and becomes `{error, {panic, Message}}`.
fn spawn_replying<F>(handle: &Handle, reply: Reply, work: F)
where
    F: std::future::Future<Output = Result<Vec<offline_store::StoredMessage>, StoreError>>
        + Send
        + 'static,
{
    spawn_replying_with(handle, reply, work, |env, rows| {
        (atoms::ok(), rows_term(env, &rows)).encode(env)
    });
}

/// Runs `work` on the runtime and replies `encode(result)`, `{error, Reason}`, or
/// `{error, {panic, Message}}` when `work` panicked (tokio reports that through the join
/// handle; the `Reply` guard covers a task dropped at shutdown).
fn spawn_replying_with<T, F, E>(handle: &Handle, reply: Reply, work: F, encode: E)
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    E: for<'b> FnOnce(Env<'b>, T) -> Term<'b> + Send + 'static,
{
    let inner = handle.spawn(work);
    handle.spawn(async move {
        match inner.await {
            Ok(Ok(value)) => reply.send(|env| encode(env, value)),
            Ok(Err(e)) => reply.send(|env| error_term(env, &e)),
            Err(join) => {
                let what = if join.is_panic() {
                    panic_message(join.into_panic())
                } else {
                    "task cancelled".to_string()
                };
                reply.send(|env| (atoms::error(), (atoms::panic(), what.as_str())).encode(env))
            }
        }
    });
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

/// One INSERT awaited on its own, bypassing the pipeline: the design of one-write-per-call
/// plugins, kept for the benchmark's baseline. Replies `{offline_cassandra, Ref, {ok, 0} |
/// {error, Reason}}`.
#[rustler::nif(name = "nif_insert_awaited")]
fn insert_awaited<'a>(
    env: Env<'a>,
    pid: LocalPid,
    reference: Term<'a>,
    topic: Binary<'a>,
    msgid: Binary<'a>,
    payload: Binary<'a>,
) -> Term<'a> {
    let Some((store, handle)) = running() else {
        return (atoms::error(), atoms::not_started()).encode(env);
    };
    let message = (|| {
        Ok::<_, StoreError>(Message {
            topic: text(&topic, "topic")?,
            msgid: MsgId::parse(std::str::from_utf8(msgid.as_slice()).unwrap_or(""))?,
            sender: String::new(),
            qos: 1,
            retain: false,
            payload: payload.as_slice().to_vec(),
            arrived_ms: 0,
            ttl_secs: None,
        })
    })();
    let message = match message {
        Ok(m) => m,
        Err(e) => return error_term(env, &e),
    };
    let reply = Reply::new(pid, reference);
    let work = async move { store.store_unbatched(message).await.map(|()| 0u64) };
    spawn_replying_with(&handle, reply, work, |env, n| (atoms::ok(), n).encode(env));
    atoms::ok().encode(env)
}

/// Operator commands: `count` or `purge` a topic. Replies like `fetch`:
/// `{offline_cassandra, Ref, {ok, Rows} | {error, Reason}}` with `Rows` the number of rows
/// the topic had.
#[rustler::nif(name = "nif_admin")]
fn admin<'a>(
    env: Env<'a>,
    pid: LocalPid,
    reference: Term<'a>,
    op: Atom,
    topic: Binary<'a>,
) -> Term<'a> {
    let Some((store, handle)) = running() else {
        return (atoms::error(), atoms::not_started()).encode(env);
    };
    let topic = match text(&topic, "topic") {
        Ok(t) => t,
        Err(e) => return error_term(env, &e),
    };
    let purge = op == atoms::purge();
    if !purge && op != atoms::count() {
        return (atoms::error(), atoms::badarg()).encode(env);
    }
    let reply = Reply::new(pid, reference);
    let work = async move {
        if purge {
            store.purge(&topic).await
        } else {
            store.count(&topic).await
        }
    };
    spawn_replying_with(&handle, reply, work, |env, n| (atoms::ok(), n).encode(env));
    atoms::ok().encode(env)
}

/// Counters of the store as a map (see `offline_store::StatsSnapshot`).
#[rustler::nif(name = "nif_stats")]
fn stats(env: Env) -> Term {
    let Some((store, _)) = running() else {
        return (atoms::error(), atoms::not_started()).encode(env);
    };
    let s = store.stats();
    let pairs = [
        (atoms::accepted(), s.accepted),
        (atoms::written(), s.written),
        (atoms::failed(), s.failed),
        (atoms::dropped(), s.dropped),
        (atoms::evicted(), s.evicted),
        (atoms::handed_over(), s.handed_over),
        (atoms::rejected(), s.rejected),
        (atoms::in_flight(), s.in_flight),
        (atoms::buffered(), s.buffered),
        (atoms::batches(), s.batches),
        (atoms::retries(), s.retries),
        (atoms::fetches(), s.fetches),
        (atoms::fetch_failures(), s.fetch_failures),
        (atoms::fetched_rows(), s.fetched_rows),
        (atoms::floor_scans(), s.floor_scans),
        (atoms::floor_resets(), s.floor_resets),
        (atoms::sliced_reads(), s.sliced_reads),
        (atoms::requeued(), s.requeued),
        (atoms::write_latency_p50_us(), s.write_latency_p50_us),
        (atoms::write_latency_p99_us(), s.write_latency_p99_us),
        (atoms::read_latency_p50_us(), s.read_latency_p50_us),
        (atoms::read_latency_p99_us(), s.read_latency_p99_us),
        (
            atoms::buffer_capacity(),
            store.config().buffer_capacity as u64,
        ),
    ];
    match Term::map_from_pairs(env, &pairs) {
        Ok(map) => (atoms::ok(), map).encode(env),
        Err(_) => (atoms::error(), atoms::panic()).encode(env),
    }
}

/// Test builds only: a fetch whose task panics, to prove the caller still gets a reply.
#[cfg(feature = "fault_injection")]
#[rustler::nif]
fn debug_panicking_fetch<'a>(env: Env<'a>, pid: LocalPid, reference: Term<'a>) -> Term<'a> {
    let Some((_, handle)) = running() else {
        return (atoms::error(), atoms::not_started()).encode(env);
    };
    let reply = Reply::new(pid, reference);
    spawn_replying(&handle, reply, async { panic!("injected panic") });
    atoms::ok().encode(env)
}

/// Test builds only: a fetch that takes `ms` milliseconds, to have requests pending at `stop`.
#[cfg(feature = "fault_injection")]
#[rustler::nif]
fn debug_sleeping_fetch<'a>(env: Env<'a>, pid: LocalPid, reference: Term<'a>, ms: u64) -> Term<'a> {
    let Some((_, handle)) = running() else {
        return (atoms::error(), atoms::not_started()).encode(env);
    };
    let reply = Reply::new(pid, reference);
    spawn_replying(&handle, reply, async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(Vec::new())
    });
    atoms::ok().encode(env)
}

/// Test builds only: a NIF that panics on the calling scheduler.
#[cfg(feature = "fault_injection")]
#[rustler::nif]
fn debug_panic(env: Env) -> Term {
    let _ = env;
    panic!("injected panic in a NIF call")
}
