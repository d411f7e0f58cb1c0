//! Wildcard lookups in the topic index: the topics a subscription filter matches.
//!
//! A filter reads only the key range of its literal prefix (`index_keys`), page by page,
//! keeps the topics that match and stops at `max_wildcard_topics`. A filter that starts with
//! a wildcard reads the roots list first, then every root's ranges, several at a time. A
//! range Cassandra aborts for tombstones (expired topics) is read again in narrower ranges.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use scylla::response::{PagingState, PagingStateResponse};

use crate::connection::{Connection, IndexStatements};
use crate::error::StoreError;
use crate::index_keys::{self, BUCKETS, KeyRange};
use crate::rows::db_err;
use crate::schema::ROOTS_PARTITION;
use crate::stats::Counters;

/// Index ranges one lookup reads at the same time.
const INDEX_READS_IN_FLIGHT: usize = 8;

/// Narrower reads one range may be split into before its error stands: a read that times
/// out for another reason than tombstones (a node down) is not split for ever.
const NARROWINGS_PER_RANGE: u32 = 64;

/// One index partition.
enum Partition {
    /// (first level, bucket) of `schema::INDEX_TABLE`.
    Bucketed { root: String, bucket: i32 },
    /// A first level of `schema::LEGACY_INDEX_TABLE`.
    Legacy { root: String },
}

/// An index row: a topic, or in the roots list a first level and the buckets it uses.
type Row = (String, Option<Vec<i32>>);

/// What a lookup reads with.
pub(crate) struct Lookup<'a> {
    pub(crate) conn: &'a Connection,
    pub(crate) ix: &'a IndexStatements,
    pub(crate) counters: &'a Counters,
    pub(crate) timeout: Duration,
}

