//! Sending one batch and settling each of its writes by how Cassandra answered: written,
//! waiting for its partition, back to the buffer, refused (isolated by halving), or failed.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::{Instant, sleep};

use crate::connection::Connection;
use crate::error::{StoreError, WriteVerdict, write_verdict};
use crate::expiry::{self, RowTtl};
use crate::index_writes::ensure_indexed;
use crate::requests::Request;
use crate::shared::{Inner, set_state};
use crate::statements::execute;
use crate::stats::Counters;
use crate::types::{ConnState, StoreEvent};
use crate::waiting::Refusal;
use crate::write::{Op, Pending};

/// Sends a request and settles its writes. A request across partitions that Cassandra
/// takes is settled at once; one it does not take is sent again one partition at a time
/// (`write_batch`), so each partition gets its own verdict: a refusal, a transient or a
/// lost connection is then handled exactly as for a single partition.
pub(crate) async fn write_request(
    inner: &Arc<Inner>,
    conn: &Connection,
    mut request: Request,
    retry: Option<Instant>,
) {
    if request.len() == 1 {
        let part = request.pop().unwrap_or_default();
        return write_batch(inner, conn, part, retry).await;
    }
    let mut parts: Request = request
        .into_iter()
        .map(|part| drop_expired(inner, part))
        .filter(|part| !part.is_empty())
        .collect();
    if parts.len() <= 1 {
        let part = parts.pop().unwrap_or_default();
        return write_batch(inner, conn, part, None).await;
    }
    let c = &inner.counters;
    Counters::add(&c.batches, 1);
    let started = std::time::Instant::now();
    let result = send_parts(inner, conn, &parts).await;
    c.write_latency.record(started.elapsed());
    match result {
        Ok(()) => {
            for part in parts {
                outcome(inner, part, Sent::Written, None);
            }
        }
        Err(_) => {
            Counters::add(&c.requests_split, 1);
            for part in parts {
                write_batch(inner, conn, part, None).await;
            }
        }
    }
}

/// Indexes the parts' topics, resets the floors a late write passes, and writes every part
/// in one request.
async fn send_parts(
    inner: &Arc<Inner>,
    conn: &Connection,
    parts: &[Vec<Pending>],
) -> Result<(), scylla::errors::ExecutionError> {
    for part in parts {
        // The topic is indexed before its messages land (see `send`).
        ensure_indexed(inner, conn, part).await?;
        crate::floor::reset_floor_if_late(inner, conn, part).await?;
    }
    let parts: Vec<&[Pending]> = parts.iter().map(Vec::as_slice).collect();
    execute(conn, &parts, inner.cfg.write_consistency).await
}

/// Sends one batch and settles each of its writes: written; waiting for its partition
/// (Cassandra answered but could not take it); back to the buffer (connection lost); or
/// failed. A batch Cassandra refuses for its content is split in halves until the row that
/// carries the cause is alone, so only that row fails. `retry`: the batch came from
/// `waiting`, with the moment its writes first waited.
pub(crate) async fn write_batch(
    inner: &Arc<Inner>,
    conn: &Connection,
    batch: Vec<Pending>,
    retry: Option<Instant>,
) {
    let topic = batch.first().map(|p| p.op.topic().to_owned());
    let taken = batch.len() as u64;
    let batch = drop_expired(inner, batch);
    let request = |part: Vec<Pending>| async move {
        let sent = send(inner, conn, &part).await;
        (part, sent)
    };
    // A retry's writes stop counting as `retrying` once each part is settled or back in
    // `waiting` (after, so `degraded()` never counts them twice nor misses them).
    let retrying = |n: usize| {
        if retry.is_some() {
            inner.retrying.fetch_sub(n as u64, Ordering::Relaxed);
        }
    };
    retrying(taken as usize - batch.len());
    isolating_refusals(batch, request, |part, sent| {
        let n = part.len();
        outcome(inner, part, sent, retry);
        retrying(n);
    })
    .await;
    if let (Some(_), Some(topic)) = (retry, topic) {
        inner.with_waiting(|w| w.retry_done(&topic));
        // The rest of the topic may be due at once (it landed).
        inner.work.notify_one();
    }
}

