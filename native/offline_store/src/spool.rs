//! The disk buffer ("spool"): writes that cannot reach Cassandra now, kept in an append-only
//! log of segment files so that a stop, a restart or a crash of the node loses none of them
//! (see docs/design.md, "The disk buffer").
//!
//! * Segments are files `<id>.seg` (20 digits, oldest first) in one directory, each starting
//!   with `MAGIC` and then records (see `record`). Only the newest (the tail) is appended to;
//!   held records have a tail of their own.
//! * Appends go through a buffer and are synced in groups (`sync_interval`, or after every
//!   append call when it is zero), never one fsync per write.
//! * Records are read back oldest first; each carries a `Ticket` settled when its write is
//!   done with (written, failed, expired, evicted). A segment is deleted once every record
//!   in it was read and settled, so a crash before that sends its records again (inserts and
//!   deletes carry their own write timestamps: sending one twice changes nothing).
//! * Opening checks every record and cuts a segment at the first record that does not
//!   check out (a torn tail after a crash), counting it.
//! * Held records (`append_held`): copies of writes that stay in memory, waiting for their
//!   partition, kept so that a crash does not lose them. They go to segments of their own
//!   (two tails: switching kinds never cuts a segment short) that the reader skips while the
//!   spool is open, since their writes are in memory; such a segment goes once its tickets
//!   are settled, and after a crash its records are read back like any other.
//! * `LOCK` (an exclusive file lock) keeps a second store off the same directory.
//!
//! Blocking file I/O: called from `spawn_blocking` (see `spilling`).

mod record;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read as _, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::write::{Op, Ticket};

pub(crate) use record::HEADER_BYTES;

/// The first bytes of every segment: the format, and its version.
const MAGIC: &[u8; 8] = b"OCSPOOL1";

/// Bytes buffered before an append reaches the file (a sync flushes them too).
const WRITE_BUFFER: usize = 256 * 1024;

/// Limits and sync policy of a spool.
#[derive(Debug, Clone)]
pub(crate) struct SpoolConfig {
    pub(crate) dir: PathBuf,
    /// Most bytes the segments may hold together.
    pub(crate) max_bytes: u64,
    /// A segment is closed (synced) and a new one started past this size.
    pub(crate) segment_bytes: u64,
    /// Appends are synced when the last sync is older than this; zero syncs every append call.
    pub(crate) sync_interval: Duration,
}

impl SpoolConfig {
    /// Segments of an eighth of the bound (64 KiB .. 64 MiB): `drop_oldest` frees space a
    /// segment at a time, and a drained segment is deleted as a whole.
    pub(crate) fn segment_bytes_for(max_bytes: u64) -> u64 {
        (max_bytes / 8).clamp(64 * 1024, 64 * 1024 * 1024)
    }
}

/// A store's spool and what status calls read of it without waiting for its I/O.
#[derive(Default)]
pub(crate) struct SpoolSlot {
    /// The open spool, held during its file I/O (the writer, and `stop`).
    pub(crate) spool: std::sync::Mutex<Option<Spool>>,
    /// Why the spool cannot be used now.
    pub(crate) error: std::sync::Mutex<Option<String>>,
    /// When to try opening it (again); `None` before the first try.
    pub(crate) retry_at: std::sync::Mutex<Option<tokio::time::Instant>>,
    pub(crate) first_try: std::sync::Mutex<Option<tokio::time::Instant>>,
    pub(crate) last_upkeep: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// When the spool last had no room for a waiting write's held copy
    /// (`spilling::keep_waiting`).
    pub(crate) full_at: std::sync::Mutex<Option<tokio::time::Instant>>,
    pub(crate) open: std::sync::atomic::AtomicBool,
}

/// What opening a spool found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Recovered {
    pub(crate) segments: usize,
    pub(crate) records: u64,
    pub(crate) bytes: u64,
    /// Segments cut at a record that did not check out (torn tails), and the bytes cut.
    pub(crate) torn: u64,
    pub(crate) torn_bytes: u64,
}

/// The result of offering one write to the spool.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Appended {
    Stored,
    /// It does not fit under `max_bytes`: nothing was written.
    Full,
}

