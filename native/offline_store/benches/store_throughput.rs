//! Throughput of the storage core against the local Cassandra, with its baselines measured
//! in the same run: one awaited INSERT per message, one at a time (the design of EMQ's
//! official offline-message plugin), and for the store + ack cycle one awaited INSERT and
//! one awaited DELETE per message.
//!
//!   cargo bench -p offline_store --bench store_throughput
//!
//! Env: CASSANDRA_NODE (127.0.0.1:9042), BENCH_MESSAGES (50000), BENCH_TOPICS (100),
//! BENCH_PAYLOAD (100 bytes), BENCH_BASELINE_SECS (5), BENCH_ACKED (20000), BENCH_RESULTS (file to append a
//! JSON line to; default bench-results/core.jsonl).

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Ids, env_num, message};
use offline_store::{FetchOptions, Message, Store, StoreConfig};

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let node = std::env::var("CASSANDRA_NODE").unwrap_or_else(|_| "127.0.0.1:9042".into());
    let total = env_num("BENCH_MESSAGES", 50_000) as usize;
    let topics = env_num("BENCH_TOPICS", 100) as usize;
    let payload = vec![b'x'; env_num("BENCH_PAYLOAD", 100) as usize];
    let baseline_secs = env_num("BENCH_BASELINE_SECS", 5);
    let cfg = StoreConfig {
        contact_points: vec![node.clone()],
        username: Some("root".into()),
        password: Some("public".into()),
        buffer_capacity: total.max(1),
        ..StoreConfig::default()
    };
    let store = Store::connect(cfg, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| {
            panic!("Cassandra at {node}: {e} (run test/cassandra/cassandra.sh start)")
        });
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let topic_names: Vec<String> = (0..topics).map(|i| format!("bench/{run}/{i}")).collect();
    let mut ids = Ids::new(0xBE_0C11);

    // Warm up connections and prepared statements.
    for t in topic_names.iter().take(10) {
        store.store(message(&mut ids, t, &payload)).await.unwrap();
    }

    // Baseline: one awaited insert at a time, for a fixed time.
    let deadline = Instant::now() + Duration::from_secs(baseline_secs);
    let started = Instant::now();
    let mut baseline_n = 0usize;
    while Instant::now() < deadline {
        let t = &topic_names[baseline_n % topics];
        store
            .store_unbatched(message(&mut ids, t, &payload))
            .await
            .unwrap();
        baseline_n += 1;
    }
    let baseline_rate = baseline_n as f64 / started.elapsed().as_secs_f64();

    // Pipeline: submit everything (timing each call), then wait for Cassandra to confirm.
    let msgs: Vec<Message> = (0..total)
        .map(|i| message(&mut ids, &topic_names[i % topics], &payload))
        .collect();
    let before = store.stats();
    let mut call_ns = Vec::with_capacity(total);
    let started = Instant::now();
    if std::env::var("BENCH_SUBMIT_THREAD").is_ok() {
        // Submit from a thread outside the runtime, as a BEAM scheduler would.
        let s2 = store.clone();
        call_ns = std::thread::spawn(move || {
            let mut ns = Vec::with_capacity(msgs.len());
            for m in msgs {
                let t = Instant::now();
                s2.submit_store(m).unwrap();
                ns.push(t.elapsed().as_nanos() as u64);
            }
            ns
        })
        .join()
        .unwrap();
    } else {
        for m in msgs {
            let t = Instant::now();
            store.submit_store(m).unwrap();
            call_ns.push(t.elapsed().as_nanos() as u64);
        }
    }
    store.flush(Duration::from_secs(300)).await.unwrap();
    let elapsed = started.elapsed();
    let after = store.stats();
    let written = after.written - before.written;
    assert_eq!(written as usize, total, "{after:?}");
    assert_eq!(after.failed, before.failed, "{after:?}");
    let pipeline_rate = total as f64 / elapsed.as_secs_f64();
    call_ns.sort_unstable();

    // Spot check that the rows are really there.
    let sample = store
        .fetch(
            &topic_names[0],
            FetchOptions {
                limit: Some(5),
                since_ms: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(sample.len(), 5);

    // Store + ack-delete: every message is stored, then acknowledged (deleted).
    let acked_total = env_num("BENCH_ACKED", 20_000) as usize;
    let deadline = Instant::now() + Duration::from_secs(baseline_secs);
    let started = Instant::now();
    let mut cycle_n = 0usize;
    while Instant::now() < deadline {
        let m = message(&mut ids, &topic_names[cycle_n % topics], &payload);
        store.store_unbatched(m.clone()).await.unwrap();
        store.delete_unbatched(&m.topic, m.msgid).await.unwrap();
        cycle_n += 1;
    }
    let cycle_baseline_rate = cycle_n as f64 / started.elapsed().as_secs_f64();
    let acked: Vec<Message> = (0..acked_total)
        .map(|i| message(&mut ids, &topic_names[i % topics], &payload))
        .collect();
    let before_cycle = store.stats();
    let started = Instant::now();
    // Acks follow their publishes 100 messages behind, as a live subscriber's would.
    for (i, m) in acked.iter().enumerate() {
        store.submit_store(m.clone()).unwrap();
        if i >= 100 {
            let a = &acked[i - 100];
            store.submit_delete(&a.topic, a.msgid).unwrap();
        }
    }
    for a in &acked[acked_total.saturating_sub(100)..] {
        store.submit_delete(&a.topic, a.msgid).unwrap();
    }
    store.flush(Duration::from_secs(300)).await.unwrap();
    let cycle_rate = acked_total as f64 / started.elapsed().as_secs_f64();
    let after_cycle = store.stats();
    assert_eq!(
        after_cycle.written - before_cycle.written,
        2 * acked_total as u64,
        "{after_cycle:?}"
    );
    let cycle_ratio = cycle_rate / cycle_baseline_rate;

    let ratio = pipeline_rate / baseline_rate;
    let requests = after.batches - before.batches;
    println!();
    println!("offline_store throughput against Cassandra at {node}");
    println!(
        "  {total} messages, {topics} topics, {} byte payloads",
        payload.len()
    );
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| baseline: one awaited INSERT at a time | {baseline_rate:.0} msg/s ({baseline_n} in {baseline_secs} s) |"
    );
    println!(
        "| pipeline: submit_store + batching, {} in flight | {pipeline_rate:.0} msg/s ({:.2} s) |",
        store.config().max_in_flight,
        elapsed.as_secs_f64()
    );
    println!("| ratio pipeline / baseline | {ratio:.1}x |");
    println!(
        "| store + ack-delete, one awaited INSERT + DELETE each | {cycle_baseline_rate:.0} msg/s ({cycle_n}) |"
    );
    println!("| store + ack-delete through the pipeline | {cycle_rate:.0} msg/s ({acked_total}) |");
    println!("| ratio store + ack pipeline / awaited | {cycle_ratio:.1}x |");
    println!(
        "| rows per request | {:.1} |",
        total as f64 / requests.max(1) as f64
    );
    println!(
        "| submit_store call (ns) p50 / p99 / max | {} / {} / {} |",
        percentile(&call_ns, 0.5),
        percentile(&call_ns, 0.99),
        call_ns.last().unwrap()
    );

    let line = format!(
        "{{\"bench\":\"core_throughput\",\"unix_ms\":{run},\"messages\":{total},\"topics\":{topics},\"payload_bytes\":{},\"baseline_msg_s\":{baseline_rate:.0},\"pipeline_msg_s\":{pipeline_rate:.0},\"ratio\":{ratio:.2},\"cycle_baseline_msg_s\":{cycle_baseline_rate:.0},\"cycle_msg_s\":{cycle_rate:.0},\"cycle_ratio\":{cycle_ratio:.2},\"submit_ns_p50\":{},\"submit_ns_p99\":{},\"submit_ns_max\":{}}}",
        payload.len(),
        percentile(&call_ns, 0.5),
        percentile(&call_ns, 0.99),
        call_ns.last().unwrap()
    );
    common::append_result("core.jsonl", &line);
    store.shutdown(Duration::from_secs(10)).await;
}
