//! Store events forwarded to one Erlang process as `{offline_cassandra_event, Kind, Detail}`.

use std::sync::Mutex;

use offline_store::StoreEvent;
use rustler::{Encoder, LocalPid, OwnedEnv};

use crate::atoms;
use crate::terms::{error_reason, status_term};

/// Where store events go (see `nif_set_event_pid`); `None` until it is set.
static EVENT_PID: Mutex<Option<LocalPid>> = Mutex::new(None);

pub fn set_event_pid(pid: LocalPid) {
    *EVENT_PID.lock().unwrap_or_else(|e| e.into_inner()) = Some(pid);
}

/// Forwards store events to the event process. Events raised on a BEAM thread (none are,
/// in practice) are dropped: rustler cannot send from there.
pub fn event_sink() -> offline_store::EventSink {
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
                StoreEvent::UnreadableRows {
                    topic,
                    count,
                    example,
                } => (
                    atoms::unreadable_rows(),
                    (topic.as_str(), *count, example.as_str()).encode(env),
                ),
                StoreEvent::SpoolRecovered {
                    dir,
                    records,
                    torn,
                    torn_bytes,
                } => (
                    atoms::spool_recovered(),
                    (dir.as_str(), *records, *torn, *torn_bytes).encode(env),
                ),
                StoreEvent::SpoolFailed { dir, reason } => (
                    atoms::spool_failed(),
                    (dir.as_str(), reason.as_str()).encode(env),
                ),
                StoreEvent::WritesWaiting { count, reason } => (
                    atoms::writes_waiting(),
                    (*count, reason.as_str()).encode(env),
                ),
            };
            (atoms::offline_cassandra_event(), kind, detail).encode(env)
        });
    })
}
