//! The write pipeline's side of the disk buffer (see `spool` and docs/design.md, "The disk
//! buffer"): the writer moves buffered writes to the spool while Cassandra is away or a
//! backlog builds (`buffer_mode = disk`), reads them back when Cassandra answers, and keeps
//! the rest there at stop. The publish path never touches the disk: it only fills the
//! in-memory buffer, as in memory mode.
//!
//! A spool that fails (unwritable directory, full disk) is closed and memory takes over,
//! counted in `spool_errors` and shown by `spool_error()`; it is opened again later.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{BufferMode, OverflowPolicy};
use crate::shared::{Inner, lock};
use crate::spool::{Appended, Spool, SpoolConfig};
use crate::stats::Counters;
use crate::types::StoreEvent;
use crate::write::{Charge, Pending};

/// How often a writer that waits for Cassandra moves new writes to the spool.
pub(crate) const SPILL_POLL: Duration = Duration::from_millis(10);

/// How often the spool is synced (when due) and drained segments are deleted, at least.
pub(crate) const UPKEEP_EVERY: Duration = Duration::from_millis(100);

/// How long after a failure the spool is opened again.
const REOPEN_AFTER: Duration = Duration::from_secs(5);

/// How long a spool held by the store being replaced (a configuration change) is waited for
/// before that counts as a failure.
const LOCK_PATIENCE: Duration = Duration::from_secs(10);

/// Writes read back per step; the staging area holds about this many.
const DRAIN_STEP: usize = 512;

impl Inner {
    /// Whether writes go to the spool when Cassandra is away (disk mode, spool open).
    pub(crate) fn spills(&self) -> bool {
        self.cfg.buffer_mode == BufferMode::Disk && self.spool.open.load(Ordering::Relaxed)
    }

    /// Whether the writer should look after the spool even when idle: records to read
    /// back, files to delete, appends to sync, or (disk mode) a spool to open again.
    pub(crate) fn spool_needs_upkeep(&self) -> bool {
        let c = &self.counters;
        let open = self.spool.open.load(Ordering::Relaxed);
        self.cfg.spool_dir.is_some()
            && (c.spool_bytes.load(Ordering::Relaxed) > 0
                || c.spool_unsynced.load(Ordering::Relaxed) > 0
                // Memory mode only drains a spool found at start.
                || (!open && self.cfg.buffer_mode == BufferMode::Disk))
    }

    /// Why the spool is unusable (memory took over), for the status.
    pub(crate) fn spool_error(&self) -> Option<String> {
        lock(&self.spool.error).clone()
    }
}

/// Disk mode keeps the waiting area (writes of partitions that refuse them, see `waiting`)
/// under this share of `buffer_capacity`: the newest waiting writes beyond it move to the
/// spool (`overflow_waiting`), and reading the spool back adds at most up to it.
const WAITING_SHARE: usize = 4;

impl Inner {
    /// How many writes reading the spool back may add now (see `read_back_room`).
    fn read_back_room(&self) -> usize {
        let c = &self.counters;
        read_back_room(
            self.cfg.buffer_capacity,
            self.cfg.buffer_max_bytes as u64,
            c.waiting.load(Ordering::Relaxed) as usize,
            c.buffered_bytes.load(Ordering::Relaxed),
        )
    }
}

/// The waiting area's share of a buffer of `capacity` writes (at least one).
fn waiting_share(capacity: usize) -> usize {
    (capacity / WAITING_SHARE).max(1)
}

/// How many writes reading the spool back may add (0: pause), with `waiting` writes waiting
/// and `bytes` held. Writes read back for a partition that still refuses join its queue in
/// memory: reading resumes only once the waiting area is under half its share, and never
/// adds more than the rest of the share, so that what `overflow_waiting` moved out does not
/// come straight back (nothing goes back and forth), and a partition that stays down cannot
/// pull the spool into memory and push new writes out while the disk has room. Nor does it
/// read while half of `max_bytes` is held.
fn read_back_room(capacity: usize, max_bytes: u64, waiting: usize, bytes: u64) -> usize {
    let share = waiting_share(capacity);
    if waiting >= (share / 2).max(1) || bytes >= max_bytes / 2 {
        return 0;
    }
    share - waiting
}