/// Settles one part of a batch by how its request ended (see `write_batch`).
fn outcome(inner: &Arc<Inner>, part: Vec<Pending>, sent: Sent, retry: Option<Instant>) {
    match sent {
        Sent::Written => {
            if retry.is_some() || inner.waiting_topics.load(Ordering::Relaxed) > 0 {
                inner.with_waiting(|w| w.landed(part[0].op.topic(), Instant::now()));
            }
            settle(inner, part, Ok(()));
        }
        Sent::Wait { reason } => {
            inner.wait(part, retry, Refusal::Transient { reason });
        }
        Sent::Disconnected(e) => {
            // Cassandra went away: these writes are not failures, they wait (in the
            // buffer, under its cap) for the connection to come back.
            set_state(inner, ConnState::Disconnected { reason: e });
            let n = part.len() as u64;
            Counters::add(&inner.counters.requeued, n);
            inner.emit(StoreEvent::WritesRequeued { count: n });
            if retry.is_some() {
                inner.wait(part, retry, Refusal::Disconnected);
            } else {
                inner.requeue(part);
            }
        }
        Sent::Refused { counter, error } => {
            let c = &inner.counters;
            Counters::add(
                match counter {
                    "invalid" => &c.refused_invalid,
                    _ => &c.refused_protocol,
                },
                1,
            );
            settle(inner, part, Err(error));
        }
        Sent::Failed(e) => settle(inner, part, Err(e)),
    }
}

/// Sends `batch` through `request`, halving every part Cassandra refuses for its content
/// until each refused row is alone (a batch of n with one bad row costs about 2·log2(n)
/// more requests); every other outcome, and a refused single row, goes to `done` with its
/// part. Parts go out one after another, in order.
async fn isolating_refusals<R, F>(
    batch: Vec<Pending>,
    mut request: R,
    mut done: impl FnMut(Vec<Pending>, Sent),
) where
    R: FnMut(Vec<Pending>) -> F,
    F: std::future::Future<Output = (Vec<Pending>, Sent)>,
{
    let mut parts = vec![batch];
    while let Some(part) = parts.pop() {
        if part.is_empty() {
            continue;
        }
        match request(part).await {
            (mut first, Sent::Refused { .. }) if first.len() > 1 => {
                let second = first.split_off(first.len() / 2);
                parts.push(second);
                parts.push(first);
            }
            (part, sent) => done(part, sent),
        }
    }
}

/// How one request of a batch ended.
enum Sent {
    Written,
    /// A coordinator-side transient (see `WriteVerdict::Wait`).
    Wait {
        reason: String,
    },
    Disconnected(StoreError),
    /// Refused for its content (see `WriteVerdict::Refused`); `counter` names the reason.
    Refused {
        counter: &'static str,
        error: StoreError,
    },
    Failed(StoreError),
}