struct Segment {
    id: u64,
    bytes: u64,
    records: u64,
    /// Records handed out by `read`.
    read: u64,
    /// Records whose tickets were settled.
    settled: Arc<AtomicU64>,
    /// Appended in this run as held records (recovered segments are plain: read back).
    held: bool,
}

impl Segment {
    fn done(&self) -> bool {
        self.read == self.records && self.settled.load(Ordering::Acquire) >= self.records
    }
}

/// The segment appends of one kind go to, open for writing.
struct Tail {
    id: u64,
    file: BufWriter<File>,
}

/// Where `read` continues: the oldest segment with unread records, and an open reader.
struct Cursor {
    id: u64,
    offset: u64,
    file: BufReader<File>,
}

pub(crate) struct Spool {
    cfg: SpoolConfig,
    _lock: File,
    /// Oldest first (by id); the tails are among the last.
    segments: VecDeque<Segment>,
    tail: Option<Tail>,
    held_tail: Option<Tail>,
    cursor: Option<Cursor>,
    next_id: u64,
    bytes: u64,
    /// Bytes of the held segments: at most half of `max_bytes`, so that writes kept only
    /// here always have the other half.
    held_bytes: u64,
    unread: u64,
    /// Records appended since the last sync.
    unsynced: u64,
    last_sync: Instant,
    encoded: Vec<u8>,
}

