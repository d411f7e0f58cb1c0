//! Stored msg/s through the pipeline on the 3-node cluster with one node SIGKILLed, against
//! the same store with all three nodes up, measured in the same run (issue 13: "stored msg/s
//! with one of three nodes down vs all up").
//!
//! A keyspace of its own at RF 3 (`bench_cluster`, kept between runs), LOCAL_QUORUM writes:
//! one node down leaves every partition its quorum, so no write may fail. Each round warms
//! up, measures all three up, then kills node 3 (`cassandra.sh cluster kill 3`), waits for
//! the failure detector, measures, and restarts it (`cassandra.sh cluster restart 3`, which
//! waits until the cluster is whole). A guard restarts the node also when the benchmark fails.
//!
//!   test/cassandra/cassandra.sh cluster start
//!   CASSANDRA_CLUSTER=127.0.0.1:9044 cargo bench -p offline_store --bench cluster_throughput
//!
//! Env: CASSANDRA_CLUSTER (required: the first node's host:port), BENCH_CLUSTER_MESSAGES
//! (20000 per phase), BENCH_CLUSTER_ROUNDS (1 round = up, then down), BENCH_CLUSTER_SETTLE_SECS
//! (15: from the kill to the measurement), BENCH_CLUSTER_KILL (3: the node killed),
//! BENCH_TOPICS (100), BENCH_PAYLOAD (100 bytes), BENCH_RESULTS (file to append a JSON line
//! to; default bench-results/cluster.jsonl).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Ids, env_num, message};
use offline_store::{Message, Store, StoreConfig};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::Consistency;

const NODES: u8 = 3;
/// The node killed in the "down" phase (`BENCH_CLUSTER_KILL`, default 3): not node 1, the
/// seed, so that its restart is the plain rejoin of a replica.
fn killed_node() -> String {
    env_num("BENCH_CLUSTER_KILL", 3).to_string()
}
const KEYSPACE: &str = "bench_cluster";

fn cluster_port() -> u16 {
    let addr = std::env::var("CASSANDRA_CLUSTER").unwrap_or_else(|_| {
        panic!(
            "CASSANDRA_CLUSTER is not set: start the cluster with \
             `test/cassandra/cassandra.sh cluster start` and set CASSANDRA_CLUSTER=127.0.0.1:9044"
        )
    });
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("CASSANDRA_CLUSTER must be host:port, got {addr:?}"))
}

/// Node i listens on 127.0.0.i, as cassandra.sh starts it.
fn contact_points() -> Vec<String> {
    (1..=NODES)
        .map(|i| format!("127.0.0.{i}:{}", cluster_port()))
        .collect()
}

