//! Forming requests from staged writes. Each request to Cassandra costs far more CPU (ours
//! and Cassandra's) than a row in it, so a request carries as many rows as Cassandra takes
//! without complaint: all the staged writes of one partition (inserts and the deletes of
//! acks together), and, when the rows are small, the writes of other partitions that the
//! same replica owns, as an unlogged batch under Cassandra's multi-partition thresholds.

use std::collections::HashMap;

use tokio::time::{Duration, Instant};

use crate::connection::Connection;
use crate::schema::TABLE;
use crate::shared::Staging;
use crate::write::{Op, Pending};

/// How many rows, bytes and partitions one request may carry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RequestLimits {
    /// Rows in one request.
    pub max_rows: usize,
    /// Bytes of a single-partition request (Cassandra only checks batch sizes across
    /// partitions; a single partition is bound by its frame and mutation limits).
    pub max_bytes: usize,
    /// Partitions in one request (Cassandra warns on unlogged batches across more than
    /// `unlogged_batch_across_partitions_warn_threshold`, 10 by default).
    pub max_partitions: usize,
    /// Bytes of a request across partitions (Cassandra logs a warning for each batch over
    /// `batch_size_warn_threshold`, 5 KiB by default, and refuses one over 50 KiB).
    pub max_multi_partition_bytes: usize,
}

/// The writes of one request: one part per partition, each in its staging order.
pub(crate) type Request = Vec<Vec<Pending>>;

impl Staging {
    /// Takes the head staged write with the following writes of its partition, then, while
    /// the request stays under the multi-partition limits, the writes of other partitions
    /// whose replica group (`group_of`) is the head's. Within a partition the writes taken
    /// are a prefix of its staged writes, so its order holds; the rest stays in order.
    pub(crate) fn take_request(
        &mut self,
        limits: &RequestLimits,
        mut group_of: impl FnMut(&str) -> u64,
    ) -> Request {
        let Some(head) = self.items.pop_front() else {
            return Vec::new();
        };
        let mut rows = 1;
        let mut total = head.op.encoded_size();
        let group = if limits.max_partitions > 1 {
            group_of(head.op.topic())
        } else {
            0
        };
        let mut parts = vec![vec![head]];
        // A partition that could not take a write takes none after it (order).
        let mut closed = vec![false];
        // Once a partition could not join, none joins after it: a write of that partition
        // must not overtake the one left behind.
        let mut joining = limits.max_partitions > 1;
        for p in self.items.drain(..) {
            let size = p.op.encoded_size();
            let topic = p.op.topic();
            let part = parts.iter().position(|part| part[0].op.topic() == topic);
            let fits = |rows: usize, total: usize, partitions: usize| {
                let max_bytes = if partitions > 1 {
                    limits.max_multi_partition_bytes
                } else {
                    limits.max_bytes
                };
                rows < limits.max_rows && total + size <= max_bytes
            };
            match part {
                Some(i) if !closed[i] => {
                    if fits(rows, total, parts.len()) {
                        rows += 1;
                        total += size;
                        parts[i].push(p);
                        continue;
                    }
                    closed[i] = true;
                }
                Some(_) => {}
                None if joining => {
                    if parts.len() < limits.max_partitions
                        && fits(rows, total, parts.len() + 1)
                        && group_of(topic) == group
                    {
                        rows += 1;
                        total += size;
                        parts.push(vec![p]);
                        closed.push(false);
                        continue;
                    }
                    joining = false;
                }
                None => {}
            }
            self.spare.push_back(p);
        }
        // The rest goes back in order; both buffers keep their capacity (no allocation).
        std::mem::swap(&mut self.items, &mut self.spare);
        if self.items.is_empty() {
            self.since = None;
            self.awaited = false;
            self.empty_at = Some(Instant::now());
        }
        parts
    }
}

/// Takes out of `request` every delete whose insert is in the same part (its message was
/// acknowledged before its row was sent), and that insert: together they would leave no
/// row, so neither needs Cassandra. With subscribers online, most acks come within the
/// writer's linger of their publish, and this saves the insert, the tombstone, and the
/// compaction work of both. Deletes of rows read back (`written_us`) have no insert here.
pub(crate) fn cancel_acknowledged(request: &mut Request) -> Vec<Pending> {
    let mut cancelled = Vec::new();
    for part in request.iter_mut() {
        let mixed = part.iter().any(|p| p.op.is_insert()) && part.iter().any(|p| !p.op.is_insert());
        if !mixed {
            continue;
        }
        let mut i = 0;
        while i < part.len() {
            let insert = match &part[i].op {
                Op::Delete {
                    msgid,
                    written_us: None,
                    ..
                } => part.iter().position(|p| {
                    // An insert read back from the disk buffer may have been written before a
                    // restart (its segment was not deleted yet): its delete must be sent.
                    p.ticket.is_none() && matches!(&p.op, Op::Insert(m) if m.msgid == *msgid)
                }),
                _ => None,
            };
            let Some(j) = insert else {
                i += 1;
                continue;
            };
            cancelled.push(part.remove(i.max(j)));
            cancelled.push(part.remove(i.min(j)));
            // The next write moved to `i`, or to `i - 1` when the insert was before it.
            if j < i {
                i -= 1;
            }
        }
    }
    request.retain(|part| !part.is_empty());
    cancelled
}

