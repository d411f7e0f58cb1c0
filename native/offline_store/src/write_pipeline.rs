//! The write pipeline: the bounded buffer, staging and grouping by partition, the writer
//! task, and the statements a batch becomes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::TrySendError;
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::CqlTimestamp;
use tokio::sync::{Semaphore, oneshot};
use tokio::time::{Instant, sleep, sleep_until};

use crate::config::OverflowPolicy;
use crate::connection::Connection;
use crate::error::{StoreError, WriteVerdict, write_verdict};
use crate::expiry::{self, RowTtl};
use crate::msgid::MsgId;
use crate::payload;
use crate::shared::{Inner, Staging, lock, set_state};
use crate::stats::Counters;
use crate::types::{ConnState, Message, StoreEvent};
use crate::waiting::{Backoff, Refusal, Waiting};
use crate::write::{Charge, Op, Pending};

/// Items the writer looks at when it gathers one partition's batch.
const BATCH_SCAN: usize = 512;

/// How often an idle writer looks at the buffer before it parks.
const IDLE_POLL: Duration = Duration::from_millis(1);

/// Idle time after which the writer parks and submitters wake it again.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// The default of `max_batch_bytes` (see `StoreConfig`), here for the unit tests.
#[cfg(test)]
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// How often the writer looks for waiting writes older than `write_give_up_after`.
const GIVE_UP_CHECK: Duration = Duration::from_millis(100);

/// Writes a stopped store still had buffered, on their way to a new store.
pub struct Handover(pub(crate) Vec<Pending>);

impl Handover {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub(crate) fn enqueue(
    inner: &Inner,
    op: Op,
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
) -> Result<(), StoreError> {
    if inner.stopped.load(Ordering::Relaxed) {
        return Err(StoreError::Shutdown);
    }
    let c = &inner.counters;
    let capacity = inner.cfg.buffer_capacity;
    let awaited = done.is_some();
    let charge = reserve_bytes(inner, op.held_bytes() as u64)?;
    let mut pending = Pending { op, done, charge };
    let mut evicted_none = false;
    loop {
        // Writes waiting for a retry (see `waiting`) fill the buffer too.
        let waiting = c.waiting.load(Ordering::Relaxed) as usize;
        let full = !evicted_none && waiting > 0 && inner.rx.len() + waiting >= capacity;
        let sent = if full {
            Err(TrySendError::Full(pending))
        } else {
            inner.tx.try_send(pending)
        };
        match sent {
            Ok(()) => break,
            Err(TrySendError::Disconnected(_)) => return Err(StoreError::Shutdown),
            Err(TrySendError::Full(back)) => match inner.cfg.overflow_policy {
                OverflowPolicy::DropNew => {
                    Counters::add(&c.dropped, 1);
                    return Err(StoreError::Overloaded { capacity });
                }
                OverflowPolicy::DropOldest => {
                    let old = match inner.rx.try_recv() {
                        Ok(old) => Some(old),
                        Err(_) => inner.evict_waiting(),
                    };
                    match old {
                        Some(old) => {
                            Counters::add(&c.dropped, 1);
                            Counters::add(&c.evicted, 1);
                            old.finish(Err(StoreError::Overloaded { capacity }));
                        }
                        // Nothing to evict after all: the channel's own bound decides.
                        None => evicted_none = true,
                    }
                    pending = back;
                }
            },
        }
    }
    Counters::add(&c.accepted, 1);
    // Waking the writer is a syscall, and on a small machine the woken thread may take
    // the caller's CPU inside its publish hook: only a parked writer is woken, or one
    // that a caller is waiting on.
    std::sync::atomic::fence(Ordering::SeqCst);
    if awaited || inner.writer_parked.load(Ordering::Relaxed) {
        inner.work.notify_one();
    }
    Ok(())
}

/// Reserves a new write's bytes under `buffer_max_bytes`. When they do not fit, `drop_new`
/// refuses the write; `drop_oldest` evicts buffered writes, oldest first (the buffer, then
/// the longest waiting), until they fit, and refuses the write only when nothing is left to
/// evict (writes being sent hold bytes too). Counted as for `buffer_capacity`: `dropped`,
/// and `evicted` for what was evicted.
fn reserve_bytes(inner: &Inner, bytes: u64) -> Result<Charge, StoreError> {
    let c = &inner.counters;
    let max_bytes = inner.cfg.buffer_max_bytes;
    let full = || StoreError::OverloadedBytes { max_bytes };
    loop {
        let (charge, total) = Charge::reserve(&c.buffered_bytes, bytes);
        if total <= max_bytes as u64 {
            return Ok(charge);
        }
        drop(charge);
        let old = match inner.cfg.overflow_policy {
            OverflowPolicy::DropNew => None,
            OverflowPolicy::DropOldest => {
                inner.rx.try_recv().ok().or_else(|| inner.evict_waiting())
            }
        };
        let Some(old) = old else {
            Counters::add(&c.dropped, 1);
            return Err(full());
        };
        Counters::add(&c.dropped, 1);
        Counters::add(&c.evicted, 1);
        // Its bytes are given back when it is dropped here.
        old.finish(Err(full()));
    }
}

impl Inner {
    /// Moves writes from the buffer into the staging area, up to `BATCH_SCAN`. Returns
    /// whether anything is staged.
    pub(crate) fn refill_staging(&self) -> bool {
        let staging = &mut lock(&self.staging).items;
        while staging.len() < BATCH_SCAN {
            // Counted as staged before it leaves the buffer, so `stats()` never misses it.
            Counters::add(&self.counters.staged, 1);
            match self.rx.try_recv() {
                Ok(p) => staging.push_back(p),
                Err(_) => {
                    Counters::sub(&self.counters.staged, 1);
                    break;
                }
            }
        }
        !staging.is_empty()
    }

