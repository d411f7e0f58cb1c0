//! One write as it travels through the pipeline (an insert, or the delete an ack becomes),
//! with whoever waits for its outcome and its share of the buffer's byte bound. Below both
//! the shared state and the waiting area, which hold writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

use crate::error::StoreError;
use crate::msgid::MsgId;
use crate::types::Message;

/// One write: an insert, or the delete an ack becomes.
pub(crate) enum Op {
    Insert(Message),
    /// `written_us`: the row's write time when it is later than its msgid's (a row read
    /// back that another writer stamped, see `StoredMessage::written_us`).
    Delete {
        topic: String,
        msgid: MsgId,
        written_us: Option<i64>,
    },
}

impl Op {
    pub(crate) fn topic(&self) -> &str {
        match self {
            Op::Insert(m) => &m.topic,
            Op::Delete { topic, .. } => topic,
        }
    }
    pub(crate) fn is_insert(&self) -> bool {
        matches!(self, Op::Insert(_))
    }

    /// About the bytes this write takes in a request (payload as stored, keys, a margin
    /// for the other columns and the framing), to keep batches under Cassandra's limits.
    pub(crate) fn encoded_size(&self) -> usize {
        match self {
            Op::Insert(m) => {
                crate::payload::encoded_len(&m.payload) + m.topic.len() + m.sender.len() + 96
            }
            Op::Delete { topic, .. } => topic.len() + 64,
        }
    }
}

/// What a write holds in memory besides its payload, topic and client id: the write's own
/// structure, its queue slot, allocation headers. Part of what `buffer_max_bytes` counts.
pub(crate) const WRITE_OVERHEAD_BYTES: usize = 256;

impl Op {
    /// The bytes this write holds while the store keeps it, as `buffer_max_bytes` counts
    /// them: payload, topic and client id as given, plus `WRITE_OVERHEAD_BYTES`.
    pub(crate) fn held_bytes(&self) -> usize {
        WRITE_OVERHEAD_BYTES
            + match self {
                Op::Insert(m) => m.payload.len() + m.topic.len() + m.sender.len(),
                Op::Delete { topic, .. } => topic.len(),
            }
    }
}

/// A write on its way through the pipeline, with whoever waits for its outcome.
pub(crate) struct Pending {
    pub(crate) op: Op,
    pub(crate) done: Option<oneshot::Sender<Result<(), StoreError>>>,
    /// Its share of `buffer_max_bytes`, given back when the write leaves the store, however
    /// it leaves (written, failed, evicted, expired, handed over).
    #[allow(dead_code, reason = "held for its Drop, which gives the bytes back")]
    pub(crate) charge: Charge,
    /// Set when the write was read back from the disk buffer: settled when the write is
    /// done with, so its segment can go (see `spool`).
    pub(crate) ticket: Option<Ticket>,
}

/// Bytes reserved on a store's `buffered_bytes` gauge until dropped. `Default` reserves
/// nothing (tests that build writes by hand).
#[derive(Default)]
pub(crate) struct Charge {
    gauge: Option<Arc<AtomicU64>>,
    bytes: u64,
}

impl Charge {
    /// Reserves `bytes` on `gauge`; returns the charge and the gauge's total with it.
    pub(crate) fn reserve(gauge: &Arc<AtomicU64>, bytes: u64) -> (Charge, u64) {
        let total = gauge.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let charge = Charge {
            gauge: Some(gauge.clone()),
            bytes,
        };
        (charge, total)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(gauge) = &self.gauge {
            gauge.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

/// Settles one write read back from the disk buffer: once all the records of a spool
/// segment are settled, the segment can go. Dropped unsettled (a stop), its record is read
/// again at the next start.
#[derive(Debug)]
pub(crate) struct Ticket(pub(crate) Arc<AtomicU64>);

impl Ticket {
    pub(crate) fn settle(self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

impl Pending {
    /// Whether a crash would lose it: it is not in the disk buffer (no ticket: neither read
    /// back from it nor kept there as a held copy), and nobody awaits it (a caller that
    /// awaits a write learns its outcome, so it stays in memory).
    pub(crate) fn only_in_memory(&self) -> bool {
        self.done.is_none() && self.ticket.is_none()
    }

    /// Drops the write once a new record in the disk buffer stands for it: its old record
    /// (a held copy, or the one it was read back from) can go.
    pub(crate) fn superseded(self) {
        if let Some(ticket) = self.ticket {
            ticket.settle();
        }
    }

    pub(crate) fn finish(self, outcome: Result<(), StoreError>) {
        if let Some(ticket) = self.ticket {
            ticket.settle();
        }
        if let Some(tx) = self.done {
            let _ = tx.send(outcome);
        }
    }
}

/// Writes for the unit tests of the pipeline's parts.
#[cfg(test)]
pub(crate) mod test_writes {
    use super::*;

    pub(crate) fn insert(topic: &str, us: u64) -> Pending {
        Pending {
            op: Op::Insert(Message {
                topic: topic.into(),
                msgid: MsgId::new(us, 1, 0),
                sender: "c".into(),
                qos: 1,
                retain: false,
                payload: b"p".to_vec(),
                arrived_ms: (us / 1000) as i64,
                ttl_secs: None,
            }),
            done: None,
            charge: Charge::default(),
            ticket: None,
        }
    }

    pub(crate) fn delete(topic: &str, us: u64) -> Pending {
        Pending {
            op: Op::Delete {
                topic: topic.into(),
                msgid: MsgId::new(us, 1, 0),
                written_us: None,
            },
            done: None,
            charge: Charge::default(),
            ticket: None,
        }
    }

    /// (topic, is insert, µs) of each write, to compare batches and what stays staged.
    pub(crate) fn shape(items: impl IntoIterator<Item = Pending>) -> Vec<(String, bool, u64)> {
        items
            .into_iter()
            .map(|p| {
                let us = match &p.op {
                    Op::Insert(m) => m.msgid.timestamp_us(),
                    Op::Delete { msgid, .. } => msgid.timestamp_us(),
                };
                (p.op.topic().to_owned(), p.op.is_insert(), us)
            })
            .collect()
    }

    pub(crate) fn with_payload(topic: &str, us: u64, payload: Vec<u8>) -> Pending {
        let mut p = insert(topic, us);
        if let Op::Insert(m) = &mut p.op {
            m.payload = payload;
        }
        p
    }
}
