//! The store handle: starts the background tasks, takes writes, and stops.
//! Reads are in `reads`, the write pipeline in `write_pipeline`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::{Instant, sleep, timeout};

use crate::config::StoreConfig;
use crate::error::StoreError;
use crate::msgid::MsgId;
use crate::shared::{Inner, lock};
use crate::spilling;
use crate::stats::{Counters, StatsSnapshot};
use crate::supervisor;
use crate::types::{ConnState, Degraded, EventSink, Message, ShutdownReport};
use crate::write::{Op, Pending};
use crate::write_pipeline::{self, Handover};

/// Handle to the store. Cheap to clone; all clones share one session and one buffer.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl Store {
    /// Starts connecting in the background (retrying with backoff) and returns at once.
    /// Must be called inside a Tokio runtime. Writes submitted before the session is up are
    /// buffered; reads fail with `NotConnected`.
    pub fn start(cfg: StoreConfig) -> Result<Store, StoreError> {
        cfg.validate()?;
        let inner = Arc::new(Inner::new(cfg));
        tokio::spawn(supervisor::supervise(inner.clone()));
        tokio::spawn(supervisor::watch_clock(inner.clone()));
        let writer = tokio::spawn(write_pipeline::run_writer(inner.clone()));
        *lock(&inner.writer) = Some(writer);
        Ok(Store { inner })
    }

    /// Starts and waits until connected. Fails with the reason when the deadline passes
    /// first, or at once for errors retrying will not fix (the store is then shut down).
    pub async fn connect(cfg: StoreConfig, deadline: Duration) -> Result<Store, StoreError> {
        let store = Store::start(cfg)?;
        match store.wait_connected(deadline).await {
            Ok(()) => Ok(store),
            Err(e) => {
                store.shutdown(Duration::ZERO).await;
                Err(e)
            }
        }
    }

    /// Sends every later `StoreEvent` to `sink` (replacing an earlier one).
    pub fn set_event_sink(&self, sink: EventSink) {
        *lock(&self.inner.events) = Some(sink);
    }

    pub fn state(&self) -> ConnState {
        self.inner.state.borrow().clone()
    }

    /// `Some` while writes wait because Cassandra answers but cannot take them (too few
    /// replicas alive, overloaded, timeouts): how many, and the latest reason.
    pub fn degraded(&self) -> Option<Degraded> {
        self.inner
            .degraded()
            .map(|(waiting, reason)| Degraded { waiting, reason })
    }

    /// `Some(why)` while the disk buffer cannot be used (unwritable directory, full disk):
    /// writes are kept in memory meanwhile.
    pub fn spool_error(&self) -> Option<String> {
        self.inner.spool_error()
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.cfg
    }

    /// Waits for `Connected`. Returns early with the error for `Error` and `Stopped`.
    pub async fn wait_connected(&self, deadline: Duration) -> Result<(), StoreError> {
        let mut rx = self.inner.state.subscribe();
        let waited = timeout(deadline, async {
            loop {
                match &*rx.borrow_and_update() {
                    ConnState::Connected => return Ok(()),
                    ConnState::Error(e) => return Err(e.clone()),
                    ConnState::Stopped => return Err(StoreError::Shutdown),
                    _ => {}
                }
                if rx.changed().await.is_err() {
                    return Err(StoreError::Shutdown);
                }
            }
        })
        .await;
        match waited {
            Ok(result) => result,
            Err(_) => Err(self.state().error().unwrap_or(StoreError::NotConnected {
                reason: "connection state flapping".into(),
            })),
        }
    }

    /// Hands a message to the write pipeline and returns at once (never waits for
    /// Cassandra). The outcome shows in `stats()`.
    pub fn submit_store(&self, msg: Message) -> Result<(), StoreError> {
        self.check_payload(&msg)?;
        write_pipeline::enqueue(&self.inner, Op::Insert(msg), None)
    }

    /// Hands a delete to the write pipeline and returns at once.
    pub fn submit_delete(&self, topic: &str, msgid: MsgId) -> Result<(), StoreError> {
        self.submit_delete_written(topic, msgid, None)
    }

    /// The delete of a row read back with `StoredMessage::written_us`: its tombstone is
    /// written after that write time too (a row EMQX 4.x wrote without a timestamp of its
    /// own is stamped later than its msgid's time, and would outlive the usual delete).
    pub fn submit_delete_written(
        &self,
        topic: &str,
        msgid: MsgId,
        written_us: Option<i64>,
    ) -> Result<(), StoreError> {
        write_pipeline::enqueue(
            &self.inner,
            Op::Delete {
                topic: topic.to_owned(),
                msgid,
                written_us,
            },
            None,
        )
    }

    /// Stores through the pipeline and waits for Cassandra's answer.
    pub async fn store(&self, msg: Message) -> Result<(), StoreError> {
        self.check_payload(&msg)?;
        let (tx, rx) = oneshot::channel();
        write_pipeline::enqueue(&self.inner, Op::Insert(msg), Some(tx))?;
        rx.await.unwrap_or(Err(StoreError::Shutdown))
    }

    /// Deletes through the pipeline and waits for Cassandra's answer. The tombstone's
    /// timestamp is one microsecond after the insert's, so it wins even when it reaches
    /// Cassandra first.
    pub async fn delete(&self, topic: &str, msgid: MsgId) -> Result<(), StoreError> {
        self.delete_written(topic, msgid, None).await
    }

    /// `delete` for a row read back with `StoredMessage::written_us` (see
    /// `submit_delete_written`).
    pub async fn delete_written(
        &self,
        topic: &str,
        msgid: MsgId,
        written_us: Option<i64>,
    ) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let op = Op::Delete {
            topic: topic.to_owned(),
            msgid,
            written_us,
        };
        write_pipeline::enqueue(&self.inner, op, Some(tx))?;
        rx.await.unwrap_or(Err(StoreError::Shutdown))
    }

    pub fn stats(&self) -> StatsSnapshot {
        let c = &self.inner.counters;
        let buffered = self.inner.rx.len()
            + c.staged.load(Ordering::Relaxed) as usize
            + c.waiting.load(Ordering::Relaxed) as usize
            + c.spooled.load(Ordering::Relaxed) as usize;
        let mut s = c.snapshot(buffered);
        let clock = &self.inner.clock;
        s.clock_offset_ms = clock.offset_ms().unwrap_or(0);
        s.clock_skewed = u64::from(clock.skewed());
        s.clock_skews = clock.skews();
        s
    }

    /// Tests only: shifts this node's clock as the clock check sees it by `offset_ms`
    /// (positive: ahead of Cassandra) and checks at once.
    #[cfg(feature = "fault_injection")]
    pub fn inject_clock_offset(&self, offset_ms: i64) {
        self.inner.clock.inject(offset_ms);
    }

    /// Waits until nothing is buffered or in flight, or the deadline passes.
    pub async fn flush(&self, deadline: Duration) -> Result<(), StoreError> {
        let end = Instant::now() + deadline;
        loop {
            let s = self.stats();
            if s.buffered == 0 && s.in_flight == 0 {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(StoreError::Timeout(deadline));
            }
            sleep(Duration::from_millis(2)).await;
        }
    }

    /// Flushes for at most `grace`, then stops the background tasks. Writes not confirmed
    /// by then stay in the disk buffer (`buffer_mode = disk`, counted in `spooled`), or are
    /// answered with `Shutdown` and counted as failed.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let (mut report, left) = self.stop_tasks(grace, true).await;
        let n = left.len() as u64;
        for p in left {
            p.finish(Err(StoreError::Shutdown));
        }
        Counters::add(&self.inner.counters.failed, n);
        report.abandoned += n;
        report
    }

    /// Like `shutdown`, but hands the writes still buffered to the caller instead of
    /// failing them, for a new store to `adopt` (a configuration change loses nothing).
    pub async fn shutdown_with_handover(&self, grace: Duration) -> (ShutdownReport, Handover) {
        let (report, left) = self.stop_tasks(grace, false).await;
        Counters::add(&self.inner.counters.handed_over, left.len() as u64);
        (report, Handover(left))
    }

    /// Takes over writes buffered by a stopped store. Returns how many did not fit (the
    /// overflow policy applied to them, and they are counted as dropped).
    pub fn adopt(&self, handover: Handover) -> usize {
        let mut refused = 0;
        for p in handover.0 {
            // The old store's share of the byte bound is given back here; `enqueue`
            // takes it on this one.
            let Pending { op, done, .. } = p;
            if write_pipeline::enqueue(&self.inner, op, done).is_err() {
                refused += 1;
            }
        }
        refused
    }

    /// Flushes for at most `grace`, stops the tasks, closes the disk buffer (moving what is
    /// left in memory there when `to_spool`), and returns what was still buffered.
    /// `abandoned` in the report counts only the writes still in flight.
    async fn stop_tasks(&self, grace: Duration, to_spool: bool) -> (ShutdownReport, Vec<Pending>) {
        let before = self.stats();
        let _ = self.flush(grace).await;
        self.inner.stopped.store(true, Ordering::SeqCst);
        self.inner.shutdown.send_replace(true);
        self.inner.state.send_replace(ConnState::Stopped);
        self.inner.work.notify_one();
        let writer = lock(&self.inner.writer).take();
        if let Some(writer) = writer {
            let _ = writer.await;
        }
        let mut left: Vec<Pending> = lock(&self.inner.staging).items.drain(..).collect();
        self.inner.counters.staged.store(0, Ordering::Relaxed);
        let waiting = self.inner.with_waiting(|w| w.drain());
        Counters::sub(&self.inner.counters.waiting, waiting.len() as u64);
        left.extend(waiting);
        left.extend(self.inner.rx.try_iter());
        let spooled_before = self.inner.counters.left_in_spool.load(Ordering::Relaxed);
        let left = spilling::close(&self.inner, left, to_spool).await;
        let spooled = self.inner.counters.left_in_spool.load(Ordering::Relaxed) - spooled_before;
        let in_flight = self.stats().in_flight;
        self.inner
            .conn
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let after = self.stats();
        let report = ShutdownReport {
            flushed: after.written.saturating_sub(before.written),
            abandoned: in_flight,
            spooled,
        };
        (report, left)
    }

    pub(crate) fn check_payload(&self, msg: &Message) -> Result<(), StoreError> {
        let max = self.inner.cfg.max_payload_bytes;
        if msg.payload.len() > max {
            Counters::add(&self.inner.counters.rejected, 1);
            return Err(StoreError::PayloadTooLarge {
                size: msg.payload.len(),
                max,
            });
        }
        Ok(())
    }
}
