//! The disk buffer (`buffer_mode = disk`) against the real Cassandra: writes made while it
//! is away move to the spool, survive a stop of the store (and a torn tail), and are
//! written when a store on the same spool directory reaches Cassandra; the spool's bound
//! holds with exact counts; an unusable directory leaves the store working from memory.
//! "Away" is a TCP proxy in front of the real node that refuses connections (within a
//! run), or a contact point nothing listens on (across a stop).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use offline_store::{BufferMode, ConnState, OverflowPolicy, StatsSnapshot, Store, StoreConfig};
use tokio::net::{TcpListener, TcpStream};

/// A directory of its own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "offline_store_spool_{test}_{}_{}",
            std::process::id(),
            now_ms()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn disk_config(dir: &TempDir) -> StoreConfig {
    StoreConfig {
        buffer_mode: BufferMode::Disk,
        spool_dir: Some(dir.path()),
        spool_sync_interval: Duration::from_millis(20),
        ..config()
    }
}

/// The same store config, but pointing at a port nothing listens on: Cassandra is away.
fn away(cfg: StoreConfig) -> StoreConfig {
    StoreConfig {
        contact_points: vec!["127.0.0.1:1".into()],
        reconnect_max_backoff: Duration::from_millis(200),
        ..cfg
    }
}

