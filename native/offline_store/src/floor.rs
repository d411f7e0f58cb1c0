//! Tombstone-safe replay.
//!
//! Every ack deletes a row and leaves a tombstone in its topic's partition for
//! `gc_grace_seconds` (10 days). A read walks the tombstones between the live rows it
//! returns, and Cassandra aborts it after `tombstone_failure_threshold` (100,000) of them,
//! so a busy topic would stop replaying at all. The table is fixed, so the answer lives
//! beside it:
//!
//! * **The floor** (`mqtt_msg_floor`): per topic, a msgid below which every row is known to
//!   be deleted. Reads start there. A background scan moves it up past acked rows after
//!   every few hundred deletes of a topic, never closer to now than `replay_floor_lag`.
//! * **Late writes reset it.** A write that lands more than half the lag after its publish
//!   (after an outage) first deletes its topic's floor, with a timestamp half a lag in the
//!   future so that no scan already running can put it back.
//! * **And it comes back.** A scan that starts once that timestamp has passed rebuilds it,
//!   and a topic's acks that land after its last scan get one more scan when they stop, so
//!   a floor never waits for the next 500 acks.
//! * **Slices.** A read that Cassandra still aborts is redone in msgid slices (publish-time
//!   ranges) that shrink until each stays under the limit.
//!
//! Why this is safe: docs/tombstones.md.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use scylla::statement::prepared::PreparedStatement;

use crate::connection::{Connection, FloorStatements};
use crate::error::StoreError;
use crate::msgid::MsgId;
use crate::rows::{db_err, unpaged_rows};
use crate::shared::{FloorScan, Inner, lock};
use crate::stats::Counters;
use crate::write::{Op, Pending};

/// Greater than every msgid (32 hex digits): the open upper end of a slice.
pub(crate) const ABOVE_ALL: &str = "G";

/// A floor row lives this long after its last move; an expired floor only costs one
/// longer scan.
const FLOOR_TTL_SECS: i32 = 30 * 86_400;

/// First width of a slice: one minute of publish time.
const FIRST_SLICE_US: u64 = 60_000_000;

pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The publish time (µs) a msgid bound starts with; 0 for the empty bound.
pub(crate) fn time_of(bound: &str) -> u64 {
    bound
        .get(..16)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or(0)
}

pub(crate) fn bound_at(us: u64) -> String {
    MsgId::new(us, 0, 0).to_string()
}

/// True when a write of `msgid`, sent now, may land below a floor that a scan has set.
pub(crate) fn is_late(msgid: &MsgId, lag: Duration, now_us: u64) -> bool {
    now_us.saturating_sub(msgid.timestamp_us()) > (lag / 2).as_micros() as u64
}

/// The floor of `topic`, if one is set.
pub(crate) async fn read(
    conn: &Connection,
    f: &FloorStatements,
    topic: &str,
    timeout: Duration,
) -> Result<Option<String>, StoreError> {
    let rows = unpaged_rows(conn.session.execute_unpaged(&f.read, (topic,)), timeout).await?;
    Ok(rows
        .maybe_first_row::<(Option<String>,)>()
        .map_err(db_err)?
        .and_then(|(m,)| m))
}

/// Deletes the floor of `topic` with a timestamp half a lag ahead, before a late write is
/// sent: a scan that started before then cannot set it again. Returns that timestamp.
async fn reset(
    conn: &Connection,
    reset: &PreparedStatement,
    topic: &str,
    lag: Duration,
) -> Result<u64, scylla::errors::ExecutionError> {
    let at = now_us() + (lag / 2).as_micros() as u64;
    conn.session
        .execute_unpaged(reset, (at as i64, topic))
        .await
        .map(|_| at)
}

/// What a scan did to a floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Advance {
    /// Nothing to move.
    Unchanged,
    /// Moved up.
    Moved,
    /// Written, but a reset stamped later (a late write elsewhere, on any node) hides it:
    /// the floor stays unset until a scan that starts after that reset.
    Shadowed,
}

