//! The runtime slot: the one Tokio runtime and store this library runs, started by
//! `nif_start`, swapped by `nif_reconfigure`, ended by `nif_stop`. Callers are dirty NIFs:
//! these functions block (spawning threads, waiting for a flush).

use std::sync::{Mutex, RwLock};
use std::time::Duration;

use offline_store::{ShutdownReport, Store, StoreConfig, StoreError};
use tokio::runtime::{Handle, Runtime};

use crate::events::event_sink;

/// The running store and the runtime it lives on; `None` before `start` and after `stop`.
static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);
/// Hot-path copy of the store handle and runtime handle (a read lock per call).
static STORE: RwLock<Option<(Store, Handle)>> = RwLock::new(None);

/// Why a start, stop or reconfigure did not happen.
pub enum SlotError {
    NotStarted,
    AlreadyStarted,
    /// The thread that waited for the old store panicked.
    Panic,
    Store(StoreError),
}

impl From<StoreError> for SlotError {
    fn from(e: StoreError) -> Self {
        SlotError::Store(e)
    }
}

/// The store and a handle to its runtime, if started.
pub fn running() -> Option<(Store, Handle)> {
    STORE.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Starts the runtime and the store; connects in the background. `config` is decoded only
/// once the slot is known to be free, so `already_started` wins over a bad config.
pub fn start(
    config: impl FnOnce() -> Result<(StoreConfig, usize), StoreError>,
) -> Result<(), SlotError> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_some() {
        return Err(SlotError::AlreadyStarted);
    }
    let (cfg, workers) = config()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .max_blocking_threads(2)
        .thread_name("offline_cassandra")
        .enable_all()
        .build()
        .map_err(|e| StoreError::RuntimeFailed(e.to_string()))?;
    let store = {
        let _guard = rt.enter();
        Store::start(cfg)?
    };
    store.set_event_sink(event_sink());
    *STORE.write().unwrap_or_else(|e| e.into_inner()) = Some((store, rt.handle().clone()));
    *slot = Some(rt);
    Ok(())
}

/// Replaces the running store with one built from `config`, on the same runtime: the old
/// store flushes for at most `grace`, and the writes it still holds move to the new one.
/// `Some((flushed, handed_over))`, or `None` when there was no old store.
pub fn reconfigure(
    config: impl FnOnce() -> Result<StoreConfig, StoreError>,
    grace: Duration,
) -> Result<Option<(u64, u64)>, SlotError> {
    let slot = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(rt) = slot.as_ref() else {
        return Err(SlotError::NotStarted);
    };
    let cfg = config()?;
    let new_store = {
        let _guard = rt.enter();
        Store::start(cfg)?
    };
    new_store.set_event_sink(event_sink());
    let handle = rt.handle().clone();
    let old = STORE
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .replace((new_store.clone(), handle.clone()));
    let Some((old_store, _)) = old else {
        return Ok(None);
    };
    // Off the scheduler: waiting for the flush blocks.
    std::thread::spawn(move || {
        handle.block_on(async {
            let (report, handover) = old_store.shutdown_with_handover(grace).await;
            let moved = handover.len();
            let refused = new_store.adopt(handover);
            (report.flushed, (moved - refused) as u64)
        })
    })
    .join()
    .map(Some)
    .map_err(|_| SlotError::Panic)
}

/// Stops the store: flushes for at most `grace`, answers what is left with
/// `{error, shutdown}`, then ends the runtime's threads.
pub fn stop(grace: Duration) -> Result<Option<ShutdownReport>, SlotError> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(rt) = slot.take() else {
        return Err(SlotError::NotStarted);
    };
    let taken = STORE.write().unwrap_or_else(|e| e.into_inner()).take();
    // Shut down from a thread the BEAM does not manage: dropping pending tasks sends their
    // error replies, and rustler refuses to send from a scheduler thread.
    std::thread::spawn(move || {
        let report = taken.map(|(store, _)| rt.block_on(store.shutdown(grace)));
        rt.shutdown_timeout(Duration::from_secs(2));
        report
    })
    .join()
    .map_err(|_| SlotError::Panic)
}
