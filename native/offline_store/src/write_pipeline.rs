//! The write pipeline: the bounded buffer, staging and grouping by partition, and the
//! writer task that sends batches (see `sending`) and due retries (see `retries`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crossbeam_channel::TrySendError;
use tokio::sync::{Semaphore, oneshot};
use tokio::time::{Instant, sleep, sleep_until};

use crate::config::OverflowPolicy;
use crate::error::StoreError;
use crate::requests::{ReplicaGroups, Request, RequestLimits, cancel_acknowledged};
use crate::sending::write_request;
use crate::shared::{Inner, lock};
use crate::spilling;
use crate::stats::Counters;
use crate::types::ConnState;
use crate::write::{Charge, Op, Pending};

/// Items the writer looks at when it gathers one partition's batch.
const BATCH_SCAN: usize = 512;

/// How often an idle writer looks at the buffer before it parks, at least.
const IDLE_POLL: Duration = Duration::from_millis(1);

/// Idle time after which the writer parks and submitters wake it again.
const PARK_AFTER: Duration = Duration::from_secs(1);

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
    let mut pending = Pending {
        op,
        done,
        charge,
        ticket: None,
    };
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
        let mut staging = lock(&self.staging);
        while staging.items.len() < BATCH_SCAN {
            // Counted as staged before it leaves the buffer, so `stats()` never misses it.
            Counters::add(&self.counters.staged, 1);
            match self.rx.try_recv() {
                Ok(p) => {
                    staging.awaited |= p.done.is_some();
                    staging.items.push_back(p);
                }
                Err(_) => {
                    Counters::sub(&self.counters.staged, 1);
                    break;
                }
            }
        }
        if staging.items.is_empty() {
            staging.empty_at = Some(Instant::now());
        } else if staging.since.is_none() {
            // They came in after the writer last found nothing: they may have waited since.
            staging.since = Some(staging.empty_at.unwrap_or_else(Instant::now));
        }
        !staging.items.is_empty()
    }

    /// Whether the staged writes should go out now rather than linger for more to join
    /// them: a request's worth is staged, more wait in the buffer, a caller waits for one,
    /// or the oldest has lingered `batch_linger`. `Err`: when the oldest's linger ends.
    fn ready_to_send(&self) -> Result<(), Instant> {
        let staging = lock(&self.staging);
        let Some(since) = staging.since else {
            return Ok(());
        };
        let linger_ends = since + self.cfg.batch_linger;
        if staging.items.len() >= self.cfg.max_batch_rows
            || staging.awaited
            || !self.rx.is_empty()
            || Instant::now() >= linger_ends
        {
            Ok(())
        } else {
            Err(linger_ends)
        }
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
        // They lingered before they were sent.
        staging.since = Some(Instant::now() - self.cfg.batch_linger);
        drop(staging);
        self.work.notify_one();
    }

    /// Takes the next request's writes from the staging area (see `take_request`).
    pub(crate) fn take_request(&self, group_of: impl FnMut(&str) -> u64) -> Request {
        let limits = RequestLimits {
            max_rows: self.cfg.max_batch_rows,
            max_bytes: self.cfg.max_batch_bytes,
            max_partitions: self.cfg.max_batch_partitions,
            max_multi_partition_bytes: self.cfg.max_multi_partition_batch_bytes,
        };
        let mut request = lock(&self.staging).take_request(&limits, group_of);
        let cancelled = cancel_acknowledged(&mut request);
        let n = request.iter().map(Vec::len).sum::<usize>() as u64;
        let c = &self.counters;
        // in_flight first, then staged: a concurrent `stats()` may count a write twice for
        // a moment, never zero times (flush relies on that). Cancelled writes count as
        // written (Cassandra ends as if both had been).
        Counters::add(&c.in_flight, n);
        Counters::add(&c.written, cancelled.len() as u64);
        Counters::add(&c.cancelled, cancelled.len() as u64);
        Counters::sub(&c.staged, n + cancelled.len() as u64);
        for p in cancelled {
            p.finish(Ok(()));
        }
        request
    }
}

