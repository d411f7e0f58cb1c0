//! The store on two datacenters: `test/cassandra/cassandra.sh dc start` runs 127.0.0.1 in
//! dc1 and 127.0.0.2 in dc2, without hints (a datacenter that was cut off gets nothing it
//! missed until a repair). `CASSANDRA_DC` names the first node (e.g. `127.0.0.1:9046`);
//! without it the tests fail, never skip. They run one at a time; a node a test stops is
//! started again when it ends, also when it fails.
//!
//! What they show (docs/tombstones.md, "Consistency and datacenters"): a message written in
//! dc2 while dc1 was cut off is not in dc1, so a LOCAL_* floor scan there would move the floor
//! past it for good; the config refuses those levels, and with accepted ones (LOCAL_QUORUM
//! writes, EACH_QUORUM reads) the scan in dc1 stops at the message and replay returns it. And a
//! broker whose datacenter is away keeps its writes until it is back (LOCAL_* never leaves it).

mod common;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{now_ms, scaled, unique_topic};
use offline_store::{FetchOptions, Message, MsgId, Store, StoreConfig, StoreError};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::statement::Consistency;
use scylla::statement::unprepared::Statement;

/// `host:port` of dc1's node, from `CASSANDRA_DC`.
fn dc_address() -> String {
    std::env::var("CASSANDRA_DC").unwrap_or_else(|_| {
        panic!(
            "CASSANDRA_DC is not set: start the two datacenters with \
             `test/cassandra/cassandra.sh dc start` and set CASSANDRA_DC=127.0.0.1:9046"
        )
    })
}

fn dc_port() -> u16 {
    let addr = dc_address();
    let port = addr.rsplit_once(':').map(|(_, p)| p).unwrap_or("");
    port.parse()
        .unwrap_or_else(|_| panic!("CASSANDRA_DC must be host:port, got {addr:?}"))
}

/// The node of datacenter `dc<i>` listens on 127.0.0.i.
fn node(i: u8) -> String {
    format!("127.0.0.{i}:{}", dc_port())
}

/// Runs `cassandra.sh dc <args>`; panics with its output when it fails.
fn dc_script(args: &[&str]) {
    common::cassandra_sh("dc", "CASSANDRA_DC_PORT", dc_port(), args);
}

/// Both datacenters up when a test starts; a node the test killed is started again when it
/// ends (`Drop`, also on failure).
struct TwoDatacenters {
    killed: bool,
    _serial: MutexGuard<'static, ()>,
}

impl TwoDatacenters {
    fn up() -> TwoDatacenters {
        static SERIAL: Mutex<()> = Mutex::new(());
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        dc_script(&["start"]);
        TwoDatacenters {
            killed: false,
            _serial: serial,
        }
    }

    /// SIGKILL dc1's only node: dc1 is cut off from everything.
    async fn cut_off_dc1(&mut self) {
        self.killed = true;
        tokio::task::spawn_blocking(|| dc_script(&["kill", "1"]))
            .await
            .unwrap();
    }

    /// Starts what was killed and waits until both nodes see each other.
    async fn restore(&mut self) {
        tokio::task::spawn_blocking(|| dc_script(&["start"]))
            .await
            .unwrap();
        self.killed = false;
    }
}

impl Drop for TwoDatacenters {
    fn drop(&mut self) {
        if self.killed {
            // Not a panic while unwinding: the test's own failure is the one to report.
            let _ = std::panic::catch_unwind(|| dc_script(&["start"]));
        }
    }
}

/// A session as root; `pinned` keeps every request in that datacenter (what a LOCAL_* read
/// coordinated there sees).
async fn session(contact: u8, pinned: Option<&str>) -> Session {
    let mut builder = SessionBuilder::new()
        .known_node(node(contact))
        .user("root", "public");
    if let Some(dc) = pinned {
        let policy = DefaultPolicy::builder()
            .prefer_datacenter(dc.to_string())
            .permit_dc_failover(false)
            .build();
        let profile = ExecutionProfile::builder()
            .load_balancing_policy(policy)
            .build();
        builder = builder.default_execution_profile_handle(profile.into_handle());
    }
    builder
        .build()
        .await
        .unwrap_or_else(|e| panic!("cannot reach {}: {e}", node(contact)))
}

/// A keyspace of the test's own with one replica in each datacenter, dropped at the end.
struct Keyspace(String);

