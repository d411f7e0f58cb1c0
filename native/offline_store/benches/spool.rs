//! The disk buffer (issue 14), each figure with its baseline from the same run:
//!
//! * healthy Cassandra: `submit_store` call time p50 / p99 (what the publish hook pays in
//!   the core) and end-to-end msg/s with `buffer_mode = disk` vs `memory`, alternating
//!   rounds (`BENCH_ROUNDS`);
//! * Cassandra away: the spool's write rate (msg/s and MB/s, from the first submit until
//!   every write is in the spool and synced) vs a plain sequential write of the same bytes
//!   in records of the same mean size, with the same sync policy, into the same directory;
//! * after the outage: msg/s drained from the spool into Cassandra by a new store vs the
//!   core pipeline's ceiling (the same messages submitted to a connected store in memory
//!   mode, until written).
//!
//!   cargo bench -p offline_store --bench spool
//!
//! Env: CASSANDRA_NODE (127.0.0.1:9042), BENCH_MESSAGES (50000, healthy rounds),
//! BENCH_SPOOL_MESSAGES (200000, outage), BENCH_TOPICS (100), BENCH_PAYLOAD (100 bytes),
//! BENCH_ROUNDS (3), BENCH_SPOOL_DIR (a directory under target/; the disk measured),
//! BENCH_RESULTS (default bench-results/spool.jsonl).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Ids, env_num, message};
use offline_store::{BufferMode, Message, Store, StoreConfig};

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Bench {
    node: String,
    topics: Vec<String>,
    payload: Vec<u8>,
    ids: Ids,
    dir: PathBuf,
}

impl Bench {
    fn config(&self, mode: BufferMode, spool: &Path) -> StoreConfig {
        StoreConfig {
            contact_points: vec![self.node.clone()],
            username: Some("root".into()),
            password: Some("public".into()),
            buffer_mode: mode,
            // Memory mode as before the disk buffer: no spool at all.
            spool_dir: (mode == BufferMode::Disk).then(|| spool.display().to_string()),
            // Room for everything: no figure may be shaped by a full buffer.
            buffer_capacity: 1_000_000,
            buffer_max_bytes: 1024 * 1024 * 1024,
            spool_max_bytes: 8 * 1024 * 1024 * 1024,
            ..StoreConfig::default()
        }
    }

    fn messages(&mut self, n: usize) -> Vec<Message> {
        (0..n)
            .map(|i| {
                message(
                    &mut self.ids,
                    &self.topics[i % self.topics.len()],
                    &self.payload,
                )
            })
            .collect()
    }

    async fn connect(&self, cfg: StoreConfig) -> Store {
        Store::connect(cfg, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "Cassandra at {}: {e} (run test/cassandra/cassandra.sh start)",
                    self.node
                )
            })
    }

    fn spool_dir(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&d);
        d
    }
}

/// Submits from a thread outside the runtime, as a BEAM scheduler would; returns the call
/// times (ns, sorted) and the end-to-end rate until Cassandra confirmed them all.
async fn submit_all(store: &Store, msgs: Vec<Message>) -> (Vec<u64>, f64) {
    let n = msgs.len() as u64;
    let before = store.stats().written;
    let started = Instant::now();
    let s2 = store.clone();
    let mut ns = tokio::task::spawn_blocking(move || {
        let mut ns = Vec::with_capacity(msgs.len());
        for m in msgs {
            let t = Instant::now();
            s2.submit_store(m).unwrap();
            ns.push(t.elapsed().as_nanos() as u64);
        }
        ns
    })
    .await
    .unwrap();
    store.flush(Duration::from_secs(600)).await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let s = store.stats();
    assert_eq!(s.written - before, n, "{s:?}");
    ns.sort_unstable();
    (ns, n as f64 / elapsed)
}

