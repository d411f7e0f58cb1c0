//! Counters of the store. Every write the store accepts ends in exactly one of `written`,
//! `failed`, `expired` or `dropped` (evicted by `drop_oldest`); until then it is `buffered` or
//! `in_flight`. Writes refused at the door (buffer full with `drop_new`, payload too large)
//! are counted in `dropped` / `rejected` without ever being `accepted`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Latencies in power-of-two microsecond buckets (bucket i holds < 2^i µs): lock-free to
/// record, good to a factor of two, enough to tell 1 ms from 100 ms.
pub(crate) struct Latency {
    buckets: [AtomicU64; 32],
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Latency {
    pub fn record(&self, elapsed: std::time::Duration) {
        let us = elapsed.as_micros().max(1) as u64;
        let i = (64 - us.leading_zeros() as usize).min(31);
        self.buckets[i].fetch_add(1, Relaxed);
    }

    /// The upper bound (µs) of the bucket holding quantile `q` (0 when nothing recorded).
    pub fn quantile_us(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return 1u64 << i;
            }
        }
        1u64 << 31
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub accepted: AtomicU64,
    pub written: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
    pub evicted: AtomicU64,
    pub rejected: AtomicU64,
    /// Inserts not written because their expiry passed while they waited.
    pub expired: AtomicU64,
    /// Bytes held by the writes not done yet (see `Charge`), bounded by `buffer_max_bytes`.
    pub buffered_bytes: std::sync::Arc<AtomicU64>,
    pub in_flight: AtomicU64,
    /// Writes the writer moved out of the buffer to group them (still "buffered").
    pub staged: AtomicU64,
    pub handed_over: AtomicU64,
    pub batches: AtomicU64,
    pub requests_split: AtomicU64,
    pub cancelled: AtomicU64,
    pub retries: AtomicU64,
    pub requeued: AtomicU64,
    /// Writes waiting for a retry after Cassandra could not take them (see `waiting`).
    pub waiting: AtomicU64,
    pub waited: AtomicU64,
    pub gave_up: AtomicU64,
    pub refused_invalid: AtomicU64,
    pub refused_protocol: AtomicU64,
    pub fetches: AtomicU64,
    pub fetch_failures: AtomicU64,
    pub fetched_rows: AtomicU64,
    pub floor_scans: AtomicU64,
    pub floor_resets: AtomicU64,
    pub sliced_reads: AtomicU64,
    /// The disk buffer (see `spool`): records not read back yet, bytes of its files, records
    /// not synced yet (gauges); records written to it, found in it at start, torn tails cut,
    /// times it failed (and memory took over), and writes left in it at stop.
    pub spooled: AtomicU64,
    pub spool_bytes: AtomicU64,
    pub spool_unsynced: AtomicU64,
    pub spool_appended: AtomicU64,
    /// Waiting writes given a held copy in the disk buffer (see `spilling::keep_waiting`).
    pub spool_held: AtomicU64,
    pub spool_recovered: AtomicU64,
    pub spool_torn: AtomicU64,
    pub spool_errors: AtomicU64,
    pub left_in_spool: AtomicU64,
    /// Rows replay left out: their msgid is not what EMQX writes (see `reads`).
    pub unreadable_rows: AtomicU64,
    /// Replay reads running now (gauge), the most that ever ran at once, and the reads
    /// retried after a transient failure (see `replay_limit`).
    pub replay_reads: AtomicU64,
    pub replay_reads_peak: AtomicU64,
    pub replay_read_retries: AtomicU64,
    pub write_latency: Latency,
    pub read_latency: Latency,
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
            expired: self.expired.load(Relaxed),
            buffered_bytes: self.buffered_bytes.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            buffered: buffered as u64,
            batches: self.batches.load(Relaxed),
            requests_split: self.requests_split.load(Relaxed),
            cancelled: self.cancelled.load(Relaxed),
            retries: self.retries.load(Relaxed),
            requeued: self.requeued.load(Relaxed),
            waiting: self.waiting.load(Relaxed),
            waited: self.waited.load(Relaxed),
            gave_up: self.gave_up.load(Relaxed),
            refused_invalid: self.refused_invalid.load(Relaxed),
            refused_protocol: self.refused_protocol.load(Relaxed),
            fetches: self.fetches.load(Relaxed),
            fetch_failures: self.fetch_failures.load(Relaxed),
            fetched_rows: self.fetched_rows.load(Relaxed),
            floor_scans: self.floor_scans.load(Relaxed),
            floor_resets: self.floor_resets.load(Relaxed),
            sliced_reads: self.sliced_reads.load(Relaxed),
            spooled: self.spooled.load(Relaxed),
            spool_bytes: self.spool_bytes.load(Relaxed),
            spool_unsynced: self.spool_unsynced.load(Relaxed),
            spool_appended: self.spool_appended.load(Relaxed),
            spool_held: self.spool_held.load(Relaxed),
            spool_recovered: self.spool_recovered.load(Relaxed),
            spool_torn: self.spool_torn.load(Relaxed),
            spool_errors: self.spool_errors.load(Relaxed),
            left_in_spool: self.left_in_spool.load(Relaxed),
            unreadable_rows: self.unreadable_rows.load(Relaxed),
            replay_reads: self.replay_reads.load(Relaxed),
            replay_reads_peak: self.replay_reads_peak.load(Relaxed),
            replay_read_retries: self.replay_read_retries.load(Relaxed),
            clock_offset_ms: 0,
            clock_skewed: 0,
            clock_skews: 0,
            write_latency_p50_us: self.write_latency.quantile_us(0.50),
            write_latency_p99_us: self.write_latency.quantile_us(0.99),
            read_latency_p50_us: self.read_latency.quantile_us(0.50),
            read_latency_p99_us: self.read_latency.quantile_us(0.99),
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
    /// Writes that failed: refused for their content, a non-transient error (credentials,
    /// TLS), given up after `write_give_up_after`, or abandoned at shutdown.
    pub failed: u64,
    /// Writes lost to a full buffer: refused (`drop_new`) plus evicted (`drop_oldest`).
    pub dropped: u64,
    /// The part of `dropped` that had been accepted and was evicted.
    pub evicted: u64,
    /// Writes passed on to a new store by `shutdown_with_handover`.
    pub handed_over: u64,
    /// Writes refused before buffering for bad input (e.g. payload too large).
    pub rejected: u64,
    /// Messages not written because their expiry (Message-Expiry-Interval or TTL, counted
    /// from the publish) passed while they waited in the buffer.
    pub expired: u64,
    /// Bytes held by the writes not done yet (buffered, waiting or in flight): payload,
    /// topic and client id plus a fixed 256 per write. `buffer_max_bytes` bounds it.
    pub buffered_bytes: u64,
    /// Writes taken from the buffer whose outcome is not known yet.
    pub in_flight: u64,
    /// Writes waiting in the buffer (including `waiting`).
    pub buffered: u64,
    /// Requests (batches or single statements) sent.
    pub batches: u64,
    /// Requests across partitions Cassandra did not take, sent again one partition at a
    /// time (see `requests`).
    pub requests_split: u64,
    /// The part of `written` that needed no request: inserts whose message was acknowledged
    /// before they were sent, and the deletes of those acks (see `requests`).
    pub cancelled: u64,
    /// Requests sent again after a transient failure.
    pub retries: u64,
    /// Writes put back into the buffer because Cassandra went away while they were sent.
    pub requeued: u64,
    /// The part of `buffered` that Cassandra answered for but could not take yet (too few
    /// replicas alive, overloaded, timed out): it waits per partition and is tried again.
    pub waiting: u64,
    /// Writes that had to wait so (each time it happened).
    pub waited: u64,
    /// The part of `failed` that waited longer than `write_give_up_after`.
    pub gave_up: u64,
    /// The part of `failed` that Cassandra refused row by row for its content, by reason:
    /// `Invalid` (e.g. a TTL or mutation size it does not take) and `ProtocolError`. The
    /// rest of their batches was written.
    pub refused_invalid: u64,
    pub refused_protocol: u64,
    pub fetches: u64,
    pub fetch_failures: u64,
    pub fetched_rows: u64,
    /// Background scans that moved a topic's replay floor up past acked rows.
    pub floor_scans: u64,
    /// Floors dropped because a write landed late (after an outage) below them.
    pub floor_resets: u64,
    /// Reads that Cassandra aborted for tombstones and that were redone in msgid slices.
    pub sliced_reads: u64,
    /// Writes in the disk buffer not read back yet (part of `buffered`).
    pub spooled: u64,
    /// Bytes of the disk buffer's files.
    pub spool_bytes: u64,
    /// Spooled writes not synced to disk yet (0: a crash of the machine loses none).
    pub spool_unsynced: u64,
    /// Writes moved to the disk buffer (each time).
    pub spool_appended: u64,
    /// Writes waiting for their partition (see `degraded`) that were given a copy in the
    /// disk buffer, so that a crash does not lose them (each time; the copy goes when the
    /// write is done with).
    pub spool_held: u64,
    /// Writes found in the disk buffer when the store started (from an earlier run).
    pub spool_recovered: u64,
    /// Torn tails (a record cut short by a crash) cut off when the disk buffer was opened.
    pub spool_torn: u64,
    /// Times the disk buffer failed (unwritable, full disk) and memory took over.
    pub spool_errors: u64,
    /// Writes left in the disk buffer at stop, for the next start.
    pub left_in_spool: u64,
    /// Rows left out of replay because their msgid is not the 32 upper-case hex digits
    /// EMQX writes (they stay stored).
    pub unreadable_rows: u64,
    /// Replay reads (a plan, or a page of one topic) running now: at most
    /// `max_concurrent_replay_reads`; more wait for a turn.
    pub replay_reads: u64,
    /// The most replay reads that ever ran at once.
    pub replay_reads_peak: u64,
    /// Replay reads tried again after a transient failure (not connected, timed out).
    pub replay_read_retries: u64,
    /// This node's clock minus Cassandra's at the latest check, ms (0 before the first).
    pub clock_offset_ms: i64,
    /// 1 while that is beyond `max_clock_skew` (floors stay where they are), else 0.
    pub clock_skewed: u64,
    /// Times this node's clock went beyond `max_clock_skew`.
    pub clock_skews: u64,
    /// Latency of write requests (batches) and reads, p50 / p99, as the upper bound of a
    /// power-of-two bucket in µs (0: none yet).
    pub write_latency_p50_us: u64,
    pub write_latency_p99_us: u64,
    pub read_latency_p50_us: u64,
    pub read_latency_p99_us: u64,
}

impl StatsSnapshot {
    /// `accepted + spool_recovered == written + failed + evicted + expired + handed_over +
    /// left_in_spool + in_flight + buffered`: nothing vanishes.
    pub fn is_balanced(&self) -> bool {
        self.accepted + self.spool_recovered
            == self.left_in_spool
                + self.written
                + self.failed
                + self.evicted
                + self.expired
                + self.handed_over
                + self.in_flight
                + self.buffered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn quantiles_land_in_the_right_bucket() {
        let l = Latency::default();
        assert_eq!(l.quantile_us(0.5), 0);
        for _ in 0..98 {
            l.record(Duration::from_micros(300)); // bucket < 512
        }
        for _ in 0..2 {
            l.record(Duration::from_millis(40)); // bucket < 65536
        }
        assert_eq!(l.quantile_us(0.50), 512);
        assert_eq!(l.quantile_us(0.98), 512);
        assert_eq!(l.quantile_us(0.99), 65536);
    }
}