/// Drains the buffer: one request at a time (see `requests`), at most `max_in_flight`
/// outstanding; a request that is not full waits up to `batch_linger` for more writes. Waits (keeping the buffer) while not connected.
pub(crate) async fn run_writer(inner: Arc<Inner>) {
    let permits = Arc::new(Semaphore::new(inner.cfg.max_in_flight));
    let mut state = inner.state.subscribe();
    let mut shutdown = inner.shutdown.subscribe();
    let mut idle_since = Instant::now();
    let mut last_give_up_check = Instant::now();
    let mut prefer_retry = true;
    let mut groups = ReplicaGroups::default();
    // An idle writer looks at the buffer this often (a write waits for its linger anyway).
    let idle_poll = inner.cfg.batch_linger.max(IDLE_POLL);
    // Writes an earlier run left in the disk buffer are read back once connected.
    spilling::open(&inner).await;
    loop {
        if inner.stopped() {
            return;
        }
        // Writes stay in the buffer (where the overflow policy applies) until the session
        // is up and the last probe answered.
        let connected = matches!(*state.borrow_and_update(), ConnState::Connected);
        let Some(conn) = inner.current().filter(|_| connected) else {
            // In disk mode the waiting writes move to the spool meanwhile.
            tokio::select! {
                _ = state.changed() => {}
                _ = shutdown.changed() => return,
                _ = sleep(spilling::SPILL_POLL), if inner.spool_needs_upkeep() || inner.spills() => {
                    spilling::open(&inner).await;
                    spilling::spill(&inner, true).await;
                    spilling::overflow_waiting(&inner).await;
                    spilling::keep_waiting(&inner).await;
                }
            }
            continue;
        };
        if last_give_up_check.elapsed() >= GIVE_UP_CHECK {
            inner.give_up_waiting();
            last_give_up_check = Instant::now();
        }
        let next_due = lock(&inner.waiting).next_due();
        let retry_due = next_due.is_some_and(|at| at <= Instant::now());
        // A backlog moves to the spool; spooled writes come back when there is room.
        spilling::spill(&inner, false).await;
        spilling::overflow_waiting(&inner).await;
        spilling::keep_waiting(&inner).await;
        spilling::drain(&inner).await;
        let staged = inner.refill_staging();
        let lingering = if staged {
            inner.ready_to_send().err()
        } else {
            None
        };
        let ready = staged && lingering.is_none();
        if !retry_due && !ready {
            // A parked writer wakes when the next waiting topic is due (at most
            // `reconnect_max_backoff` away; the give-up check runs then too), or when a retry
            // is answered (`wait`, `write_batch` notify).
            let due = next_due.unwrap_or_else(Instant::now);
            if let Some(linger_ends) = lingering {
                let until = next_due.map_or(linger_ends, |due| due.min(linger_ends));
                tokio::select! {
                    _ = sleep_until(until) => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            if idle_since.elapsed() < PARK_AFTER {
                tokio::select! {
                    _ = inner.work.notified() => {}
                    _ = sleep(idle_poll) => {}
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
                    _ = sleep(spilling::UPKEEP_EVERY), if inner.spool_needs_upkeep() => {}
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
        // Due retries and staged requests take turns, so many waiting topics cannot crowd
        // out healthy ones; the writes of a waiting topic go behind it, taking no slot.
        let from_retry = retry_due && (!ready || prefer_retry);
        prefer_retry = !prefer_retry;
        let due_retry = if from_retry {
            inner.take_due_retry()
        } else {
            None
        };
        let (request, retry) = match due_retry {
            Some((batch, since)) => (vec![batch], Some(since)),
            None => {
                let keyspace = inner.cfg.keyspace.as_str();
                let request = inner.take_request(|t| groups.group_of(&conn, keyspace, t));
                let request = inner.behind_waiting(request);
                if request.is_empty() {
                    continue;
                }
                (request, None)
            }
        };
        let inner = inner.clone();
        // Boxed: the request's future is large (the driver's request state), and a task
        // moves its future several times on the way in.
        tokio::spawn(Box::pin(async move {
            write_request(&inner, &conn, request, retry).await;
            drop(permit);
        }));
    }
}
