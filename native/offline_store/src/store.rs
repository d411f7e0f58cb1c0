//! The store handle: a background connection supervisor, a bounded write buffer drained by
//! a batching writer, and paged reads.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crossbeam_channel::TrySendError;
use scylla::response::{PagingState, PagingStateResponse};
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::CqlTimestamp;
use tokio::sync::{Notify, Semaphore, oneshot, watch};
use tokio::time::{Instant, sleep, timeout};

use crate::config::{OverflowPolicy, StoreConfig};
use crate::connection::{self, Connection, db_err};
use crate::error::StoreError;
use crate::msgid::MsgId;
use crate::payload;
use crate::stats::{Counters, StatsSnapshot};

/// A message to keep until its subscriber acknowledges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub msgid: MsgId,
    /// Client id of the publisher.
    pub sender: String,
    pub qos: u8,
    pub retain: bool,
    /// Raw MQTT payload: any bytes (see the `payload` module for how they are stored).
    pub payload: Vec<u8>,
    /// Publish time, milliseconds since the epoch (the `arrived` column).
    pub arrived_ms: i64,
    /// Seconds until Cassandra expires the row; `None` keeps it until acknowledged.
    pub ttl_secs: Option<u32>,
}

/// A message read back from the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub topic: String,
    /// As stored (upper-case hex for rows this crate wrote).
    pub msgid: String,
    pub sender: String,
    pub qos: i32,
    pub retain: bool,
    pub payload: Vec<u8>,
    pub arrived_ms: i64,
    /// Seconds until Cassandra expires the row (`None`: stored without a TTL).
    pub ttl_secs: Option<i32>,
}

/// Which rows `fetch` returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchOptions {
    /// Most rows to return: the **newest** ones (returned oldest first). `None` means
    /// `max_fetch_rows`; larger values are capped there.
    pub limit: Option<u32>,
    /// Only messages published at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
}

/// Connection state, as `Store::state` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    /// No session yet; `last_error` says why the previous attempt failed.
    Connecting {
        attempt: u32,
        last_error: Option<StoreError>,
    },
    /// Session up and the last probe answered.
    Connected,
    /// Session built, but the last probe failed (every node down?); the driver reconnects.
    Disconnected { reason: StoreError },
    /// A failure retrying will not fix by itself (bad credentials, missing keyspace or
    /// table, schema mismatch). Attempts continue at the slowest backoff, so fixing the
    /// cause heals the store.
    Error(StoreError),
    /// `shutdown` was called.
    Stopped,
}

impl ConnState {
    /// The error a request made now would fail with, if any.
    pub fn error(&self) -> Option<StoreError> {
        match self {
            ConnState::Connected => None,
            ConnState::Connecting { last_error, .. } => Some(StoreError::NotConnected {
                reason: last_error
                    .as_ref()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "connecting".into()),
            }),
            ConnState::Disconnected { reason } => Some(StoreError::NotConnected {
                reason: reason.to_string(),
            }),
            ConnState::Error(e) => Some(e.clone()),
            ConnState::Stopped => Some(StoreError::Shutdown),
        }
    }
}

/// Writes a stopped store still had buffered, on their way to a new store.
pub struct Handover(Vec<Pending>);

impl Handover {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Something an operator may want in the log, reported as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// The connection state changed.
    StateChanged(ConnState),
    /// A batch of writes was given up (after its attempts) and counted as failed.
    WritesFailed { count: u64, error: StoreError },
    /// A batch lost its connection and went back to the buffer.
    WritesRequeued { count: u64 },
}

/// Receives `StoreEvent`s; called on the store's threads, must return quickly.
pub type EventSink = Box<dyn Fn(StoreEvent) + Send + Sync>;

/// What `shutdown` did with the writes it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Writes confirmed during the grace period.
    pub flushed: u64,
    /// Writes still buffered or in flight when the grace period ended, counted as failed.
    pub abandoned: u64,
}