/// Moves the floor of `topic` up to its oldest live row, but not above `now - lag`. The
/// new floor is written with the scan's start time, so a reset sent since wins over it;
/// reading it back tells whether one did.
pub(crate) async fn advance(
    conn: &Connection,
    f: &FloorStatements,
    topic: &str,
    lag: Duration,
    timeout: Duration,
) -> Result<Advance, StoreError> {
    let started_us = now_us();
    let cap = bound_at(started_us.saturating_sub(lag.as_micros() as u64));
    let current = read(conn, f, topic, timeout).await?.unwrap_or_default();
    if current >= cap {
        return Ok(Advance::Unchanged);
    }
    let first = first_live(&current, &cap, |lo, hi| async move {
        let rows = unpaged_rows(
            conn.session.execute_unpaged(&f.first_live, (topic, lo, hi)),
            timeout,
        )
        .await?;
        Ok(rows
            .maybe_first_row::<(String,)>()
            .map_err(db_err)?
            .map(|(m,)| m))
    })
    .await?;
    let new = first.unwrap_or(cap);
    if new <= current {
        return Ok(Advance::Unchanged);
    }
    conn.session
        .execute_unpaged(&f.write, (FLOOR_TTL_SECS, started_us as i64, &new, topic))
        .await
        .map_err(|e| StoreError::from_driver(e, timeout))?;
    Ok(match read(conn, f, topic, timeout).await? {
        None => Advance::Shadowed,
        Some(_) => Advance::Moved,
    })
}

/// The oldest live msgid in `[lower, upper)`. One read if Cassandra allows it; otherwise
/// slices upward from `lower`, one second wide at first, sized by `SliceWidth`. A read that
/// times out is treated like an aborted one: on a busy node, walking the tombstones of a
/// wide range can outlast the request timeout before it reaches Cassandra's tombstone
/// limit, and the same wide read would time out again on every retry.
async fn first_live<F, Fut>(
    lower: &str,
    upper: &str,
    mut query: F,
) -> Result<Option<String>, StoreError>
where
    F: FnMut(String, String) -> Fut,
    Fut: Future<Output = Result<Option<String>, StoreError>>,
{
    let too_wide =
        |e: &StoreError| e.is_tombstone_overflow() || matches!(e, StoreError::Timeout(_));
    match query(lower.to_owned(), upper.to_owned()).await {
        Err(e) if too_wide(&e) => {}
        other => return other,
    }
    let upper_us = time_of(upper);
    let (mut lo, mut lo_us) = (lower.to_owned(), time_of(lower));
    let mut width = SliceWidth::new(1_000_000);
    loop {
        let hi_us = lo_us.saturating_add(width.us);
        let last = hi_us >= upper_us;
        let hi = if last {
            upper.to_owned()
        } else {
            bound_at(hi_us)
        };
        match query(lo.clone(), hi.clone()).await {
            Ok(Some(m)) => return Ok(Some(m)),
            Ok(None) if last => return Ok(None),
            Ok(None) => {
                (lo, lo_us) = (hi, hi_us);
                width.passed();
            }
            Err(e) if too_wide(&e) && width.us > 1 => width.failed(),
            Err(e) => return Err(e),
        }
    }
}

/// Up to `limit` rows at or above `lower`, newest first, read in slices going back from
/// now: one minute wide at first, doubled after each read that passes, halved after each
/// that Cassandra aborts for tombstones (`SliceWidth`).
pub(crate) async fn read_newest_sliced<T, F, Fut>(
    lower: &str,
    limit: u32,
    mut query: F,
) -> Result<Vec<T>, StoreError>
where
    F: FnMut(String, String, u32) -> Fut,
    Fut: Future<Output = Result<Vec<T>, StoreError>>,
{
    let lower_us = time_of(lower);
    let (mut hi, mut hi_us) = (ABOVE_ALL.to_owned(), now_us());
    let mut width = SliceWidth::new(FIRST_SLICE_US);
    let mut out = Vec::new();
    while out.len() < limit as usize {
        let lo_us = hi_us.saturating_sub(width.us);
        let last = lo_us <= lower_us;
        let lo = if last {
            lower.to_owned()
        } else {
            bound_at(lo_us)
        };
        match query(lo.clone(), hi.clone(), limit - out.len() as u32).await {
            Ok(rows) => {
                out.extend(rows);
                if last {
                    break;
                }
                (hi, hi_us) = (lo, lo_us);
                width.passed();
            }
            Err(e) if e.is_tombstone_overflow() && width.us > 1 => width.failed(),
            Err(e) => return Err(e),
        }
    }
    out.truncate(limit as usize);
    Ok(out)
}

