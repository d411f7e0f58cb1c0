//! Reads: one topic page by page from its floor, and newest-N across the topics a wildcard
//! filter finds in the topic index. The operators' count and purge: `admin`.

use std::time::Duration;

use scylla::response::{PagingState, PagingStateResponse};
use scylla::serialize::row::SerializeRow;
use scylla::value::CqlTimestamp;

use crate::connection::Connection;
use crate::error::StoreError;
use crate::msgid::MsgId;
use crate::payload;
use crate::rows::db_err;
use crate::shared::{Inner, lock};
use crate::stats::Counters;
use crate::store::Store;
use crate::types::{FetchOptions, StoreEvent, StoredMessage};

/// Topic partitions a wildcard replay reads at the same time.
const WILDCARD_READS_IN_FLIGHT: usize = 16;

impl Store {
    /// Reads stored messages of one topic, oldest first. With a limit, the newest `limit`
    /// messages are returned (older ones stay stored). Read page by page, never more than
    /// `max_fetch_rows` rows.
    pub async fn fetch(
        &self,
        topic: &str,
        opts: FetchOptions,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let limit = self.limit(opts.limit);
        let since = opts
            .since_ms
            .map(|ms| MsgId::lower_bound_for_time_ms(ms).to_string())
            .unwrap_or_default();
        let conn = self.inner.connection()?;
        let lower = self.lower_bound(&conn, topic, since).await;
        let mut rows = self.read_newest(&conn, topic, &lower, limit).await?;
        rows.reverse();
        Ok(rows)
    }

    /// Messages for a subscription filter, oldest first. A plain topic reads its partition;
    /// a wildcard filter finds its topics in the topic index (never by scanning
    /// `mqtt_msg`), reads each, and returns the newest `limit` across all of them.
    pub async fn fetch_matching(
        &self,
        filter: &str,
        opts: FetchOptions,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        if !crate::topic::is_wildcard(filter) {
            return self.fetch(filter, opts).await;
        }
        let limit = self.limit(opts.limit) as usize;
        let topics = self.topics_matching(filter).await?;
        let mut reads = tokio::task::JoinSet::new();
        let mut newest: Vec<StoredMessage> = Vec::new();
        let mut pending = topics.into_iter();
        loop {
            while reads.len() < WILDCARD_READS_IN_FLIGHT {
                let Some(topic) = pending.next() else { break };
                let store = self.clone();
                reads.spawn(async move { store.fetch(&topic, opts).await });
            }
            let Some(done) = reads.join_next().await else {
                break;
            };
            let rows = done.map_err(|e| StoreError::Db(format!("read task failed: {e}")))??;
            newest.extend(rows);
            // Keep only the newest `limit` seen so far: memory stays bounded by the limit.
            if newest.len() > limit * 2 {
                keep_newest(&mut newest, limit);
            }
        }
        keep_newest(&mut newest, limit);
        Ok(newest)
    }

    /// Topics in the index that match `filter` (at most `max_wildcard_topics`), sorted.
    /// Only the index range of the filter's literal prefix is read (see `index_reads`).
    pub async fn topics_matching(&self, filter: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.inner.connection()?;
        let Some(ix) = &conn.index else {
            return Err(StoreError::IndexUnavailable("topic_index is off".into()));
        };
        let lookup = crate::index_reads::Lookup {
            conn: &conn,
            ix,
            counters: &self.inner.counters,
            timeout: self.inner.cfg.request_timeout,
        };
        lookup
            .topics_matching(filter, self.inner.cfg.max_wildcard_topics)
            .await
    }

    pub(crate) fn limit(&self, requested: Option<u32>) -> u32 {
        let max = self.inner.cfg.max_fetch_rows;
        requested.unwrap_or(max).clamp(1, max)
    }