    /// Puts a batch back at the front of the staging area, in order (staged before it
    /// stops being in flight, so `stats()` never misses it).
    pub(crate) fn requeue(&self, batch: Vec<Pending>) {
        let n = batch.len() as u64;
        let mut staging = lock(&self.staging);
        Counters::add(&self.counters.staged, n);
        Counters::sub(&self.counters.in_flight, n);
        for p in batch.into_iter().rev() {
            staging.items.push_front(p);
        }
        drop(staging);
        self.work.notify_one();
    }

    /// Takes the head staged write plus following staged writes of the same kind to the
    /// same partition.
    pub(crate) fn take_batch(&self) -> Vec<Pending> {
        let batch =
            lock(&self.staging).take_batch(self.cfg.max_batch_rows, self.cfg.max_batch_bytes);
        // in_flight first, then staged: a concurrent `stats()` may count a write twice for
        // a moment, never zero times (flush relies on that).
        Counters::add(&self.counters.in_flight, batch.len() as u64);
        Counters::sub(&self.counters.staged, batch.len() as u64);
        batch
    }
}

/// The writer's side of `waiting`: every move in or out keeps the `waiting` gauge (part of
/// `buffered`) and `in_flight` so that `stats()` never misses a write.
impl Inner {
    fn backoff(&self) -> Backoff {
        Backoff {
            min: self.cfg.reconnect_min_backoff,
            max: self.cfg.reconnect_max_backoff,
        }
    }

    /// Runs `f` on `waiting` and updates what status calls read of it without the lock.
    pub(crate) fn with_waiting<R>(&self, f: impl FnOnce(&mut Waiting) -> R) -> R {
        let mut waiting = lock(&self.waiting);
        let out = f(&mut waiting);
        self.waiting_topics
            .store(waiting.topic_count(), Ordering::Relaxed);
        out
    }

    /// Sends a batch of a topic that waits behind it instead (`None`); otherwise hands the
    /// batch back to be sent.
    fn behind_waiting(&self, batch: Vec<Pending>) -> Option<Vec<Pending>> {
        let topic = batch.first()?.op.topic();
        let mut waiting = lock(&self.waiting);
        if !waiting.holds(topic) {
            return Some(batch);
        }
        let n = batch.len() as u64;
        Counters::add(&self.counters.waiting, n);
        Counters::sub(&self.counters.in_flight, n);
        waiting.append(batch, Instant::now());
        None
    }

    /// A batch Cassandra could not take goes to wait for its topic's retry.
    fn wait(&self, batch: Vec<Pending>, since: Option<Instant>, refusal: Refusal) {
        let n = batch.len() as u64;
        if let Refusal::Transient { reason } = &refusal {
            Counters::add(&self.counters.waited, n);
            reason.clone_into(&mut lock(&self.wait_reason));
            // Reported when writes start waiting, not at every retry (many waiting topics
            // would flood the event process).
            if since.is_none() {
                self.emit(StoreEvent::WritesWaiting {
                    count: n,
                    reason: reason.clone(),
                });
            }
        }
        let backoff = self.backoff();
        self.with_waiting(|waiting| {
            Counters::add(&self.counters.waiting, n);
            Counters::sub(&self.counters.in_flight, n);
            waiting.put_back(batch, since, refusal, backoff, Instant::now());
        });
        // A parked writer learns when this topic is due.
        self.work.notify_one();
    }

