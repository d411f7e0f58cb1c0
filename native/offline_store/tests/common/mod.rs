//! Helpers for the live tests. They need the local Cassandra from
//! `test/cassandra/cassandra.sh start` (or `CASSANDRA_NODE`); without it they fail, never skip.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use offline_store::{Message, MsgId, Store, StoreConfig};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

/// Every deadline of the live tests, multiplied by `TEST_TIME_SCALE` (a float, default 1):
/// a slow or busy machine gets more time, and the tests still wait for a condition.
pub fn scaled(d: Duration) -> Duration {
    static SCALE: OnceLock<f64> = OnceLock::new();
    let scale = *SCALE.get_or_init(|| match std::env::var("TEST_TIME_SCALE") {
        Err(_) => 1.0,
        Ok(s) => match s.trim().parse::<f64>() {
            Ok(f) if f.is_finite() && f > 0.0 => f,
            _ => panic!("TEST_TIME_SCALE must be a positive number, got {s:?}"),
        },
    });
    d.mul_f64(scale)
}

pub fn node() -> String {
    std::env::var("CASSANDRA_NODE").unwrap_or_else(|_| "127.0.0.1:9042".into())
}

pub fn config() -> StoreConfig {
    StoreConfig {
        contact_points: vec![node()],
        username: Some("root".into()),
        password: Some("public".into()),
        ..StoreConfig::default()
    }
}

pub async fn connect() -> Store {
    connect_with(config()).await
}

pub async fn connect_with(cfg: StoreConfig) -> Store {
    Store::connect(cfg, scaled(Duration::from_secs(20)))
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test Cassandra at {} ({e}); run test/cassandra/cassandra.sh start", node()))
}

/// A session as root, for setting up keyspaces and checking rows behind the store's back.
pub async fn admin() -> Session {
    SessionBuilder::new()
        .known_node(node())
        .user("root", "public")
        .build()
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test Cassandra at {}: {e}", node()))
}

/// Runs one statement as `admin` (keyspaces, roles, grants); panics with the statement when
/// Cassandra refuses it.
pub async fn run_cql(admin: &Session, cql: String) -> scylla::response::query_result::QueryResult {
    admin
        .query_unpaged(cql.clone(), ())
        .await
        .unwrap_or_else(|e| panic!("{cql}: {e}"))
}

/// A fresh login role `role` that may read and write keyspace `ks` (SELECT and MODIFY), and
/// nothing else: what a DBA gives the plugin.
pub async fn role_for_keyspace(admin: &Session, ks: &str, role: &str, password: &str) {
    run_cql(admin, format!("DROP ROLE IF EXISTS {role}")).await;
    run_cql(
        admin,
        format!("CREATE ROLE {role} WITH PASSWORD = '{password}' AND LOGIN = true"),
    )
    .await;
    run_cql(admin, format!("GRANT SELECT ON KEYSPACE {ks} TO {role}")).await;
    run_cql(admin, format!("GRANT MODIFY ON KEYSPACE {ks} TO {role}")).await;
}