impl Lookup<'_> {
    /// Topics in the index that match `filter`, sorted, at most `max`.
    pub(crate) async fn topics_matching(
        &self,
        filter: &str,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut reads = Vec::new();
        if filter.starts_with('+') || filter.starts_with('#') {
            for (root, used) in self.roots().await? {
                // A filter starting with a wildcard never matches a topic starting with `$`.
                if !root.starts_with('$') {
                    let plan = index_keys::reads_for(&index_keys::rooted(filter, &root));
                    let buckets = match plan.bucket {
                        Some(b) if used.contains(&b) => vec![b],
                        Some(_) => Vec::new(),
                        None => used,
                    };
                    push_reads(&mut reads, &root, &buckets, &plan.ranges);
                }
            }
            if self.ix.legacy.is_some() {
                for root in self.legacy_roots().await? {
                    if !root.starts_with('$') {
                        let plan = index_keys::reads_for(&index_keys::rooted(filter, &root));
                        push_legacy_reads(&mut reads, &root, &plan.ranges);
                    }
                }
            }
        } else {
            let root = crate::topic::root(filter);
            let plan = index_keys::reads_for(filter);
            let buckets: Vec<i32> = match plan.bucket {
                Some(b) => vec![b],
                None => (0..BUCKETS).collect(),
            };
            push_reads(&mut reads, root, &buckets, &plan.ranges);
            if self.ix.legacy.is_some() {
                push_legacy_reads(&mut reads, root, &plan.ranges);
            }
        }
        let found = AtomicUsize::new(0);
        let keep = |t: &str| crate::topic::matches(t, filter);
        let mut results = stream::iter(reads)
            .map(|(partition, range)| self.scan(partition, range, &keep, &found, max))
            .buffered(INDEX_READS_IN_FLIGHT);
        let mut topics = std::collections::BTreeSet::new();
        while let Some(rows) = results.next().await {
            topics.extend(rows?.into_iter().map(|(t, _)| t));
            if topics.len() >= max {
                break;
            }
        }
        Ok(topics.into_iter().take(max).collect())
    }

    /// Every first level in the roots list, with the buckets its topics use.
    async fn roots(&self) -> Result<Vec<(String, Vec<i32>)>, StoreError> {
        let found = AtomicUsize::new(0);
        let reads: Vec<_> = (0..BUCKETS)
            .map(|bucket| {
                let root = ROOTS_PARTITION.to_owned();
                (Partition::Bucketed { root, bucket }, KeyRange::under(""))
            })
            .collect();
        let mut results = stream::iter(reads)
            .map(|(partition, range)| self.scan(partition, range, &|_| true, &found, usize::MAX))
            .buffered(INDEX_READS_IN_FLIGHT);
        let mut roots = Vec::new();
        while let Some(rows) = results.next().await {
            roots.extend(
                rows?
                    .into_iter()
                    .map(|(root, used)| (root, used.unwrap_or_default())),
            );
        }
        Ok(roots)
    }

    /// Every first level in the old index's roots partition.
    async fn legacy_roots(&self) -> Result<Vec<String>, StoreError> {
        let found = AtomicUsize::new(0);
        let partition = Partition::Legacy {
            root: ROOTS_PARTITION.to_owned(),
        };
        let all = KeyRange::under("");
        let rows = self
            .scan(partition, all, &|_| true, &found, usize::MAX)
            .await?;
        Ok(rows.into_iter().map(|(root, _)| root).collect())
    }

    /// The rows of `range` in `partition` that `keep` accepts, page by page, until the
    /// lookup has found `max` (counted in `found`). A range Cassandra aborts for tombstones
    /// (or that times out) is read again as narrower ranges, in key order.
    async fn scan(
        &self,
        partition: Partition,
        range: KeyRange,
        keep: &(dyn Fn(&str) -> bool + Sync),
        found: &AtomicUsize,
        max: usize,
    ) -> Result<Vec<Row>, StoreError> {
        let mut out = Vec::new();
        let mut todo = vec![range];
        let mut narrowings = 0;
        while let Some(range) = todo.pop() {
            if found.load(Ordering::Relaxed) >= max {
                break;
            }
            match self.pages(&partition, &range, keep, found, max).await {
                Ok(rows) => out.extend(rows),
                Err(e) if too_wide(&e) && narrowings < NARROWINGS_PER_RANGE => {
                    let Some(parts) = range.split() else {
                        return Err(e);
                    };
                    if narrowings == 0 {
                        Counters::add(&self.counters.sliced_reads, 1);
                    }
                    narrowings += 1;
                    todo.extend(parts.into_iter().rev());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// One range read page by page. Rows are counted in `found` only once the whole range
    /// was read (a range that fails is read again narrower).
    async fn pages(
        &self,
        partition: &Partition,
        range: &KeyRange,
        keep: &(dyn Fn(&str) -> bool + Sync),
        found: &AtomicUsize,
        max: usize,
    ) -> Result<Vec<Row>, StoreError> {
        let (lo, hi) = range.bounds();
        let mut out = Vec::new();
        let mut paging = PagingState::start();
        loop {
            let (result, next) = match (partition, &hi, &self.ix.legacy) {
                (Partition::Bucketed { root, bucket }, Some(hi), _) => {
                    let values = (root, bucket, &lo, hi);
                    self.page(&self.ix.select_range, values, paging).await
                }
                (Partition::Bucketed { root, bucket }, None, _) => {
                    let values = (root, bucket, &lo);
                    self.page(&self.ix.select_from, values, paging).await
                }
                (Partition::Legacy { root }, Some(hi), Some(legacy)) => {
                    self.page(&legacy.select_range, (root, &lo, hi), paging)
                        .await
                }
                (Partition::Legacy { root }, None, Some(legacy)) => {
                    self.page(&legacy.select_from, (root, &lo), paging).await
                }
                (Partition::Legacy { .. }, _, None) => return Ok(out),
            }?;
            let rows = result.into_rows_result().map_err(db_err)?;
            if matches!(partition, Partition::Legacy { .. }) {
                for row in rows.rows::<(String,)>().map_err(db_err)? {
                    let (topic,) = row.map_err(db_err)?;
                    if keep(&topic) {
                        out.push((topic, None));
                    }
                }
            } else {
                for row in rows.rows::<Row>().map_err(db_err)? {
                    let row = row.map_err(db_err)?;
                    if keep(&row.0) {
                        out.push(row);
                    }
                }
            }
            let enough = found.load(Ordering::Relaxed) + out.len() >= max;
            match next {
                PagingStateResponse::HasMorePages { state } if !enough => paging = state,
                _ => break,
            }
        }
        found.fetch_add(out.len(), Ordering::Relaxed);
        Ok(out)
    }

    async fn page(
        &self,
        stmt: &scylla::statement::prepared::PreparedStatement,
        values: impl scylla::serialize::row::SerializeRow,
        paging: PagingState,
    ) -> Result<
        (
            scylla::response::query_result::QueryResult,
            PagingStateResponse,
        ),
        StoreError,
    > {
        self.conn
            .session
            .execute_single_page(stmt, values, paging)
            .await
            .map_err(|e| StoreError::from_driver(e, self.timeout))
    }
}

/// Reads of `ranges` in each of `buckets` of `root`; a single topic only in its own bucket.
fn push_reads(
    reads: &mut Vec<(Partition, KeyRange)>,
    root: &str,
    buckets: &[i32],
    ranges: &[KeyRange],
) {
    for &bucket in buckets {
        for range in ranges {
            if let KeyRange::Exact(topic) = range
                && index_keys::partition_of(topic).1 != bucket
            {
                continue;
            }
            let root = root.to_owned();
            reads.push((Partition::Bucketed { root, bucket }, range.clone()));
        }
    }
}

/// Reads of `ranges` in the old index's partition of `root`.
fn push_legacy_reads(reads: &mut Vec<(Partition, KeyRange)>, root: &str, ranges: &[KeyRange]) {
    for range in ranges {
        let root = root.to_owned();
        reads.push((Partition::Legacy { root }, range.clone()));
    }
}

/// A read that a narrower range can pass: aborted for tombstones, or timed out (walking
/// tombstones takes time too).
fn too_wide(e: &StoreError) -> bool {
    e.is_tombstone_overflow() || matches!(e, StoreError::Timeout(_))
}