/// The width (µs of publish time) of the next slice of a sliced read: doubled after a read
/// that passes, halved after one that fails, and kept below the narrowest width that failed
/// until four reads in a row have passed at the width under it. A failed read can cost a
/// whole request timeout: doubling straight back into a width that failed made every other
/// read through a dense stretch fail (110 of 230 in the unit fixture; a 200,000-tombstone
/// floor scan on a busy node outlasted minutes), while never growing again would crawl
/// through the empty years after it.
struct SliceWidth {
    us: u64,
    failed_at: u64,
    passes_below: u32,
}

impl SliceWidth {
    fn new(us: u64) -> Self {
        Self {
            us,
            failed_at: u64::MAX,
            passes_below: 0,
        }
    }

    fn passed(&mut self) {
        let doubled = self.us.saturating_mul(2);
        if doubled < self.failed_at {
            self.us = doubled;
            return;
        }
        self.passes_below += 1;
        if self.passes_below >= 4 {
            // The dense stretch is likely behind: grow again.
            (self.failed_at, self.passes_below) = (u64::MAX, 0);
        }
    }

    fn failed(&mut self) {
        self.failed_at = self.failed_at.min(self.us);
        self.passes_below = 0;
        self.us /= 2;
    }
}

/// Deletes of one topic after which its replay floor is moved up.
const FLOOR_SCAN_AFTER_DELETES: u32 = 500;

/// Quiet time after the last ack of a topic that has had a scan, before the acks no scan
/// has seen yet get one: once acks stop, the floor catches up with them (fewer than
/// `FLOOR_SCAN_AFTER_DELETES` acks would otherwise wait for more).
const FLOOR_SETTLE_AFTER: Duration = Duration::from_secs(2);

/// Longest wait before a failed scan is tried again.
const FLOOR_RETRY_MAX: Duration = Duration::from_secs(60);

/// How long after its `failures`-th failure in a row a scan is tried again: the settle
/// time, doubling, at most `FLOOR_RETRY_MAX`.
fn retry_after(failures: u32) -> Duration {
    FLOOR_SETTLE_AFTER
        .saturating_mul(1 << failures.saturating_sub(1).min(8))
        .min(FLOOR_RETRY_MAX)
}

