//! This node's clock against Cassandra's.
//!
//! The replay floor is safe only while the brokers' clocks agree within its lag: a floor
//! scan moves a topic's floor up to `now - replay_floor_lag` by the scanning node's clock,
//! and a message's place in its partition is the publish time inside its msgid, taken from
//! the publishing node's clock. A publisher whose clock is behind by more than the lag
//! writes rows below a floor another node already set, and replay skips them. Cassandra is
//! the clock all nodes share, so each node compares its own with it (`now()` on the
//! coordinator, the round trip halved) at connect and every `clock_check_interval`. Beyond
//! `max_clock_skew` the node is *skewed*: it moves no floor until it is back in bounds, and
//! health and an alarm say so.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::Notify;

use crate::connection::Connection;
use crate::error::StoreError;
use crate::rows::{db_err, unpaged_rows};

/// The latest comparison, read by floor scans and status calls without a lock.
#[derive(Default)]
pub(crate) struct ClockCheck {
    /// This node's clock minus Cassandra's, ms, at the latest check.
    offset_ms: AtomicI64,
    measured: AtomicBool,
    skewed: AtomicBool,
    /// Times the node became skewed.
    skews: AtomicU64,
    /// Added to this node's clock when comparing (tests only: `Store::inject_clock_offset`).
    injected_ms: AtomicI64,
    /// Wakes the checker for a check now.
    pub(crate) recheck: Notify,
}

impl ClockCheck {
    /// This node's clock as compared, ms since the epoch.
    fn local_now_ms(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        now + self.injected_ms.load(Relaxed)
    }

    /// Keeps a measured offset; returns `Some(skewed)` when that changed.
    pub(crate) fn record(&self, offset_ms: i64, max: Duration) -> Option<bool> {
        self.offset_ms.store(offset_ms, Relaxed);
        self.measured.store(true, Relaxed);
        let skewed = offset_ms.unsigned_abs() > max.as_millis() as u64;
        let was = self.skewed.swap(skewed, Relaxed);
        if skewed && !was {
            self.skews.fetch_add(1, Relaxed);
        }
        (skewed != was).then_some(skewed)
    }

    /// True while the latest check found this node's clock too far from Cassandra's.
    pub(crate) fn skewed(&self) -> bool {
        self.skewed.load(Relaxed)
    }

    /// The latest offset (this node minus Cassandra, ms), if one was measured.
    pub(crate) fn offset_ms(&self) -> Option<i64> {
        self.measured
            .load(Relaxed)
            .then(|| self.offset_ms.load(Relaxed))
    }

    pub(crate) fn skews(&self) -> u64 {
        self.skews.load(Relaxed)
    }

    /// Shifts this node's clock as the checker sees it, and checks again at once.
    #[cfg(feature = "fault_injection")]
    pub(crate) fn inject(&self, offset_ms: i64) {
        self.injected_ms.store(offset_ms, Relaxed);
        self.recheck.notify_one();
    }

    /// Asks Cassandra for its time and returns this node's offset from it (ms).
    pub(crate) async fn measure(
        &self,
        conn: &Connection,
        timeout: Duration,
    ) -> Result<i64, StoreError> {
        let before = self.local_now_ms();
        let rows = unpaged_rows(conn.session.execute_unpaged(&conn.clock, ()), timeout).await?;
        let after = self.local_now_ms();
        let (server,) = rows.single_row::<(i64,)>().map_err(db_err)?;
        Ok(offset_from(before, server, after))
    }
}

/// The offset of this node's clock from the server's, from one round trip: the server
/// read its clock somewhere between `before` and `after`, most likely half way (the error
/// is at most half the round trip).
fn offset_from(before_ms: i64, server_ms: i64, after_ms: i64) -> i64 {
    before_ms + (after_ms - before_ms) / 2 - server_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_takes_the_middle_of_the_round_trip() {
        assert_eq!(offset_from(1_000, 1_010, 1_020), 0);
        assert_eq!(offset_from(61_000, 1_010, 61_020), 60_000, "node ahead");
        assert_eq!(offset_from(1_000, 31_010, 1_020), -30_000, "node behind");
    }

    #[test]
    fn skew_is_counted_when_it_starts_and_cleared_when_it_ends() {
        let c = ClockCheck::default();
        let max = Duration::from_secs(15);
        assert_eq!(c.offset_ms(), None);
        assert_eq!(c.record(200, max), None, "in bounds from the start");
        assert_eq!(c.record(-15_001, max), Some(true));
        assert_eq!(c.record(20_000, max), None, "still skewed");
        assert!(c.skewed());
        assert_eq!(c.skews(), 1);
        assert_eq!(
            c.record(15_000, max),
            Some(false),
            "the bound itself is fine"
        );
        assert!(!c.skewed());
        assert_eq!(c.offset_ms(), Some(15_000));
    }
}