    /// The next retry batch that is due, now in flight.
    fn take_due_retry(&self) -> Option<(Vec<Pending>, Instant)> {
        let mut waiting = lock(&self.waiting);
        let (batch, since) = waiting.take_due(
            Instant::now(),
            self.cfg.max_batch_rows,
            self.cfg.max_batch_bytes,
        )?;
        let n = batch.len() as u64;
        Counters::add(&self.counters.in_flight, n);
        self.retrying.fetch_add(n, Ordering::Relaxed);
        Counters::sub(&self.counters.waiting, n);
        Some((batch, since))
    }

    /// Fails the waiting writes older than `write_give_up_after` (counted in `failed` and
    /// `gave_up`, logged once per check).
    fn give_up_waiting(&self) {
        let give_up = self.cfg.write_give_up_after;
        let expired = self.with_waiting(|w| w.expired(Instant::now(), give_up));
        let Some(error) = expired.first().map(|(_, e)| e.clone()) else {
            return;
        };
        let n = expired.len() as u64;
        Counters::add(&self.counters.failed, n);
        Counters::add(&self.counters.gave_up, n);
        Counters::sub(&self.counters.waiting, n);
        self.emit(StoreEvent::WritesFailed { count: n, error });
        for (p, e) in expired {
            p.finish(Err(e));
        }
    }

    /// For `drop_oldest`: the write that has waited longest.
    fn evict_waiting(&self) -> Option<Pending> {
        let p = self.with_waiting(Waiting::evict_oldest)?;
        Counters::sub(&self.counters.waiting, 1);
        Some(p)
    }

