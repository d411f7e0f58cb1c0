//! The statements a request becomes: one prepared statement for a single write, an unlogged
//! batch of them otherwise (inserts and deletes mixed), with the write timestamps that let a delete win over its insert.

use std::borrow::Cow;

use scylla::serialize::SerializationError;
use scylla::serialize::row::{RowSerializationContext, SerializeRow};
use scylla::serialize::writers::RowWriter;
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::CqlTimestamp;

use crate::connection::Connection;
use crate::expiry::{self, RowTtl};
use crate::msgid::MsgId;
use crate::payload;
use crate::types::Message;
use crate::write::{Op, Pending};

/// Writes the rows of `parts` (one partition each): a single row as its prepared
/// statement, more as one unlogged batch. A batch of one partition is applied as one
/// mutation; one across partitions is kept by `requests` under Cassandra's thresholds for
/// those.
pub(crate) async fn execute(
    conn: &Connection,
    parts: &[&[Pending]],
    consistency: scylla::statement::Consistency,
) -> Result<(), scylla::errors::ExecutionError> {
    let session = &conn.session;
    let now = expiry::now_ms();
    let row = |p| row_values(p, now, conn.expiry_limit);
    let rows = parts.iter().map(|part| part.len()).sum::<usize>();
    if rows == 1
        && let Some(single) = parts.iter().find_map(|part| part.first())
    {
        return match row(single) {
            RowValues::Insert(v) => session.execute_unpaged(&conn.insert, v).await,
            RowValues::Delete(v) => session.execute_unpaged(&conn.delete, v).await,
        }
        .map(|_| ());
    }
    let mut b = Batch::new(BatchType::Unlogged);
    b.set_consistency(consistency);
    b.set_is_idempotent(true);
    let mut values = Vec::with_capacity(rows);
    for p in parts.iter().flat_map(|part| part.iter()) {
        let statement = if p.op.is_insert() {
            &conn.insert
        } else {
            &conn.delete
        };
        b.append_statement(statement.clone());
        values.push(row(p));
    }
    session.batch(&b, values).await.map(|_| ())
}

fn row_values(p: &Pending, now: i64, limit: expiry::ExpiryLimit) -> RowValues<'_> {
    match &p.op {
        Op::Insert(m) => RowValues::Insert(insert_values(
            m,
            expiry::row_ttl(m.ttl_secs, m.arrived_ms, now, limit),
        )),
        Op::Delete {
            topic,
            msgid,
            written_us,
        } => RowValues::Delete(delete_values(topic, msgid, *written_us)),
    }
}

/// The values of one row of a batch, which may mix inserts and deletes.
enum RowValues<'a> {
    Insert(InsertValues<'a>),
    Delete(DeleteValues<'a>),
}

impl SerializeRow for RowValues<'_> {
    fn serialize(
        &self,
        ctx: &RowSerializationContext<'_>,
        writer: &mut RowWriter,
    ) -> Result<(), SerializationError> {
        match self {
            RowValues::Insert(v) => v.serialize(ctx, writer),
            RowValues::Delete(v) => v.serialize(ctx, writer),
        }
    }

    fn is_empty(&self) -> bool {
        false
    }
}

type DeleteValues<'a> = (i64, &'a str, &'a str);

type InsertValues<'a> = (
    &'a str,
    &'a str,
    CqlTimestamp,
    Cow<'a, str>,
    i32,
    i32,
    &'a str,
    i32,
    i64,
);

/// The write timestamp of a message is its publish time in µs, taken from its GUID, so
/// the insert and its delete agree on it without sharing any state. `ttl` is the row's
/// TTL at the moment it is sent (see `expiry::row_ttl`).
pub(crate) fn insert_values(m: &Message, ttl: RowTtl) -> InsertValues<'_> {
    (
        &m.topic,
        m.msgid.as_str(),
        CqlTimestamp(m.arrived_ms),
        payload::encode(&m.payload),
        m.qos as i32,
        m.retain as i32,
        &m.sender,
        ttl.bound(),
        m.msgid.timestamp_us() as i64,
    )
}

/// The tombstone's timestamp is one microsecond after its insert's, so the delete wins
/// even when it reaches Cassandra first. A row read back with a later write time
/// (`written_us`: EMQX 4.x wrote without a timestamp, Cassandra stamped it on arrival) is
/// deleted one microsecond after that instead; our own rows never carry one, so their
/// delete keeps the timestamp derived from the msgid alone.
pub(crate) fn delete_values<'a>(
    topic: &'a str,
    msgid: &'a MsgId,
    written_us: Option<i64>,
) -> DeleteValues<'a> {
    let inserted = (msgid.timestamp_us() as i64).max(written_us.unwrap_or(i64::MIN));
    (inserted + 1, topic, msgid.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, us: u64) -> Message {
        Message {
            topic: topic.into(),
            msgid: MsgId::new(us, 1, 0),
            sender: "c".into(),
            qos: 1,
            retain: false,
            payload: b"p".to_vec(),
            arrived_ms: (us / 1000) as i64,
            ttl_secs: None,
        }
    }

    #[test]
    fn a_delete_is_written_one_microsecond_after_its_insert() {
        let mut m = message("t", 1_700_000_000_123_456);
        m.ttl_secs = Some(60);
        let ins = insert_values(&m, RowTtl::Secs(60));
        let del = delete_values(&m.topic, &m.msgid, None);
        assert_eq!(ins.8, 1_700_000_000_123_456, "insert at the publish time");
        assert_eq!(del.0, ins.8 + 1);
        assert_eq!((del.1, del.2), (ins.0, ins.1), "same row");
        assert_eq!(ins.7, 60);
    }

    #[test]
    fn a_row_stamped_later_by_cassandra_is_deleted_after_its_write_time() {
        let m = message("t", 1_700_000_000_123_456);
        // EMQX 4.x: no client timestamp, the row landed 3 ms after its publish.
        let landed = 1_700_000_000_126_789;
        assert_eq!(
            delete_values(&m.topic, &m.msgid, Some(landed)).0,
            landed + 1
        );
        // A write time at or before the msgid's never moves our own delete earlier.
        for earlier in [1_700_000_000_123_456, 1_600_000_000_000_000] {
            assert_eq!(
                delete_values(&m.topic, &m.msgid, Some(earlier)).0,
                1_700_000_000_123_457
            );
        }
    }
}