impl Keyspace {
    async fn fresh(admin: &Session, name: &str) -> Keyspace {
        admin
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {name}"), ())
            .await
            .unwrap();
        admin
            .query_unpaged(
                format!(
                    "CREATE KEYSPACE {name} WITH replication = \
                     {{'class': 'NetworkTopologyStrategy', 'dc1': 1, 'dc2': 1}}"
                ),
                (),
            )
            .await
            .unwrap();
        admin.await_schema_agreement().await.unwrap();
        Keyspace(name.to_string())
    }
}

impl Drop for Keyspace {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.0);
        // Drop cannot await: a thread with its own runtime; failures are ignored (each test
        // drops and recreates its keyspace when it starts).
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(admin) = SessionBuilder::new()
                    .known_nodes([node(1), node(2)])
                    .user("root", "public")
                    .build()
                    .await
                {
                    let _ = admin
                        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {name}"), ())
                        .await;
                }
            });
        })
        .join();
    }
}

/// A store of datacenter `dc<i>` (contact point and local_datacenter), with the levels the
/// floor is safe with across datacenters: LOCAL_QUORUM writes, EACH_QUORUM reads.
fn store_config(keyspace: &str, i: u8) -> StoreConfig {
    StoreConfig {
        contact_points: vec![node(i)],
        keyspace: keyspace.into(),
        username: Some("root".into()),
        password: Some("public".into()),
        local_datacenter: Some(format!("dc{i}")),
        write_consistency: Consistency::LocalQuorum,
        read_consistency: Consistency::EachQuorum,
        create_table_if_missing: true,
        replay_floor: true,
        ..StoreConfig::default()
    }
}

async fn connect(cfg: StoreConfig) -> Store {
    Store::connect(cfg, scaled(Duration::from_secs(60)))
        .await
        .unwrap_or_else(|e| panic!("the store did not connect: {e}"))
}

/// A message published `ago` before now (older than the floor's lag, so a scan may pass it).
fn published_ago(topic: &str, ago: Duration, payload: &str) -> Message {
    let us = (now_ms() as u64 - ago.as_millis() as u64) * 1000;
    Message {
        topic: topic.into(),
        msgid: MsgId::new(us, 0x00DC_DC00_0001, (us & 0xFFFF) as u16),
        sender: "client-dc".into(),
        qos: 1,
        retain: false,
        payload: payload.as_bytes().to_vec(),
        arrived_ms: (us / 1000) as i64,
        ttl_secs: None,
    }
}

/// The msgids of `topic` as `session` reads them at `cl`.
async fn msgids(session: &Session, ks: &str, topic: &str, cl: Consistency) -> Vec<String> {
    let mut stmt = Statement::new(format!("SELECT msgid FROM {ks}.mqtt_msg WHERE topic = ?"));
    stmt.set_consistency(cl);
    session
        .query_unpaged(stmt, (topic,))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(String,)>()
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect()
}

/// The topic's replay floor, read at ALL (both datacenters answer).
async fn floor_of(admin: &Session, ks: &str, topic: &str) -> Option<String> {
    let mut stmt = Statement::new(format!(
        "SELECT msgid FROM {ks}.mqtt_msg_floor WHERE topic = ?"
    ));
    stmt.set_consistency(Consistency::All);
    admin
        .query_unpaged(stmt, (topic,))
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .maybe_first_row::<(String,)>()
        .unwrap()
        .map(|(f,)| f)
}

