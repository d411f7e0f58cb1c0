//! NIF functions of `emqx_offline_cassandra_nif`: convert terms, call the storage core on a
//! Tokio runtime owned here, reply by message. Nothing here waits for Cassandra on a BEAM
//! scheduler: writes are handed to the core's bounded pipeline, reads reply later.
//!
//! The loadable library is the cdylib `emqx_offline_cassandra_nif`, which re-exports this
//! crate's entry with `upgrade`/`unload` callbacks (see that crate for why).
//!
//! This file declares the NIFs and keeps them thin. The modules below it import only
//! downward: `runtime` (the runtime slot) -> `events` (store events to Erlang) -> `terms`
//! (Rust values to terms) -> `atoms`; `reply` (one reply per request) -> `terms`; `config`
//! and `input` decode arguments.

use std::collections::HashMap;
use std::time::Duration;

use offline_store::{FetchOptions, Message, StoreError};
use rustler::{Atom, Encoder, Env, LocalPid, Term};

mod atoms;
#[cfg(feature = "bench_api")]
mod bench;
mod claims;
mod config;
mod events;
#[cfg(feature = "fault_injection")]
mod fault_injection;
mod input;
mod reply;
mod runtime;
mod terms;

use reply::{Reply, spawn_replying, spawn_replying_with};
use runtime::{SlotError, running};
use terms::{error_term, ok_counts_term};

fn load(_env: Env, _info: Term) -> bool {
    // Opens nothing: EMQX 5.9+ loads plugin code at install time, before any start.
    true
}

rustler::init!("emqx_offline_cassandra_nif", load = load);

fn not_started(env: Env) -> Term {
    (atoms::error(), atoms::not_started()).encode(env)
}

fn slot_error_term<'a>(env: Env<'a>, err: &SlotError) -> Term<'a> {
    match err {
        SlotError::NotStarted => not_started(env),
        SlotError::AlreadyStarted => (atoms::error(), atoms::already_started()).encode(env),
        SlotError::Panic => (atoms::error(), atoms::panic()).encode(env),
        SlotError::Store(e) => error_term(env, e),
    }
}

/// Names the process that receives store events as `{offline_cassandra_event, Kind,
/// Detail}`: `state_changed` (the new status), `writes_failed` / `writes_requeued`
/// (`{Count, Reason}`). The plugin's server logs them.
#[rustler::nif(name = "nif_set_event_pid")]
fn set_event_pid(pid: LocalPid) -> Atom {
    events::set_event_pid(pid);
    atoms::ok()
}

