//! The operators' commands on one topic: `count` and `purge`.
//!
//! Both must work on the partitions that need them most: a topic acked for days holds
//! more tombstones than Cassandra lets one read walk (`tombstone_failure_threshold`), so a
//! whole-partition `count(*)` is aborted there; it is redone in msgid slices that shrink
//! until each passes, as replay does (docs/tombstones.md). A purge is one partition
//! tombstone, stamped with Cassandra's clock: a broker whose clock runs ahead would
//! otherwise also delete messages published after the purge, when they land.

use std::future::Future;
use std::time::Duration;

use crate::connection::Connection;
use crate::error::StoreError;
use crate::floor::{ABOVE_ALL, bound_at, now_us, time_of};
use crate::rows::{db_err, unpaged_rows};
use crate::store::Store;

/// First width of a counting slice: one second of publish time.
const FIRST_SLICE_US: u64 = 1_000_000;

impl Store {
    /// Live rows stored for one topic (for operators), from its replay floor up. One
    /// `count(*)` when Cassandra allows it, else counted in slices.
    pub async fn count(&self, topic: &str) -> Result<u64, StoreError> {
        let conn = self.inner.connection()?;
        let timeout = self.inner.cfg.request_timeout;
        let lower = self.lower_bound(&conn, topic, String::new()).await;
        let whole = count_rows(&conn, &conn.count, (topic, lower.as_str()), timeout).await;
        match whole {
            Err(e) if too_wide(&e) => {
                count_in_slices(&lower, now_us(), |lo, hi| {
                    let conn = &conn;
                    async move {
                        let values = (topic, lo.as_str(), hi.as_str());
                        count_rows(conn, &conn.count_range, values, timeout).await
                    }
                })
                .await
            }
            other => other,
        }
    }

    /// Deletes every message stored for `topic` with one partition tombstone (for
    /// operators), stamped with Cassandra's time: messages published before it that are
    /// still on their way are deleted too when they land (their write timestamps are
    /// older); those published after it are kept. Returns how many rows there were.
    pub async fn purge(&self, topic: &str) -> Result<u64, StoreError> {
        let before = self.count(topic).await?;
        let conn = self.inner.connection()?;
        let timeout = self.inner.cfg.request_timeout;
        let at_us = cassandra_now_us(&conn, timeout).await?;
        conn.session
            .execute_unpaged(&conn.purge, (at_us, topic))
            .await
            .map_err(|e| StoreError::from_driver(e, timeout))?;
        Ok(before)
    }
}

/// A read Cassandra aborted for tombstones, or one that timed out walking them on a busy
/// node: narrower is the answer to both.
fn too_wide(e: &StoreError) -> bool {
    e.is_tombstone_overflow() || matches!(e, StoreError::Timeout(_))
}

async fn count_rows(
    conn: &Connection,
    stmt: &scylla::statement::prepared::PreparedStatement,
    values: impl scylla::serialize::row::SerializeRow,
    timeout: Duration,
) -> Result<u64, StoreError> {
    let result = unpaged_rows(conn.session.execute_unpaged(stmt, values), timeout).await?;
    let (n,) = result.single_row::<(i64,)>().map_err(db_err)?;
    Ok(n.max(0) as u64)
}

/// The coordinator's clock in µs (`toUnixTimestamp(now())`, whole milliseconds).
async fn cassandra_now_us(conn: &Connection, timeout: Duration) -> Result<i64, StoreError> {
    let (ms,) = unpaged_rows(conn.session.execute_unpaged(&conn.clock, ()), timeout)
        .await?
        .single_row::<(i64,)>()
        .map_err(db_err)?;
    Ok(ms.saturating_mul(1000))
}

/// The sum of `count` over slices covering `[lower, ∞)`: upward from `lower`, one second
/// wide at first, doubled after each slice that passes, halved after each that is too
/// wide. The slice that reaches `now_us` is open above (messages published "in the
/// future" by a fast clock count too).
async fn count_in_slices<F, Fut>(lower: &str, now_us: u64, mut count: F) -> Result<u64, StoreError>
where
    F: FnMut(String, String) -> Fut,
    Fut: Future<Output = Result<u64, StoreError>>,
{
    let (mut lo, mut lo_us) = (lower.to_owned(), time_of(lower));
    let mut width = FIRST_SLICE_US;
    let mut total = 0;
    loop {
        let hi_us = lo_us.saturating_add(width);
        let last = hi_us >= now_us;
        let hi = if last {
            ABOVE_ALL.to_owned()
        } else {
            bound_at(hi_us)
        };
        match count(lo.clone(), hi.clone()).await {
            Ok(n) if last => return Ok(total + n),
            Ok(n) => {
                total += n;
                (lo, lo_us) = (hi, hi_us);
                width = width.saturating_mul(2);
            }
            Err(e) if too_wide(&e) && width > 1 => width /= 2,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overflow() -> StoreError {
        StoreError::Db("... READ_TOO_MANY_TOMBSTONES from /127.0.0.1:7000".into())
    }

    /// A partition as (publish µs, live) rows; a count fails when it would walk more than
    /// `limit` dead rows, as Cassandra does.
    struct Partition {
        rows: Vec<(u64, bool)>,
        limit: usize,
    }

    impl Partition {
        fn count(&self, lo: &str, hi: &str) -> Result<u64, StoreError> {
            let within: Vec<_> = self
                .rows
                .iter()
                .filter(|(t, _)| {
                    let id = bound_at(*t);
                    id.as_str() >= lo && id.as_str() < hi
                })
                .collect();
            if within.iter().filter(|r| !r.1).count() > self.limit {
                return Err(overflow());
            }
            Ok(within.iter().filter(|r| r.1).count() as u64)
        }
    }

    #[tokio::test]
    async fn a_count_past_the_tombstone_limit_is_summed_over_slices() {
        let now = now_us();
        let day_ago = now - 86_400_000_000;
        // 5,000 acked rows over the last day among 7 live ones, one live "in the future".
        let mut rows: Vec<_> = (0..5_000u64)
            .map(|i| (day_ago + i * 17_000_000, false))
            .collect();
        rows.extend([
            (day_ago - 5, true),
            (day_ago + 40_000_000_000, true),
            (day_ago + 40_000_000_001, true),
            (now - 10, true),
            (now - 9, true),
            (now - 8, true),
            (now + 60_000_000, true),
        ]);
        let p = Partition { rows, limit: 100 };
        assert!(p.count("", ABOVE_ALL).is_err(), "the fixture must overflow");
        let mut calls = 0;
        let n = count_in_slices("", now, |lo, hi| {
            calls += 1;
            let r = p.count(&lo, &hi);
            async move { r }
        })
        .await
        .unwrap();
        assert_eq!(n, 7);
        assert!(calls < 400, "{calls} reads");
        // From a floor: only what is above it.
        let floor = bound_at(day_ago + 40_000_000_001);
        let n = count_in_slices(&floor, now, |lo, hi| {
            let r = p.count(&lo, &hi);
            async move { r }
        })
        .await
        .unwrap();
        assert_eq!(n, 5);
    }

    #[tokio::test]
    async fn a_slice_that_fails_otherwise_fails_the_count() {
        let err = count_in_slices("", now_us(), |_, _| async {
            Err::<u64, _>(StoreError::Db("boom".into()))
        })
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), StoreError::Db("boom".into()).to_string());
    }
}