/// Sends the batch; errors that are neither a transient of the coordinator, nor a refusal,
/// nor a lost connection are tried `write_attempts` times, then wait if transient.
async fn send(inner: &Arc<Inner>, conn: &Connection, batch: &[Pending]) -> Sent {
    let c = &inner.counters;
    let timeout = inner.cfg.request_timeout;
    let mut attempt = 1;
    loop {
        Counters::add(&c.batches, 1);
        // The topic is indexed before its messages land, so a wildcard replay that finds a
        // message can always find its topic.
        let started = std::time::Instant::now();
        let result = match ensure_indexed(inner, conn, batch).await {
            Ok(()) => match crate::floor::reset_floor_if_late(inner, conn, batch).await {
                Ok(()) => execute(conn, &[batch], inner.cfg.write_consistency).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        c.write_latency.record(started.elapsed());
        let Err(err) = result else {
            return Sent::Written;
        };
        let verdict = write_verdict(&err);
        let e = StoreError::from_driver(&err, timeout);
        if inner.stopped() {
            return Sent::Failed(e);
        }
        match verdict {
            WriteVerdict::Wait(reason) => return Sent::Wait { reason },
            WriteVerdict::Refused(counter) => return Sent::Refused { counter, error: e },
            WriteVerdict::Other => {}
        }
        if matches!(e, StoreError::NotConnected { .. }) {
            // A replica's node is gone but others answer: this partition waits (degraded),
            // the store stays connected for the partitions the live nodes can take.
            if conn.some_node_connected() {
                return Sent::Wait {
                    reason: e.to_string(),
                };
            }
            return Sent::Disconnected(e);
        }
        if !e.is_transient() {
            return Sent::Failed(e);
        }
        if attempt >= inner.cfg.write_attempts {
            // Still transient after its quick retries (a broken connection to a replica's
            // node, a coordinator's server error while peers restart): the write waits for
            // its topic's retry like a coordinator's transient, and fails only after
            // `write_give_up_after`. Failing it here lost writes a restarted node would take.
            return Sent::Wait {
                reason: e.to_string(),
            };
        }
        Counters::add(&c.retries, 1);
        sleep(inner.cfg.reconnect_min_backoff * attempt).await;
        attempt += 1;
    }
}

/// Counts and answers the writes of a batch that is done with.
fn settle(inner: &Arc<Inner>, batch: Vec<Pending>, outcome: Result<(), StoreError>) {
    let c = &inner.counters;
    let n = batch.len() as u64;
    Counters::sub(&c.in_flight, n);
    let deletes = batch.iter().filter(|p| !p.op.is_insert()).count();
    if let (Ok(()), Some(first)) = (&outcome, batch.first())
        && deletes > 0
    {
        inner.note_deletes(first.op.topic(), deletes as u32);
    }
    if let Err(e) = &outcome {
        inner.emit(StoreEvent::WritesFailed {
            count: n,
            error: e.clone(),
        });
    }
    Counters::add(
        if outcome.is_ok() {
            &c.written
        } else {
            &c.failed
        },
        n,
    );
    for p in batch {
        p.finish(outcome.clone());
    }
}

/// Takes out the inserts whose expiry passed while they waited (counted `expired`, answered
/// `Ok`: an expired message is not delivered, so there is nothing to keep). Their rows would
/// never be read, and their TTL could not be written.
fn drop_expired(inner: &Inner, batch: Vec<Pending>) -> Vec<Pending> {
    let now = expiry::now_ms();
    let is_expired = |p: &Pending| match &p.op {
        Op::Insert(m) => {
            // The limit does not matter for whether it expired.
            expiry::row_ttl(m.ttl_secs, m.arrived_ms, now, expiry::ExpiryLimit::MaxTtl)
                == RowTtl::Expired
        }
        Op::Delete { .. } => false,
    };
    if !batch.iter().any(is_expired) {
        return batch;
    }
    let (expired, live): (Vec<Pending>, Vec<Pending>) = batch.into_iter().partition(is_expired);
    let n = expired.len() as u64;
    Counters::add(&inner.counters.expired, n);
    Counters::sub(&inner.counters.in_flight, n);
    for p in expired {
        p.finish(Ok(()));
    }
    live
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::test_writes::{insert, shape, with_payload};

    /// A model of Cassandra that refuses every request holding a row whose payload is
    /// "bad" (as it refuses a TTL out of range or an oversized mutation) and takes the rest.
    #[tokio::test]
    async fn a_refused_row_is_isolated_and_only_it_fails() {
        let is_bad = |p: &Pending| matches!(&p.op, Op::Insert(m) if m.payload == b"bad");
        let batch: Vec<Pending> = (1..=32)
            .map(|i| {
                let payload = if i == 11 {
                    b"bad".to_vec()
                } else {
                    b"ok".to_vec()
                };
                with_payload("t", i, payload)
            })
            .collect();
        let mut requests = 0;
        let request = |part: Vec<Pending>| {
            requests += 1;
            let sent = if part.iter().any(is_bad) {
                Sent::Refused {
                    counter: "invalid",
                    error: StoreError::Db("Invalid query: ttl is too large".into()),
                }
            } else {
                Sent::Written
            };
            std::future::ready((part, sent))
        };
        let mut written = Vec::new();
        let mut refused = Vec::new();
        isolating_refusals(batch, request, |part, sent| match sent {
            Sent::Written => written.extend(shape(part)),
            Sent::Refused { .. } => refused.extend(shape(part)),
            _ => panic!("unexpected outcome"),
        })
        .await;
        assert_eq!(refused, [("t".to_string(), true, 11)]);
        let written_us: Vec<u64> = written.iter().map(|w| w.2).collect();
        assert_eq!(
            written_us,
            (1..=32).filter(|&i| i != 11).collect::<Vec<_>>()
        );
        // 1 + 2 per halving (log2 32 = 5).
        assert_eq!(requests, 11);
    }

    #[tokio::test]
    async fn a_batch_that_is_taken_is_sent_whole() {
        let batch: Vec<Pending> = (1..=4).map(|i| insert("t", i)).collect();
        let mut requests = 0;
        let mut outcomes = Vec::new();
        isolating_refusals(
            batch,
            |part| {
                requests += 1;
                std::future::ready((part, Sent::Written))
            },
            |part, _| outcomes.push(part.len()),
        )
        .await;
        assert_eq!((requests, outcomes), (1, vec![4]));
    }
}