/// Runs `f` on the open spool off the async threads; a failure closes the spool (memory
/// takes over). `None` when no spool is open or it failed.
async fn with_spool<R: Send + 'static>(
    inner: &Arc<Inner>,
    f: impl FnOnce(&Arc<Inner>, &mut Spool) -> io::Result<R> + Send + 'static,
) -> Option<R> {
    let inner = inner.clone();
    tokio::task::spawn_blocking(move || {
        let mut slot = lock(&inner.spool.spool);
        let spool = slot.as_mut()?;
        let out = f(&inner, spool);
        publish_gauges(&inner, spool);
        match out {
            Ok(r) => Some(r),
            Err(e) => {
                let failed = slot.take();
                drop(slot);
                if let Some(spool) = failed {
                    fail(&inner, spool, &e);
                }
                None
            }
        }
    })
    .await
    .ok()
    .flatten()
}

fn publish_gauges(inner: &Inner, spool: &Spool) {
    let c = &inner.counters;
    c.spool_bytes.store(spool.bytes(), Ordering::Relaxed);
    c.spool_unsynced.store(spool.unsynced(), Ordering::Relaxed);
}

/// A failed spool is closed: its unread records stay in its files for the next open (and
/// leave this store's count), memory takes the new writes.
fn fail(inner: &Inner, spool: Spool, e: &io::Error) {
    let c = &inner.counters;
    let unread = spool.unread();
    let dir = spool.dir().display().to_string();
    drop(spool);
    Counters::add(&c.left_in_spool, unread);
    Counters::sub(&c.spooled, unread);
    c.spool_bytes.store(0, Ordering::Relaxed);
    c.spool_unsynced.store(0, Ordering::Relaxed);
    Counters::add(&c.spool_errors, 1);
    inner.spool.open.store(false, Ordering::Relaxed);
    let reason = e.to_string();
    *lock(&inner.spool.error) = Some(format!("{dir}: {reason}"));
    *lock(&inner.spool.retry_at) = Some(Instant::now() + REOPEN_AFTER);
    inner.emit(StoreEvent::SpoolFailed { dir, reason });
}

