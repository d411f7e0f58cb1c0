//! Wildcard lookup in the topic index over 100,000 topics under one first level: the time
//! to find the topics of `fleet/d99999/#` (one device's range), and of `+/d99999/#`
//! (through the roots list). Baseline in the same run: `fleet/+/cfg`, which has to read
//! every topic of the first level (what any lookup cost when the index was read whole).
//!
//!   cargo bench -p offline_store --bench wildcard_lookup
//!
//! A keyspace of its own (`bench_wildcards`, created if missing, kept); each run fills a
//! fresh first level whose index rows expire after an hour. Env: CASSANDRA_NODE
//! (127.0.0.1:9042), BENCH_TOPICS (100000), BENCH_LOOKUPS (21), BENCH_RESULTS (default
//! bench-results/wildcards.jsonl).

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::env_num;
use offline_store::{Store, StoreConfig};
use scylla::client::session_builder::SessionBuilder;

const KEYSPACE: &str = "bench_wildcards";

/// Median of `n` lookups of `filter` in ms; each must find exactly `want` topics.
async fn lookup_ms(store: &Store, filter: &str, want: usize, n: usize) -> f64 {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let found = store.topics_matching(filter).await.unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(found.len(), want, "{filter}: {found:?}");
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[times.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let node = std::env::var("CASSANDRA_NODE").unwrap_or_else(|_| "127.0.0.1:9042".into());
    let topics_n = env_num("BENCH_TOPICS", 100_000) as usize;
    let lookups = env_num("BENCH_LOOKUPS", 21) as usize;
    let admin = SessionBuilder::new()
        .known_node(&node)
        .user("root", "public")
        .build()
        .await
        .unwrap_or_else(|e| {
            panic!("Cassandra at {node}: {e} (run test/cassandra/cassandra.sh start)")
        });
    admin
        .query_unpaged(
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {KEYSPACE} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ),
            (),
        )
        .await
        .unwrap();
    admin.await_schema_agreement().await.unwrap();
    let store = Store::connect(
        StoreConfig {
            contact_points: vec![node.clone()],
            username: Some("root".into()),
            password: Some("public".into()),
            keyspace: KEYSPACE.into(),
            create_table_if_missing: true,
            topic_index: true,
            ..StoreConfig::default()
        },
        Duration::from_secs(30),
    )
    .await
    .unwrap();

    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let root = format!("fleet{run}");
    // The device whose topics sort last, as in the issue (`devices/d99999/#`).
    let last = topics_n - 1;
    let mut topics: Vec<String> = (0..topics_n)
        .map(|i| format!("{root}/d{i:05}/cmd"))
        .collect();
    topics.push(format!("{root}/d{last:05}/cfg"));
    topics.push(format!("{root}/d{last:05}/status/x"));
    let started = Instant::now();
    store
        .index_topics_directly(&topics, 3600, 32)
        .await
        .unwrap();
    let fill_s = started.elapsed().as_secs_f64();

    let device = lookup_ms(&store, &format!("{root}/d{last:05}/#"), 3, lookups).await;
    // Other runs' first levels are in the roots list too; each has its own d99999.
    let rootless_filter = format!("+/d{last:05}/status/#");
    let roots = store.topics_matching(&rootless_filter).await.unwrap().len();
    let rootless = lookup_ms(&store, &rootless_filter, roots, lookups).await;
    let scan = lookup_ms(&store, &format!("{root}/+/cfg"), 1, lookups.min(5)).await;

    println!();
    println!("Wildcard lookup in the topic index, {topics_n} topics under one first level");
    println!("| figure | value |");
    println!("|---|---|");
    println!("| index filled (not a figure) | {fill_s:.1} s |");
    println!("| {root}/d{last:05}/# (3 topics) | {device:.2} ms (median of {lookups}) |");
    println!("| +/d{last:05}/status/# (through the roots list) | {rootless:.2} ms |");
    println!(
        "| baseline: {root}/+/cfg (every topic of the first level read) | {scan:.1} ms (median of {}) |",
        lookups.min(5)
    );
    let line = format!(
        "{{\"topics\":{topics_n},\"device_ms\":{device:.3},\"rootless_ms\":{rootless:.3},\
         \"scan_ms\":{scan:.3},\"fill_s\":{fill_s:.2},\"lookups\":{lookups}}}"
    );
    common::append_result("wildcards.jsonl", &line);
    store.shutdown(Duration::from_secs(5)).await;
}