enum Op {
    Insert(Message),
    Delete { topic: String, msgid: MsgId },
}

impl Op {
    fn topic(&self) -> &str {
        match self {
            Op::Insert(m) => &m.topic,
            Op::Delete { topic, .. } => topic,
        }
    }
    fn is_insert(&self) -> bool {
        matches!(self, Op::Insert(_))
    }
}

struct Pending {
    op: Op,
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

impl Pending {
    fn finish(self, outcome: Result<(), StoreError>) {
        if let Some(tx) = self.done {
            let _ = tx.send(outcome);
        }
    }
}

/// Writes taken from the buffer, being grouped by partition. `spare` is the second half of
/// a double buffer that lets `take_batch` regroup without allocating.
#[derive(Default)]
struct Staging {
    items: VecDeque<Pending>,
    spare: VecDeque<Pending>,
}

struct Inner {
    cfg: StoreConfig,
    conn: RwLock<Option<Arc<Connection>>>,
    state: watch::Sender<ConnState>,
    /// The write buffer: a bounded lock-free queue, so a submitting thread never waits for
    /// the writer (which may be descheduled on a busy 2-core machine).
    tx: crossbeam_channel::Sender<Pending>,
    rx: crossbeam_channel::Receiver<Pending>,
    /// Writes the writer took from the buffer to group them by partition (at most
    /// `BATCH_SCAN`). Only the writer task and `shutdown` touch it.
    staging: Mutex<Staging>,
    work: Notify,
    /// The writer waits for `work` (idle for a while); otherwise it looks at the buffer
    /// every millisecond by itself and submitters need not wake it.
    writer_parked: AtomicBool,
    stopped: AtomicBool,
    shutdown: watch::Sender<bool>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Where `StoreEvent`s go (the NIF forwards them to Erlang's logger).
    events: Mutex<Option<EventSink>>,
    /// Topics whose index rows were written recently (by the writer tasks only).
    indexed: Mutex<HashMap<String, Instant>>,
    /// Deletes per topic since its floor was last moved, and whether a scan runs.
    floor_scans: Mutex<HashMap<String, FloorScan>>,
    counters: Counters,
}

#[derive(Default)]
struct FloorScan {
    deletes: u32,
    running: bool,
}

/// Handle to the store. Cheap to clone; all clones share one session and one buffer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// How often a connected store checks that Cassandra still answers.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Topic partitions a wildcard replay reads at the same time.
const WILDCARD_READS_IN_FLIGHT: usize = 16;

/// Items the writer looks at when it gathers one partition's batch.
const BATCH_SCAN: usize = 512;

/// How often an idle writer looks at the buffer before it parks.
const IDLE_POLL: Duration = Duration::from_millis(1);

/// Idle time after which the writer parks and submitters wake it again.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// Deletes of one topic after which its replay floor is moved up.
const FLOOR_SCAN_AFTER_DELETES: u32 = 500;

impl Store {
    /// Starts connecting in the background (retrying with backoff) and returns at once.
    /// Must be called inside a Tokio runtime. Writes submitted before the session is up are
    /// buffered; reads fail with `NotConnected`.
    pub fn start(cfg: StoreConfig) -> Result<Store, StoreError> {
        cfg.validate()?;
        let (state, _) = watch::channel(ConnState::Connecting {
            attempt: 0,
            last_error: None,
        });
        let (shutdown, _) = watch::channel(false);
        let (tx, rx) = crossbeam_channel::bounded(cfg.buffer_capacity);
        let inner = Arc::new(Inner {
            cfg,
            conn: RwLock::new(None),
            state,
            tx,
            rx,
            staging: Mutex::new(Staging::default()),
            work: Notify::new(),
            writer_parked: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            shutdown,
            writer: Mutex::new(None),
            indexed: Mutex::new(HashMap::new()),
            floor_scans: Mutex::new(HashMap::new()),
            events: Mutex::new(None),
            counters: Counters::default(),
        });
        tokio::spawn(supervise(inner.clone()));
        let writer = tokio::spawn(run_writer(inner.clone()));
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
        self.enqueue(Op::Insert(msg), None)
    }