impl FloorScan {
    /// The earliest time (µs) a scan is wanted at, if any.
    fn next_wake(&self) -> Option<u64> {
        [self.settle_at, self.rebuild_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Clears the deadlines that have passed at `now`; true when one had (a scan is due).
    fn take_due(&mut self, now: u64) -> bool {
        let mut due = false;
        for deadline in [&mut self.settle_at, &mut self.rebuild_at] {
            if deadline.is_some_and(|at| now > at) {
                *deadline = None;
                due = true;
            }
        }
        due
    }

    /// Wants a scan once `reset_at` has passed (the latest of several resets counts).
    fn rebuild_after(&mut self, reset_at: u64) {
        self.rebuild_at = Some(self.rebuild_at.map_or(reset_at, |at| at.max(reset_at)));
    }

    /// Marks the topic's timer as running; true when the caller must start it.
    fn claim_timer(&mut self) -> bool {
        if self.timer || self.next_wake().is_none() {
            return false;
        }
        self.timer = true;
        true
    }
}

impl Inner {
    /// Counts deletes of `topic`; after `FLOOR_SCAN_AFTER_DELETES` of them starts a
    /// background scan that moves its replay floor up (one scan per topic at a time). A
    /// topic that has had a scan gets one more when its acks stop, for those it missed.
    pub(crate) fn note_deletes(self: &Arc<Self>, topic: &str, n: u32) {
        if !self.cfg.replay_floor || self.stopped() {
            return;
        }
        let mut scans = lock(&self.floor_scans);
        if scans.len() >= 100_000 {
            scans.retain(|_, s| s.running || s.timer);
        }
        let scan = scans.entry(topic.to_owned()).or_default();
        scan.deletes = scan.deletes.saturating_add(n);
        if scan.running {
            return;
        }
        if scan.deletes >= FLOOR_SCAN_AFTER_DELETES {
            scan.running = true;
            scan.scanned = true;
            scan.deletes = 0;
            drop(scans);
            tokio::spawn(run_floor_scans(self.clone(), topic.to_owned()));
            return;
        }
        if scan.scanned {
            scan.settle_at = Some(now_us() + FLOOR_SETTLE_AFTER.as_micros() as u64);
        }
        let start_timer = scan.claim_timer();
        drop(scans);
        if start_timer {
            tokio::spawn(run_floor_timer(self.clone(), topic.to_owned()));
        }
    }

    /// Asks for a floor scan now (a read met many tombstones).
    pub(crate) fn request_floor_scan(self: &Arc<Self>, topic: &str) {
        self.note_deletes(topic, FLOOR_SCAN_AFTER_DELETES);
    }

    /// After a late write reset `topic`'s floor with timestamp `reset_at`, rebuilds it by a
    /// scan that starts after `reset_at` (an earlier one's floor would lose to the reset),
    /// without waiting for more acks. Safe like every scan: the late write, sent before
    /// `reset_at - lag/2`, has landed by then (docs/tombstones.md).
    fn rebuild_floor_after(self: &Arc<Self>, topic: &str, reset_at: u64) {
        if !self.cfg.replay_floor || self.stopped() {
            return;
        }
        let mut scans = lock(&self.floor_scans);
        let scan = scans.entry(topic.to_owned()).or_default();
        scan.rebuild_after(reset_at);
        let start_timer = scan.claim_timer();
        drop(scans);
        if start_timer {
            tokio::spawn(run_floor_timer(self.clone(), topic.to_owned()));
        }
    }
}

/// Before inserts that land late (published more than half a lag ago, e.g. buffered
/// through an outage), drops their topic's replay floor so replay cannot skip them, and
/// has it rebuilt once the reset can no longer be overwritten.
pub(crate) async fn reset_floor_if_late(
    inner: &Arc<Inner>,
    conn: &Connection,
    batch: &[Pending],
) -> Result<(), scylla::errors::ExecutionError> {
    // With the floor off too, while its table exists: the floors kept from when it was
    // on must not hide these rows once it is on again.
    let Some(stmt) = &conn.floor_reset else {
        return Ok(());
    };
    let lag = inner.cfg.replay_floor_lag;
    let now = now_us();
    let late = batch.iter().any(|p| match &p.op {
        Op::Insert(m) => is_late(&m.msgid, lag, now),
        Op::Delete { .. } => false,
    });
    let Some(first) = batch.first().filter(|_| late) else {
        return Ok(());
    };
    let topic = first.op.topic();
    let reset_at = reset(conn, stmt, topic, lag).await?;
    Counters::add(&inner.counters.floor_resets, 1);
    inner.rebuild_floor_after(topic, reset_at);
    Ok(())
}

/// Moves `topic`'s floor up, again while enough deletes came in during the last scan (or
/// a timer asked for it); held while this node's clock is skewed. Deletes that land
/// during or after it get a settle scan when they stop. A failed scan is tried again after
/// a backoff (`retry_after`): with no more acks coming, nothing else would move a floor
/// that a timeout left behind.
async fn run_floor_scans(inner: Arc<Inner>, topic: String) {
    loop {
        // A node whose clock is off (see `clock`) could move a floor past rows a node with
        // a slower clock is still writing: the scan is held, and looked at again every
        // settle time (no request, no backoff), so the floor moves soon after the clock
        // is back in bounds.
        let held = inner.clock.skewed();
        let mut failed = false;
        if !held
            && let Ok(conn) = inner.connection()
            && let Some(f) = &conn.floor
        {
            let (lag, timeout) = (inner.cfg.replay_floor_lag, inner.cfg.request_timeout);
            match advance(&conn, f, &topic, lag, timeout).await {
                Ok(Advance::Moved) => Counters::add(&inner.counters.floor_scans, 1),
                Ok(Advance::Unchanged) => {}
                // The reset is stamped at most half a lag after it was sent, so a scan
                // starting then rebuilds it: whoever reset it may have stopped since, and
                // this topic's acks may have ended (seen: a floor that never came back).
                Ok(Advance::Shadowed) => {
                    inner.rebuild_floor_after(&topic, now_us() + (lag / 2).as_micros() as u64)
                }
                Err(_) => failed = true,
            }
        }
        let mut scans = lock(&inner.floor_scans);
        let Some(scan) = scans.get_mut(&topic) else {
            return;
        };
        if !held {
            scan.failures = if failed { scan.failures + 1 } else { 0 };
        }
        if scan.deletes >= FLOOR_SCAN_AFTER_DELETES && !inner.stopped() && !held {
            scan.deletes = 0;
            continue;
        }
        scan.running = false;
        let settled = std::mem::take(&mut scan.settling);
        if failed || held {
            let wait = if held {
                FLOOR_SETTLE_AFTER
            } else {
                retry_after(scan.failures)
            };
            let at = now_us() + wait.as_micros() as u64;
            scan.settle_at = Some(scan.settle_at.map_or(at, |s| s.max(at)));
        } else if scan.deletes > 0 {
            scan.settle_at = Some(now_us() + FLOOR_SETTLE_AFTER.as_micros() as u64);
        } else if settled && !scan.timer {
            // Caught up with every ack: forget the topic until its next one.
            scans.remove(&topic);
            return;
        }
        // Otherwise the entry stays: acks that land after this scan get a settle scan.
        let start_timer = scan.claim_timer() && !inner.stopped();
        drop(scans);
        if start_timer {
            tokio::spawn(run_floor_timer(inner, topic));
        }
        return;
    }
}

/// Sleeps until `topic`'s earliest deadline, asks for a scan when one has passed, and
/// ends when none is left (or the store stops).
async fn run_floor_timer(inner: Arc<Inner>, topic: String) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        if inner.stopped() {
            return;
        }
        let (due, wake) = {
            let mut scans = lock(&inner.floor_scans);
            let Some(scan) = scans.get_mut(&topic) else {
                return;
            };
            let due = scan.take_due(now_us());
            let wake = scan.next_wake();
            if wake.is_none() {
                scan.timer = false;
            }
            (due, wake)
        };
        if due {
            if let Some(scan) = lock(&inner.floor_scans).get_mut(&topic) {
                scan.settling = true;
            }
            inner.request_floor_scan(&topic);
        }
        let Some(at) = wake else { return };
        // A millisecond past the deadline: the scan's timestamp must be above it.
        let wait = Duration::from_micros(at.saturating_sub(now_us()) + 1_000);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn overflow() -> StoreError {
        StoreError::Db("... READ_TOO_MANY_TOMBSTONES from /127.0.0.1:7000".into())
    }

    /// A partition as a sorted list of (publish µs, live); a read fails when it would
    /// walk more than `limit` dead rows, as Cassandra does.
    struct Partition {
        rows: Vec<(u64, bool)>,
        limit: usize,
    }

    impl Partition {
        fn in_range(&self, lo: &str, hi: &str) -> Vec<(u64, bool)> {
            self.rows
                .iter()
                .filter(|(t, _)| {
                    let id = bound_at(*t);
                    id.as_str() >= lo && id.as_str() < hi
                })
                .copied()
                .collect()
        }
        fn newest(&self, lo: &str, hi: &str, n: u32) -> Result<Vec<u64>, StoreError> {
            let (mut dead, mut out) = (0, Vec::new());
            for (t, live) in self.in_range(lo, hi).into_iter().rev() {
                if out.len() == n as usize {
                    break;
                }
                if live {
                    out.push(t);
                } else {
                    dead += 1;
                    if dead > self.limit {
                        return Err(overflow());
                    }
                }
            }
            Ok(out)
        }
        fn oldest_live(&self, lo: &str, hi: &str) -> Result<Option<String>, StoreError> {
            let mut dead = 0;
            for (t, live) in self.in_range(lo, hi) {
                if live {
                    return Ok(Some(bound_at(t)));
                }
                dead += 1;
                if dead > self.limit {
                    return Err(overflow());
                }
            }
            Ok(None)
        }
    }

    /// 5,000 acked rows over the last day, then 10 live ones; at most 100 tombstones a read.
    fn busy_topic() -> Partition {
        let start = now_us() - 86_400_000_000;
        let mut rows: Vec<_> = (0..5_000u64)
            .map(|i| (start + i * 1_000_000, false))
            .collect();
        rows.extend((0..10u64).map(|i| (start + 6_000_000_000 + i, true)));
        Partition { rows, limit: 100 }
    }

    #[tokio::test]
    async fn sliced_read_returns_what_one_read_would_have() {
        let p = busy_topic();
        assert!(
            p.newest("", ABOVE_ALL, 1000).is_err(),
            "the fixture must overflow"
        );
        let calls = RefCell::new(0);
        let got = read_newest_sliced("", 1000, |lo, hi, n| {
            *calls.borrow_mut() += 1;
            let r = p.newest(&lo, &hi, n);
            async move { r }
        })
        .await
        .unwrap();
        let want: Vec<u64> = p.rows.iter().rev().filter(|r| r.1).map(|r| r.0).collect();
        assert_eq!(got, want);
        // About two reads per 100 tombstones (the fixture's limit) plus ~30 back to 1970.
        assert!(*calls.borrow() < 250, "{} reads", calls.borrow());
        // A limit stops early.
        let two = read_newest_sliced("", 2, |lo, hi, n| {
            let r = p.newest(&lo, &hi, n);
            async move { r }
        })
        .await
        .unwrap();
        assert_eq!(two, want[..2]);
    }

    #[tokio::test]
    async fn first_live_finds_the_oldest_live_row_through_slices() {
        let p = busy_topic();
        let cap = bound_at(now_us());
        assert!(
            p.oldest_live("", &cap).is_err(),
            "the fixture must overflow"
        );
        let got = first_live("", &cap, |lo, hi| {
            let r = p.oldest_live(&lo, &hi);
            async move { r }
        })
        .await
        .unwrap();
        assert_eq!(got, Some(bound_at(p.rows[5_000].0)));
        // Nothing live below the cap: no floor candidate.
        let early = bound_at(p.rows[4_000].0);
        let none = first_live("", &early, |lo, hi| {
            let r = p.oldest_live(&lo, &hi);
            async move { r }
        })
        .await
        .unwrap();
        assert_eq!(none, None);
    }

    /// Through 5,000 tombstones, 100 a read: the slices stay narrower than any that failed,
    /// so failed reads (a request timeout each on a busy node) stay few, not one in two.
    #[tokio::test]
    async fn first_live_does_not_keep_widening_into_a_width_that_failed() {
        let p = busy_topic();
        let cap = bound_at(now_us());
        let (reads, failed) = (RefCell::new(0), RefCell::new(0));
        let got = first_live("", &cap, |lo, hi| {
            *reads.borrow_mut() += 1;
            let r = p.oldest_live(&lo, &hi);
            if r.is_err() {
                *failed.borrow_mut() += 1;
            }
            async move { r }
        })
        .await
        .unwrap();
        assert_eq!(got, Some(bound_at(p.rows[5_000].0)));
        // Halving from the first too-wide slice (years, after doubling up from 1970) to one
        // that passes takes ~25 failures, then one in five or six; doubling straight back
        // into failed widths made 110 of 230 reads fail here (40 of 165 now).
        assert!(
            *failed.borrow() <= 50,
            "{} of {} reads failed",
            failed.borrow(),
            reads.borrow()
        );
    }

    /// Dense tombstones a year ago, a live row an hour ago: past the dense stretch the
    /// slices grow again instead of crawling through the year at the narrow width.
    #[tokio::test]
    async fn first_live_grows_again_after_a_dense_stretch() {
        let year_ago = now_us() - 365 * 86_400_000_000;
        let mut rows: Vec<_> = (0..5_000u64)
            .map(|i| (year_ago + i * 1_000_000, false))
            .collect();
        let live = now_us() - 3_600_000_000;
        rows.push((live, true));
        let p = Partition { rows, limit: 100 };
        let reads = RefCell::new(0);
        let got = first_live("", &bound_at(now_us()), |lo, hi| {
            *reads.borrow_mut() += 1;
            let r = p.oldest_live(&lo, &hi);
            async move { r }
        })
        .await
        .unwrap();
        assert_eq!(got, Some(bound_at(live)));
        assert!(*reads.borrow() < 300, "{} reads", reads.borrow());
    }

    /// A busy node times out on the wide read instead of reaching its tombstone limit: the
    /// scan narrows as for an aborted read, and finds the same row.
    #[tokio::test]
    async fn first_live_narrows_a_read_that_times_out() {
        let p = busy_topic();
        let cap = bound_at(now_us());
        let got = first_live("", &cap, |lo, hi| {
            let r = p.oldest_live(&lo, &hi).map_err(|e| {
                assert!(e.is_tombstone_overflow());
                StoreError::Timeout(Duration::from_secs(5))
            });
            async move { r }
        })
        .await
        .unwrap();
        assert_eq!(got, Some(bound_at(p.rows[5_000].0)));
    }

    #[test]
    fn a_scan_is_wanted_strictly_after_the_reset_and_when_acks_settle() {
        let mut s = FloorScan::default();
        assert!(!s.claim_timer(), "nothing wanted: no timer");
        s.rebuild_after(1_000);
        s.rebuild_after(900);
        assert_eq!(s.next_wake(), Some(1_000), "the latest reset counts");
        assert!(s.claim_timer());
        assert!(!s.claim_timer(), "one timer per topic");
        assert!(
            !s.take_due(1_000),
            "a scan at the reset's timestamp would lose to it"
        );
        s.settle_at = Some(2_000);
        assert!(s.take_due(1_001));
        assert_eq!(s.next_wake(), Some(2_000));
        assert!(!s.take_due(1_500));
        assert!(s.take_due(2_001));
        assert_eq!(s.next_wake(), None);
    }

    #[test]
    fn a_failed_scan_is_retried_after_a_doubling_backoff() {
        assert_eq!(retry_after(1), FLOOR_SETTLE_AFTER);
        assert_eq!(retry_after(2), FLOOR_SETTLE_AFTER * 2);
        assert_eq!(retry_after(3), FLOOR_SETTLE_AFTER * 4);
        assert_eq!(retry_after(40), FLOOR_RETRY_MAX);
    }

    #[test]
    fn lateness_is_half_the_lag() {
        let lag = Duration::from_secs(60);
        let now = now_us();
        assert!(!is_late(&MsgId::new(now - 29_000_000, 0, 0), lag, now));
        assert!(is_late(&MsgId::new(now - 31_000_000, 0, 0), lag, now));
        assert!(!is_late(&MsgId::new(now + 5_000_000, 0, 0), lag, now));
    }
}