/// Runs `test/cassandra/cassandra.sh <group> <args>` (`group`: `cluster` or `dc`) with
/// `port_var` set to `port`, the nodes' CQL port; panics with its output when it fails.
pub fn cassandra_sh(group: &str, port_var: &str, port: u16, args: &[&str]) {
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../test/cassandra/cassandra.sh");
    let out = std::process::Command::new(&script)
        .arg(group)
        .args(args)
        .env(port_var, port.to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "cassandra.sh {group} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A topic no other test (or earlier run) uses.
pub fn unique_topic(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "test/{test}/{}/{}",
        now_ms(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Message ids shaped like EMQX GUIDs, strictly increasing within the process.
pub fn next_msgid() -> MsgId {
    static LAST_US: AtomicU64 = AtomicU64::new(0);
    let now_us = now_ms() as u64 * 1000;
    let prev = LAST_US
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now_us.max(last + 1))
        })
        .unwrap();
    let us = now_us.max(prev + 1);
    MsgId::new(us, 0x00AB_CDEF_0123, (us & 0xFFFF) as u16)
}

pub fn message(topic: &str, payload: &[u8]) -> Message {
    let msgid = next_msgid();
    Message {
        topic: topic.to_string(),
        arrived_ms: (msgid.timestamp_us() / 1000) as i64,
        msgid,
        sender: "client-1".into(),
        qos: 1,
        retain: false,
        payload: payload.to_vec(),
        ttl_secs: None,
    }
}

/// Deterministic random bytes (xorshift).
pub fn random_bytes(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}

/// The replay floor of `topic` as stored in `mqtt_msg_floor`, read behind the store's back.
pub async fn floor_of(admin: &Session, topic: &str) -> Option<String> {
    admin
        .query_unpaged(
            "SELECT msgid FROM mqtt.mqtt_msg_floor WHERE topic = ?",
            (topic,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .maybe_first_row::<(String,)>()
        .unwrap()
        .map(|(f,)| f)
}

/// Removes what a test wrote when it goes out of scope, also when the test fails: its
/// topics' rows, floors and index entries, its keyspaces and its roles.
pub struct Cleanup {
    topics: Vec<String>,
    keyspaces: Vec<String>,
    roles: Vec<String>,
}

impl Cleanup {
    pub fn topics<S: AsRef<str>>(topics: &[S]) -> Cleanup {
        Cleanup {
            topics: topics.iter().map(|t| t.as_ref().to_owned()).collect(),
            keyspaces: Vec::new(),
            roles: Vec::new(),
        }
    }

    pub fn keyspace(name: &str) -> Cleanup {
        Cleanup {
            topics: Vec::new(),
            keyspaces: vec![name.to_owned()],
            roles: Vec::new(),
        }
    }

    /// Also drops the role `name` (created by the test as root).
    pub fn and_role(mut self, name: &str) -> Cleanup {
        self.roles.push(name.to_owned());
        self
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let topics = std::mem::take(&mut self.topics);
        let keyspaces = std::mem::take(&mut self.keyspaces);
        let roles = std::mem::take(&mut self.roles);
        // Drop cannot await, and the test's runtime cannot block on itself: a thread with a
        // runtime of its own does the deletes. Failures are ignored (cleanup must not panic
        // while a failed test unwinds); unique topic names keep leftovers harmless.
        let cleaner = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(admin) = SessionBuilder::new()
                    .known_node(node())
                    .user("root", "public")
                    .build()
                    .await
                else {
                    return;
                };
                for t in &topics {
                    let (root, bucket) = offline_store::index_keys::partition_of(t);
                    let _ = admin
                        .query_unpaged("DELETE FROM mqtt.mqtt_msg WHERE topic = ?", (t,))
                        .await;
                    let _ = admin
                        .query_unpaged("DELETE FROM mqtt.mqtt_msg_floor WHERE topic = ?", (t,))
                        .await;
                    let _ = admin
                        .query_unpaged(
                            "DELETE FROM mqtt.mqtt_msg_topic_index \
                             WHERE root = ? AND bucket = ? AND topic = ?",
                            (root, bucket, t),
                        )
                        .await;
                }
                for ks in &keyspaces {
                    let _ = admin
                        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), ())
                        .await;
                }
                for role in &roles {
                    let _ = admin
                        .query_unpaged(format!("DROP ROLE IF EXISTS {role}"), ())
                        .await;
                }
            });
        });
        let _ = cleaner.join();
    }
}

/// Drops `name` if it exists and creates it again, SimpleStrategy with replication factor
/// `rf` and nothing in it. Test keyspaces only: the name comes from the test itself.
pub async fn recreate_keyspace(admin: &Session, name: &str, rf: usize) {
    admin
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {name}"), ())
        .await
        .unwrap();
    admin
        .query_unpaged(
            format!(
                "CREATE KEYSPACE {name} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': {rf}}}"
            ),
            (),
        )
        .await
        .unwrap();
}
