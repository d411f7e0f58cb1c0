//! Counters of the store. Every write the store accepts ends in exactly one of `written`,
//! `failed` or `dropped` (evicted by `drop_oldest`); until then it is `buffered` or
//! `in_flight`. Writes refused at the door (buffer full with `drop_new`, payload too large)
//! are counted in `dropped` / `rejected` without ever being `accepted`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub(crate) struct Counters {
    pub accepted: AtomicU64,
    pub written: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    pub evicted: AtomicU64,
    pub rejected: AtomicU64,
    pub in_flight: AtomicU64,
    /// Writes the writer moved out of the buffer to group them (still "buffered").
    pub staged: AtomicU64,
    pub handed_over: AtomicU64,
    pub batches: AtomicU64,
    pub retries: AtomicU64,
    pub requeued: AtomicU64,
    pub fetches: AtomicU64,
    pub fetch_failures: AtomicU64,
    pub fetched_rows: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Relaxed);
    }

    pub fn snapshot(&self, buffered: usize) -> StatsSnapshot {
        StatsSnapshot {
            accepted: self.accepted.load(Relaxed),
            written: self.written.load(Relaxed),
            failed: self.failed.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            evicted: self.evicted.load(Relaxed),
            handed_over: self.handed_over.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            buffered: buffered as u64,
            batches: self.batches.load(Relaxed),
            retries: self.retries.load(Relaxed),
            requeued: self.requeued.load(Relaxed),
            fetches: self.fetches.load(Relaxed),
            fetch_failures: self.fetch_failures.load(Relaxed),
            fetched_rows: self.fetched_rows.load(Relaxed),
        }
    }
}

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Writes (stores and deletes) taken into the buffer.
    pub accepted: u64,
    /// Writes Cassandra confirmed.
    pub written: u64,
    /// Writes given up after `write_attempts` (or abandoned at shutdown).
    pub failed: u64,
    /// Writes lost to a full buffer: refused (`drop_new`) plus evicted (`drop_oldest`).
    pub dropped: u64,
    /// The part of `dropped` that had been accepted and was evicted.
    pub evicted: u64,
    /// Writes passed on to a new store by `shutdown_with_handover`.
    pub handed_over: u64,
    /// Writes refused before buffering for bad input (e.g. payload too large).
    pub rejected: u64,
    /// Writes taken from the buffer whose outcome is not known yet.
    pub in_flight: u64,
    /// Writes waiting in the buffer.
    pub buffered: u64,
    /// Requests (batches or single statements) sent.
    pub batches: u64,
    /// Requests sent again after a transient failure.
    pub retries: u64,
    /// Writes put back into the buffer because Cassandra went away while they were sent.
    pub requeued: u64,
    pub fetches: u64,
    pub fetch_failures: u64,
    pub fetched_rows: u64,
}

impl StatsSnapshot {
    /// `accepted == written + failed + evicted + handed_over + in_flight + buffered`:
    /// nothing vanishes.
    pub fn is_balanced(&self) -> bool {
        self.accepted
            == self.written
                + self.failed
                + self.evicted
                + self.handed_over
                + self.in_flight
                + self.buffered
    }
}
