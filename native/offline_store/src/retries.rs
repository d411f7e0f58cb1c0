//! The writer's side of the waiting area (see `waiting`): batches Cassandra could not take
//! for their partition wait there for a retry with backoff, and are given up after
//! `write_give_up_after`.

use std::sync::atomic::Ordering;

use tokio::time::Instant;

use crate::requests::Request;
use crate::shared::{Inner, lock};
use crate::stats::Counters;
use crate::types::StoreEvent;
use crate::waiting::{Backoff, Refusal, Waiting};
use crate::write::Pending;

/// The writer's side of `waiting`: every move in or out keeps the `waiting` gauge (part of
/// `buffered`) and `in_flight` so that `stats()` never misses a write.
impl Inner {
    pub(crate) fn backoff(&self) -> Backoff {
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

    /// Sends the parts of a request whose topic waits behind their topic instead, and
    /// hands back the rest to be sent.
    pub(crate) fn behind_waiting(&self, mut request: Request) -> Request {
        if request.is_empty() {
            return request;
        }
        let mut waiting = lock(&self.waiting);
        request.retain_mut(|part| {
            let Some(first) = part.first() else {
                return false;
            };
            if !waiting.holds(first.op.topic()) {
                return true;
            }
            let n = part.len() as u64;
            Counters::add(&self.counters.waiting, n);
            Counters::sub(&self.counters.in_flight, n);
            waiting.append(std::mem::take(part), Instant::now());
            false
        });
        request
    }

    /// A batch Cassandra could not take goes to wait for its topic's retry.
    pub(crate) fn wait(&self, batch: Vec<Pending>, since: Option<Instant>, refusal: Refusal) {
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
    pub(crate) fn take_due_retry(&self) -> Option<(Vec<Pending>, Instant)> {
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
    pub(crate) fn give_up_waiting(&self) {
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
    pub(crate) fn evict_waiting(&self) -> Option<Pending> {
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