fn invalid_field(e: &StoreError) -> &str {
    match e {
        StoreError::InvalidConfig { field, .. } => field,
        other => panic!("expected invalid_config, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_written_in_dc2_while_dc1_was_cut_off_is_not_hidden_by_a_floor_scan_in_dc1() {
    let mut dcs = TwoDatacenters::up();
    let admin = session(1, None).await;
    let ks = format!("multi_dc_{}", now_ms());
    let _ks = Keyspace::fresh(&admin, &ks).await;
    let topic = unique_topic("multi_dc");

    // Both datacenters up: a broker of dc1 creates the tables (mqtt_msg, the floor, the
    // index) everywhere.
    let dc1 = connect(store_config(&ks, 1)).await;

    // dc1 cut off. Its broker's write waits for dc1: with LOCAL_* levels no request leaves it.
    dcs.cut_off_dc1().await;
    let other_topic = unique_topic("multi_dc_waits");
    let waits = published_ago(&other_topic, Duration::from_secs(60), "waits for dc1");
    dc1.submit_store(waits).unwrap();
    // A broker in dc2 stores a message at LOCAL_QUORUM: dc2's replica only.
    let in_dc2 = published_ago(&topic, Duration::from_secs(600), "written in dc2");
    let dc2 = connect(store_config(&ks, 2)).await;
    dc2.store(in_dc2.clone()).await.unwrap();
    dc2.shutdown(scaled(Duration::from_secs(5))).await;
    let during = dc1.stats();
    assert_eq!(
        (during.written, during.failed),
        (0, 0),
        "dc1's broker wrote (or failed) while dc1 was away: {during:?}"
    );
    dcs.restore().await;
    let deadline = Instant::now() + scaled(Duration::from_secs(60));
    while dc1.stats().written < 1 {
        assert!(
            Instant::now() < deadline,
            "dc1's waiting write did not land within 60 s of dc1's return: {:?}",
            dc1.stats()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(dc1.stats().failed, 0);

    // dc1 does not have it: a LOCAL_* scan in dc1 would find nothing there.
    let dc1_only = session(1, Some("dc1")).await;
    assert_eq!(
        msgids(&dc1_only, &ks, &topic, Consistency::LocalOne).await,
        Vec::<String>::new(),
        "dc1 got the row written while it was cut off (hints on?): the test shows nothing"
    );

    // Those levels are refused with the floor on.
    let refused = StoreConfig {
        read_consistency: Consistency::LocalQuorum,
        ..store_config(&ks, 1)
    };
    let err = Store::start(refused)
        .err()
        .expect("LOCAL_QUORUM on both sides was accepted");
    assert_eq!(invalid_field(&err), "read_consistency", "{err}");
    assert!(err.to_string().contains("replay_floor"), "{err}");

    // dc1's broker (accepted levels) stores and acks a newer message, so that a floor scan
    // runs (2 s after the acks stop) and would put the floor past everything it cannot see.
    let acked = published_ago(&topic, Duration::from_secs(300), "acked in dc1");
    dc1.store(acked.clone()).await.unwrap();
    dc1.delete(&topic, acked.msgid).await.unwrap();
    let deadline = Instant::now() + scaled(Duration::from_secs(60));
    let floor = loop {
        if let Some(f) = floor_of(&admin, &ks, &topic).await {
            break f;
        }
        assert!(
            Instant::now() < deadline,
            "no floor scan within 60 s: {:?}",
            dc1.stats()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stored = in_dc2.msgid.to_string();
    assert!(
        floor <= stored,
        "the floor {floor} passed the message only dc2 had ({stored})"
    );
    let replayed = dc1.fetch(&topic, FetchOptions::default()).await.unwrap();
    let replayed: Vec<&str> = replayed.iter().map(|m| m.msgid.as_str()).collect();
    assert_eq!(replayed, vec![stored.as_str()]);
    dc1.shutdown(scaled(Duration::from_secs(5))).await;
}

/// What only the cluster tells: a local_datacenter it does not have, and several
/// datacenters without local_datacenter while the levels rely on one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_s_datacenters_are_checked_at_connect() {
    let _dcs = TwoDatacenters::up();
    let admin = session(1, None).await;
    let ks = format!("multi_dc_check_{}", now_ms());
    let _ks = Keyspace::fresh(&admin, &ks).await;

    let unknown = StoreConfig {
        local_datacenter: Some("dc9".into()),
        ..store_config(&ks, 1)
    };
    let err = Store::connect(unknown, scaled(Duration::from_secs(60)))
        .await
        .err()
        .expect("an unknown datacenter was accepted");
    assert_eq!(invalid_field(&err), "local_datacenter", "{err}");
    assert!(err.to_string().contains("dc1, dc2"), "{err}");

    // LOCAL_QUORUM on both sides is accepted by the config (one datacenter, as far as it
    // tells), refused once the cluster shows two.
    let unpinned = StoreConfig {
        local_datacenter: None,
        read_consistency: Consistency::LocalQuorum,
        ..store_config(&ks, 1)
    };
    unpinned.validate().unwrap();
    let err = Store::connect(unpinned, scaled(Duration::from_secs(60)))
        .await
        .err()
        .expect("two datacenters without local_datacenter were accepted");
    assert_eq!(invalid_field(&err), "local_datacenter", "{err}");

    // Levels that overlap across datacenters need no local_datacenter.
    let quorum = StoreConfig {
        local_datacenter: None,
        write_consistency: Consistency::Quorum,
        read_consistency: Consistency::Quorum,
        ..store_config(&ks, 1)
    };
    connect(quorum)
        .await
        .shutdown(scaled(Duration::from_secs(5)))
        .await;
}