/// Runs `cassandra.sh cluster <args>`; its output when it fails.
fn try_cluster_script(args: &[&str]) -> Result<(), String> {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../test/cassandra/cassandra.sh");
    let out = Command::new(&script)
        .arg("cluster")
        .args(args)
        .env("CASSANDRA_CLUSTER_PORT", cluster_port().to_string())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cassandra.sh cluster {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn cluster_script(args: &[&str]) {
    try_cluster_script(args).unwrap_or_else(|e| panic!("{e}"));
}

/// The killed node, SIGKILLed while this lives; dropping it restarts the node and waits for the
/// cluster to be whole, also when the benchmark panics, so that the cluster is never left
/// with a node down.
struct NodeDown;

impl NodeDown {
    fn kill() -> NodeDown {
        cluster_script(&["kill", &killed_node()]);
        NodeDown
    }
}

impl Drop for NodeDown {
    fn drop(&mut self) {
        // Not a panic while unwinding: the benchmark's own failure is the one to report.
        let node = killed_node();
        if let Err(e) = try_cluster_script(&["restart", &node]) {
            eprintln!("could not restart node {node}: {e}");
        }
    }
}

/// What one phase measured.
struct Phase {
    msg_s: f64,
    secs: f64,
    failed: u64,
    dropped: u64,
    /// Writes that had to wait for their partition (too few replicas, timeouts).
    waited: u64,
    retries: u64,
}

/// Submits `total` messages as the hook would, then waits until Cassandra confirmed them all.
async fn phase(
    store: &Store,
    ids: &mut Ids,
    topics: &[String],
    payload: &[u8],
    total: usize,
) -> Phase {
    let msgs: Vec<Message> = (0..total)
        .map(|i| message(ids, &topics[i % topics.len()], payload))
        .collect();
    let before = store.stats();
    let started = Instant::now();
    for m in msgs {
        store.submit_store(m).unwrap();
    }
    store
        .flush(Duration::from_secs(600))
        .await
        .unwrap_or_else(|e| panic!("writes not done: {e}; {:?}", store.stats()));
    let secs = started.elapsed().as_secs_f64();
    let after = store.stats();
    let phase = Phase {
        msg_s: total as f64 / secs,
        secs,
        failed: after.failed - before.failed,
        dropped: after.dropped - before.dropped,
        waited: after.waited - before.waited,
        retries: after.retries - before.retries,
    };
    assert_eq!(
        after.written - before.written + phase.failed,
        total as u64,
        "{after:?}"
    );
    phase
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Waits until every node has the same schema. A node restarted just before a schema change
/// can miss it and keep its own version (seen here: node 3, back a moment before the last
/// run's DROP KEYSPACE, still disagreed minutes later); DDL then stalls on agreement and the
/// store cannot connect. `cassandra.sh cluster restart I` of that node mends it.
async fn schema_agreed(admin: &Session) {
    if let Err(e) = admin.await_schema_agreement().await {
        panic!(
            "the cluster's nodes disagree on the schema ({e}); restart the odd one out \
             (`cassandra.sh cluster restart I`; system.local / system.peers schema_version)"
        );
    }
}

/// Creates the keyspace at RF 3 with `mqtt_msg` as test/cassandra/schema.cql has it, unless
/// it exists (the store creates its side tables itself, as it may as a superuser). Kept
/// between runs, never dropped: a DROP right after a node's restart was missed by that node
/// (see `schema_agreed`). Each run writes topics of its own, with a TTL of an hour.
async fn keyspace(admin: &Session) {
    schema_agreed(admin).await;
    admin
        .query_unpaged(
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {KEYSPACE} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': {NODES}}}"
            ),
            (),
        )
        .await
        .unwrap();
    let schema = include_str!("../../../test/cassandra/schema.cql");
    let start = schema
        .find("CREATE TABLE")
        .expect("schema.cql has a CREATE TABLE");
    let table = schema[start..]
        .trim_end()
        .trim_end_matches(';')
        .replace("mqtt.mqtt_msg", &format!("{KEYSPACE}.mqtt_msg"));
    assert!(table.contains("IF NOT EXISTS"), "{table}");
    admin.query_unpaged(table, ()).await.unwrap();
    admin.refresh_metadata().await.unwrap();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total = env_num("BENCH_CLUSTER_MESSAGES", 20_000) as usize;
    let rounds = env_num("BENCH_CLUSTER_ROUNDS", 1).max(1) as usize;
    let settle = Duration::from_secs(env_num("BENCH_CLUSTER_SETTLE_SECS", 15));
    let topic_count = env_num("BENCH_TOPICS", 100).max(1) as usize;
    let payload = vec![b'x'; env_num("BENCH_PAYLOAD", 100) as usize];
    let killed = killed_node();

    // The cluster whole before anything is measured (a no-op when it is).
    cluster_script(&["start"]);
    let admin = SessionBuilder::new()
        .known_nodes(contact_points())
        .user("root", "public")
        .build()
        .await
        .unwrap_or_else(|e| panic!("cannot reach the cluster at {:?}: {e}", contact_points()));
    keyspace(&admin).await;
    let cfg = StoreConfig {
        contact_points: contact_points(),
        keyspace: KEYSPACE.into(),
        username: Some("root".into()),
        password: Some("public".into()),
        write_consistency: Consistency::LocalQuorum,
        read_consistency: Consistency::LocalQuorum,
        buffer_capacity: total.max(100_000),
        ..StoreConfig::default()
    };
    let store = Store::connect(cfg, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("the store cannot reach the cluster: {e}"));
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let topics: Vec<String> = (0..topic_count)
        .map(|i| format!("bench/cluster/{run}/{i}"))
        .collect();
    let mut ids = Ids::new(0xBE_0C12);

    let (mut up, mut down) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        // Warm up connections, prepared statements, the topic index's cache and the nodes'
        // JIT, also that of the node restarted in the last round: a freshly started node
        // coordinates a third of the writes, and measured cold, "all up" came out at a third
        // of the rate with that node down.
        phase(&store, &mut ids, &topics, &payload, total).await;
        let p = phase(&store, &mut ids, &topics, &payload, total).await;
        eprintln!("round {round}: all up, {:.0} msg/s", p.msg_s);
        up.push(p);
        let node_down = NodeDown::kill();
        // Until the failure detector marks the node down, the coordinators still send it
        // its replicas' writes: the figure is the steady state with a node gone.
        tokio::time::sleep(settle).await;
        let p = phase(&store, &mut ids, &topics, &payload, total).await;
        eprintln!("round {round}: node {killed} down, {:.0} msg/s", p.msg_s);
        down.push(p);
        drop(node_down);
        eprintln!("round {round}: node {killed} back, the cluster whole");
    }

    let up_rate = median(up.iter().map(|p| p.msg_s).collect());
    let down_rate = median(down.iter().map(|p| p.msg_s).collect());
    let ratio = down_rate / up_rate;
    let sum = |ps: &[Phase], f: fn(&Phase) -> u64| ps.iter().map(f).sum::<u64>();
    let (up_failed, down_failed) = (sum(&up, |p| p.failed), sum(&down, |p| p.failed));
    let (up_dropped, down_dropped) = (sum(&up, |p| p.dropped), sum(&down, |p| p.dropped));
    let (up_waited, down_waited) = (sum(&up, |p| p.waited), sum(&down, |p| p.waited));
    let (up_retries, down_retries) = (sum(&up, |p| p.retries), sum(&down, |p| p.retries));
    let secs = |ps: &[Phase]| {
        ps.iter()
            .map(|p| format!("{:.2}", p.secs))
            .collect::<Vec<_>>()
            .join(", ")
    };

    println!();
    println!(
        "offline_store on the 3-node cluster ({:?}), RF 3, LOCAL_QUORUM writes",
        contact_points()
    );
    println!(
        "  {total} messages per phase, {topic_count} topics, {} byte payloads, {rounds} round(s), \
         measured {} s after the kill",
        payload.len(),
        settle.as_secs()
    );
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| all three nodes up (baseline) | {up_rate:.0} msg/s ({} s) |",
        secs(&up)
    );
    println!(
        "| node {killed} SIGKILLed | {down_rate:.0} msg/s ({} s) |",
        secs(&down)
    );
    println!("| ratio down / up | {ratio:.2}x |");
    println!("| failed writes, up / down | {up_failed} / {down_failed} |");
    println!("| dropped writes, up / down | {up_dropped} / {down_dropped} |");
    println!("| writes that waited, up / down | {up_waited} / {down_waited} |");
    println!("| requests retried, up / down | {up_retries} / {down_retries} |");

    let line = format!(
        "{{\"bench\":\"cluster_throughput\",\"unix_ms\":{run},\"messages\":{total},\"rounds\":{rounds},\"topics\":{topic_count},\"payload_bytes\":{},\"settle_secs\":{},\"killed_node\":{killed},\"up_msg_s\":{up_rate:.0},\"down_msg_s\":{down_rate:.0},\"ratio\":{ratio:.3},\"up_failed\":{up_failed},\"down_failed\":{down_failed},\"up_dropped\":{up_dropped},\"down_dropped\":{down_dropped},\"up_waited\":{up_waited},\"down_waited\":{down_waited},\"up_retries\":{up_retries},\"down_retries\":{down_retries}}}",
        payload.len(),
        settle.as_secs()
    );
    common::append_result("cluster.jsonl", &line);
    store.shutdown(Duration::from_secs(10)).await;
}