/// Opens the spool when it is configured, not open, and due for a try. In memory mode only
/// a directory that exists is opened (to drain what an earlier run left).
pub(crate) async fn open(inner: &Arc<Inner>) {
    let Some(dir) = inner.cfg.spool_dir.clone() else {
        return;
    };
    let now = Instant::now();
    if inner.spool.open.load(Ordering::Relaxed)
        || lock(&inner.spool.retry_at).is_some_and(|at| now < at)
    {
        return;
    }
    let first_try = *lock(&inner.spool.first_try).get_or_insert(now);
    if inner.cfg.buffer_mode == BufferMode::Memory && !Path::new(&dir).is_dir() {
        *lock(&inner.spool.retry_at) = Some(now + REOPEN_AFTER);
        return;
    }
    let cfg = SpoolConfig {
        dir: dir.clone().into(),
        max_bytes: inner.cfg.spool_max_bytes,
        segment_bytes: SpoolConfig::segment_bytes_for(inner.cfg.spool_max_bytes),
        sync_interval: inner.cfg.spool_sync_interval,
    };
    let opened = tokio::task::spawn_blocking(move || Spool::open(cfg))
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
    let c = &inner.counters;
    match opened {
        Ok((spool, found)) => {
            Counters::add(&c.spool_recovered, found.records);
            Counters::add(&c.spooled, found.records);
            Counters::add(&c.spool_torn, found.torn);
            publish_gauges(inner, &spool);
            *lock(&inner.spool.spool) = Some(spool);
            *lock(&inner.spool.error) = None;
            inner.spool.open.store(true, Ordering::Relaxed);
            if found.records > 0 || found.torn > 0 {
                inner.emit(StoreEvent::SpoolRecovered {
                    dir,
                    records: found.records,
                    torn: found.torn,
                    torn_bytes: found.torn_bytes,
                });
            }
            inner.work.notify_one();
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && now - first_try < LOCK_PATIENCE => {
            // The store this one replaces still holds it: try again shortly.
            *lock(&inner.spool.retry_at) = Some(now + SPILL_POLL * 10);
        }
        Err(e) => {
            Counters::add(&c.spool_errors, 1);
            let reason = e.to_string();
            *lock(&inner.spool.error) = Some(format!("{dir}: {reason}"));
            *lock(&inner.spool.retry_at) = Some(now + REOPEN_AFTER);
            inner.emit(StoreEvent::SpoolFailed { dir, reason });
        }
    }
}

/// Moves writes from memory to the spool: everything buffered while Cassandra is away
/// (`all`), or the backlog above half the buffer's bounds (down to a quarter) while it is
/// slower than the publishers. Writes someone waits on stay in memory. Syncs when due.
pub(crate) async fn spill(inner: &Arc<Inner>, all: bool) {
    if !inner.spills() {
        return;
    }
    let backlog = inner.rx.len() >= inner.cfg.buffer_capacity / 2
        || inner.counters.buffered_bytes.load(Ordering::Relaxed)
            >= inner.cfg.buffer_max_bytes as u64 / 2;
    let staged_loose = all
        && lock(&inner.staging)
            .items
            .iter()
            .any(Pending::only_in_memory);
    let due = inner.counters.spool_unsynced.load(Ordering::Relaxed) > 0;
    if inner.rx.is_empty() && !staged_loose && !due {
        return;
    }
    if !all && !backlog && !due {
        return;
    }
    let spill_any = all || backlog;
    with_spool(inner, move |inner, spool| {
        if spill_any {
            spill_into(inner, spool, all)?;
        }
        if spool.sync_due() {
            spool.sync()?;
        }
        Ok(())
    })
    .await;
}

/// The blocking part of `spill`.
fn spill_into(inner: &Inner, spool: &mut Spool, all: bool) -> io::Result<()> {
    let c = &inner.counters;
    let quarter = inner.cfg.buffer_capacity / 4;
    let quarter_bytes = inner.cfg.buffer_max_bytes as u64 / 4;
    let mut kept = Vec::new();
    let mut full = false;
    if all {
        // What the writer staged before Cassandra went away (writes being grouped, and
        // batches that lost their connection).
        let mut staging = lock(&inner.staging);
        let items = std::mem::take(&mut staging.items);
        for p in items {
            if full || !p.only_in_memory() {
                staging.items.push_back(p);
                continue;
            }
            match append(inner, spool, &p)? {
                true => Counters::sub(&c.staged, 1),
                false => {
                    full = true;
                    staging.items.push_back(p);
                }
            }
        }
    }
    while !full {
        let over =
            inner.rx.len() > quarter || c.buffered_bytes.load(Ordering::Relaxed) > quarter_bytes;
        if !all && !over {
            break;
        }
        // Counted as staged while it moves, so `stats()` never misses it.
        Counters::add(&c.staged, 1);
        let Ok(p) = inner.rx.try_recv() else {
            Counters::sub(&c.staged, 1);
            break;
        };
        if !p.only_in_memory() || !append(inner, spool, &p)? {
            full = p.only_in_memory();
            kept.push(p);
            continue;
        }
        Counters::sub(&c.staged, 1);
    }
    if !kept.is_empty() {
        // Stays in memory (staged): the spool is full, or someone waits for the outcome.
        let mut staging = lock(&inner.staging);
        if staging.items.is_empty() {
            staging.since = Some(Instant::now());
        }
        staging.items.extend(kept);
    }
    if inner.cfg.spool_sync_interval.is_zero() && spool.unsynced() > 0 {
        spool.sync()?;
    }
    Ok(())
}

/// Appends one write; `false` when the spool is full and the overflow policy keeps it in
/// memory (`drop_new`, or `drop_oldest` with nothing unread to evict). `drop_oldest` evicts
/// the oldest unread segment, counted like writes evicted from memory.
fn append(inner: &Inner, spool: &mut Spool, p: &Pending) -> io::Result<bool> {
    append_or_evict(inner, spool, p, true)
}

/// `append`; with `evict` false a full spool keeps the write in memory whatever the policy.
fn append_or_evict(inner: &Inner, spool: &mut Spool, p: &Pending, evict: bool) -> io::Result<bool> {
    let c = &inner.counters;
    loop {
        match spool.append(&p.op)? {
            Appended::Stored => {
                // The gauges before `spooled`: whoever sees the write spooled also sees it
                // unsynced (until the sync that follows publishes 0).
                c.spool_unsynced.store(spool.unsynced(), Ordering::SeqCst);
                c.spool_bytes.store(spool.bytes(), Ordering::SeqCst);
                Counters::add(&c.spool_appended, 1);
                c.spooled.fetch_add(1, Ordering::SeqCst);
                return Ok(true);
            }
            Appended::Full => {
                if !evict || inner.cfg.overflow_policy == OverflowPolicy::DropNew {
                    return Ok(false);
                }
                let Some(n) = spool.evict_oldest()? else {
                    return Ok(false);
                };
                Counters::add(&c.dropped, n);
                Counters::add(&c.evicted, n);
                Counters::sub(&c.spooled, n);
            }
        }
    }
}

/// Disk mode: each write waiting for its partition (see `waiting`) gets a held copy in the
/// spool, so that a crash while partitions are down loses none of them. The copies are not
/// read back while the store runs (the writes are in memory); one goes when its write is done
/// with, and a stop leaves them for the next start. After the spool was found full, tried
/// again at most every `SPILL_POLL` (the writer wakes for its upkeep meanwhile).
pub(crate) async fn keep_waiting(inner: &Arc<Inner>) {
    if !inner.spills() || inner.waiting_topics.load(Ordering::Relaxed) == 0 {
        return;
    }
    if lock(&inner.spool.full_at).is_some_and(|at| at.elapsed() < SPILL_POLL) {
        return;
    }
    if lock(&inner.waiting).only_in_memory() == 0 {
        return;
    }
    with_spool(inner, |inner, spool| {
        let mut waiting = lock(&inner.waiting);
        let kept = waiting.keep_on_disk(|op| spool.append_held(op))?;
        let full = waiting.only_in_memory() > 0;
        drop(waiting);
        Counters::add(&inner.counters.spool_held, kept);
        *lock(&inner.spool.full_at) = full.then(Instant::now);
        if spool.unsynced() > 0 && (inner.cfg.spool_sync_interval.is_zero() || spool.sync_due()) {
            spool.sync()?;
        }
        Ok(())
    })
    .await;
}

/// Disk mode: moves the newest waiting writes beyond `WAITING_SHARE` of `buffer_capacity` to
/// the spool, as plain records read back later (see `Inner::read_back_room`); their old
/// record, if any, can go. A full spool keeps them in memory (no eviction for this).
pub(crate) async fn overflow_waiting(inner: &Arc<Inner>) {
    let share = waiting_share(inner.cfg.buffer_capacity);
    let over = (inner.counters.waiting.load(Ordering::Relaxed) as usize).saturating_sub(share);
    if !inner.spills() || over == 0 {
        return;
    }
    with_spool(inner, move |inner, spool| {
        let moved = inner
            .with_waiting(|w| w.move_newest(over, |p| append_or_evict(inner, spool, p, false)))?;
        Counters::sub(&inner.counters.waiting, moved.len() as u64);
        moved.into_iter().for_each(Pending::superseded);
        if inner.cfg.spool_sync_interval.is_zero() && spool.unsynced() > 0 {
            spool.sync()?;
        }
        Ok(())
    })
    .await;
}

/// Reads spooled writes back into the staging area while it has room (oldest first), and
/// deletes drained segments and syncs when due. Called by a connected writer.
pub(crate) async fn drain(inner: &Arc<Inner>) {
    let c = &inner.counters;
    let upkeep_due = inner.spool_needs_upkeep()
        && lock(&inner.spool.last_upkeep).is_none_or(|at| at.elapsed() >= UPKEEP_EVERY);
    if upkeep_due {
        *lock(&inner.spool.last_upkeep) = Some(Instant::now());
        open(inner).await;
    }
    let spooled = c.spooled.load(Ordering::Relaxed) > 0;
    let staging_room = if spooled {
        DRAIN_STEP.saturating_sub(lock(&inner.staging).items.len())
    } else {
        0
    };
    let room = staging_room.min(inner.read_back_room());
    let read = spooled && staging_room >= DRAIN_STEP / 2 && room > 0;
    if !read && !upkeep_due {
        return;
    }
    let max_bytes = inner.cfg.max_batch_bytes.max(1) * 4;
    with_spool(inner, move |inner, spool| {
        if read {
            read_into_staging(inner, spool, room, max_bytes)?;
        }
        if upkeep_due {
            if spool.sync_due() {
                spool.sync()?;
            }
            spool.collect()?;
        }
        Ok(())
    })
    .await;
}

/// The blocking part of `drain`.
fn read_into_staging(
    inner: &Inner,
    spool: &mut Spool,
    room: usize,
    max_bytes: usize,
) -> io::Result<()> {
    let c = &inner.counters;
    let (records, lost) = spool.read(room, max_bytes)?;
    if lost > 0 {
        // Bytes changed behind the spool's back: those writes cannot be read.
        Counters::add(&c.failed, lost);
        Counters::sub(&c.spooled, lost);
    }
    if records.is_empty() {
        return Ok(());
    }
    let n = records.len() as u64;
    let mut staging = lock(&inner.staging);
    Counters::add(&c.staged, n);
    Counters::sub(&c.spooled, n);
    if staging.items.is_empty() {
        // They waited long enough: no linger.
        staging.since = Some(Instant::now() - inner.cfg.batch_linger);
    }
    for (op, ticket) in records {
        let (charge, _) = Charge::reserve(&c.buffered_bytes, op.held_bytes() as u64);
        staging.items.push_back(Pending {
            op,
            done: None,
            charge,
            ticket: Some(ticket),
        });
    }
    drop(staging);
    inner.work.notify_one();
    Ok(())
}

/// At stop: the writes still in memory go to the spool (disk mode; `keep`) and the spool is
/// synced and closed. Writes read back from it and not done are left in its files. Returns
/// the writes it did not take (someone waits for them, no spool, or it is full); the count
/// it kept is in `left_in_spool`.
pub(crate) async fn close(inner: &Arc<Inner>, left: Vec<Pending>, keep: bool) -> Vec<Pending> {
    let c = &inner.counters;
    let (from_spool, left): (Vec<Pending>, Vec<Pending>) =
        left.into_iter().partition(|p| p.ticket.is_some());
    // Still in the spool's files, unsettled: read again at the next start.
    Counters::add(&c.left_in_spool, from_spool.len() as u64);
    drop(from_spool);
    let keep = keep && inner.spills();
    let spool = lock(&inner.spool.spool).take();
    inner.spool.open.store(false, Ordering::Relaxed);
    let Some(mut spool) = spool else {
        return left;
    };
    let inner2 = inner.clone();
    let closed = tokio::task::spawn_blocking(move || {
        let mut rest = Vec::new();
        let mut result = Ok(());
        for p in left {
            if !keep || !p.only_in_memory() || result.is_err() {
                rest.push(p);
                continue;
            }
            match append(&inner2, &mut spool, &p) {
                Ok(true) => {}
                Ok(false) => rest.push(p),
                Err(e) => {
                    result = Err(e);
                    rest.push(p);
                }
            }
        }
        let result = result.and_then(|()| spool.sync());
        let unread = spool.unread();
        (rest, unread, result, spool.dir().display().to_string())
    })
    .await;
    let Ok((rest, unread, result, dir)) = closed else {
        return Vec::new();
    };
    Counters::add(&c.left_in_spool, unread);
    Counters::sub(&c.spooled, unread);
    c.spool_bytes.store(0, Ordering::Relaxed);
    c.spool_unsynced.store(0, Ordering::Relaxed);
    if let Err(e) = result {
        Counters::add(&c.spool_errors, 1);
        inner.emit(StoreEvent::SpoolFailed {
            dir,
            reason: e.to_string(),
        });
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::read_back_room;

    #[test]
    fn reading_back_pauses_while_the_waiting_area_is_full_and_never_for_a_small_buffer() {
        let (cap, max) = (100_000, 1 << 30);
        assert_eq!(read_back_room(cap, max, 0, 0), 25_000);
        assert_eq!(read_back_room(cap, max, 12_499, 0), 12_501);
        assert_eq!(
            read_back_room(cap, max, 12_500, 0),
            0,
            "half the share waits"
        );
        assert_eq!(
            read_back_room(cap, max, 0, max / 2),
            0,
            "half the bytes are held"
        );
        // The smallest buffers still read back, one write at a time.
        for cap in 1..8 {
            assert!(read_back_room(cap, max, 0, 0) >= 1, "buffer of {cap}");
            assert_eq!(read_back_room(cap, max, 1, 0), 0, "buffer of {cap}");
        }
    }
}