/// How long a topic's replica group is trusted before it is looked up again (the ring
/// changes rarely; a stale group only costs a forwarded mutation).
const GROUP_TTL: Duration = Duration::from_secs(30);

/// Most topics whose group is remembered; past it the cache starts over.
const GROUPS_KEPT: usize = 100_000;

/// Topics by the first replica of their partition, so that one request carries only
/// partitions its coordinator owns. Owned by the writer task (no lock).
#[derive(Default)]
pub(crate) struct ReplicaGroups {
    groups: HashMap<String, (u64, Instant)>,
}

impl ReplicaGroups {
    /// The replica group of `topic`'s partition: its first replica's host id, folded to 64
    /// bits; 0 when the driver cannot say (e.g. no metadata yet), which puts such topics
    /// together.
    pub(crate) fn group_of(&mut self, conn: &Connection, keyspace: &str, topic: &str) -> u64 {
        let now = Instant::now();
        if let Some((group, at)) = self.groups.get(topic)
            && now.duration_since(*at) < GROUP_TTL
        {
            return *group;
        }
        let group = conn
            .session
            .get_cluster_state()
            .get_endpoints(keyspace, TABLE, &(topic,))
            .ok()
            .and_then(|replicas| replicas.first().map(|(node, _)| node.host_id.as_u64_pair()))
            .map_or(0, |(high, low)| high ^ low);
        if self.groups.len() >= GROUPS_KEPT {
            self.groups.clear();
        }
        self.groups.insert(topic.to_owned(), (group, now));
        group
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::test_writes::{delete, insert, shape, with_payload};

    const LIMITS: RequestLimits = RequestLimits {
        max_rows: 32,
        max_bytes: 4 * 1024 * 1024,
        max_partitions: 10,
        max_multi_partition_bytes: 5 * 1024,
    };

    fn one_group(_: &str) -> u64 {
        7
    }

    fn staging(items: impl IntoIterator<Item = Pending>) -> Staging {
        let mut s = Staging::default();
        s.items.extend(items);
        s
    }

    fn left(s: &mut Staging) -> Vec<(String, bool, u64)> {
        shape(s.items.drain(..))
    }

    #[test]
    fn a_partition_takes_its_inserts_and_deletes_together_in_order() {
        let mut s = staging([insert("a", 1), delete("a", 2), insert("a", 3)]);
        let request = s.take_request(&LIMITS, one_group);
        assert_eq!(request.len(), 1);
        assert_eq!(
            shape(request.into_iter().flatten()),
            [
                ("a".into(), true, 1),
                ("a".into(), false, 2),
                ("a".into(), true, 3)
            ]
        );
        assert!(s.items.is_empty() && s.since.is_none());
    }

    #[test]
    fn partitions_of_one_replica_share_a_request_up_to_the_partition_limit() {
        let limits = RequestLimits {
            max_partitions: 3,
            ..LIMITS
        };
        let mut s = staging([
            insert("a", 1),
            insert("b", 2),
            insert("c", 3),
            insert("d", 4),
            insert("a", 5),
            delete("b", 6),
        ]);
        let request = s.take_request(&limits, one_group);
        let topics: Vec<Vec<u64>> = request
            .into_iter()
            .map(|part| shape(part).iter().map(|w| w.2).collect())
            .collect();
        assert_eq!(topics, [vec![1, 5], vec![2, 6], vec![3]]);
        assert_eq!(left(&mut s), [("d".into(), true, 4)]);
    }

    #[test]
    fn other_replicas_partitions_wait_and_keep_their_order() {
        let group = |t: &str| if t == "b" { 2 } else { 1 };
        let mut s = staging([
            insert("a", 1),
            insert("b", 2),
            insert("c", 3),
            insert("b", 4),
        ]);
        let request = s.take_request(&LIMITS, group);
        // `b` could not join, so `c` (after it) does not either: nothing overtakes `b`.
        assert_eq!(
            shape(request.into_iter().flatten()),
            [("a".into(), true, 1)]
        );
        assert_eq!(
            left(&mut s),
            [
                ("b".into(), true, 2),
                ("c".into(), true, 3),
                ("b".into(), true, 4)
            ]
        );
    }

    #[test]
    fn requests_across_partitions_stay_under_the_multi_partition_bytes() {
        // About 1 KiB each as encoded: four fit under 5 KiB, not five.
        let big = |t: &str, us| with_payload(t, us, vec![b'x'; 1000]);
        let mut s = staging((0..8).map(|i| big(["a", "b", "c", "d", "e"][i % 5], i as u64)));
        let request = s.take_request(&LIMITS, one_group);
        let bytes: usize = request.iter().flatten().map(|p| p.op.encoded_size()).sum();
        assert!(bytes <= LIMITS.max_multi_partition_bytes, "{bytes}");
        assert_eq!(request.iter().flatten().count(), 4);
        // One partition alone may go up to `max_bytes`.
        let mut alone = staging((0..8).map(|i| big("a", i)));
        assert_eq!(alone.take_request(&LIMITS, one_group)[0].len(), 8);
    }

    #[test]
    fn a_partition_that_is_full_takes_no_later_write() {
        let limits = RequestLimits {
            max_rows: 2,
            ..LIMITS
        };
        let mut s = staging([
            insert("a", 1),
            insert("a", 2),
            insert("a", 3),
            insert("a", 4),
        ]);
        assert_eq!(s.take_request(&limits, one_group)[0].len(), 2);
        assert_eq!(left(&mut s).len(), 2);
    }

    #[test]
    fn one_partition_per_request_when_the_limit_is_one() {
        let limits = RequestLimits {
            max_partitions: 1,
            ..LIMITS
        };
        let mut s = staging([insert("a", 1), insert("b", 2), insert("a", 3)]);
        let request = s.take_request(&limits, |_| panic!("no lookup needed"));
        assert_eq!(shape(request.into_iter().flatten()).len(), 2);
        assert_eq!(left(&mut s), [("b".into(), true, 2)]);
    }

    #[test]
    fn batches_are_capped_in_bytes_and_a_larger_write_goes_alone() {
        let mb = 1_000_000;
        // Non-UTF-8: stored as base64, 4/3 of the payload.
        let binary = |us| with_payload("t", us, vec![0xFF; mb]);
        let mut staging = Staging::default();
        staging.items.extend((1..=7).map(binary));
        staging
            .items
            .push_back(with_payload("t", 8, vec![0xFF; 6 * mb]));
        staging.items.push_back(insert("t", 9));
        let sizes: Vec<usize> = std::iter::from_fn(|| {
            let batch = staging
                .take_request(&LIMITS, one_group)
                .into_iter()
                .flatten()
                .collect::<Vec<_>>();
            let bytes: usize = batch.iter().map(|p| p.op.encoded_size()).sum();
            assert!(
                batch.len() == 1 || bytes <= LIMITS.max_bytes,
                "{} rows, {bytes} bytes",
                batch.len()
            );
            (!batch.is_empty()).then_some(batch.len())
        })
        .collect();
        // 1.33 MB each: three fit in 4 MiB; the 8 MB one goes alone; order is kept.
        assert_eq!(sizes, [3, 3, 1, 1, 1]);
    }

    #[test]
    fn an_insert_and_the_delete_of_its_ack_cancel_out_when_both_wait_unsent() {
        let mut request = vec![
            vec![
                insert("a", 1),
                insert("a", 2),
                delete("a", 1),
                insert("a", 3),
            ],
            vec![delete("b", 9), insert("b", 4), delete("b", 4)],
            vec![delete("c", 5)],
        ];
        let cancelled = cancel_acknowledged(&mut request);
        let mut gone = shape(cancelled);
        gone.sort();
        assert_eq!(
            gone,
            [
                ("a".into(), false, 1),
                ("a".into(), true, 1),
                ("b".into(), false, 4),
                ("b".into(), true, 4)
            ]
        );
        let left: Vec<_> = request.into_iter().map(shape).collect();
        assert_eq!(
            left,
            [
                vec![("a".into(), true, 2), ("a".into(), true, 3)],
                vec![("b".into(), false, 9)],
                vec![("c".into(), false, 5)]
            ]
        );
    }

    #[test]
    fn a_delete_of_an_insert_from_the_disk_buffer_is_always_sent() {
        let mut spooled = insert("a", 1);
        spooled.ticket = Some(crate::write::Ticket(Default::default()));
        let mut request = vec![vec![spooled, delete("a", 1)]];
        assert!(cancel_acknowledged(&mut request).is_empty());
        assert_eq!(request[0].len(), 2);
    }

    #[test]
    fn a_delete_of_a_row_read_back_is_always_sent() {
        let mut read_back = delete("a", 1);
        if let Op::Delete { written_us, .. } = &mut read_back.op {
            *written_us = Some(5);
        }
        let mut request = vec![vec![insert("a", 1), read_back]];
        assert!(cancel_acknowledged(&mut request).is_empty());
        assert_eq!(request[0].len(), 2);
    }
}
