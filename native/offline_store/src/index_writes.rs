//! The topic index's upkeep on the write path: a topic is indexed (with its first level
//! and bucket in the roots list) before its messages land, so a wildcard replay that finds
//! a message can always find its topic. Layout: `index_keys`.

use std::time::Duration;

use tokio::time::Instant;

use crate::connection::Connection;
use crate::expiry::{self, RowTtl};
use crate::shared::{Inner, lock};
use crate::write::{Op, Pending};

/// Writes the index rows of the batch's topic (and of its first level) unless that was
/// done recently. Refreshing at half the index TTL (at most hourly) keeps active topics in.
pub(crate) async fn ensure_indexed(
    inner: &Inner,
    conn: &Connection,
    batch: &[Pending],
) -> Result<(), scylla::errors::ExecutionError> {
    let (
        Some(ix),
        Some(Pending {
            op: Op::Insert(first),
            ..
        }),
    ) = (&conn.index, batch.first())
    else {
        return Ok(());
    };
    let topic = first.topic.as_str();
    let index_ttl = inner.cfg.topic_index_ttl;
    let fresh = lock(&inner.indexed)
        .get(topic)
        .is_some_and(|at| at.elapsed() < index_refresh(index_ttl));
    if fresh {
        return Ok(());
    }
    let now = expiry::now_ms();
    let limit = conn.expiry_limit;
    let longest_message = batch
        .iter()
        .filter_map(|p| match &p.op {
            Op::Insert(m) => match expiry::row_ttl(m.ttl_secs, m.arrived_ms, now, limit) {
                RowTtl::Secs(s) => Some(s as u32),
                RowTtl::Forever | RowTtl::Expired => None,
            },
            Op::Delete { .. } => None,
        })
        .max();
    // Index rows get the same clamp as messages: a TTL Cassandra refuses here would fail
    // the batch of messages behind it.
    let ttl = match index_row_ttl(index_ttl, longest_message) {
        0 => 0,
        t => expiry::clamp_secs(i64::from(t), now, limit),
    };
    let (root, bucket) = crate::index_keys::partition_of(topic);
    let roots_bucket = crate::index_keys::bucket_of(root);
    let session = &conn.session;
    let (a, b) = tokio::join!(
        session.execute_unpaged(
            &ix.add_root_bucket,
            (
                ttl,
                vec![bucket],
                crate::schema::ROOTS_PARTITION,
                roots_bucket,
                root
            )
        ),
        session.execute_unpaged(&ix.insert, (root, bucket, topic, ttl)),
    );
    a?;
    b?;
    lock(&inner.indexed).insert(topic, Instant::now());
    Ok(())
}

/// How often a topic's index rows are written again: at half the index TTL, at most
/// hourly, so active topics stay in; never when they do not expire.
fn index_refresh(index_ttl: Duration) -> Duration {
    if index_ttl.is_zero() {
        Duration::MAX
    } else {
        (index_ttl / 2).min(Duration::from_secs(3600))
    }
}

/// The TTL (s) of a topic's index rows: 0 keeps them forever; otherwise they outlive every
/// message they point to.
fn index_row_ttl(index_ttl: Duration, longest_message_secs: Option<u32>) -> i32 {
    if index_ttl.is_zero() {
        return 0;
    }
    index_ttl
        .as_secs()
        .max(longest_message_secs.unwrap_or(0) as u64)
        .min(i32::MAX as u64) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_rows_outlive_their_messages_and_are_refreshed_in_time() {
        let day = Duration::from_secs(86_400);
        assert_eq!(index_row_ttl(Duration::ZERO, Some(500)), 0, "0 keeps them");
        assert_eq!(index_row_ttl(day, None), 86_400);
        assert_eq!(index_row_ttl(day, Some(100)), 86_400);
        assert_eq!(index_row_ttl(day, Some(200_000)), 200_000);
        assert_eq!(index_row_ttl(day, Some(u32::MAX)), i32::MAX);
        assert_eq!(index_refresh(Duration::ZERO), Duration::MAX);
        assert_eq!(
            index_refresh(Duration::from_secs(600)),
            Duration::from_secs(300)
        );
        assert_eq!(index_refresh(day), Duration::from_secs(3600));
    }
}
