//! API only the benchmarks and tests use: writes that bypass the pipeline (the baseline
//! of one awaited request per message) and a cursor read.

use crate::error::StoreError;
use crate::msgid::MsgId;
use crate::statements::{delete_values, insert_values};
use crate::store::Store;
use crate::types::{Message, StoredMessage};

impl Store {
    /// One awaited INSERT, bypassing the pipeline: the design of one-write-per-call
    /// plugins, kept as the benchmark's baseline.
    pub async fn store_unbatched(&self, msg: Message) -> Result<(), StoreError> {
        self.check_payload(&msg)?;
        let conn = self.inner.connection()?;
        let ttl = crate::expiry::row_ttl(
            msg.ttl_secs,
            msg.arrived_ms,
            crate::expiry::now_ms(),
            conn.expiry_limit,
        );
        conn.session
            .execute_unpaged(&conn.insert, insert_values(&msg, ttl))
            .await
            .map(|_| ())
            .map_err(|e| StoreError::from_driver(e, self.inner.cfg.request_timeout))
    }

    /// One awaited DELETE, bypassing the pipeline (the benchmark's baseline, as above).
    pub async fn delete_unbatched(&self, topic: &str, msgid: MsgId) -> Result<(), StoreError> {
        let conn = self.inner.connection()?;
        conn.session
            .execute_unpaged(&conn.delete, delete_values(topic, &msgid, None))
            .await
            .map(|_| ())
            .map_err(|e| StoreError::from_driver(e, self.inner.cfg.request_timeout))
    }

    /// Reads up to `limit` messages of one topic oldest first, strictly after `after` (a
    /// cursor: the last msgid of the previous call) and not older than `since_ms`. Walks a
    /// partition of any size in bounded steps.
    pub async fn fetch_after(
        &self,
        topic: &str,
        after: Option<&MsgId>,
        since_ms: Option<i64>,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let limit = self.limit(Some(limit));
        let since = since_ms
            .map(|ms| MsgId::lower_bound_for_time_ms(ms).to_string())
            .unwrap_or_default();
        let conn = self.inner.connection()?;
        let lower = self.lower_bound(&conn, topic, since).await;
        let (stmt, bound) = match after {
            Some(a) if a.as_str() >= lower.as_str() => (&conn.select_after, a.to_string()),
            _ => (&conn.select_from, lower),
        };
        self.read_pages(
            &conn,
            stmt,
            topic,
            &(topic, bound.as_str(), limit as i32),
            limit,
        )
        .await
    }
}