    /// Where a read of `topic` starts: `since` or the topic's replay floor, the higher.
    /// Without a readable floor the read starts at `since` (slower, never wrong).
    pub(crate) async fn lower_bound(
        &self,
        conn: &Connection,
        topic: &str,
        since: String,
    ) -> String {
        let Some(f) = &conn.floor else { return since };
        match crate::floor::read(conn, f, topic, self.inner.cfg.request_timeout).await {
            Ok(Some(floor)) if floor > since => floor,
            _ => since,
        }
    }

    /// The newest `limit` rows at or above `lower`, newest first. A read that Cassandra
    /// aborts for tombstones is redone in slices; either that or a tombstone warning asks
    /// for the topic's floor to be moved up.
    async fn read_newest(
        &self,
        conn: &Connection,
        topic: &str,
        lower: &str,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let values = (topic, lower, limit as i32);
        match self
            .read_pages(conn, &conn.select_newest, topic, &values, limit)
            .await
        {
            Err(e) if e.is_tombstone_overflow() => {
                Counters::add(&self.inner.counters.sliced_reads, 1);
                self.inner.request_floor_scan(topic);
                crate::floor::read_newest_sliced(lower, limit, |lo, hi, n| async move {
                    let values = (topic, lo.as_str(), hi.as_str(), n as i32);
                    self.read_pages(conn, &conn.select_range, topic, &values, n)
                        .await
                })
                .await
            }
            other => other,
        }
    }

    pub(crate) async fn read_pages(
        &self,
        conn: &Connection,
        stmt: &scylla::statement::prepared::PreparedStatement,
        topic: &str,
        values: &(impl SerializeRow + Sync),
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let c = &self.inner.counters;
        Counters::add(&c.fetches, 1);
        let started = std::time::Instant::now();
        let result = read_pages(
            conn,
            stmt,
            topic,
            values,
            limit,
            self.inner.cfg.request_timeout,
        )
        .await;
        c.read_latency.record(started.elapsed());
        match result {
            Ok(Page {
                rows,
                warned,
                unreadable,
            }) => {
                Counters::add(&c.fetched_rows, rows.len() as u64);
                if warned {
                    self.inner.request_floor_scan(topic);
                }
                if let Some((count, example)) = unreadable {
                    note_unreadable(&self.inner, topic, count, example);
                }
                Ok(rows)
            }
            // A read cut off by `shutdown` (its connection closed under it) was not failed by
            // Cassandra: it is answered like every other request the stop ended.
            Err(_) if self.inner.stopped() => Err(StoreError::Shutdown),
            Err(e) => {
                // An overflow is redone in slices by the caller, not a failed fetch.
                if !e.is_tombstone_overflow() {
                    Counters::add(&c.fetch_failures, 1);
                }
                Err(e)
            }
        }
    }
}

/// Topics remembered as reported; past this many the memory starts over (a topic may then
/// be reported again, never left uncounted).
const UNREADABLE_TOPICS_REMEMBERED: usize = 10_000;

/// Counts rows a read left out for their msgid, and reports them once per topic.
fn note_unreadable(inner: &Inner, topic: &str, count: u64, example: String) {
    Counters::add(&inner.counters.unreadable_rows, count);
    let first = {
        let mut seen = lock(&inner.unreadable_topics);
        if seen.len() >= UNREADABLE_TOPICS_REMEMBERED {
            seen.clear();
        }
        seen.insert(topic.to_owned())
    };
    if first {
        inner.emit(StoreEvent::UnreadableRows {
            topic: topic.to_owned(),
            count,
            example: example.chars().take(64).collect(),
        });
    }
}

/// Sorts by msgid (publish time) and keeps the newest `limit`, oldest first.
fn keep_newest(rows: &mut Vec<StoredMessage>, limit: usize) {
    rows.sort_by(|a, b| a.msgid.cmp(&b.msgid));
    if rows.len() > limit {
        rows.drain(..rows.len() - limit);
    }
}