/// Writes `total` bytes in records of `record` bytes through a buffer of the spool's size,
/// syncing data every `interval` and at the end, into a fresh file in `dir`; returns the
/// seconds it took.
fn plain_sequential_write(dir: &Path, total: u64, record: usize, interval: Duration) -> f64 {
    let path = dir.join("plain.bin");
    let _ = std::fs::remove_file(&path);
    std::fs::create_dir_all(dir).unwrap();
    let chunk = vec![0x5Au8; record.max(1)];
    let started = Instant::now();
    let mut file =
        std::io::BufWriter::with_capacity(256 * 1024, std::fs::File::create(&path).unwrap());
    let mut last_sync = Instant::now();
    let mut written = 0u64;
    while written < total {
        file.write_all(&chunk).unwrap();
        written += chunk.len() as u64;
        if last_sync.elapsed() >= interval {
            file.flush().unwrap();
            file.get_ref().sync_data().unwrap();
            last_sync = Instant::now();
        }
    }
    file.flush().unwrap();
    file.get_ref().sync_data().unwrap();
    let secs = started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    secs
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let node = std::env::var("CASSANDRA_NODE").unwrap_or_else(|_| "127.0.0.1:9042".into());
    let healthy_n = env_num("BENCH_MESSAGES", 50_000) as usize;
    let outage_n = env_num("BENCH_SPOOL_MESSAGES", 200_000) as usize;
    let topics = env_num("BENCH_TOPICS", 100) as usize;
    let rounds = env_num("BENCH_ROUNDS", 3).max(1) as usize;
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let dir = std::env::var("BENCH_SPOOL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-spool"));
    let mut b = Bench {
        topics: (0..topics)
            .map(|i| format!("bench/spool/{run}/{i}"))
            .collect(),
        payload: vec![b'x'; env_num("BENCH_PAYLOAD", 100) as usize],
        ids: Ids::new(0x5_9001),
        node,
        dir,
    };

    // Healthy: disk vs memory, alternating.
    let (mut mem_p50, mut mem_p99, mut mem_rate) = (vec![], vec![], vec![]);
    let (mut disk_p50, mut disk_p99, mut disk_rate) = (vec![], vec![], vec![]);
    let mut disk_spooled = 0;
    for _ in 0..rounds {
        for mode in [BufferMode::Memory, BufferMode::Disk] {
            let spool = b.spool_dir("healthy");
            let store = b.connect(b.config(mode, &spool)).await;
            // Warm up connections and statements.
            submit_all(&store, b.messages(1_000)).await;
            let (ns, rate) = submit_all(&store, b.messages(healthy_n)).await;
            let (p50, p99, r) = match mode {
                BufferMode::Memory => (&mut mem_p50, &mut mem_p99, &mut mem_rate),
                BufferMode::Disk => {
                    disk_spooled += store.stats().spool_appended;
                    (&mut disk_p50, &mut disk_p99, &mut disk_rate)
                }
            };
            p50.push(percentile(&ns, 0.5) as f64);
            p99.push(percentile(&ns, 0.99) as f64);
            r.push(rate);
            store.shutdown(Duration::from_secs(10)).await;
        }
    }

    // Outage: everything goes to the spool.
    let spool = b.spool_dir("outage");
    let away = StoreConfig {
        contact_points: vec!["127.0.0.1:1".into()],
        ..b.config(BufferMode::Disk, &spool)
    };
    let sync_interval = away.spool_sync_interval;
    let store = Store::start(away).unwrap();
    let msgs = b.messages(outage_n);
    let started = Instant::now();
    for m in msgs {
        store.submit_store(m).unwrap();
    }
    let n = outage_n as u64;
    loop {
        let s = store.stats();
        if s.spooled == n && s.spool_unsynced == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "spool too slow: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let spool_secs = started.elapsed().as_secs_f64();
    let spool_bytes = store.stats().spool_bytes;
    let report = store.shutdown(Duration::ZERO).await;
    assert_eq!(report.spooled, n, "{report:?}");
    let spool_msg_s = n as f64 / spool_secs;
    let spool_mb_s = spool_bytes as f64 / 1e6 / spool_secs;
    let plain_secs = plain_sequential_write(
        &b.dir,
        spool_bytes,
        (spool_bytes / n.max(1)) as usize,
        sync_interval,
    );
    let plain_mb_s = spool_bytes as f64 / 1e6 / plain_secs;

    // Drain after the outage: a new store on the same spool, Cassandra back.
    let drain_started = Instant::now();
    let store = b.connect(b.config(BufferMode::Disk, &spool)).await;
    loop {
        let s = store.stats();
        if s.written == n && s.buffered == 0 && s.in_flight == 0 {
            break;
        }
        assert!(s.failed == 0, "{s:?}");
        assert!(
            drain_started.elapsed() < Duration::from_secs(900),
            "drain too slow: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain_msg_s = n as f64 / drain_started.elapsed().as_secs_f64();
    store.shutdown(Duration::from_secs(10)).await;
    // The ceiling: the same number of messages through a connected store in memory mode.
    let ceiling_spool = b.spool_dir("ceiling");
    let store = b
        .connect(b.config(BufferMode::Memory, &ceiling_spool))
        .await;
    let (_, ceiling_msg_s) = submit_all(&store, b.messages(outage_n)).await;
    store.shutdown(Duration::from_secs(10)).await;
    let _ = std::fs::remove_dir_all(&b.dir);

    let (mp50, mp99, mrate) = (median(mem_p50), median(mem_p99), median(mem_rate));
    let (dp50, dp99, drate) = (median(disk_p50), median(disk_p99), median(disk_rate));
    println!();
    println!("disk buffer against Cassandra at {}", b.node);
    println!(
        "  healthy: {healthy_n} messages x {rounds} rounds per mode; outage: {outage_n} messages; {topics} topics, {} byte payloads",
        b.payload.len()
    );
    println!("| figure | disk | baseline |");
    println!("|---|---|---|");
    println!("| submit_store p50 (ns), healthy | {dp50:.0} | {mp50:.0} (memory mode) |");
    println!("| submit_store p99 (ns), healthy | {dp99:.0} | {mp99:.0} (memory mode) |");
    println!("| end-to-end msg/s, healthy | {drate:.0} | {mrate:.0} (memory mode) |");
    println!("| writes spooled while healthy | {disk_spooled} | 0 |");
    println!(
        "| spool write during an outage | {spool_msg_s:.0} msg/s, {spool_mb_s:.1} MB/s ({spool_bytes} bytes) | {plain_mb_s:.1} MB/s (plain sequential write, sync every {} ms) |",
        sync_interval.as_millis()
    );
    println!(
        "| drain after the outage (msg/s) | {drain_msg_s:.0} | {ceiling_msg_s:.0} (core pipeline, memory mode) |"
    );
    let line = format!(
        "{{\"bench\":\"spool\",\"unix_ms\":{run},\"healthy_messages\":{healthy_n},\"outage_messages\":{outage_n},\"rounds\":{rounds},\"payload_bytes\":{},\"memory_submit_ns_p50\":{mp50:.0},\"memory_submit_ns_p99\":{mp99:.0},\"memory_msg_s\":{mrate:.0},\"disk_submit_ns_p50\":{dp50:.0},\"disk_submit_ns_p99\":{dp99:.0},\"disk_msg_s\":{drate:.0},\"disk_spooled_healthy\":{disk_spooled},\"spool_msg_s\":{spool_msg_s:.0},\"spool_mb_s\":{spool_mb_s:.2},\"plain_mb_s\":{plain_mb_s:.2},\"spool_bytes\":{spool_bytes},\"sync_interval_ms\":{},\"drain_msg_s\":{drain_msg_s:.0},\"ceiling_msg_s\":{ceiling_msg_s:.0}}}",
        b.payload.len(),
        sync_interval.as_millis()
    );
    common::append_result("spool.jsonl", &line);
}