    /// Hands a delete to the write pipeline and returns at once.
    pub fn submit_delete(&self, topic: &str, msgid: MsgId) -> Result<(), StoreError> {
        self.enqueue(
            Op::Delete {
                topic: topic.to_owned(),
                msgid,
            },
            None,
        )
    }

    /// Stores through the pipeline and waits for Cassandra's answer.
    pub async fn store(&self, msg: Message) -> Result<(), StoreError> {
        self.check_payload(&msg)?;
        let (tx, rx) = oneshot::channel();
        self.enqueue(Op::Insert(msg), Some(tx))?;
        rx.await.unwrap_or(Err(StoreError::Shutdown))
    }

    /// Deletes through the pipeline and waits for Cassandra's answer. The tombstone's
    /// timestamp is one microsecond after the insert's, so it wins even when it reaches
    /// Cassandra first.
    pub async fn delete(&self, topic: &str, msgid: MsgId) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let op = Op::Delete {
            topic: topic.to_owned(),
            msgid,
        };
        self.enqueue(op, Some(tx))?;
        rx.await.unwrap_or(Err(StoreError::Shutdown))
    }

    /// One awaited INSERT, bypassing the pipeline: the design of one-write-per-call
    /// plugins, kept as the benchmark's baseline.
    pub async fn store_unbatched(&self, msg: Message) -> Result<(), StoreError> {
        self.check_payload(&msg)?;
        let conn = self.connection()?;
        conn.session
            .execute_unpaged(&conn.insert, insert_values(&msg))
            .await
            .map(|_| ())
            .map_err(|e| StoreError::from_driver(e, self.inner.cfg.request_timeout))
    }

    /// One awaited DELETE, bypassing the pipeline (the benchmark's baseline, as above).
    pub async fn delete_unbatched(&self, topic: &str, msgid: MsgId) -> Result<(), StoreError> {
        let conn = self.connection()?;
        conn.session
            .execute_unpaged(&conn.delete, delete_values(topic, &msgid))
            .await
            .map(|_| ())
            .map_err(|e| StoreError::from_driver(e, self.inner.cfg.request_timeout))
    }

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
        let conn = self.connection()?;
        let lower = self.lower_bound(&conn, topic, since).await;
        let mut rows = self.read_newest(&conn, topic, &lower, limit).await?;
        rows.reverse();
        Ok(rows)
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
        let conn = self.connection()?;
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

    /// Topics in the index that match `filter` (at most `max_wildcard_topics`).
    pub async fn topics_matching(&self, filter: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.connection()?;
        let Some(ix) = &conn.index else {
            return Err(StoreError::IndexUnavailable("topic_index is off".into()));
        };
        let max = self.inner.cfg.max_wildcard_topics;
        let timeout = self.inner.cfg.request_timeout;
        let root = crate::topic::root(filter);
        let roots = if root == "+" || root == "#" {
            read_index(
                &conn,
                &ix.select,
                crate::schema::ROOTS_PARTITION,
                max,
                timeout,
            )
            .await?
        } else {
            vec![root.to_owned()]
        };
        let mut topics = Vec::new();
        for r in roots {
            if topics.len() >= max {
                break;
            }
            let found = read_index(&conn, &ix.select, &r, max - topics.len(), timeout).await?;
            topics.extend(
                found
                    .into_iter()
                    .filter(|t| crate::topic::matches(t, filter)),
            );
        }
        Ok(topics)
    }