    /// Why writes wait now, if any do: their number (those out on a retry included) and
    /// the latest reason. Never takes the `waiting` lock: the NIF's status calls it.
    pub(crate) fn degraded(&self) -> Option<(u64, String)> {
        if self.waiting_topics.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let n =
            self.counters.waiting.load(Ordering::Relaxed) + self.retrying.load(Ordering::Relaxed);
        Some((n, lock(&self.wait_reason).clone()))
    }
}

impl Staging {
    /// Takes the head write plus the following writes of the same kind to the same
    /// partition, at most `max` rows and `max_bytes` encoded (the head goes even when it is
    /// larger); the rest stays in order.
    fn take_batch(&mut self, max: usize, max_bytes: usize) -> Vec<Pending> {
        let Some(head) = self.items.pop_front() else {
            return Vec::new();
        };
        let mut bytes = head.op.encoded_size();
        let mut batch = vec![head];
        // Once one write of the partition does not fit, the later ones wait too (order).
        let mut full = false;
        for p in self.items.drain(..) {
            let same =
                p.op.topic() == batch[0].op.topic() && p.op.is_insert() == batch[0].op.is_insert();
            if same && !full {
                let size = p.op.encoded_size();
                full = batch.len() >= max || bytes + size > max_bytes;
                if !full {
                    bytes += size;
                    batch.push(p);
                    continue;
                }
            }
            self.spare.push_back(p);
        }
        // The rest goes back in order; both buffers keep their capacity (no allocation).
        std::mem::swap(&mut self.items, &mut self.spare);
        batch
    }
}

/// Drains the buffer: one partition's batch at a time, at most `max_in_flight` requests
/// outstanding. Waits (keeping the buffer) while not connected.
pub(crate) async fn run_writer(inner: Arc<Inner>) {
    let permits = Arc::new(Semaphore::new(inner.cfg.max_in_flight));
    let mut state = inner.state.subscribe();
    let mut shutdown = inner.shutdown.subscribe();
    let mut idle_since = Instant::now();
    let mut last_give_up_check = Instant::now();
    let mut prefer_retry = true;
    loop {
        if inner.stopped() {
            return;
        }
        // Writes stay in the buffer (where the overflow policy applies) until the session
        // is up and the last probe answered.
        let connected = matches!(*state.borrow_and_update(), ConnState::Connected);
        let Some(conn) = inner.current().filter(|_| connected) else {
            tokio::select! {
                _ = state.changed() => {}
                _ = shutdown.changed() => return,
            }
            continue;
        };
        if last_give_up_check.elapsed() >= GIVE_UP_CHECK {
            inner.give_up_waiting();
            last_give_up_check = Instant::now();
        }
        let next_due = lock(&inner.waiting).next_due();
        let retry_due = next_due.is_some_and(|at| at <= Instant::now());
        let staged = inner.refill_staging();
        if !retry_due && !staged {
            // A parked writer wakes when the next waiting topic is due (at most
            // `reconnect_max_backoff` away; the give-up check runs then too), or when a retry
            // is answered (`wait`, `write_batch` notify).
            let due = next_due.unwrap_or_else(Instant::now);
            if idle_since.elapsed() < PARK_AFTER {
                tokio::select! {
                    _ = inner.work.notified() => {}
                    _ = sleep(IDLE_POLL) => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            inner.writer_parked.store(true, Ordering::SeqCst);
            std::sync::atomic::fence(Ordering::SeqCst);
            // A submit that saw the flag still clear is in the buffer by now.
            if !inner.refill_staging() {
                tokio::select! {
                    _ = inner.work.notified() => {}
                    _ = sleep_until(due), if next_due.is_some() => {}
                    _ = shutdown.changed() => return,
                }
            }
            inner.writer_parked.store(false, Ordering::SeqCst);
            idle_since = Instant::now();
            continue;
        }
        idle_since = Instant::now();
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        // Due retries and staged batches take turns, so many waiting topics cannot crowd
        // out healthy ones; a batch of a waiting topic goes behind it, taking no slot.
        let from_retry = retry_due && (!staged || prefer_retry);
        prefer_retry = !prefer_retry;
        let due_retry = if from_retry {
            inner.take_due_retry()
        } else {
            None
        };
        let (batch, retry) = match due_retry {
            Some((batch, since)) => (batch, Some(since)),
            None => match inner.behind_waiting(inner.take_batch()) {
                Some(batch) if !batch.is_empty() => (batch, None),
                _ => continue,
            },
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            write_batch(&inner, &conn, batch, retry).await;
            drop(permit);
        });
    }
}

/// Sends one batch and settles each of its writes: written; waiting for its partition
/// (Cassandra answered but could not take it); back to the buffer (connection lost); or
/// failed. A batch Cassandra refuses for its content is split in halves until the row that
/// carries the cause is alone, so only that row fails. `retry`: the batch came from
/// `waiting`, with the moment its writes first waited.
async fn write_batch(
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
/// nor a lost connection are tried `write_attempts` times.
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
                Ok(()) => execute(conn, batch, inner.cfg.write_consistency).await,
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
        if !e.is_transient() || attempt >= inner.cfg.write_attempts {
            return Sent::Failed(e);
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
    if let (Ok(()), Some(first)) = (&outcome, batch.first())
        && !first.op.is_insert()
    {
        inner.note_deletes(first.op.topic(), n as u32);
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

/// Writes the index rows of the batch's topic (and of its first level) unless that was
/// done recently. Refreshing at half the index TTL (at most hourly) keeps active topics in.
async fn ensure_indexed(
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
    let root = crate::topic::root(topic);
    let session = &conn.session;
    let (a, b) = tokio::join!(
        session.execute_unpaged(&ix.insert, (crate::schema::ROOTS_PARTITION, root, ttl)),
        session.execute_unpaged(&ix.insert, (root, topic, ttl)),
    );
    a?;
    b?;
    let mut indexed = lock(&inner.indexed);
    if indexed.len() >= 100_000 {
        indexed.clear();
    }
    indexed.insert(topic.to_owned(), Instant::now());
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

async fn execute(
    conn: &Connection,
    batch: &[Pending],
    consistency: scylla::statement::Consistency,
) -> Result<(), scylla::errors::ExecutionError> {
    let session = &conn.session;
    let now = expiry::now_ms();
    let ttl = |m: &Message| expiry::row_ttl(m.ttl_secs, m.arrived_ms, now, conn.expiry_limit);
    if let [single] = batch {
        return match &single.op {
            Op::Insert(m) => {
                session
                    .execute_unpaged(&conn.insert, insert_values(m, ttl(m)))
                    .await
            }
            Op::Delete { topic, msgid } => {
                session
                    .execute_unpaged(&conn.delete, delete_values(topic, msgid))
                    .await
            }
        }
        .map(|_| ());
    }
    // One partition, so the batch is applied as one mutation and is exempt from
    // Cassandra's multi-partition batch warnings.
    let mut b = Batch::new(BatchType::Unlogged);
    b.set_consistency(consistency);
    b.set_is_idempotent(true);
    if batch[0].op.is_insert() {
        let mut values = Vec::with_capacity(batch.len());
        for p in batch {
            if let Op::Insert(m) = &p.op {
                b.append_statement(conn.insert.clone());
                values.push(insert_values(m, ttl(m)));
            }
        }
        session.batch(&b, values).await.map(|_| ())
    } else {
        let mut values = Vec::with_capacity(batch.len());
        for p in batch {
            if let Op::Delete { topic, msgid } = &p.op {
                b.append_statement(conn.delete.clone());
                values.push(delete_values(topic, msgid));
            }
        }
        session.batch(&b, values).await.map(|_| ())
    }
}

type InsertValues<'a> = (
    &'a str,
    &'a str,
    CqlTimestamp,
    String,
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
/// even when it reaches Cassandra first.
pub(crate) fn delete_values<'a>(topic: &'a str, msgid: &'a MsgId) -> (i64, &'a str, &'a str) {
    (msgid.timestamp_us() as i64 + 1, topic, msgid.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(topic: &str, us: u64) -> Pending {
        Pending {
            op: Op::Insert(Message {
                topic: topic.into(),
                msgid: MsgId::new(us, 1, 0),
                sender: "c".into(),
                qos: 1,
                retain: false,
                payload: b"p".to_vec(),
                arrived_ms: (us / 1000) as i64,
                ttl_secs: None,
            }),
            done: None,
            charge: Charge::default(),
        }
    }

    fn delete(topic: &str, us: u64) -> Pending {
        Pending {
            op: Op::Delete {
                topic: topic.into(),
                msgid: MsgId::new(us, 1, 0),
            },
            done: None,
            charge: Charge::default(),
        }
    }

    /// (topic, is insert, µs) of each write, to compare batches and what stays staged.
    fn shape(items: impl IntoIterator<Item = Pending>) -> Vec<(String, bool, u64)> {
        items
            .into_iter()
            .map(|p| {
                let us = match &p.op {
                    Op::Insert(m) => m.msgid.timestamp_us(),
                    Op::Delete { msgid, .. } => msgid.timestamp_us(),
                };
                (p.op.topic().to_owned(), p.op.is_insert(), us)
            })
            .collect()
    }

    #[test]
    fn a_batch_is_one_kind_of_write_to_one_partition_and_the_rest_keeps_its_order() {
        let mut staging = Staging::default();
        staging.items.extend([
            insert("a", 1),
            insert("b", 2),
            delete("a", 3),
            insert("a", 4),
            insert("a", 5),
            insert("a", 6),
        ]);
        let batch = staging.take_batch(3, usize::MAX);
        assert_eq!(
            shape(batch),
            [
                ("a".into(), true, 1),
                ("a".into(), true, 4),
                ("a".into(), true, 5)
            ]
        );
        let left: Vec<_> = staging.items.drain(..).collect();
        assert_eq!(
            shape(left),
            [
                ("b".into(), true, 2),
                ("a".into(), false, 3),
                ("a".into(), true, 6)
            ]
        );
        assert!(staging.spare.is_empty());
        assert!(staging.take_batch(3, usize::MAX).is_empty());
    }

    #[test]
    fn deletes_of_one_topic_batch_together_past_other_writes() {
        let mut staging = Staging::default();
        staging.items.extend([
            delete("t", 1),
            insert("t", 2),
            delete("t", 3),
            delete("u", 4),
        ]);
        let batch = staging.take_batch(512, usize::MAX);
        assert_eq!(
            shape(batch),
            [("t".into(), false, 1), ("t".into(), false, 3)]
        );
        let next = staging.take_batch(512, usize::MAX);
        assert_eq!(shape(next), [("t".into(), true, 2)]);
        assert_eq!(staging.items.len(), 1);
    }

    fn with_payload(topic: &str, us: u64, payload: Vec<u8>) -> Pending {
        let mut p = insert(topic, us);
        if let Op::Insert(m) = &mut p.op {
            m.payload = payload;
        }
        p
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
            let batch = staging.take_batch(32, MAX_BATCH_BYTES);
            let bytes: usize = batch.iter().map(|p| p.op.encoded_size()).sum();
            assert!(
                batch.len() == 1 || bytes <= MAX_BATCH_BYTES,
                "{} rows, {bytes} bytes",
                batch.len()
            );
            (!batch.is_empty()).then_some(batch.len())
        })
        .collect();
        // 1.33 MB each: three fit in 4 MiB; the 8 MB one goes alone; order is kept.
        assert_eq!(sizes, [3, 3, 1, 1, 1]);
    }

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

    #[test]
    fn a_delete_is_written_one_microsecond_after_its_insert() {
        let mut m = match insert("t", 1_700_000_000_123_456).op {
            Op::Insert(m) => m,
            Op::Delete { .. } => unreachable!(),
        };
        m.ttl_secs = Some(60);
        let ins = insert_values(&m, RowTtl::Secs(60));
        let del = delete_values(&m.topic, &m.msgid);
        assert_eq!(ins.8, 1_700_000_000_123_456, "insert at the publish time");
        assert_eq!(del.0, ins.8 + 1);
        assert_eq!((del.1, del.2), (ins.0, ins.1), "same row");
        assert_eq!(ins.7, 60);
    }

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
