//! API only the benchmarks and tests use: fills the topic index with many topics quickly
//! (100,000 through the write path would take minutes on a small machine), through the
//! store's own prepared statements, so the rows are laid out exactly as the writer lays
//! them out.

use std::collections::{BTreeMap, BTreeSet};

use futures::stream::{self, StreamExt, TryStreamExt};
use scylla::statement::batch::{Batch, BatchType};

use crate::error::StoreError;
use crate::index_keys;
use crate::store::Store;

/// Index rows per unlogged batch: one partition's, about 30 bytes each, well under
/// Cassandra's batch size warning (5 KiB).
const ROWS_PER_BATCH: usize = 100;

impl Store {
    /// Writes the index rows of `topics` (and of their first levels in the roots list) with
    /// `ttl_secs` (0: none), `in_flight` requests at a time. No message is written.
    pub async fn index_topics_directly(
        &self,
        topics: &[String],
        ttl_secs: i32,
        in_flight: usize,
    ) -> Result<(), StoreError> {
        let conn = self.inner.connection()?;
        let Some(ix) = &conn.index else {
            return Err(StoreError::IndexUnavailable("topic_index is off".into()));
        };
        let mut partitions: BTreeMap<(&str, i32), Vec<&str>> = BTreeMap::new();
        let mut roots: BTreeMap<&str, BTreeSet<i32>> = BTreeMap::new();
        for t in topics {
            let (root, bucket) = index_keys::partition_of(t);
            partitions.entry((root, bucket)).or_default().push(t);
            roots.entry(root).or_default().insert(bucket);
        }
        let timeout = self.inner.cfg.request_timeout;
        let session = &conn.session;
        let batches = partitions.iter().flat_map(|(&(root, bucket), topics)| {
            topics.chunks(ROWS_PER_BATCH).map(move |chunk| {
                let mut batch = Batch::new(BatchType::Unlogged);
                let mut values = Vec::with_capacity(chunk.len());
                for &topic in chunk {
                    batch.append_statement(ix.insert.clone());
                    values.push((root, bucket, topic, ttl_secs));
                }
                (batch, values)
            })
        });
        stream::iter(batches)
            .map(|(batch, values)| async move {
                session
                    .batch(&batch, values)
                    .await
                    .map_err(|e| StoreError::from_driver(e, timeout))
            })
            .buffer_unordered(in_flight.max(1))
            .try_for_each(|_| async { Ok(()) })
            .await?;
        for (root, buckets) in roots {
            let buckets: Vec<i32> = buckets.into_iter().collect();
            let roots_bucket = index_keys::bucket_of(root);
            session
                .execute_unpaged(
                    &ix.add_root_bucket,
                    (
                        ttl_secs,
                        buckets,
                        crate::schema::ROOTS_PARTITION,
                        roots_bucket,
                        root,
                    ),
                )
                .await
                .map_err(|e| StoreError::from_driver(e, timeout))?;
        }
        Ok(())
    }
}