async fn wait_until(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + scaled(deadline);
    while !done() {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn rows_in(topic: &str) -> Vec<String> {
    let rows = admin()
        .await
        .query_unpaged("SELECT msgid FROM mqtt.mqtt_msg WHERE topic = ?", (topic,))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap();
    let mut ids: Vec<String> = rows
        .rows::<(String,)>()
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect();
    ids.sort();
    ids
}

/// Submits `n` messages to `topic`; returns their msgids (sorted: publish order).
fn publish(store: &Store, topic: &str, n: usize, payload: &[u8]) -> Vec<String> {
    (0..n)
        .map(|_| {
            let m = message(topic, payload);
            let id = m.msgid.to_string();
            store.submit_store(m).unwrap();
            id
        })
        .collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn all_spooled_and_synced(s: &StatsSnapshot, n: u64) -> bool {
    s.spooled == n && s.buffered == n && s.spool_unsynced == 0
}

/// Publishes `n` with Cassandra away and stops the store once the spool holds them all,
/// synced. Returns the msgids.
async fn spool_while_away(dir: &TempDir, topic: &str, n: usize) -> Vec<String> {
    let store = Store::start(away(disk_config(dir))).unwrap();
    let ids = publish(&store, topic, n, b"spooled while away");
    wait_until(
        "every write is spooled and synced",
        Duration::from_secs(20),
        || all_spooled_and_synced(&store.stats(), n as u64),
    )
    .await;
    let s = store.stats();
    assert!(s.spool_bytes > 100 * n as u64, "{s:?}");
    let report = store.shutdown(Duration::from_millis(100)).await;
    assert_eq!((report.spooled, report.abandoned), (n as u64, 0));
    let s = store.stats();
    assert_eq!((s.left_in_spool, s.failed), (n as u64, 0));
    assert!(s.is_balanced(), "{s:?}");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_spooled_while_away_are_written_by_the_next_store() {
    let dir = TempDir::new("restart");
    let topic = unique_topic("spool_restart");
    let _cleanup = Cleanup::topics(&[&topic]);
    let ids = spool_while_away(&dir, &topic, 5_000).await;
    assert!(!segments(&dir.0).is_empty());

    let store = connect_with(disk_config(&dir)).await;
    wait_until("the spool is drained", Duration::from_secs(60), || {
        let s = store.stats();
        s.written == 5_000 && s.buffered == 0
    })
    .await;
    let s = store.stats();
    assert_eq!((s.spool_recovered, s.spool_torn, s.failed), (5_000, 0, 0));
    assert!(s.is_balanced(), "{s:?}");
    assert_eq!(rows_in(&topic).await, ids);
    // Drained segments are deleted: a later start sends nothing again.
    wait_until(
        "drained segments are deleted",
        Duration::from_secs(10),
        || segments(&dir.0).is_empty(),
    )
    .await;
    store.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_counted_and_every_whole_record_written() {
    let dir = TempDir::new("torn");
    let topic = unique_topic("spool_torn");
    let _cleanup = Cleanup::topics(&[&topic]);
    let ids = spool_while_away(&dir, &topic, 300).await;
    let last = segments(&dir.0).pop().unwrap();
    // Cut the last record in half, as a crash in the middle of a write would.
    let len = std::fs::metadata(&last).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 20)
        .unwrap();

    let store = connect_with(disk_config(&dir)).await;
    wait_until("the spool is drained", Duration::from_secs(60), || {
        let s = store.stats();
        s.written == 299 && s.buffered == 0
    })
    .await;
    let s = store.stats();
    assert_eq!((s.spool_recovered, s.spool_torn), (299, 1));
    assert_eq!(rows_in(&topic).await, ids[..299]);
    store.shutdown(Duration::from_secs(1)).await;
}

/// The spool's bound with `drop_new`: what does not fit stays in memory up to its bound,
/// the rest is refused at the door; everything accepted is written, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_keeps_the_overflow_policy_with_exact_counts() {
    for policy in [OverflowPolicy::DropNew, OverflowPolicy::DropOldest] {
        let dir = TempDir::new("full");
        let topic = unique_topic("spool_full");
        let _cleanup = Cleanup::topics(&[&topic]);
        let limits = |cfg: StoreConfig| StoreConfig {
            max_payload_bytes: 64 * 1024,
            spool_max_bytes: 256 * 1024,
            buffer_capacity: 500,
            overflow_policy: policy,
            ..cfg
        };
        let store = Store::start(away(limits(disk_config(&dir)))).unwrap();
        let payload = vec![b'x'; 200];
        let mut accepted = Vec::new();
        let mut refused = 0;
        for i in 0..5_000 {
            let m = message(&topic, &payload);
            let id = m.msgid.to_string();
            match store.submit_store(m) {
                Ok(()) => accepted.push(id),
                Err(_) => refused += 1,
            }
            if i % 100 == 0 {
                // The writer spills every 10 ms: give it the time it would have.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        // Memory holds at most its 500 plus the one write the full spool handed back.
        wait_until(
            "the spool is full and synced",
            Duration::from_secs(20),
            || {
                let s = store.stats();
                s.spool_unsynced == 0 && s.buffered - s.spooled <= 501
            },
        )
        .await;
        let report = store.shutdown(Duration::from_millis(100)).await;
        let s = store.stats();
        assert!(s.is_balanced(), "{policy:?} {s:?}");
        assert!(s.spool_bytes <= 256 * 1024, "{s:?}");
        match policy {
            OverflowPolicy::DropNew => {
                assert_eq!(s.dropped, refused, "{s:?}");
                assert_eq!(s.evicted, 0);
                assert!(refused > 0, "the bounds were never reached");
            }
            OverflowPolicy::DropOldest => {
                assert!(s.evicted > 0, "{s:?}");
                assert_eq!(s.dropped, s.evicted + refused, "{s:?}");
            }
        }
        // What is left: in the spool, or abandoned from memory at stop (the spool full).
        assert_eq!(
            s.accepted,
            report.spooled + report.abandoned + s.evicted,
            "{policy:?} {s:?} {report:?}"
        );
        assert!(report.spooled > 500, "{report:?}");

        let store = connect_with(limits(disk_config(&dir))).await;
        wait_until("the spool is drained", Duration::from_secs(60), || {
            let s = store.stats();
            s.buffered == 0 && s.in_flight == 0
        })
        .await;
        let s2 = store.stats();
        assert_eq!(
            (s2.written, s2.failed),
            (report.spooled, 0),
            "{policy:?} {s2:?}"
        );
        let rows = rows_in(&topic).await;
        assert_eq!(rows.len() as u64, report.spooled, "{policy:?}");
        // Every row is one that was accepted; with drop_oldest the oldest went.
        assert!(rows.iter().all(|r| accepted.binary_search(r).is_ok()));
        if policy == OverflowPolicy::DropOldest {
            assert!(rows[0] > accepted[0], "the oldest should have been evicted");
        } else {
            assert_eq!(rows[0], accepted[0], "drop_new keeps the oldest");
        }
        store.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_spool_directory_is_reported_and_memory_takes_the_writes() {
    let file = TempDir::new("unusable");
    std::fs::write(&file.0, b"a file where the spool directory should be").unwrap();
    let topic = unique_topic("spool_unusable");
    let _cleanup = Cleanup::topics(&[&topic]);
    let store = connect_with(disk_config(&file)).await;
    wait_until("the spool error shows", Duration::from_secs(10), || {
        store.spool_error().is_some()
    })
    .await;
    let why = store.spool_error().unwrap();
    assert!(why.contains(&file.path()), "{why}");
    let ids = publish(&store, &topic, 200, b"kept in memory");
    store.flush(scaled(Duration::from_secs(20))).await.unwrap();
    let s = store.stats();
    assert_eq!((s.written, s.spool_appended), (200, 0));
    assert!(s.spool_errors >= 1);
    assert_eq!(rows_in(&topic).await, ids);
    store.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_file(&file.0);
}

/// Cassandra keeps up: nothing touches the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_store_in_disk_mode_writes_nothing_to_the_spool() {
    let dir = TempDir::new("healthy");
    let topic = unique_topic("spool_healthy");
    let _cleanup = Cleanup::topics(&[&topic]);
    let store = connect_with(disk_config(&dir)).await;
    // Why it spooled, should it ever: a connection lost on a busy machine says so here.
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    store.set_event_sink(Box::new(move |e| {
        seen.lock().unwrap().push(format!("{e:?}"))
    }));
    for _ in 0..10 {
        publish(&store, &topic, 100, b"fast path");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.flush(scaled(Duration::from_secs(20))).await.unwrap();
    let s = store.stats();
    assert_eq!(
        (s.written, s.spool_appended, s.spool_bytes),
        (1_000, 0, 0),
        "store events: {:?}",
        events.lock().unwrap()
    );
    store.shutdown(Duration::from_secs(1)).await;
    assert!(segments(&dir.0).is_empty());
}

/// A TCP proxy in front of the test node that can refuse connections and cut the open ones.
struct Proxy {
    addr: String,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let open = Arc::new(AtomicBool::new(true));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (open2, conns2) = (open.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !open2.load(Ordering::SeqCst) {
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(node()).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns2.lock().unwrap().push(task);
            }
        });
        Proxy {
            addr,
            open,
            conns,
            accept,
        }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Within one run: Cassandra goes away, writes move to the spool, and are drained into
/// Cassandra when it answers again, while new writes keep coming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_spooled_during_an_outage_are_drained_when_cassandra_answers() {
    let dir = TempDir::new("outage");
    let topic = unique_topic("spool_outage");
    let _cleanup = Cleanup::topics(&[&topic]);
    let proxy = Proxy::start().await;
    let cfg = StoreConfig {
        contact_points: vec![proxy.addr.clone()],
        reconnect_max_backoff: Duration::from_millis(200),
        request_timeout: Duration::from_secs(2),
        ..disk_config(&dir)
    };
    let store = connect_with(cfg).await;
    let mut ids = publish(&store, &topic, 100, b"before");
    store.flush(scaled(Duration::from_secs(20))).await.unwrap();
    proxy.cut();
    wait_until(
        "the store sees Cassandra gone",
        Duration::from_secs(30),
        || !matches!(store.state(), ConnState::Connected),
    )
    .await;
    ids.extend(publish(&store, &topic, 3_000, b"during"));
    wait_until(
        "the outage's writes are spooled",
        Duration::from_secs(20),
        || {
            let s = store.stats();
            s.spooled == 3_000 && s.spool_unsynced == 0
        },
    )
    .await;
    proxy.restore();
    ids.extend(publish(&store, &topic, 100, b"after"));
    wait_until("everything is written", Duration::from_secs(60), || {
        let s = store.stats();
        s.buffered == 0 && s.in_flight == 0
    })
    .await;
    let s = store.stats();
    assert_eq!((s.written, s.failed, s.dropped), (3_200, 0, 0), "{s:?}");
    assert!(s.spool_appended >= 3_000, "{s:?}");
    assert!(s.is_balanced(), "{s:?}");
    ids.sort();
    assert_eq!(rows_in(&topic).await, ids);
    store.shutdown(Duration::from_secs(1)).await;
}

/// The password of the roles `refusing_store` logs in as.
const REFUSED_PASSWORD: &str = "spool-refused-pw";

/// A store on `cfg`, logged in as `role` (created here), which keeps reading `mqtt` but may
/// no longer write it: MODIFY is revoked once it is connected. Writes go to `topic` until
/// Cassandra refuses one (permissions are cached for a moment); returns their msgids.
async fn refusing_store(
    admin: &scylla::client::session::Session,
    role: &str,
    cfg: StoreConfig,
    topic: &str,
) -> (Store, Vec<String>) {
    role_for_keyspace(admin, "mqtt", role, REFUSED_PASSWORD).await;
    let store = connect_with(StoreConfig {
        username: Some(role.into()),
        password: Some(REFUSED_PASSWORD.into()),
        topic_index: false,
        replay_floor: false,
        write_give_up_after: Duration::from_secs(600),
        ..cfg
    })
    .await;
    run_cql(admin, format!("REVOKE MODIFY ON KEYSPACE mqtt FROM {role}")).await;
    let mut ids = Vec::new();
    let end = Instant::now() + scaled(Duration::from_secs(30));
    while store.stats().waiting == 0 {
        assert!(
            Instant::now() < end,
            "no write refused: {:?}",
            store.stats()
        );
        ids.extend(publish(&store, topic, 1, b"before the refusal"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (store, ids)
}

/// A crash while a partition refuses writes: the writes waiting for it (in memory, retried
/// with backoff) have held copies in the spool, so the files as a crash leaves them (copied
/// while the store runs) give them all to the next store. MODIFY is revoked from the store's
/// role to make Cassandra refuse every write while the session stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_waiting_for_a_refusing_partition_survive_a_crash_in_the_spool() {
    let role = "offline_test_spool_held";
    let dir = TempDir::new("held");
    let crash_image = TempDir::new("held_crash_image");
    let topics: Vec<String> = (0..3).map(|i| unique_topic(&format!("held{i}"))).collect();
    let _cleanup = Cleanup::topics(&topics).and_role(role);
    let admin = admin().await;
    let (store, mut ids) = refusing_store(&admin, role, disk_config(&dir), &topics[0]).await;
    for topic in &topics {
        ids.extend(publish(&store, topic, 300, b"refused, waiting"));
    }
    let sent = ids.len() as u64;
    let kept_on_disk = || {
        let s = store.stats();
        let waiting = store.degraded().map_or(0, |d| d.waiting);
        waiting + s.written == sent && s.spool_held == waiting && s.spool_unsynced == 0
    };
    wait_until(
        "every refused write waits with a held copy, synced",
        Duration::from_secs(60),
        kept_on_disk,
    )
    .await;
    let s = store.stats();
    let waiting = sent - s.written;
    assert!(waiting >= 900, "{s:?}");
    assert_eq!((s.failed, s.spool_appended, s.spooled), (0, 0, 0), "{s:?}");
    // The crash: the spool's files as they are now.
    std::fs::create_dir_all(&crash_image.0).unwrap();
    for seg in segments(&dir.0) {
        std::fs::copy(&seg, crash_image.0.join(seg.file_name().unwrap())).unwrap();
    }
    // A stop leaves them there too (counted as left in the spool, not written again; a retry
    // batch out at that moment is counted abandoned, its copies are on disk all the same).
    let report = store.shutdown(Duration::from_millis(200)).await;
    let s = store.stats();
    assert_eq!(report.spooled + report.abandoned, waiting, "{report:?}");
    assert_eq!(s.left_in_spool, report.spooled, "{s:?}");
    assert!(s.is_balanced(), "{s:?}");

    let next = connect_with(disk_config(&crash_image)).await;
    wait_until(
        "the held copies are written",
        Duration::from_secs(60),
        || {
            let s = next.stats();
            s.written == waiting && s.buffered == 0
        },
    )
    .await;
    let s = next.stats();
    assert_eq!((s.spool_recovered, s.failed), (waiting, 0), "{s:?}");
    let mut stored = Vec::new();
    for topic in &topics {
        stored.extend(rows_in(topic).await);
    }
    stored.sort();
    ids.sort();
    assert_eq!(stored, ids);
    next.shutdown(Duration::from_secs(1)).await;
}

/// A partition that refuses its writes while a backlog of them is on disk: reading the spool
/// back must not pull that backlog into memory, nor may new writes for it pile up there (they
/// would wait past the buffer's bounds and push other writes out). At most a quarter of the
/// buffer waits; the rest goes to disk until the partition takes writes again, and then all
/// of it lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_partition_does_not_pull_the_spool_into_memory() {
    const CAPACITY: usize = 4_000;
    let role = "offline_test_spool_bounded";
    let dir = TempDir::new("bounded");
    let topic = unique_topic("bounded");
    let _cleanup = Cleanup::topics(&[&topic]).and_role(role);
    let admin = admin().await;
    let cfg = StoreConfig {
        buffer_capacity: CAPACITY,
        ..disk_config(&dir)
    };
    let (store, mut ids) = refusing_store(&admin, role, cfg, &topic).await;
    // Ten times the buffer, a step at a time: the next step once the writer has taken the
    // last one from the buffer (to disk, or to wait), as a busy machine allows.
    let mut most_waiting = 0;
    for _ in 0..40 {
        for _ in 0..CAPACITY / 4 {
            let m = message(&topic, b"refused, on disk");
            ids.push(m.msgid.to_string());
            if let Err(e) = store.submit_store(m) {
                panic!("{e}: {:?}, degraded {:?}", store.stats(), store.degraded());
            }
        }
        let end = Instant::now() + scaled(Duration::from_secs(30));
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let s = store.stats();
            most_waiting = most_waiting.max(s.waiting);
            if s.buffered - s.spooled - s.waiting <= (CAPACITY / 4) as u64 {
                break;
            }
            assert!(
                Instant::now() < end,
                "the writer took no step in 30 s: {s:?}"
            );
        }
    }
    let sent = ids.len() as u64;
    wait_until(
        "every write is on disk or waits",
        Duration::from_secs(30),
        || {
            let s = store.stats();
            s.buffered + s.written == sent && s.spool_unsynced == 0
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = store.stats();
    most_waiting = most_waiting.max(s.waiting);
    println!(
        "{sent} sent: at most {most_waiting} waited in memory; now {} waiting, {} spooled",
        s.waiting, s.spooled
    );
    assert_eq!((s.dropped, s.failed), (0, 0), "{s:?}");
    assert!(
        most_waiting <= (CAPACITY / 4 + 1_100) as u64,
        "{most_waiting} writes waited in memory at once (buffer {CAPACITY}): {s:?}"
    );
    assert!(s.spooled >= sent - s.written - most_waiting, "{s:?}");

    run_cql(&admin, format!("GRANT MODIFY ON KEYSPACE mqtt TO {role}")).await;
    wait_until(
        "every write landed after the grant",
        Duration::from_secs(120),
        || store.stats().written == sent,
    )
    .await;
    let s = store.stats();
    assert_eq!((s.buffered, s.failed, s.dropped), (0, 0, 0), "{s:?}");
    assert!(s.is_balanced(), "{s:?}");
    assert_eq!(rows_in(&topic).await.len() as u64, sent);
    store.shutdown(Duration::from_secs(1)).await;
}