    /// Live rows stored for one topic (a `count(*)` over its partition; for operators).
    pub async fn count(&self, topic: &str) -> Result<u64, StoreError> {
        let conn = self.connection()?;
        let timeout = self.inner.cfg.request_timeout;
        let lower = self.lower_bound(&conn, topic, String::new()).await;
        let result = conn
            .session
            .execute_unpaged(&conn.count, (topic, lower))
            .await
            .map_err(|e| StoreError::from_driver(e, timeout))?
            .into_rows_result()
            .map_err(db_err)?;
        let (n,) = result.single_row::<(i64,)>().map_err(db_err)?;
        Ok(n.max(0) as u64)
    }

    /// Deletes every message stored for `topic` with one partition tombstone (for
    /// operators). Messages published before now that are still on their way are deleted
    /// too when they land (their write timestamps are older). Returns how many rows there
    /// were.
    pub async fn purge(&self, topic: &str) -> Result<u64, StoreError> {
        let before = self.count(topic).await?;
        let conn = self.connection()?;
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        conn.session
            .execute_unpaged(&conn.purge, (now_us, topic))
            .await
            .map_err(|e| StoreError::from_driver(e, self.inner.cfg.request_timeout))?;
        Ok(before)
    }

    pub fn stats(&self) -> StatsSnapshot {
        let c = &self.inner.counters;
        let buffered = self.inner.rx.len() + c.staged.load(Ordering::Relaxed) as usize;
        c.snapshot(buffered)
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
    /// by then are answered with `Shutdown` and counted as failed.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let (mut report, left) = self.stop_tasks(grace).await;
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
        let (report, left) = self.stop_tasks(grace).await;
        Counters::add(&self.inner.counters.handed_over, left.len() as u64);
        (report, Handover(left))
    }

    /// Takes over writes buffered by a stopped store. Returns how many did not fit (the
    /// overflow policy applied to them, and they are counted as dropped).
    pub fn adopt(&self, handover: Handover) -> usize {
        let mut refused = 0;
        for p in handover.0 {
            let Pending { op, done } = p;
            if self.enqueue(op, done).is_err() {
                refused += 1;
            }
        }
        refused
    }

    /// Flushes for at most `grace`, stops the tasks, and returns what was still buffered.
    /// `abandoned` in the report counts only the writes still in flight.
    async fn stop_tasks(&self, grace: Duration) -> (ShutdownReport, Vec<Pending>) {
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
        left.extend(self.inner.rx.try_iter());
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
        };
        (report, left)
    }

