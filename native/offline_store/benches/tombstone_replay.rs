//! Replay of a topic whose partition holds many acked (deleted) rows: 200,000 acked in
//! publish order over a day, then 100 live. Figure: replay time from the topic's floor;
//! baseline in the same run: the same replay without a floor (the plain read is aborted by
//! Cassandra's tombstone_failure_threshold and redone in msgid slices).
//!
//!   cargo bench -p offline_store --bench tombstone_replay
//!
//! Env: CASSANDRA_NODE (127.0.0.1:9042), BENCH_TOMBSTONES (200000), BENCH_REPLAYS (5),
//! BENCH_RESULTS (default bench-results/tombstones.jsonl).

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::env_num;
use offline_store::{FetchOptions, Message, MsgId, Store, StoreConfig};

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn message(topic: &str, us: u64, seq: u64) -> Message {
    Message {
        topic: topic.to_string(),
        msgid: MsgId::new(us, 0xBE_70B5, (seq & 0xFFFF) as u16),
        sender: "bench".into(),
        qos: 1,
        retain: false,
        payload: format!("m{seq}").into_bytes(),
        arrived_ms: (us / 1000) as i64,
        ttl_secs: Some(86_400 * 2),
    }
}

async fn connect(node: &str, replay_floor: bool, capacity: usize) -> Store {
    let cfg = StoreConfig {
        contact_points: vec![node.to_string()],
        username: Some("root".into()),
        password: Some("public".into()),
        buffer_capacity: capacity,
        replay_floor,
        ..StoreConfig::default()
    };
    Store::connect(cfg, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| {
            panic!("Cassandra at {node}: {e} (run test/cassandra/cassandra.sh start)")
        })
}

/// Median of `n` replays, in ms; every replay must return exactly the live rows.
async fn replay_ms(store: &Store, topic: &str, live: usize, n: usize) -> f64 {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let rows = store.fetch(topic, FetchOptions::default()).await.unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(rows.len(), live);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[times.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let node = std::env::var("CASSANDRA_NODE").unwrap_or_else(|_| "127.0.0.1:9042".into());
    let acked_n = env_num("BENCH_TOMBSTONES", 200_000);
    let replays = env_num("BENCH_REPLAYS", 5) as usize;
    let run = now_us() / 1000;
    let topic = format!("bench/tombstones/{run}");
    let day_ago = now_us() - 86_400_000_000;
    let step = 86_000_000_000 / acked_n.max(1);
    let acked: Vec<_> = (0..acked_n)
        .map(|i| message(&topic, day_ago + i * step, i))
        .collect();

    // The day of history is written in seconds by a store without the floor (its writes
    // would all count as late), then acked through a store with it.
    let plain = connect(&node, false, acked.len() + 1).await;
    for m in &acked {
        plain.submit_store(m.clone()).unwrap();
    }
    plain.flush(Duration::from_secs(600)).await.unwrap();
    let store = connect(&node, true, acked.len() + 1).await;
    for m in &acked {
        store.submit_delete(&m.topic, m.msgid).unwrap();
    }
    let now = now_us();
    for i in 0..100 {
        store
            .submit_store(message(&topic, now + i, acked_n + i))
            .unwrap();
    }
    store.flush(Duration::from_secs(600)).await.unwrap();

    let sliced = replay_ms(&plain, &topic, 100, replays).await;
    // Each replay without a floor fell back to slices: Cassandra aborted its plain read.
    let aborted = plain.stats().sliced_reads;
    // Wait for the floor scans the acks started (the replay needs no more than one read).
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let before = store.stats().sliced_reads;
        replay_ms(&store, &topic, 100, 1).await;
        if store.stats().sliced_reads == before && store.count(&topic).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the floor never caught up");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let floored = replay_ms(&store, &topic, 100, replays).await;
    let s = store.stats();
    let speedup = sliced / floored;
    println!();
    println!("Replay of 100 live rows beside {acked_n} acked ones (one partition)");
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| plain read | aborted by Cassandra (READ_TOO_MANY_TOMBSTONES) in {aborted} of {replays} replays |"
    );
    println!("| baseline: no floor, read in msgid slices | {sliced:.1} ms (median of {replays}) |");
    println!("| from the floor | {floored:.1} ms (median of {replays}) |");
    println!("| ratio | {speedup:.0}x faster |");
    println!(
        "| floor scans / sliced reads (floor store) | {} / {} |",
        s.floor_scans, s.sliced_reads
    );

    let line = format!(
        "{{\"bench\":\"tombstone_replay\",\"unix_ms\":{run},\"acked\":{acked_n},\"live\":100,\"plain_aborted\":{aborted},\"sliced_ms\":{sliced:.1},\"floor_ms\":{floored:.1},\"ratio\":{speedup:.1}}}"
    );
    common::append_result("tombstones.jsonl", &line);
    plain.shutdown(Duration::from_secs(5)).await;
    store.shutdown(Duration::from_secs(5)).await;
}
