//! Reads of a paced replay: a backlog of any size read oldest first in bounded pages.
//!
//! A replay is bounded above by `below`, a msgid taken when the subscription started: live
//! routing delivers what is published after it, the replay what was stored before it (see
//! docs/design.md "Paced replay"). Each page starts strictly after a cursor (the last msgid
//! the caller took), so rows acked meanwhile (tombstones below the cursor) are never walked
//! again and nothing is read twice. A wildcard's topics are read side by side, one cursor
//! each, for the caller to merge by msgid: memory stays bounded by the page sizes.

use scylla::response::{PagingState, PagingStateResponse};

use crate::error::StoreError;
use crate::msgid::MsgId;
use crate::rows::db_err;
use crate::stats::Counters;
use crate::store::Store;
use crate::types::StoredMessage;

/// Topic partitions one page request reads at the same time.
const PAGE_READS_IN_FLIGHT: usize = 16;

/// Where a paced replay starts, and what it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayPlan {
    /// The topics to read: the subscription's topic, or the topics its wildcard finds in
    /// the topic index.
    pub topics: Vec<String>,
    /// The oldest msgid the replay may deliver (inclusive); `None`: from the beginning.
    pub from: Option<MsgId>,
}

/// One topic's next page: the topic and the cursor it continues after (`None`: from the
/// plan's start).
pub type PageRequest = (String, Option<MsgId>);

impl Store {
    /// Plans a replay of `filter` below `below`: its topics, and where it starts. With
    /// `newest = Some(n)` it starts at the n-th newest message across all topics (older
    /// ones stay stored, as `max_returned_count` says); `since_ms` raises the start to a
    /// time. Only msgids are read to find the n-th newest, at most `n` per topic, and at
    /// most `2n` are kept at any time.
    ///
    /// `kept_by` (the `topics` filters configured now; empty: no restriction) leaves out
    /// the topics none of them matches, before the newest n are counted: rows stored
    /// while an older configuration kept their topic are not replayed through a wildcard
    /// (their acks would delete nothing a new publish stores, and they would come back
    /// to every new `#` subscriber forever).
    ///
    /// One replay read: it waits for a turn and is retried (see `replay_limit`).
    pub async fn replay_plan(
        &self,
        filter: &str,
        kept_by: &[String],
        newest: Option<u32>,
        since_ms: Option<i64>,
        below: &MsgId,
    ) -> Result<ReplayPlan, StoreError> {
        self.replay_read(|| self.plan_once(filter, kept_by, newest, since_ms, below))
            .await
    }

    async fn plan_once(
        &self,
        filter: &str,
        kept_by: &[String],
        newest: Option<u32>,
        since_ms: Option<i64>,
        below: &MsgId,
    ) -> Result<ReplayPlan, StoreError> {
        let mut topics = if crate::topic::is_wildcard(filter) {
            self.topics_matching(filter).await?
        } else {
            vec![filter.to_owned()]
        };
        topics.retain(|topic| kept(topic, kept_by));
        let since = since_ms.map(MsgId::lower_bound_for_time_ms);
        let Some(n) = newest.filter(|&n| n > 0) else {
            return Ok(ReplayPlan {
                topics,
                from: since,
            });
        };
        let n = n as usize;
        let conn = self.inner.connection()?;
        let mut newest_ids: Vec<MsgId> = Vec::new();
        for topic in &topics {
            let lower = since.map(|s| s.to_string()).unwrap_or_default();
            let lower = self.lower_bound(&conn, topic, lower).await;
            newest_ids.extend(self.newest_ids(&conn, topic, &lower, below, n).await?);
            if newest_ids.len() > 2 * n {
                keep_newest_ids(&mut newest_ids, n);
            }
        }
        keep_newest_ids(&mut newest_ids, n);
        // Fewer than n in all: the start is the time bound (all of them).
        let from = if newest_ids.len() < n {
            since
        } else {
            newest_ids.first().copied().max(since)
        };
        Ok(ReplayPlan { topics, from })
    }