impl Spool {
    /// Opens (creating it if needed) the spool in `cfg.dir`, checks every record and cuts
    /// torn tails. Fails when the directory cannot be made, locked or read.
    pub(crate) fn open(cfg: SpoolConfig) -> io::Result<(Spool, Recovered)> {
        fs::create_dir_all(&cfg.dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(cfg.dir.join("LOCK"))?;
        lock.try_lock().map_err(|_| {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                "another store uses this spool directory",
            )
        })?;
        let mut ids = Vec::new();
        for entry in fs::read_dir(&cfg.dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name
                .strip_suffix(".seg")
                .and_then(|s| s.parse::<u64>().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut found = Recovered::default();
        let mut segments = VecDeque::new();
        for id in &ids {
            let (records, bytes, torn_bytes) = recover_segment(&segment_path(&cfg.dir, *id))?;
            if torn_bytes > 0 {
                found.torn += 1;
                found.torn_bytes += torn_bytes;
            }
            if records == 0 {
                fs::remove_file(segment_path(&cfg.dir, *id))?;
                continue;
            }
            found.segments += 1;
            found.records += records;
            found.bytes += bytes;
            segments.push_back(Segment {
                id: *id,
                bytes,
                records,
                read: 0,
                settled: Arc::new(AtomicU64::new(0)),
                held: false,
            });
        }
        if found.torn > 0 {
            sync_dir(&cfg.dir)?;
        }
        let spool = Spool {
            next_id: ids.last().map_or(1, |id| id + 1),
            cfg,
            _lock: lock,
            segments,
            tail: None,
            held_tail: None,
            cursor: None,
            bytes: found.bytes,
            held_bytes: 0,
            unread: found.records,
            unsynced: 0,
            last_sync: Instant::now(),
            encoded: Vec::with_capacity(WRITE_BUFFER),
        };
        Ok((spool, found))
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.cfg.dir
    }

    /// Bytes the segments hold.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records not read back yet.
    pub(crate) fn unread(&self) -> u64 {
        self.unread
    }

    /// Records appended but not synced yet.
    pub(crate) fn unsynced(&self) -> u64 {
        self.unsynced
    }

    /// Appends `op` (buffered; see `sync_due`), or answers `Full` when it does not fit.
    pub(crate) fn append(&mut self, op: &Op) -> io::Result<Appended> {
        Ok(match self.append_record(op, false)? {
            Some(_) => Appended::Stored,
            None => Appended::Full,
        })
    }

    /// Appends `op` as a record already handed out, and returns the ticket that settles it
    /// (`None`: it does not fit, nothing was written; held records fill at most half of
    /// `max_bytes`). Its write stays in memory; the record is read back only by a later
    /// open, when the ticket was not settled before a crash or a stop.
    pub(crate) fn append_held(&mut self, op: &Op) -> io::Result<Option<Ticket>> {
        let Some(i) = self.append_record(op, true)? else {
            return Ok(None);
        };
        Ok(Some(Ticket(self.segments[i].settled.clone())))
    }

    /// Appends one record to the tail of its kind (a held one counts as read at once); the
    /// index of its segment, or `None` when it does not fit.
    fn append_record(&mut self, op: &Op, held: bool) -> io::Result<Option<usize>> {
        self.encoded.clear();
        let len = record::encode(op, &mut self.encoded) as u64;
        if self.bytes + len > self.cfg.max_bytes
            || (held && self.held_bytes + len > self.cfg.max_bytes / 2)
        {
            return Ok(None);
        }
        let at = self.tail_of(held).map(|id| self.segment_index(id));
        let rotate = at.is_some_and(|i| {
            let s = &self.segments[i];
            s.bytes + len > self.cfg.segment_bytes && s.bytes > MAGIC.len() as u64
        });
        let i = match at {
            Some(i) if !rotate => i,
            _ => self.start_segment(held)?,
        };
        let tail = if held {
            &mut self.held_tail
        } else {
            &mut self.tail
        };
        let Some(tail) = tail.as_mut() else {
            return Err(io::Error::other("spool has no open segment"));
        };
        tail.file.write_all(&self.encoded)?;
        let seg = &mut self.segments[i];
        seg.bytes += len;
        seg.records += 1;
        self.bytes += len;
        if held {
            seg.read += 1;
            self.held_bytes += len;
        } else {
            self.unread += 1;
        }
        self.unsynced += 1;
        Ok(Some(i))
    }

    fn tail_of(&self, held: bool) -> Option<u64> {
        let tail = if held { &self.held_tail } else { &self.tail };
        tail.as_ref().map(|t| t.id)
    }

    /// Where segment `id` is (it exists: a tail's segment, or one being read).
    fn segment_index(&self, id: u64) -> usize {
        // Tails are at the back: search from there.
        let from_back = self.segments.iter().rev().position(|s| s.id == id);
        self.segments.len() - 1 - from_back.expect("a tail is a segment")
    }

    /// Whether segment `id` is open for appends.
    fn is_tail(&self, id: u64) -> bool {
        self.tail_of(false) == Some(id) || self.tail_of(true) == Some(id)
    }

    /// Whether the appends not synced yet are due for a sync under `sync_interval`.
    pub(crate) fn sync_due(&self) -> bool {
        self.unsynced > 0 && self.last_sync.elapsed() >= self.cfg.sync_interval
    }

    /// Writes out and syncs what was appended.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        for tail in [self.tail.as_mut(), self.held_tail.as_mut()]
            .into_iter()
            .flatten()
        {
            tail.file.flush()?;
            tail.file.get_ref().sync_data()?;
        }
        self.unsynced = 0;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Closes the tail of that kind (synced) and opens a new segment file as its tail;
    /// returns the new segment's index.
    fn start_segment(&mut self, held: bool) -> io::Result<usize> {
        if self.tail_of(held).is_some() {
            self.sync()?;
            *self.tail_slot(held) = None;
        }
        let id = self.next_id;
        let path = segment_path(&self.cfg.dir, id);
        let mut file = BufWriter::with_capacity(
            WRITE_BUFFER,
            OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)?,
        );
        file.write_all(MAGIC)?;
        // The new file's name must survive a crash as well as its records.
        file.flush()?;
        file.get_ref().sync_data()?;
        sync_dir(&self.cfg.dir)?;
        self.next_id += 1;
        self.bytes += MAGIC.len() as u64;
        if held {
            self.held_bytes += MAGIC.len() as u64;
        }
        self.segments.push_back(Segment {
            id,
            bytes: MAGIC.len() as u64,
            records: 0,
            read: 0,
            settled: Arc::new(AtomicU64::new(0)),
            held,
        });
        *self.tail_slot(held) = Some(Tail { id, file });
        Ok(self.segments.len() - 1)
    }

    fn tail_slot(&mut self, held: bool) -> &mut Option<Tail> {
        if held {
            &mut self.held_tail
        } else {
            &mut self.tail
        }
    }

    /// Reads up to `max` records (and about `max_bytes`), oldest first, each with the ticket
    /// that settles it. Records that do not check out (a file changed behind our back) are
    /// skipped with the rest of their segment and returned as the count of the lost.
    pub(crate) fn read(
        &mut self,
        max: usize,
        max_bytes: usize,
    ) -> io::Result<(Vec<(Op, Ticket)>, u64)> {
        let mut out = Vec::new();
        let mut lost = 0;
        let mut bytes = 0;
        while out.len() < max && bytes < max_bytes {
            let Some(i) = self.segments.iter().position(|s| s.read < s.records) else {
                break;
            };
            let seg_id = self.segments[i].id;
            if let Some(tail) = self.tail.as_mut().filter(|t| t.id == seg_id) {
                // The reader must see what the writer still buffers.
                tail.file.flush()?;
            }
            if self.cursor.as_ref().is_none_or(|c| c.id != seg_id) {
                let mut file = File::open(segment_path(&self.cfg.dir, seg_id))?;
                file.seek(SeekFrom::Start(MAGIC.len() as u64))?;
                self.cursor = Some(Cursor {
                    id: seg_id,
                    offset: MAGIC.len() as u64,
                    file: BufReader::with_capacity(WRITE_BUFFER, file),
                });
            }
            let cursor = self.cursor.as_mut().expect("just opened");
            let seg = &mut self.segments[i];
            match read_record(&mut cursor.file)? {
                Some((op, len)) => {
                    cursor.offset += len as u64;
                    seg.read += 1;
                    self.unread -= 1;
                    bytes += len;
                    out.push((op, Ticket(seg.settled.clone())));
                }
                None => {
                    let left = seg.records - seg.read;
                    lost += left;
                    self.unread -= left;
                    seg.read = seg.records;
                    seg.settled.fetch_add(left, Ordering::Release);
                }
            }
        }
        Ok((out, lost))
    }

    /// Deletes the segments whose records were all read and settled, wherever they are (a
    /// held segment whose partition still waits keeps no drained one behind it). A drained
    /// tail goes too (the next append starts a new segment), so a restart does not send it
    /// again.
    pub(crate) fn collect(&mut self) -> io::Result<()> {
        let mut i = 0;
        while let Some(seg) = self.segments.get(i) {
            let (id, records) = (seg.id, seg.records);
            let is_tail = self.is_tail(id);
            if !seg.done() || (is_tail && (self.unsynced > 0 || records == 0)) {
                i += 1;
                continue;
            }
            if is_tail {
                *self.tail_slot(self.tail_of(true) == Some(id)) = None;
            }
            self.remove(i)?;
        }
        Ok(())
    }

    /// `drop_oldest`: deletes the oldest segment none of which was read yet, unless it is
    /// a tail; returns how many records went with it.
    pub(crate) fn evict_oldest(&mut self) -> io::Result<Option<u64>> {
        let Some(i) = self
            .segments
            .iter()
            .position(|s| s.read == 0 && s.records > 0 && !self.is_tail(s.id))
        else {
            return Ok(None);
        };
        let records = self.segments[i].records;
        self.unread -= records;
        self.remove(i)?;
        Ok(Some(records))
    }

    fn remove(&mut self, i: usize) -> io::Result<()> {
        let Some(seg) = self.segments.remove(i) else {
            return Ok(());
        };
        if self.cursor.as_ref().is_some_and(|c| c.id == seg.id) {
            self.cursor = None;
        }
        self.bytes -= seg.bytes;
        if seg.held {
            self.held_bytes -= seg.bytes;
        }
        fs::remove_file(segment_path(&self.cfg.dir, seg.id))
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// Makes a created or removed file name durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads the next record from `file`; `None` at the end or at bytes that are not a record.
fn read_record(file: &mut BufReader<File>) -> io::Result<Option<(Op, usize)>> {
    let mut buf = vec![0u8; HEADER_BYTES];
    if !read_full(file, &mut buf)? {
        return Ok(None);
    }
    let Some(len) = record::claimed_len(&buf) else {
        return Ok(None);
    };
    buf.resize(len, 0);
    if !read_full(file, &mut buf[HEADER_BYTES..])? {
        return Ok(None);
    }
    Ok(match record::decode(&buf) {
        record::Read::Record(op, n) => Some((op, n)),
        _ => None,
    })
}

/// Fills `buf`; `false` when the file ends first.
fn read_full(file: &mut impl io::Read, buf: &mut [u8]) -> io::Result<bool> {
    match file.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Checks a segment's records and cuts it after the last one that checks out. Returns
/// (records, bytes kept, bytes cut).
fn recover_segment(path: &Path) -> io::Result<(u64, u64, u64)> {
    let mut data = Vec::new();
    File::open(path)?.read_to_end(&mut data)?;
    if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
        // Not a segment we wrote, or torn before its header was out: nothing to keep.
        return Ok((0, 0, data.len() as u64));
    }
    let mut at = MAGIC.len();
    let mut records = 0;
    while at < data.len() {
        match record::decode(&data[at..]) {
            record::Read::Record(_, n) => {
                at += n;
                records += 1;
            }
            record::Read::Short | record::Read::Bad => break,
        }
    }
    let cut = (data.len() - at) as u64;
    if cut > 0 {
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(at as u64)?;
        file.sync_all()?;
    }
    Ok((records, at as u64, cut))
}

#[cfg(test)]
mod tests {
    use super::record::tests::message;
    use super::*;
    use crate::msgid::MsgId;

    /// A fresh directory under the system's temp dir, removed when dropped.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "offline_spool_{name}_{}_{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos()
            ));
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn config(dir: &TempDir, max_bytes: u64) -> SpoolConfig {
        SpoolConfig {
            dir: dir.0.clone(),
            max_bytes,
            segment_bytes: SpoolConfig::segment_bytes_for(max_bytes),
            sync_interval: Duration::ZERO,
        }
    }

    fn insert(i: u64) -> Op {
        Op::Insert(message("t/1", 1_700_000_000_000_000 + i, &[b'x'; 100]))
    }

    fn us_of(op: &Op) -> u64 {
        match op {
            Op::Insert(m) => m.msgid.timestamp_us(),
            Op::Delete { msgid, .. } => msgid.timestamp_us(),
        }
    }

    fn fill(spool: &mut Spool, n: u64) {
        for i in 0..n {
            assert_eq!(spool.append(&insert(i)).unwrap(), Appended::Stored);
        }
        spool.sync().unwrap();
    }

    fn read_all(spool: &mut Spool) -> Vec<(Op, Ticket)> {
        let (read, lost) = spool.read(usize::MAX, usize::MAX).unwrap();
        assert_eq!(lost, 0);
        read
    }

    #[test]
    fn records_come_back_in_order_across_segments_and_drained_segments_go() {
        let dir = TempDir::new("order");
        let (mut spool, found) = Spool::open(config(&dir, 1 << 20)).unwrap();
        assert_eq!(found, Recovered::default());
        fill(&mut spool, 3_000);
        let files = fs::read_dir(&dir.0).unwrap().count();
        assert!(files > 3, "{files} files: several segments expected");
        let read = read_all(&mut spool);
        let us: Vec<u64> = read
            .iter()
            .map(|(op, _)| us_of(op) - 1_700_000_000_000_000)
            .collect();
        assert_eq!(us, (0..3_000).collect::<Vec<_>>());
        assert_eq!(spool.unread(), 0);
        // Read but not settled: nothing may go.
        spool.collect().unwrap();
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), files);
        for (_, ticket) in read {
            ticket.settle();
        }
        spool.collect().unwrap();
        assert_eq!(spool.bytes(), 0);
        let left: Vec<_> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["LOCK"]);
        // Appending after a full drain starts a new segment.
        fill(&mut spool, 1);
        assert_eq!(read_all(&mut spool).len(), 1);
    }

    #[test]
    fn held_records_are_never_read_back_while_open_and_come_back_after_a_crash() {
        let dir = TempDir::new("held");
        let mut held = Vec::new();
        {
            let (mut spool, _) = Spool::open(config(&dir, 1 << 20)).unwrap();
            // Plain and held appends taking turns, across several segments of each kind.
            for i in 0..2_000 {
                if i % 2 == 0 {
                    assert_eq!(spool.append(&insert(i)).unwrap(), Appended::Stored);
                } else {
                    held.push(spool.append_held(&insert(i)).unwrap().expect("fits"));
                }
            }
            spool.sync().unwrap();
            assert_eq!(spool.unread(), 1_000);
            let read = read_all(&mut spool);
            let us: Vec<u64> = read
                .iter()
                .map(|(op, _)| us_of(op) - 1_700_000_000_000_000)
                .collect();
            assert_eq!(us, (0..2_000).step_by(2).collect::<Vec<_>>());
            // The plain records are done with; their segments go although held segments
            // older than some of them stay.
            read.into_iter().for_each(|(_, t)| t.settle());
            spool.collect().unwrap();
            let held_bytes = spool.bytes();
            assert!(held_bytes > 0 && held_bytes < 1_000 * 200, "{held_bytes}");
            // The first 900 held writes landed; the rest were in memory when the node died.
            held.drain(..900).for_each(Ticket::settle);
            spool.collect().unwrap();
            assert!(spool.bytes() < held_bytes);
            assert!(read_all(&mut spool).is_empty());
        }
        let (mut spool, found) = Spool::open(config(&dir, 1 << 20)).unwrap();
        let back: Vec<u64> = read_all(&mut spool)
            .iter()
            .map(|(op, _)| us_of(op) - 1_700_000_000_000_000)
            .collect();
        assert_eq!(found.records, back.len() as u64);
        // Whole segments go: every unsettled held write is back, in order, and at most a
        // segment's worth of settled ones with them.
        let unsettled: Vec<u64> = (1_800..2_000).filter(|i| i % 2 == 1).collect();
        assert!(back.ends_with(&unsettled), "{back:?}");
        assert!(back.iter().all(|i| i % 2 == 1));
        assert!(back.len() < unsettled.len() + 300, "{}", back.len());
    }

    #[test]
    fn held_copies_fill_at_most_half_and_leave_the_rest_to_writes_kept_only_here() {
        let dir = TempDir::new("held_half");
        let max = 1 << 20;
        let (mut spool, _) = Spool::open(config(&dir, max)).unwrap();
        let mut held = Vec::new();
        while let Some(ticket) = spool.append_held(&insert(held.len() as u64)).unwrap() {
            held.push(ticket);
        }
        let half = spool.bytes();
        assert!(half <= max / 2 && half > max / 2 - 1_000, "{half}");
        let mut plain = 0;
        while spool.append(&insert(plain)).unwrap() == Appended::Stored {
            plain += 1;
        }
        assert!(spool.bytes() > max - 1_000, "{}", spool.bytes());
        assert!(
            plain as usize >= held.len() - 10,
            "{plain} plain, {} held",
            held.len()
        );
        // Settled and collected, the held segments give their half back.
        spool.sync().unwrap();
        held.into_iter().for_each(Ticket::settle);
        spool.collect().unwrap();
        assert!(spool.bytes() <= max - half + 200_000, "{}", spool.bytes());
        assert!(spool.append_held(&insert(0)).unwrap().is_some());
    }

    #[test]
    fn a_reopened_spool_gives_back_what_was_not_settled() {
        let dir = TempDir::new("reopen");
        {
            let (mut spool, _) = Spool::open(config(&dir, 1 << 20)).unwrap();
            fill(&mut spool, 2_000);
            spool
                .append(&Op::Delete {
                    topic: "t/1".into(),
                    msgid: MsgId::new(1_700_000_000_000_005, 7, 3),
                    written_us: None,
                })
                .unwrap();
            spool.sync().unwrap();
            // The first 1,000 are written and settled; the next 500 read but not settled.
            let (first, _) = spool.read(1_000, usize::MAX).unwrap();
            first.into_iter().for_each(|(_, t)| t.settle());
            let (_unsettled, _) = spool.read(500, usize::MAX).unwrap();
            spool.collect().unwrap();
        }
        let (mut spool, found) = Spool::open(config(&dir, 1 << 20)).unwrap();
        assert_eq!(found.torn, 0);
        let read = read_all(&mut spool);
        // Whole segments go: what comes back starts at the oldest segment still holding an
        // unsettled record, and ends with the delete.
        assert_eq!(found.records, read.len() as u64);
        assert!(read.len() >= 1_001 && read.len() < 2_001, "{}", read.len());
        let first = us_of(&read[0].0) - 1_700_000_000_000_000;
        assert!(first <= 1_000, "{first}");
        assert!(matches!(read.last().unwrap().0, Op::Delete { .. }));
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_good_record_and_counted() {
        let dir = TempDir::new("torn");
        let seg;
        {
            let (mut spool, _) = Spool::open(config(&dir, 1 << 30)).unwrap();
            fill(&mut spool, 100);
            seg = segment_path(&dir.0, spool.segments[0].id);
        }
        let full = fs::metadata(&seg).unwrap().len();
        // Cut the last record in half.
        let record = (full - MAGIC.len() as u64) / 100;
        fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(full - record / 2)
            .unwrap();
        let (mut spool, found) = Spool::open(config(&dir, 1 << 30)).unwrap();
        assert_eq!((found.records, found.torn), (99, 1));
        assert_eq!(found.torn_bytes, record - record / 2);
        assert_eq!(fs::metadata(&seg).unwrap().len(), full - record);
        assert_eq!(read_all(&mut spool).len(), 99);
        // Appends after the cut are read back after the 99.
        fill(&mut spool, 1);
        assert_eq!(read_all(&mut spool).len(), 1);
        drop(spool);
        let (_, again) = Spool::open(config(&dir, 1 << 30)).unwrap();
        assert_eq!((again.records, again.torn), (100, 0));
    }

    #[test]
    fn garbage_after_good_records_is_cut_too() {
        let dir = TempDir::new("garbage");
        let seg;
        {
            let (mut spool, _) = Spool::open(config(&dir, 1 << 30)).unwrap();
            fill(&mut spool, 10);
            seg = segment_path(&dir.0, spool.segments[0].id);
        }
        let mut f = fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0xAB; 40]).unwrap();
        let (_, found) = Spool::open(config(&dir, 1 << 30)).unwrap();
        assert_eq!((found.records, found.torn, found.torn_bytes), (10, 1, 40));
    }

    #[test]
    fn the_bound_holds_and_drop_oldest_frees_whole_unread_segments() {
        let dir = TempDir::new("full");
        let max = 256 * 1024;
        let (mut spool, _) = Spool::open(config(&dir, max)).unwrap();
        let mut stored = 0u64;
        while spool.append(&insert(stored)).unwrap() == Appended::Stored {
            stored += 1;
        }
        assert!(spool.bytes() <= max);
        assert!(spool.bytes() + 200 > max, "{} of {max}", spool.bytes());
        assert_eq!(spool.unread(), stored);
        let evicted = spool.evict_oldest().unwrap().unwrap();
        assert!(evicted > 0);
        assert_eq!(spool.unread(), stored - evicted);
        assert_eq!(spool.append(&insert(stored)).unwrap(), Appended::Stored);
        spool.sync().unwrap();
        let read = read_all(&mut spool);
        assert_eq!(read.len() as u64, stored - evicted + 1);
        assert_eq!(us_of(&read[0].0) - 1_700_000_000_000_000, evicted);
        // Nothing unread left to evict.
        assert_eq!(spool.evict_oldest().unwrap(), None);
    }

    #[test]
    fn a_second_store_cannot_use_the_same_directory() {
        let dir = TempDir::new("lock");
        let (_spool, _) = Spool::open(config(&dir, 1 << 20)).unwrap();
        let err = Spool::open(config(&dir, 1 << 20)).err().unwrap();
        assert!(err.to_string().contains("another store"), "{err}");
    }

    #[test]
    fn an_unwritable_directory_is_an_error_not_a_panic() {
        let dir = TempDir::new("unwritable");
        fs::write(&dir.0, b"a file, not a directory").unwrap();
        assert!(Spool::open(config(&dir, 1 << 20)).is_err());
        let _ = fs::remove_file(&dir.0);
    }
}