    fn check_payload(&self, msg: &Message) -> Result<(), StoreError> {
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

    fn enqueue(
        &self,
        op: Op,
        done: Option<oneshot::Sender<Result<(), StoreError>>>,
    ) -> Result<(), StoreError> {
        if self.inner.stopped.load(Ordering::Relaxed) {
            return Err(StoreError::Shutdown);
        }
        let c = &self.inner.counters;
        let capacity = self.inner.cfg.buffer_capacity;
        let awaited = done.is_some();
        let mut pending = Pending { op, done };
        loop {
            match self.inner.tx.try_send(pending) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return Err(StoreError::Shutdown),
                Err(TrySendError::Full(back)) => match self.inner.cfg.overflow_policy {
                    OverflowPolicy::DropNew => {
                        Counters::add(&c.dropped, 1);
                        return Err(StoreError::Overloaded { capacity });
                    }
                    OverflowPolicy::DropOldest => {
                        if let Ok(old) = self.inner.rx.try_recv() {
                            Counters::add(&c.dropped, 1);
                            Counters::add(&c.evicted, 1);
                            old.finish(Err(StoreError::Overloaded { capacity }));
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
        if awaited || self.inner.writer_parked.load(Ordering::Relaxed) {
            self.inner.work.notify_one();
        }
        Ok(())
    }

    fn connection(&self) -> Result<Arc<Connection>, StoreError> {
        self.inner.connection()
    }

    fn limit(&self, requested: Option<u32>) -> u32 {
        let max = self.inner.cfg.max_fetch_rows;
        requested.unwrap_or(max).clamp(1, max)
    }

    /// Where a read of `topic` starts: `since` or the topic's replay floor, the higher.
    /// Without a readable floor the read starts at `since` (slower, never wrong).
    async fn lower_bound(&self, conn: &Connection, topic: &str, since: String) -> String {
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

    async fn read_pages(
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
            Ok((rows, warned)) => {
                Counters::add(&c.fetched_rows, rows.len() as u64);
                if warned {
                    self.inner.request_floor_scan(topic);
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

/// Sorts by msgid (publish time) and keeps the newest `limit`, oldest first.
fn keep_newest(rows: &mut Vec<StoredMessage>, limit: usize) {
    rows.sort_by(|a, b| a.msgid.cmp(&b.msgid));
    if rows.len() > limit {
        rows.drain(..rows.len() - limit);
    }
}

/// One partition of the topic index, page by page, at most `max` entries.
async fn read_index(
    conn: &Connection,
    stmt: &scylla::statement::prepared::PreparedStatement,
    root: &str,
    max: usize,
    request_timeout: Duration,
) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let mut paging = PagingState::start();
    let limit = max.min(i32::MAX as usize) as i32;
    loop {
        let (result, next) = conn
            .session
            .execute_single_page(stmt, (root, limit), paging)
            .await
            .map_err(|e| StoreError::from_driver(e, request_timeout))?;
        let rows = result.into_rows_result().map_err(db_err)?;
        for row in rows.rows::<(String,)>().map_err(db_err)? {
            out.push(row.map_err(db_err)?.0);
        }
        match next {
            PagingStateResponse::HasMorePages { state } if out.len() < max => paging = state,
            _ => break,
        }
    }
    out.truncate(max);
    Ok(out)
}

/// Rows of one topic, page by page, at most `limit`; also whether Cassandra warned (it
/// does when a read walks more than `tombstone_warn_threshold` tombstones).
async fn read_pages(
    conn: &Connection,
    stmt: &scylla::statement::prepared::PreparedStatement,
    topic: &str,
    values: &(impl SerializeRow + Sync),
    limit: u32,
    request_timeout: Duration,
) -> Result<(Vec<StoredMessage>, bool), StoreError> {
    type Row = (
        String,
        Option<CqlTimestamp>,
        Option<String>,
        Option<i32>,
        Option<i32>,
        Option<String>,
        Option<i32>,
    );
    let mut out = Vec::with_capacity(limit.min(1024) as usize);
    let mut warned = false;
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
            let (msgid, arrived, stored, qos, retain, sender, ttl_secs) = row.map_err(db_err)?;
            out.push(StoredMessage {
                topic: topic.to_owned(),
                payload: payload::decode(stored.as_deref().unwrap_or_default())?,
                msgid,
                sender: sender.unwrap_or_default(),
                qos: qos.unwrap_or(1),
                retain: retain.unwrap_or(0) != 0,
                arrived_ms: arrived.map(|t| t.0).unwrap_or(0),
                ttl_secs,
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
    Ok((out, warned))
}

impl Inner {
    /// Counts deletes of `topic`; after `FLOOR_SCAN_AFTER_DELETES` of them starts a
    /// background scan that moves its replay floor up (one scan per topic at a time).
    fn note_deletes(self: &Arc<Self>, topic: &str, n: u32) {
        if !self.cfg.replay_floor || self.stopped() {
            return;
        }
        let mut scans = lock(&self.floor_scans);
        if scans.len() >= 100_000 {
            scans.retain(|_, s| s.running);
        }
        let scan = scans.entry(topic.to_owned()).or_default();
        scan.deletes = scan.deletes.saturating_add(n);
        if scan.running || scan.deletes < FLOOR_SCAN_AFTER_DELETES {
            return;
        }
        scan.running = true;
        scan.deletes = 0;
        drop(scans);
        tokio::spawn(run_floor_scans(self.clone(), topic.to_owned()));
    }

    /// Asks for a floor scan now (a read met many tombstones).
    fn request_floor_scan(self: &Arc<Self>, topic: &str) {
        self.note_deletes(topic, FLOOR_SCAN_AFTER_DELETES);
    }
    /// Moves writes from the buffer into the staging area, up to `BATCH_SCAN`. Returns
    /// whether anything is staged.
    fn refill_staging(&self) -> bool {
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

    /// The session to use now. While disconnected the session is still tried (the driver
    /// may have reconnected before the next probe); without one the state's error is returned.
    fn connection(&self) -> Result<Arc<Connection>, StoreError> {
        let state_error = self.state.borrow().error();
        match (state_error, self.current()) {
            (None, Some(conn)) | (Some(StoreError::NotConnected { .. }), Some(conn)) => Ok(conn),
            (Some(err), _) => Err(err),
            (None, None) => Err(StoreError::NotConnected {
                reason: "connecting".into(),
            }),
        }
    }

    fn current(&self) -> Option<Arc<Connection>> {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Puts a batch back at the front of the staging area, in order (staged before it
    /// stops being in flight, so `stats()` never misses it).
    fn requeue(&self, batch: Vec<Pending>) {
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

    fn emit(&self, event: StoreEvent) {
        if let Some(sink) = lock(&self.events).as_ref() {
            sink(event);
        }
    }

    /// Takes the head staged write plus following staged writes of the same kind to the
    /// same partition.
    fn take_batch(&self) -> Vec<Pending> {
        let max = self.cfg.max_batch_rows;
        let staging = &mut *lock(&self.staging);
        let Some(head) = staging.items.pop_front() else {
            return Vec::new();
        };
        let mut batch = vec![head];
        for p in staging.items.drain(..) {
            let same =
                p.op.topic() == batch[0].op.topic() && p.op.is_insert() == batch[0].op.is_insert();
            if same && batch.len() < max {
                batch.push(p);
            } else {
                staging.spare.push_back(p);
            }
        }
        // The rest goes back in order; both buffers keep their capacity (no allocation).
        std::mem::swap(&mut staging.items, &mut staging.spare);
        // in_flight first, then staged: a concurrent `stats()` may count a write twice for
        // a moment, never zero times (flush relies on that).
        Counters::add(&self.counters.in_flight, batch.len() as u64);
        Counters::sub(&self.counters.staged, batch.len() as u64);
        batch
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps a session: builds it with retry and backoff, then probes it every second so the
/// state shows when Cassandra stops answering (the driver reconnects by itself).
async fn supervise(inner: Arc<Inner>) {
    let cfg = &inner.cfg;
    let mut shutdown = inner.shutdown.subscribe();
    let mut backoff = cfg.reconnect_min_backoff;
    let mut attempt = 0u32;
    let conn = loop {
        if inner.stopped() {
            return;
        }
        attempt += 1;
        match connection::connect_once(cfg).await {
            Ok(conn) => break Arc::new(conn),
            Err(e) => {
                if !cfg.auto_reconnect {
                    // No retry wanted: the first failure is final and says why.
                    set_state(&inner, ConnState::Error(e));
                    return;
                }
                let permanent = !e.is_transient();
                let wait = if permanent {
                    cfg.reconnect_max_backoff
                } else {
                    backoff
                };
                inner.state.send_if_modified(|s| {
                    if matches!(s, ConnState::Stopped) {
                        return false;
                    }
                    *s = if permanent {
                        ConnState::Error(e.clone())
                    } else {
                        ConnState::Connecting {
                            attempt,
                            last_error: Some(e.clone()),
                        }
                    };
                    true
                });
                backoff = (backoff * 2).min(cfg.reconnect_max_backoff);
                tokio::select! {
                    _ = sleep(wait) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    let mut conn = conn;
    *inner.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
    set_state(&inner, ConnState::Connected);
    inner.work.notify_one();
    loop {
        let connected = matches!(*inner.state.borrow(), ConnState::Connected);
        // Probe every second while connected; while not, look twice as often.
        let tick = if connected {
            PROBE_INTERVAL
        } else {
            PROBE_INTERVAL / 2
        };
        tokio::select! {
            _ = sleep(tick) => {}
            _ = shutdown.changed() => return,
        }
        let probe = conn.session.execute_unpaged(&conn.probe, ()).await;
        let next = match probe {
            Ok(_) => ConnState::Connected,
            Err(e) if connected => ConnState::Disconnected {
                reason: StoreError::from_driver(e, cfg.request_timeout),
            },
            Err(e) => {
                // The driver's own pool refill backs off up to 10 s; a fresh session
                // notices a returning Cassandra at once.
                match connection::connect_once(cfg).await {
                    Ok(fresh) => {
                        conn = Arc::new(fresh);
                        *inner.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
                        ConnState::Connected
                    }
                    Err(_) => ConnState::Disconnected {
                        reason: StoreError::from_driver(e, cfg.request_timeout),
                    },
                }
            }
        };
        let reconnected = !connected && next == ConnState::Connected;
        set_state(&inner, next);
        if reconnected {
            inner.work.notify_one();
        }
    }
}

fn set_state(inner: &Inner, next: ConnState) {
    let changed = inner.state.send_if_modified(|s| {
        if matches!(s, ConnState::Stopped) || *s == next {
            return false;
        }
        *s = next.clone();
        true
    });
    if changed {
        inner.emit(StoreEvent::StateChanged(next));
    }
}

/// Drains the buffer: one partition's batch at a time, at most `max_in_flight` requests
/// outstanding. Waits (keeping the buffer) while not connected.
async fn run_writer(inner: Arc<Inner>) {
    let permits = Arc::new(Semaphore::new(inner.cfg.max_in_flight));
    let mut state = inner.state.subscribe();
    let mut shutdown = inner.shutdown.subscribe();
    let mut idle_since = Instant::now();
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
        if !inner.refill_staging() {
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
        let batch = inner.take_batch();
        if batch.is_empty() {
            continue;
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            write_batch(&inner, &conn, batch).await;
            drop(permit);
        });
    }
}

async fn write_batch(inner: &Arc<Inner>, conn: &Connection, batch: Vec<Pending>) {
    let c = &inner.counters;
    let n = batch.len() as u64;
    let mut attempt = 1;
    let outcome = loop {
        Counters::add(&c.batches, 1);
        // The topic is indexed before its messages land, so a wildcard replay that finds a
        // message can always find its topic.
        let started = std::time::Instant::now();
        let result = match ensure_indexed(inner, conn, &batch).await {
            Ok(()) => match reset_floor_if_late(inner, conn, &batch).await {
                Ok(()) => execute(conn, &batch, inner.cfg.write_consistency).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        c.write_latency.record(started.elapsed());
        match result {
            Ok(()) => break Ok(()),
            Err(e) => {
                let e = StoreError::from_driver(e, inner.cfg.request_timeout);
                if matches!(e, StoreError::NotConnected { .. }) && !inner.stopped() {
                    // Cassandra went away: these writes are not failures, they wait (in the
                    // buffer, under its cap) for the connection to come back.
                    set_state(inner, ConnState::Disconnected { reason: e });
                    Counters::add(&c.requeued, n);
                    inner.emit(StoreEvent::WritesRequeued { count: n });
                    inner.requeue(batch);
                    return;
                }
                if !e.is_transient() || attempt >= inner.cfg.write_attempts || inner.stopped() {
                    break Err(e);
                }
                Counters::add(&c.retries, 1);
                sleep(inner.cfg.reconnect_min_backoff * attempt).await;
                attempt += 1;
            }
        }
    };
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

/// Before inserts that land late (published more than half a lag ago, e.g. buffered
/// through an outage), drops their topic's replay floor so replay cannot skip them.
async fn reset_floor_if_late(
    inner: &Inner,
    conn: &Connection,
    batch: &[Pending],
) -> Result<(), scylla::errors::ExecutionError> {
    let Some(f) = &conn.floor else { return Ok(()) };
    let lag = inner.cfg.replay_floor_lag;
    let now = crate::floor::now_us();
    let late = batch.iter().any(|p| match &p.op {
        Op::Insert(m) => crate::floor::is_late(&m.msgid, lag, now),
        Op::Delete { .. } => false,
    });
    let Some(first) = batch.first().filter(|_| late) else {
        return Ok(());
    };
    crate::floor::reset(conn, f, first.op.topic(), lag).await?;
    Counters::add(&inner.counters.floor_resets, 1);
    Ok(())
}

/// Moves `topic`'s floor up, again while enough deletes came in during the last scan. A
/// failed scan is left for the next deletes to retry.
async fn run_floor_scans(inner: Arc<Inner>, topic: String) {
    loop {
        if let Ok(conn) = inner.connection()
            && let Some(f) = &conn.floor
        {
            let (lag, timeout) = (inner.cfg.replay_floor_lag, inner.cfg.request_timeout);
            if let Ok(true) = crate::floor::advance(&conn, f, &topic, lag, timeout).await {
                Counters::add(&inner.counters.floor_scans, 1);
            }
        }
        let mut scans = lock(&inner.floor_scans);
        let Some(scan) = scans.get_mut(&topic) else {
            return;
        };
        if scan.deletes >= FLOOR_SCAN_AFTER_DELETES && !inner.stopped() {
            scan.deletes = 0;
            continue;
        }
        scan.running = false;
        if scan.deletes == 0 {
            scans.remove(&topic);
        }
        return;
    }
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
    let refresh = if index_ttl.is_zero() {
        Duration::MAX
    } else {
        (index_ttl / 2).min(Duration::from_secs(3600))
    };
    let fresh = lock(&inner.indexed)
        .get(topic)
        .is_some_and(|at| at.elapsed() < refresh);
    if fresh {
        return Ok(());
    }
    // 0 keeps index rows forever; otherwise they outlive every message they point to.
    let ttl = if index_ttl.is_zero() {
        0
    } else {
        let longest_message = batch
            .iter()
            .filter_map(|p| match &p.op {
                Op::Insert(m) => m.ttl_secs,
                Op::Delete { .. } => None,
            })
            .max()
            .unwrap_or(0) as u64;
        index_ttl
            .as_secs()
            .max(longest_message)
            .min(i32::MAX as u64) as i32
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

async fn execute(
    conn: &Connection,
    batch: &[Pending],
    consistency: scylla::statement::Consistency,
) -> Result<(), scylla::errors::ExecutionError> {
    let session = &conn.session;
    if let [single] = batch {
        return match &single.op {
            Op::Insert(m) => {
                session
                    .execute_unpaged(&conn.insert, insert_values(m))
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
                values.push(insert_values(m));
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
/// the insert and its delete agree on it without sharing any state.
fn insert_values(m: &Message) -> InsertValues<'_> {
    (
        &m.topic,
        m.msgid.as_str(),
        CqlTimestamp(m.arrived_ms),
        payload::encode(&m.payload),
        m.qos as i32,
        m.retain as i32,
        &m.sender,
        m.ttl_secs
            .map(|t| t.min(i32::MAX as u32) as i32)
            .unwrap_or(0),
        m.msgid.timestamp_us() as i64,
    )
}

fn delete_values<'a>(topic: &'a str, msgid: &'a MsgId) -> (i64, &'a str, &'a str) {
    (msgid.timestamp_us() as i64 + 1, topic, msgid.as_str())
}