    /// The next page of each requested topic: up to `limit` rows oldest first, strictly
    /// after its cursor, at or above `from` (and the topic's replay floor), below `below`.
    /// A topic that returns fewer than `limit` rows has nothing more below `below`.
    /// Each topic's page is one replay read (see `replay_limit`).
    pub async fn replay_pages(
        &self,
        requests: Vec<PageRequest>,
        from: Option<MsgId>,
        below: MsgId,
        limit: u32,
    ) -> Result<Vec<(String, Vec<StoredMessage>)>, StoreError> {
        let limit = self.limit(Some(limit));
        let mut reads = tokio::task::JoinSet::new();
        let mut out = Vec::with_capacity(requests.len());
        let mut pending = requests.into_iter();
        loop {
            while reads.len() < PAGE_READS_IN_FLIGHT {
                let Some((topic, after)) = pending.next() else {
                    break;
                };
                let store = self.clone();
                reads.spawn(async move {
                    let rows = store
                        .replay_read(|| store.replay_page(&topic, from, after, &below, limit))
                        .await?;
                    Ok::<_, StoreError>((topic, rows))
                });
            }
            let Some(done) = reads.join_next().await else {
                break;
            };
            out.push(done.map_err(|e| StoreError::Db(format!("read task failed: {e}")))??);
        }
        Ok(out)
    }

    /// One topic's next page (see `replay_pages`). The floor is read for a topic's first
    /// page only: a cursor is already past what the floor would skip.
    async fn replay_page(
        &self,
        topic: &str,
        from: Option<MsgId>,
        after: Option<MsgId>,
        below: &MsgId,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let conn = self.inner.connection()?;
        let from = from.map(|f| f.to_string()).unwrap_or_default();
        match after {
            Some(a) if a.as_str() >= from.as_str() => {
                let values = (topic, a.as_str(), below.as_str(), limit as i32);
                self.read_pages(&conn, &conn.replay_after, topic, &values, limit)
                    .await
            }
            _ => {
                let lower = self.lower_bound(&conn, topic, from).await;
                let values = (topic, lower.as_str(), below.as_str(), limit as i32);
                self.read_pages(&conn, &conn.replay_from, topic, &values, limit)
                    .await
            }
        }
    }

    /// The msgids of the newest `n` rows of `topic` in `[lower, below)`, newest first.
    async fn newest_ids(
        &self,
        conn: &crate::connection::Connection,
        topic: &str,
        lower: &str,
        below: &MsgId,
        n: usize,
    ) -> Result<Vec<MsgId>, StoreError> {
        let timeout = self.inner.cfg.request_timeout;
        let limit = n.min(i32::MAX as usize) as i32;
        let values = (topic, lower, below.as_str(), limit);
        let mut out = Vec::new();
        let mut paging = PagingState::start();
        loop {
            let (result, next) = conn
                .session
                .execute_single_page(&conn.replay_ids, &values, paging)
                .await
                .map_err(|e| StoreError::from_driver(e, timeout))?;
            let rows = result.into_rows_result().map_err(db_err)?;
            for row in rows.rows::<(String,)>().map_err(db_err)? {
                // Rows EMQX did not write are left out here as the page reads leave them.
                if let Some(id) = MsgId::parse_stored(&row.map_err(db_err)?.0) {
                    out.push(id);
                }
            }
            match next {
                PagingStateResponse::HasMorePages { state } if out.len() < n => paging = state,
                _ => break,
            }
        }
        Counters::add(&self.inner.counters.fetches, 1);
        out.truncate(n);
        Ok(out)
    }
}

/// True when a configured filter in `kept_by` matches `topic` (or there are none).
fn kept(topic: &str, kept_by: &[String]) -> bool {
    kept_by.is_empty() || kept_by.iter().any(|f| crate::topic::matches(topic, f))
}

/// Keeps the newest `n` ids, oldest first.
fn keep_newest_ids(ids: &mut Vec<MsgId>, n: usize) {
    ids.sort_unstable();
    ids.dedup();
    if ids.len() > n {
        ids.drain(..ids.len() - n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_topics_are_those_a_configured_filter_matches() {
        let filters = ["t/#".to_owned(), "+/cmd".to_owned()];
        assert!(kept("t/1", &filters));
        assert!(kept("d1/cmd", &filters));
        assert!(!kept("u/1", &filters));
        assert!(kept("u/1", &[]));
    }

    #[test]
    fn keep_newest_ids_keeps_the_newest_oldest_first() {
        let id = |t| MsgId::new(t, 1, 0);
        let mut ids = vec![id(3), id(1), id(5), id(2), id(4), id(5)];
        keep_newest_ids(&mut ids, 3);
        assert_eq!(ids, [id(3), id(4), id(5)]);
        keep_newest_ids(&mut ids, 10);
        assert_eq!(ids, [id(3), id(4), id(5)], "fewer than n: all");
    }
}