/// Checks a config without applying it: `ok | {error, {invalid_config, Why}}`.
#[rustler::nif(name = "nif_validate")]
fn validate<'a>(env: Env<'a>, config: HashMap<String, Term<'a>>) -> Term<'a> {
    match config::parse_config(config) {
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
    let parse = || config::parse_config(config).map(|(cfg, _workers)| cfg);
    match runtime::reconfigure(parse, Duration::from_millis(grace_ms)) {
        Ok(Some((flushed, moved))) => ok_counts_term(
            env,
            &[(atoms::flushed(), flushed), (atoms::handed_over(), moved)],
        ),
        Ok(None) => atoms::ok().encode(env),
        Err(e) => slot_error_term(env, &e),
    }
}

/// Starts the runtime and the store; connects in the background. Dirty: spawning the
/// runtime's threads takes longer than a normal NIF may.
#[rustler::nif(name = "nif_start", schedule = "DirtyIo")]
fn start<'a>(env: Env<'a>, config: HashMap<String, Term<'a>>) -> Term<'a> {
    match runtime::start(|| config::parse_config(config)) {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => slot_error_term(env, &e),
    }
}

/// Stops the store: flushes for at most `GraceMs`, answers what is left with
/// `{error, shutdown}` (disk mode: keeps it in the disk buffer), then ends the runtime's
/// threads. `{ok, #{flushed, abandoned, spooled}}`.
#[rustler::nif(name = "nif_stop", schedule = "DirtyIo")]
fn stop(env: Env, grace_ms: u64) -> Term {
    match runtime::stop(Duration::from_millis(grace_ms)) {
        Ok(Some(report)) => ok_counts_term(
            env,
            &[
                (atoms::flushed(), report.flushed),
                (atoms::abandoned(), report.abandoned),
                (atoms::spooled(), report.spooled),
            ],
        ),
        Ok(None) => atoms::ok().encode(env),
        Err(e) => slot_error_term(env, &e),
    }
}

/// `connecting | connected | {degraded, Waiting, Reason} | {disconnected, Reason} |
/// {error, Reason} | not_started`.
#[rustler::nif(name = "nif_status")]
fn status(env: Env) -> Term {
    let Some((store, _)) = running() else {
        return atoms::not_started().encode(env);
    };
    terms::store_status_term(env, &store)
}

/// `none`, or `{spool_failed, Reason}` while the disk buffer cannot be used (writes are
/// kept in memory meanwhile); `none` too when no store runs.
#[rustler::nif(name = "nif_spool_status")]
fn spool_status(env: Env) -> Term {
    match running().and_then(|(store, _)| store.spool_error()) {
        Some(reason) => (atoms::spool_failed(), reason).encode(env),
        None => atoms::none().encode(env),
    }
}

#[allow(clippy::too_many_arguments)]
fn submit_store<'a>(
    env: Env<'a>,
    topic: Term<'a>,
    msgid: Term<'a>,
    sender: Term<'a>,
    qos: Term<'a>,
    retain: Term<'a>,
    payload: Term<'a>,
    arrived_ms: Term<'a>,
    ttl_secs: Term<'a>,
) -> Term<'a> {
    let Some((store, _)) = running() else {
        return not_started(env);
    };
    let result = (|| {
        let msgid = input::msgid(msgid)?;
        let topic = input::text(topic, "topic")?;
        let sender = String::from_utf8_lossy(input::bytes(sender, "sender")?.as_slice());
        let ttl_secs: u32 = input::arg(ttl_secs, "ttl", "a whole number of seconds")?;
        store.submit_store(Message {
            topic,
            msgid,
            sender: sender.into_owned(),
            qos: input::qos(qos)?,
            retain: input::arg(retain, "retain", "a boolean")?,
            payload: input::bytes(payload, "payload")?.as_slice().to_vec(),
            arrived_ms: input::arg(arrived_ms, "arrived", "an integer (ms since the epoch)")?,
            ttl_secs: (ttl_secs > 0).then_some(ttl_secs),
        })
    })();
    match result {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => error_term(env, &e),
    }
}

/// Hands one message to the write pipeline: `ok | {error, Reason}` within microseconds.
#[rustler::nif(name = "nif_store")]
#[allow(clippy::too_many_arguments)]
fn store<'a>(
    env: Env<'a>,
    topic: Term<'a>,
    msgid: Term<'a>,
    sender: Term<'a>,
    qos: Term<'a>,
    retain: Term<'a>,
    payload: Term<'a>,
    arrived_ms: Term<'a>,
    ttl_secs: Term<'a>,
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
    topic: Term<'a>,
    msgid: Term<'a>,
    sender: Term<'a>,
    qos: Term<'a>,
    retain: Term<'a>,
    payload: Term<'a>,
    arrived_ms: Term<'a>,
    ttl_secs: Term<'a>,
) -> Term<'a> {
    submit_store(
        env, topic, msgid, sender, qos, retain, payload, arrived_ms, ttl_secs,
    )
}

/// Hands one delete (the ack of `msgid` on `topic`) to the write pipeline.
#[rustler::nif(name = "nif_delete")]
fn delete<'a>(env: Env<'a>, topic: Term<'a>, msgid: Term<'a>) -> Term<'a> {
    let Some((store, _)) = running() else {
        return not_started(env);
    };
    let result = (|| {
        let msgid = input::msgid(msgid)?;
        store.submit_delete(&input::text(topic, "topic")?, msgid)
    })();
    match result {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => error_term(env, &e),
    }
}

