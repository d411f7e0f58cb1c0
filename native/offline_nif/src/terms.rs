//! Rust values to Erlang terms: error reasons, the connection status, fetched rows, counters.

use offline_store::{ConnState, MsgId, Store, StoreError, StoredMessage};
use rustler::{Atom, Binary, Encoder, Env, NewBinary, Term};

use crate::atoms;

/// `{error, Reason}` with `Reason` an atom or `{Kind, Detail}` (the core's words).
pub fn error_reason<'a>(env: Env<'a>, err: &StoreError) -> Term<'a> {
    match err {
        StoreError::NotConnected { .. } => atoms::not_connected().encode(env),
        StoreError::Timeout(_) => atoms::timeout().encode(env),
        StoreError::Overloaded { .. } | StoreError::OverloadedBytes { .. } => {
            atoms::overloaded().encode(env)
        }
        StoreError::Shutdown => atoms::shutdown().encode(env),
        other => {
            let kind = Atom::from_str(env, other.kind()).unwrap_or(atoms::error());
            (kind, other.to_string()).encode(env)
        }
    }
}

pub fn error_term<'a>(env: Env<'a>, err: &StoreError) -> Term<'a> {
    (atoms::error(), error_reason(env, err)).encode(env)
}

/// `connecting | {connecting, LastError} | connected | {disconnected, Reason} |
/// {error, Reason} | not_started`.
pub fn status_term<'a>(env: Env<'a>, state: &ConnState) -> Term<'a> {
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

/// The status of a running store: `status_term`, except that a connected store whose
/// writes wait for Cassandra (replicas down, overloaded, timeouts) is
/// `{degraded, Waiting, Reason}`.
pub fn store_status_term<'a>(env: Env<'a>, store: &Store) -> Term<'a> {
    let state = store.state();
    match (&state, store.degraded()) {
        (ConnState::Connected, Some(d)) => {
            (atoms::degraded(), d.waiting, d.reason.as_str()).encode(env)
        }
        _ => status_term(env, &state),
    }
}

/// Fetched rows as a list of maps, in the order given.
pub fn rows_term<'a>(env: Env<'a>, rows: &[StoredMessage]) -> Term<'a> {
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
                atoms::written_us().encode(env),
                atoms::guid().encode(env),
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
                match r.written_us {
                    Some(w) => w.encode(env),
                    None => atoms::undefined().encode(env),
                },
                // The id as EMQX holds it, for the replayed message (no hex decoding in
                // the BEAM); `undefined` for a msgid that is not EMQX's.
                match MsgId::parse_stored(&r.msgid) {
                    Some(id) => {
                        Binary::from(NewBinary::from_slice(env, &id.guid_bytes())).encode(env)
                    }
                    None => atoms::undefined().encode(env),
                },
            ];
            Term::map_from_term_arrays(env, &keys, &values)
                .unwrap_or_else(|_| atoms::error().encode(env))
        })
        .collect();
    list.encode(env)
}

/// `{ok, #{Name => Count}}`; a plain `ok` if the map cannot be built (duplicate keys).
pub fn ok_counts_term<'a>(env: Env<'a>, counts: &[(Atom, u64)]) -> Term<'a> {
    (
        atoms::ok(),
        Term::map_from_pairs(env, counts).unwrap_or_else(|_| atoms::ok().encode(env)),
    )
        .encode(env)
}

/// `{ok, #{Counter => Value}}`: the store's counters (see `offline_store::StatsSnapshot`).
pub fn stats_term<'a>(env: Env<'a>, store: &Store) -> Term<'a> {
    let s = store.stats();
    let pairs = [
        (atoms::accepted(), s.accepted),
        (atoms::written(), s.written),
        (atoms::failed(), s.failed),
        (atoms::dropped(), s.dropped),
        (atoms::evicted(), s.evicted),
        (atoms::handed_over(), s.handed_over),
        (atoms::rejected(), s.rejected),
        (atoms::expired(), s.expired),
        (atoms::buffered_bytes(), s.buffered_bytes),
        (atoms::in_flight(), s.in_flight),
        (atoms::buffered(), s.buffered),
        (atoms::batches(), s.batches),
        (atoms::requests_split(), s.requests_split),
        (atoms::cancelled(), s.cancelled),
        (atoms::retries(), s.retries),
        (atoms::fetches(), s.fetches),
        (atoms::fetch_failures(), s.fetch_failures),
        (atoms::fetched_rows(), s.fetched_rows),
        (atoms::floor_scans(), s.floor_scans),
        (atoms::floor_resets(), s.floor_resets),
        (atoms::sliced_reads(), s.sliced_reads),
        (atoms::unreadable_rows(), s.unreadable_rows),
        (atoms::replay_reads(), s.replay_reads),
        (atoms::replay_reads_peak(), s.replay_reads_peak),
        (atoms::replay_read_retries(), s.replay_read_retries),
        (atoms::clock_skewed(), s.clock_skewed),
        (atoms::clock_skews(), s.clock_skews),
        (
            atoms::clock_skew_limit_ms(),
            store.config().clock_skew_limit().as_millis() as u64,
        ),
        (atoms::requeued(), s.requeued),
        (atoms::spooled(), s.spooled),
        (atoms::spool_bytes(), s.spool_bytes),
        (atoms::spool_unsynced(), s.spool_unsynced),
        (atoms::spool_appended(), s.spool_appended),
        (atoms::spool_held(), s.spool_held),
        (atoms::spool_recovered(), s.spool_recovered),
        (atoms::spool_torn(), s.spool_torn),
        (atoms::spool_errors(), s.spool_errors),
        (atoms::left_in_spool(), s.left_in_spool),
        (atoms::spool_max_bytes(), store.config().spool_max_bytes),
        (atoms::waiting(), s.waiting),
        (atoms::waited(), s.waited),
        (atoms::gave_up(), s.gave_up),
        (atoms::refused_invalid(), s.refused_invalid),
        (atoms::refused_protocol(), s.refused_protocol),
        (atoms::write_latency_p50_us(), s.write_latency_p50_us),
        (atoms::write_latency_p99_us(), s.write_latency_p99_us),
        (atoms::read_latency_p50_us(), s.read_latency_p50_us),
        (atoms::read_latency_p99_us(), s.read_latency_p99_us),
        (
            atoms::buffer_capacity(),
            store.config().buffer_capacity as u64,
        ),
        (
            atoms::buffer_max_bytes(),
            store.config().buffer_max_bytes as u64,
        ),
    ];
    // The one signed value (this node's clock minus Cassandra's) goes in by itself.
    match Term::map_from_pairs(env, &pairs)
        .and_then(|map| map.map_put(atoms::clock_offset_ms(), s.clock_offset_ms))
    {
        Ok(map) => (atoms::ok(), map).encode(env),
        Err(_) => (atoms::error(), atoms::panic()).encode(env),
    }
}