/// What one read of a topic found.
struct Page {
    rows: Vec<StoredMessage>,
    /// Cassandra warned: the read walked more than `tombstone_warn_threshold` tombstones.
    warned: bool,
    /// Rows left out because their msgid is not what EMQX writes: how many, and one msgid.
    unreadable: Option<(u64, String)>,
}

/// Rows of one topic, page by page, at most `limit`.
///
/// NOTE: a row whose msgid is not exactly 32 upper-case hex digits (not written by EMQX:
/// another tool, a hand-made row) is left out and stays stored. It cannot be replayed as
/// an EMQX message (whose id is that GUID), and an ack could not delete it: the delete of
/// an id goes to its canonical text, another key. Replaying it would deliver it again on
/// every subscribe; dropping it would lose it. So it is counted (`unreadable_rows`),
/// reported once per topic, and left for the operator (`purge`, or cqlsh).
async fn read_pages(
    conn: &Connection,
    stmt: &scylla::statement::prepared::PreparedStatement,
    topic: &str,
    values: &(impl SerializeRow + Sync),
    limit: u32,
    request_timeout: Duration,
) -> Result<Page, StoreError> {
    type Row = (
        String,
        Option<CqlTimestamp>,
        Option<String>,
        Option<i32>,
        Option<i32>,
        Option<String>,
        Option<i32>,
        Option<i64>,
    );
    let mut out = Vec::with_capacity(limit.min(1024) as usize);
    let mut warned = false;
    let mut unreadable: Option<(u64, String)> = None;
    let mut paging = PagingState::start();
    loop {
        let (result, next) = conn
            .session
            .execute_single_page(stmt, values, paging)
            .await
            .map_err(|e| StoreError::from_driver(e, request_timeout))?;
        warned |= result.warnings().next().is_some();
        let rows = result.into_rows_result().map_err(db_err)?;
        for row in rows.rows::<Row>().map_err(db_err)? {
            let (msgid, arrived, stored, qos, retain, sender, ttl_secs, written) =
                row.map_err(db_err)?;
            let Some(id) = MsgId::parse_stored(&msgid) else {
                let seen = unreadable.get_or_insert_with(|| (0, msgid.clone()));
                seen.0 += 1;
                continue;
            };
            out.push(StoredMessage {
                topic: topic.to_owned(),
                payload: payload::decode(stored.as_deref().unwrap_or_default())?,
                msgid,
                sender: sender.unwrap_or_default(),
                qos: qos.unwrap_or(1),
                retain: retain.unwrap_or(0) != 0,
                arrived_ms: arrived.map(|t| t.0).unwrap_or(0),
                ttl_secs,
                written_us: written.filter(|&w| w > id.timestamp_us() as i64),
            });
        }
        match next {
            PagingStateResponse::HasMorePages { state } if out.len() < limit as usize => {
                paging = state
            }
            _ => break,
        }
    }
    out.truncate(limit as usize);
    Ok(Page {
        rows: out,
        warned,
        unreadable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(msgid: &str) -> StoredMessage {
        StoredMessage {
            topic: "t".into(),
            msgid: msgid.into(),
            sender: "c".into(),
            qos: 1,
            retain: false,
            payload: Vec::new(),
            arrived_ms: 0,
            ttl_secs: None,
            written_us: None,
        }
    }

    fn ids(rows: &[StoredMessage]) -> Vec<&str> {
        rows.iter().map(|r| r.msgid.as_str()).collect()
    }

    #[test]
    fn keep_newest_keeps_the_newest_oldest_first() {
        let mut rows = vec![row("03"), row("01"), row("05"), row("02"), row("04")];
        keep_newest(&mut rows, 3);
        assert_eq!(ids(&rows), ["03", "04", "05"]);
        keep_newest(&mut rows, 10);
        assert_eq!(ids(&rows), ["03", "04", "05"], "fewer than the limit: all");
        keep_newest(&mut rows, 0);
        assert!(rows.is_empty());
    }
}