/// The delete of a replayed row whose write time (`written_us` of its fetched row, µs) is
/// later than its msgid's: the tombstone goes one microsecond after it (EMQX 4.x rows).
#[rustler::nif(name = "nif_delete_written")]
fn delete_written<'a>(
    env: Env<'a>,
    topic: Term<'a>,
    msgid: Term<'a>,
    written_us: Term<'a>,
) -> Term<'a> {
    let Some((store, _)) = running() else {
        return not_started(env);
    };
    let result = (|| {
        let msgid = input::msgid(msgid)?;
        let written: i64 = input::arg(written_us, "written_us", "an integer (µs)")?;
        store.submit_delete_written(&input::text(topic, "topic")?, msgid, Some(written))
    })();
    match result {
        Ok(()) => atoms::ok().encode(env),
        Err(e) => error_term(env, &e),
    }
}

/// Reads the newest `Limit` (0 = the configured maximum) messages of `Topic` not older than
/// `SinceMs` (0 = any). `Topic` may be a filter with `+`/`#`: its topics come from the
/// index. Returns `ok` at once; `Pid` later receives
/// `{offline_cassandra, Ref, {ok, [Row]} | {error, Reason}}`, rows oldest first.
#[rustler::nif(name = "nif_fetch")]
fn fetch<'a>(
    env: Env<'a>,
    pid: Term<'a>,
    reference: Term<'a>,
    topic: Term<'a>,
    limit: Term<'a>,
    since_ms: Term<'a>,
) -> Term<'a> {
    let Some((store, handle)) = running() else {
        return not_started(env);
    };
    let request = (|| {
        let pid: LocalPid = input::arg(pid, "pid", "a local pid")?;
        let topic = input::text(topic, "topic")?;
        let limit: u32 = input::arg(limit, "limit", "a whole number (0 = the maximum)")?;
        let since_ms: i64 = input::arg(since_ms, "since", "an integer (ms since the epoch)")?;
        let opts = FetchOptions {
            limit: (limit > 0).then_some(limit),
            since_ms: (since_ms > 0).then_some(since_ms),
        };
        Ok::<_, StoreError>((pid, topic, opts))
    })();
    let (pid, topic, opts) = match request {
        Ok(r) => r,
        Err(e) => return error_term(env, &e),
    };
    let reply = Reply::new(pid, reference);
    spawn_replying(&handle, reply, async move {
        store.fetch_matching(&topic, opts).await
    });
    atoms::ok().encode(env)
}

/// Plans a paced replay of `Filter` (a topic or a wildcard) below the msgid `Below`:
/// `KeptBy` (the configured `topics` filters; `[]`: any topic) restricts the topics read,
/// `Newest` (0 = all) and `SinceMs` (0 = any) bound where it starts. `Pid` later receives
/// `{offline_cassandra, Ref, {ok, {Topics, From}}}` with `From` the oldest msgid to
/// deliver or `undefined` (from the beginning), or `{error, Reason}`.
// One argument per part of the Erlang call `nif_replay_plan/7`.
#[allow(clippy::too_many_arguments)]
#[rustler::nif(name = "nif_replay_plan")]
fn replay_plan<'a>(
    env: Env<'a>,
    pid: Term<'a>,
    reference: Term<'a>,
    filter: Term<'a>,
    kept_by: Term<'a>,
    newest: Term<'a>,
    since_ms: Term<'a>,
    below: Term<'a>,
) -> Term<'a> {
    let Some((store, handle)) = running() else {
        return not_started(env);
    };
    let request = (|| {
        let pid: LocalPid = input::arg(pid, "pid", "a local pid")?;
        let filter = input::text(filter, "filter")?;
        let kept_by: Vec<Term> = input::arg(kept_by, "kept_by", "a list of topic filters")?;
        let kept_by = kept_by
            .into_iter()
            .map(|f| input::text(f, "kept_by"))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let newest: u32 = input::arg(newest, "newest", "a whole number (0 = all)")?;
        let since_ms: i64 = input::arg(since_ms, "since", "an integer (ms since the epoch)")?;
        let below = input::msgid(below)?;
        Ok::<_, StoreError>((pid, filter, kept_by, newest, since_ms, below))
    })();
    let (pid, filter, kept_by, newest, since_ms, below) = match request {
        Ok(r) => r,
        Err(e) => return error_term(env, &e),
    };
    let reply = Reply::new(pid, reference);
    spawn_replying_with(
        &handle,
        reply,
        async move {
            store
                .replay_plan(
                    &filter,
                    &kept_by,
                    (newest > 0).then_some(newest),
                    (since_ms > 0).then_some(since_ms),
                    &below,
                )
                .await
        },
        |env, plan| {
            let from = match plan.from {
                Some(id) => id.as_str().encode(env),
                None => atoms::undefined().encode(env),
            };
            (atoms::ok(), (plan.topics, from)).encode(env)
        },
    );
    atoms::ok().encode(env)
}

