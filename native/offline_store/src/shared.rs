//! State shared by the store handle and its background tasks (writer, supervisor, floor
//! scans).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::clock::ClockCheck;
use crate::config::StoreConfig;
use crate::connection::Connection;
use crate::error::StoreError;
use crate::lru::Lru;
use crate::spool::SpoolSlot;
use crate::stats::Counters;
use crate::types::{ConnState, EventSink, StoreEvent};
use crate::waiting::Waiting;
use crate::write::Pending;

/// Writes taken from the buffer, being grouped into requests. `spare` is the second half of
/// a double buffer that lets `take_request` regroup without allocating. `since`: from when
/// the oldest staged write may have waited (`None` when nothing is staged), for the writer's
/// linger; `empty_at`: when the writer last found nothing to stage or took the last staged
/// write (a write staged later may have been in the buffer since); `awaited`: a caller
/// waits for a staged write (it does not linger).
#[derive(Default)]
pub(crate) struct Staging {
    pub(crate) items: VecDeque<Pending>,
    pub(crate) spare: VecDeque<Pending>,
    pub(crate) since: Option<Instant>,
    pub(crate) empty_at: Option<Instant>,
    pub(crate) awaited: bool,
}

/// Topics a node remembers having indexed (about 100 bytes each).
const INDEXED_TOPICS_REMEMBERED: usize = 100_000;

/// Everything a store's clones and background tasks share.
pub(crate) struct Inner {
    pub(crate) cfg: StoreConfig,
    pub(crate) conn: RwLock<Option<Arc<Connection>>>,
    pub(crate) state: watch::Sender<ConnState>,
    /// The write buffer: a bounded lock-free queue, so a submitting thread never waits for
    /// the writer (which may be descheduled on a busy 2-core machine).
    pub(crate) tx: crossbeam_channel::Sender<Pending>,
    pub(crate) rx: crossbeam_channel::Receiver<Pending>,
    /// Writes the writer took from the buffer to group them by partition (at most
    /// `BATCH_SCAN`). Only the writer task and `shutdown` touch it.
    pub(crate) staging: Mutex<Staging>,
    /// Writes Cassandra could not take yet (replicas down, overloaded, timed out), per
    /// topic with its backoff (see `waiting`). Only the writer tasks, `enqueue`'s
    /// `drop_oldest` and `shutdown` touch it.
    pub(crate) waiting: Mutex<Waiting>,
    /// What status calls read of `waiting` without its lock (a NIF call must return in
    /// µs): topics waiting, their writes out on a retry, why the latest write had to wait.
    pub(crate) waiting_topics: AtomicUsize,
    pub(crate) retrying: AtomicU64,
    pub(crate) wait_reason: Mutex<String>,
    pub(crate) work: Notify,
    /// The writer waits for `work` (idle for a while); otherwise it looks at the buffer
    /// every millisecond by itself and submitters need not wake it.
    pub(crate) writer_parked: AtomicBool,
    pub(crate) stopped: AtomicBool,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Where `StoreEvent`s go (the NIF forwards them to Erlang's logger).
    pub(crate) events: Mutex<Option<EventSink>>,
    /// Topics whose index rows were written recently, and when (by the writer tasks only);
    /// the least recently written is forgotten first (see `lru`).
    pub(crate) indexed: Mutex<Lru<Instant>>,
    /// Deletes per topic since its floor was last moved, and whether a scan runs.
    pub(crate) floor_scans: Mutex<HashMap<String, FloorScan>>,
    /// Topics whose unreadable rows were reported (see `reads`), so each is reported once.
    pub(crate) unreadable_topics: Mutex<HashSet<String>>,
    /// This node's clock against Cassandra's (see `clock`).
    pub(crate) clock: ClockCheck,
    pub(crate) counters: Counters,
    /// Turns for replay reads, `max_concurrent_replay_reads` of them (see `replay_limit`).
    pub(crate) replay_reads: tokio::sync::Semaphore,
    /// The disk buffer, when `spool_dir` is set (see `spilling`).
    pub(crate) spool: SpoolSlot,
}

/// Floor upkeep of one topic (see `floor`).
#[derive(Default)]
pub(crate) struct FloorScan {
    /// Deletes since the last scan started.
    pub(crate) deletes: u32,
    pub(crate) running: bool,
    /// A scan ran since this entry was made: its later acks get a scan when they stop.
    pub(crate) scanned: bool,
    /// When the acks that no scan has seen get one (µs since the epoch).
    pub(crate) settle_at: Option<u64>,
    /// When a scan can rebuild a floor a late write reset (µs since the epoch).
    pub(crate) rebuild_at: Option<u64>,
    /// A timer task is waiting for the earlier of the two.
    pub(crate) timer: bool,
    /// The running scan was asked for by the timer (a settle or rebuild scan).
    pub(crate) settling: bool,
    /// Scans in a row that failed (a timeout on a busy node, say): the next is retried
    /// after a backoff that doubles with each.
    pub(crate) failures: u32,
}

impl Inner {
    /// Fresh state for a store not yet connected; the caller starts its tasks.
    pub(crate) fn new(cfg: StoreConfig) -> Inner {
        let (state, _) = watch::channel(ConnState::Connecting {
            attempt: 0,
            last_error: None,
        });
        let (shutdown, _) = watch::channel(false);
        let (tx, rx) = crossbeam_channel::bounded(cfg.buffer_capacity);
        let replay_reads = tokio::sync::Semaphore::new(cfg.max_concurrent_replay_reads);
        Inner {
            cfg,
            conn: RwLock::new(None),
            state,
            tx,
            rx,
            staging: Mutex::new(Staging::default()),
            waiting: Mutex::new(Waiting::default()),
            waiting_topics: AtomicUsize::new(0),
            retrying: AtomicU64::new(0),
            wait_reason: Mutex::new(String::new()),
            work: Notify::new(),
            writer_parked: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            shutdown,
            writer: Mutex::new(None),
            indexed: Mutex::new(Lru::new(INDEXED_TOPICS_REMEMBERED)),
            floor_scans: Mutex::new(HashMap::new()),
            unreadable_topics: Mutex::new(HashSet::new()),
            clock: ClockCheck::default(),
            events: Mutex::new(None),
            counters: Counters::default(),
            replay_reads,
            spool: SpoolSlot::default(),
        }
    }

    /// The session to use now. While disconnected the session is still tried (the driver
    /// may have reconnected before the next probe); without one the state's error is returned.
    pub(crate) fn connection(&self) -> Result<Arc<Connection>, StoreError> {
        let state_error = self.state.borrow().error();
        match (state_error, self.current()) {
            (None, Some(conn)) | (Some(StoreError::NotConnected { .. }), Some(conn)) => Ok(conn),
            (Some(err), _) => Err(err),
            (None, None) => Err(StoreError::NotConnected {
                reason: "connecting".into(),
            }),
        }
    }

    pub(crate) fn current(&self) -> Option<Arc<Connection>> {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    pub(crate) fn emit(&self, event: StoreEvent) {
        if let Some(sink) = lock(&self.events).as_ref() {
            sink(event);
        }
    }
}

pub(crate) fn set_state(inner: &Inner, next: ConnState) {
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

/// Locks a mutex whose data stays consistent even if a holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
