//! The store's public value types: messages in and out, read options, connection state,
//! events and the shutdown report.

use crate::error::StoreError;
use crate::msgid::MsgId;

/// A message to keep until its subscriber acknowledges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub msgid: MsgId,
    /// Client id of the publisher.
    pub sender: String,
    pub qos: u8,
    pub retain: bool,
    /// Raw MQTT payload: any bytes (see the `payload` module for how they are stored).
    pub payload: Vec<u8>,
    /// Publish time, milliseconds since the epoch (the `arrived` column).
    pub arrived_ms: i64,
    /// Seconds until Cassandra expires the row; `None` keeps it until acknowledged.
    pub ttl_secs: Option<u32>,
}

/// A message read back from the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub topic: String,
    /// As stored (upper-case hex for rows this crate wrote).
    pub msgid: String,
    pub sender: String,
    pub qos: i32,
    pub retain: bool,
    pub payload: Vec<u8>,
    pub arrived_ms: i64,
    /// Seconds until Cassandra expires the row (`None`: stored without a TTL).
    pub ttl_secs: Option<i32>,
    /// The row's write time (µs) when it is later than the publish time inside its msgid:
    /// a row written without this crate's `USING TIMESTAMP` (EMQX 4.x, cqlsh), stamped by
    /// Cassandra when it landed. Its delete must be written after that
    /// (`Store::submit_delete_written`). `None` for the rows this crate writes.
    pub written_us: Option<i64>,
}

/// Which rows `fetch` returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchOptions {
    /// Most rows to return: the **newest** ones (returned oldest first). `None` means
    /// `max_fetch_rows`; larger values are capped there.
    pub limit: Option<u32>,
    /// Only messages published at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
}

/// Connection state, as `Store::state` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    /// No session yet; `last_error` says why the previous attempt failed.
    Connecting {
        attempt: u32,
        last_error: Option<StoreError>,
    },
    /// Session up and the last probe answered.
    Connected,
    /// Session built, but the last probe failed (every node down?); the driver reconnects.
    Disconnected { reason: StoreError },
    /// A failure retrying will not fix by itself (bad credentials, missing keyspace or
    /// table, schema mismatch). Attempts continue at the slowest backoff, so fixing the
    /// cause heals the store.
    Error(StoreError),
    /// `shutdown` was called.
    Stopped,
}

impl ConnState {
    /// The error a request made now would fail with, if any.
    pub fn error(&self) -> Option<StoreError> {
        match self {
            ConnState::Connected => None,
            ConnState::Connecting { last_error, .. } => Some(match last_error {
                Some(e) => not_connected_because(e),
                None => StoreError::NotConnected {
                    reason: "connecting".into(),
                },
            }),
            ConnState::Disconnected { reason } => Some(not_connected_because(reason)),
            ConnState::Error(e) => Some(e.clone()),
            ConnState::Stopped => Some(StoreError::Shutdown),
        }
    }
}

/// `NotConnected` for a request refused because of `cause`; a cause that already says "not
/// connected" is not wrapped twice.
fn not_connected_because(cause: &StoreError) -> StoreError {
    match cause {
        StoreError::NotConnected { .. } => cause.clone(),
        other => StoreError::NotConnected {
            reason: other.to_string(),
        },
    }
}

/// Writes are waiting because Cassandra answers but cannot take them: a partition's
/// replicas are down (`Unavailable`), a coordinator is overloaded, writes time out. Health
/// shows it; the writes land when the cause goes away (or are given up after
/// `write_give_up_after`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Degraded {
    /// Writes waiting for a retry.
    pub waiting: u64,
    /// Why the latest of them had to wait, e.g. "Unavailable: 1 replica alive, QUORUM needs 2".
    pub reason: String,
}

/// Something an operator may want in the log, reported as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// The connection state changed.
    StateChanged(ConnState),
    /// A batch of writes was given up (after its attempts) and counted as failed.
    WritesFailed { count: u64, error: StoreError },
    /// A batch lost its connection and went back to the buffer.
    WritesRequeued { count: u64 },
    /// The disk buffer in `dir` was opened with writes an earlier run left (`records`, sent
    /// to Cassandra next), and `torn` tails (a record cut short by a crash, `torn_bytes`)
    /// were cut off.
    SpoolRecovered {
        dir: String,
        records: u64,
        torn: u64,
        torn_bytes: u64,
    },
    /// The disk buffer in `dir` cannot be used (`reason`): writes stay in memory, and it is
    /// tried again in a few seconds.
    SpoolFailed { dir: String, reason: String },
    /// A read met rows whose msgid is not the 32 upper-case hex digits EMQX writes: they
    /// are left out of replay and stay stored (reported once per topic per store; every
    /// one is counted in `unreadable_rows`). `example` is one such msgid.
    UnreadableRows {
        topic: String,
        count: u64,
        example: String,
    },
    /// Cassandra answered but could not take a batch (too few replicas alive, overloaded,
    /// timed out): its writes start waiting for a retry, `reason` says why (not repeated
    /// when a retry is refused again).
    WritesWaiting { count: u64, reason: String },
}

/// Receives `StoreEvent`s; called on the store's threads, must return quickly.
pub type EventSink = Box<dyn Fn(StoreEvent) + Send + Sync>;

/// What `shutdown` did with the writes it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Writes confirmed during the grace period.
    pub flushed: u64,
    /// Writes still buffered or in flight when the grace period ended, counted as failed.
    pub abandoned: u64,
    /// Writes left in the disk buffer for the next start (not abandoned).
    pub spooled: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_refused_while_disconnected_says_not_connected_once() {
        let cause = StoreError::NotConnected {
            reason: "Connection refused".into(),
        };
        for state in [
            ConnState::Disconnected {
                reason: cause.clone(),
            },
            ConnState::Connecting {
                attempt: 2,
                last_error: Some(cause.clone()),
            },
        ] {
            let text = state.error().unwrap().to_string();
            assert_eq!(text.matches("not connected").count(), 1, "{text}");
            assert!(text.contains("Connection refused"), "{text}");
        }
        let timeout = StoreError::Timeout(std::time::Duration::from_secs(1));
        let text = ConnState::Disconnected { reason: timeout }
            .error()
            .unwrap()
            .to_string();
        assert!(
            text.starts_with("not connected to Cassandra: request timed out"),
            "{text}"
        );
    }
}