/// The next page of each topic in `Requests` (`[{Topic, After}]`, `After` the last msgid
/// taken or `undefined`): up to `Limit` rows oldest first, at or above `From` (a msgid or
/// `undefined`), below `Below`. `Pid` later receives `{offline_cassandra, Ref, {ok,
/// [{Topic, Rows}]}}` (rows as `fetch` gives them) or `{error, Reason}`.
#[rustler::nif(name = "nif_replay_pages")]
fn replay_pages<'a>(
    env: Env<'a>,
    pid: Term<'a>,
    reference: Term<'a>,
    requests: Term<'a>,
    from: Term<'a>,
    below: Term<'a>,
    limit: Term<'a>,
) -> Term<'a> {
    let Some((store, handle)) = running() else {
        return not_started(env);
    };
    let request = (|| {
        let pid: LocalPid = input::arg(pid, "pid", "a local pid")?;
        let pairs: Vec<(Term, Term)> =
            input::arg(requests, "requests", "a list of {Topic, After}")?;
        let requests = pairs
            .into_iter()
            .map(|(t, a)| Ok((input::text(t, "topic")?, input::optional_msgid(a)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let from = input::optional_msgid(from)?;
        let below = input::msgid(below)?;
        let limit: u32 = input::arg(limit, "limit", "a whole number above 0")?;
        Ok::<_, StoreError>((pid, requests, from, below, limit))
    })();
    let (pid, requests, from, below, limit) = match request {
        Ok(r) => r,
        Err(e) => return error_term(env, &e),
    };
    let reply = Reply::new(pid, reference);
    spawn_replying_with(
        &handle,
        reply,
        async move { store.replay_pages(requests, from, below, limit).await },
        |env, pages| {
            let list: Vec<Term> = pages
                .iter()
                .map(|(topic, rows)| (topic.as_str(), terms::rows_term(env, rows)).encode(env))
                .collect();
            (atoms::ok(), list).encode(env)
        },
    );
    atoms::ok().encode(env)
}

/// Operator commands: `count` or `purge` a topic. Replies like `fetch`:
/// `{offline_cassandra, Ref, {ok, Rows} | {error, Reason}}` with `Rows` the number of rows
/// the topic had.
#[rustler::nif(name = "nif_admin")]
fn admin<'a>(
    env: Env<'a>,
    pid: Term<'a>,
    reference: Term<'a>,
    op: Term<'a>,
    topic: Term<'a>,
) -> Term<'a> {
    let Some((store, handle)) = running() else {
        return not_started(env);
    };
    let request = (|| {
        let pid: LocalPid = input::arg(pid, "pid", "a local pid")?;
        let op: Atom = input::arg(op, "op", "count or purge")?;
        let purge = op == atoms::purge();
        if !purge && op != atoms::count() {
            return Err(StoreError::InvalidInput("op must be count or purge".into()));
        }
        Ok((pid, purge, input::text(topic, "topic")?))
    })();
    let (pid, purge, topic) = match request {
        Ok(r) => r,
        Err(e) => return error_term(env, &e),
    };
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
        return not_started(env);
    };
    terms::stats_term(env, &store)
}
