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
use crate::sending::write_batch;
use crate::shared::{Inner, Staging, lock};
use crate::stats::Counters;
use crate::types::ConnState;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::test_writes::{delete, insert, shape, with_payload};

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
}
