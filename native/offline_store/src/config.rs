//! Store configuration: typed fields, defaults, and building it from the typed value map
//! that the NIF hands over. Every rule lives here once, and every bad value is an error
//! naming its key; the plugin shows that key under its form's name.
//!
//! The defaults of the keys the plugin's form sets must equal `priv/config.hocon` (the
//! plugin's EUnit test compares them through `nif_default_config`).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use scylla::client::Compression;
use scylla::statement::Consistency;

use crate::consistency::{self, Scope};
use crate::error::StoreError;
use crate::tls::TlsConfig;

/// What to do with a new write when the in-memory write buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// Refuse the new write (it is counted as dropped); buffered writes stay.
    DropNew,
    /// Evict the oldest buffered write (counted as dropped) to make room for the new one.
    DropOldest,
}

/// Where writes that cannot reach Cassandra now wait (see docs/design.md, "The disk buffer").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferMode {
    /// In memory only: lost when the node stops or crashes before Cassandra takes them. A
    /// spool found in `spool_dir` is still drained.
    Memory,
    /// In memory first; moved to the spool in `spool_dir` while Cassandra is away or a
    /// backlog builds, and drained from there, also after a restart.
    Disk,
}

/// Everything the storage core needs to reach Cassandra and to shape its write pipeline.
#[derive(Clone)]
pub struct StoreConfig {
    /// Contact points, `host:port` each. At least one.
    pub contact_points: Vec<String>,
    /// Keyspace holding the `mqtt_msg` table. A plain CQL identifier.
    pub keyspace: String,
    /// Credentials for `PasswordAuthenticator`; `None` when the cluster has no auth.
    pub username: Option<String>,
    /// Never printed: `Debug` redacts it.
    pub password: Option<String>,
    pub write_consistency: Consistency,
    pub read_consistency: Consistency,
    /// The datacenter of this broker: requests go to its nodes only (token-aware), so that
    /// LOCAL_* levels count its replicas. `None`: every node, as the cluster has one.
    pub local_datacenter: Option<String>,
    /// Client-side timeout of one CQL request.
    pub request_timeout: Duration,
    /// Timeout of one TCP/CQL connection attempt.
    pub connect_timeout: Duration,
    /// First wait between connection attempts while no node answers; doubles up to the max.
    pub reconnect_min_backoff: Duration,
    /// Longest wait between connection attempts (the plugin's `reconnect_interval`).
    pub reconnect_max_backoff: Duration,
    /// Create `mqtt_msg` when the keyspace exists but the table does not. Off by default:
    /// production schemas are owned by their operators.
    pub create_table_if_missing: bool,
    /// Largest payload accepted, in bytes (see docs/design.md, "Payloads").
    pub max_payload_bytes: usize,
    /// Writes buffered in memory while they wait for Cassandra.
    pub buffer_capacity: usize,
    /// Bytes the writes not done yet may hold (payload, topic and client id, plus 256 per
    /// write): `buffer_capacity` alone would let 100,000 one-megabyte payloads take 100 GB.
    /// `overflow_policy` applies to whichever bound is reached first.
    pub buffer_max_bytes: usize,
    pub overflow_policy: OverflowPolicy,
    pub buffer_mode: BufferMode,
    /// The spool's directory (the plugin fills in `<EMQX data dir>/offline_cassandra/spool`);
    /// `None`: no spool, whatever `buffer_mode` says.
    pub spool_dir: Option<String>,
    /// Bytes the spool's files may hold; `overflow_policy` applies when they are full.
    pub spool_max_bytes: u64,
    /// Spooled writes are synced to disk in groups at most this far apart (what a crash of
    /// the machine can lose); zero syncs after every group of writes moved to the spool.
    pub spool_sync_interval: Duration,
    /// Connections per Cassandra node (the driver multiplexes requests on each).
    pub pool_size: usize,
    /// Compression of CQL frames on the wire. `None` by default: the writer's requests are a
    /// few KiB, where LZ4 costs both sides more CPU than the bytes it saves (its hash table
    /// is allocated and cleared per frame); worth it for large payloads over slow links.
    pub compression: Option<Compression>,
    /// Keep retrying when no node answers (with backoff). When false, the first failed
    /// attempt is final and the state shows why.
    pub auto_reconnect: bool,
    /// Keep the side table `mqtt_msg_topics` (topics with stored messages, by first level)
    /// so that wildcard subscriptions can be replayed without scanning `mqtt_msg`.
    pub topic_index: bool,
    /// How long a topic stays in the index after its last stored message (0 = forever).
    pub topic_index_ttl: Duration,
    /// Most topics one wildcard replay reads.
    pub max_wildcard_topics: usize,
    /// Replay reads (a plan, or one topic's page) this node sends to Cassandra at once,
    /// over all subscribers: after a network blip thousands reconnect at the same moment,
    /// and the rest queue for a turn instead of overloading Cassandra (see `replay_limit`).
    pub max_concurrent_replay_reads: usize,
    /// TLS to Cassandra; `None` is plain text.
    pub tls: Option<TlsConfig>,
    /// Most rows in one (single-partition, unlogged) batch.
    pub max_batch_rows: usize,
    /// Most bytes in one batch, payloads as stored (a larger single write goes alone).
    /// Cassandra refuses a request frame over 16 MiB (`native_transport_max_frame_size`)
    /// and a mutation over half a commitlog segment (16 MiB by default); 4 MiB stays well
    /// under both, also with smaller segments, and 1 MB binary payloads (1.33 MB stored)
    /// still go by 3.
    pub max_batch_bytes: usize,
    /// Most partitions in one request (an unlogged batch across partitions that one
    /// replica owns); 1 sends one partition per request. Cassandra warns about unlogged
    /// batches across more than `unlogged_batch_across_partitions_warn_threshold` (10).
    pub max_batch_partitions: usize,
    /// Most bytes in one request across partitions. Cassandra logs a warning for every
    /// such batch over `batch_size_warn_threshold` (5 KiB by default) and refuses one over
    /// `batch_size_fail_threshold` (50 KiB); a refused one is sent again per partition.
    pub max_multi_partition_batch_bytes: usize,
    /// How long staged writes wait for more to join their request before it goes out
    /// unfilled. Requests cost far more than rows (CPU of the broker and of Cassandra, whose
    /// request threads spin up for each arrival), and an ack inside the linger cancels its
    /// insert; this is added to the time a stored message takes to land. 0: no wait.
    /// 100 ms: at 500 msg/s a fifth of 20 ms's Cassandra CPU (docs/benchmarks.md).
    pub batch_linger: Duration,
    /// Batches sent to Cassandra at the same time.
    pub max_in_flight: usize,
    /// Attempts per batch, for errors that are neither "no connection" nor a
    /// coordinator-side transient, before its writes are counted as failed.
    pub write_attempts: u32,
    /// How long a write may wait for a partition Cassandra cannot take writes for
    /// (Unavailable, Overloaded, timeouts) before it is counted as failed. Long by default:
    /// such writes are kept (under the buffer's limits) until the replicas are back.
    pub write_give_up_after: Duration,
    /// Most rows one fetch may return.
    pub max_fetch_rows: u32,
    /// Rows per page when reading a partition.
    pub fetch_page_rows: u32,
    /// Keep the side table `mqtt_msg_floor` so replay skips the tombstones that acks leave
    /// (see docs/tombstones.md).
    pub replay_floor: bool,
    /// How far behind now the floor stays: rows published within this time are never
    /// skipped, and a write landing later than half of it resets its topic's floor.
    pub replay_floor_lag: Duration,
    /// How far this node's clock may be from Cassandra's before it stops moving replay
    /// floors (see `clock`); `None`: a quarter of `replay_floor_lag`, so two nodes each
    /// within it differ by less than half the lag.
    pub max_clock_skew: Option<Duration>,
    /// How often the clocks are compared (and at every connect).
    pub clock_check_interval: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            contact_points: vec!["127.0.0.1:9042".to_string()],
            keyspace: "mqtt".to_string(),
            username: None,
            password: None,
            write_consistency: Consistency::LocalQuorum,
            read_consistency: Consistency::LocalQuorum,
            local_datacenter: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            reconnect_min_backoff: Duration::from_millis(100),
            reconnect_max_backoff: Duration::from_secs(2),
            create_table_if_missing: false,
            pool_size: 8,
            compression: None,
            auto_reconnect: true,
            topic_index: true,
            topic_index_ttl: Duration::from_secs(30 * 86_400),
            max_wildcard_topics: 10_000,
            max_concurrent_replay_reads: 32,
            tls: None,
            max_payload_bytes: 8 * 1024 * 1024,
            buffer_capacity: 100_000,
            buffer_max_bytes: 256 * 1024 * 1024,
            overflow_policy: OverflowPolicy::DropNew,
            buffer_mode: BufferMode::Disk,
            spool_dir: None,
            spool_max_bytes: 1024 * 1024 * 1024,
            spool_sync_interval: Duration::from_millis(100),
            max_batch_rows: 32,
            max_batch_bytes: 4 * 1024 * 1024,
            max_batch_partitions: 10,
            max_multi_partition_batch_bytes: 5 * 1024,
            batch_linger: Duration::from_millis(100),
            max_in_flight: 64,
            write_attempts: 3,
            write_give_up_after: Duration::from_secs(86_400),
            max_fetch_rows: 10_000,
            fetch_page_rows: 1_000,
            replay_floor: true,
            replay_floor_lag: Duration::from_secs(60),
            max_clock_skew: None,
            clock_check_interval: Duration::from_secs(60),
        }
    }
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("contact_points", &self.contact_points)
            .field("keyspace", &self.keyspace)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("write_consistency", &self.write_consistency)
            .field("read_consistency", &self.read_consistency)
            .field("local_datacenter", &self.local_datacenter)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_min_backoff", &self.reconnect_min_backoff)
            .field("reconnect_max_backoff", &self.reconnect_max_backoff)
            .field("create_table_if_missing", &self.create_table_if_missing)
            .field("pool_size", &self.pool_size)
            .field("compression", &self.compression)
            .field("auto_reconnect", &self.auto_reconnect)
            .field("topic_index", &self.topic_index)
            .field("topic_index_ttl", &self.topic_index_ttl)
            .field("max_wildcard_topics", &self.max_wildcard_topics)
            .field(
                "max_concurrent_replay_reads",
                &self.max_concurrent_replay_reads,
            )
            .field("tls", &self.tls)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("buffer_capacity", &self.buffer_capacity)
            .field("buffer_max_bytes", &self.buffer_max_bytes)
            .field("overflow_policy", &self.overflow_policy)
            .field("buffer_mode", &self.buffer_mode)
            .field("spool_dir", &self.spool_dir)
            .field("spool_max_bytes", &self.spool_max_bytes)
            .field("spool_sync_interval", &self.spool_sync_interval)
            .field("max_batch_rows", &self.max_batch_rows)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("max_batch_partitions", &self.max_batch_partitions)
            .field(
                "max_multi_partition_batch_bytes",
                &self.max_multi_partition_batch_bytes,
            )
            .field("batch_linger", &self.batch_linger)
            .field("max_in_flight", &self.max_in_flight)
            .field("write_attempts", &self.write_attempts)
            .field("write_give_up_after", &self.write_give_up_after)
            .field("max_fetch_rows", &self.max_fetch_rows)
            .field("fetch_page_rows", &self.fetch_page_rows)
            .field("replay_floor", &self.replay_floor)
            .field("replay_floor_lag", &self.replay_floor_lag)
            .field("max_clock_skew", &self.max_clock_skew)
            .field("clock_check_interval", &self.clock_check_interval)
            .finish()
    }
}

/// The keys `StoreConfig::from_map` understands.
pub const CONFIG_KEYS: &[&str] = &[
    "servers",
    "keyspace",
    "username",
    "password",
    "write_consistency",
    "read_consistency",
    "local_datacenter",
    "request_timeout",
    "connect_timeout",
    "reconnect_min_backoff",
    "reconnect_max_backoff",
    "create_table_if_missing",
    "pool_size",
    "compression",
    "auto_reconnect",
    "topic_index",
    "topic_index_ttl",
    "max_wildcard_topics",
    "max_concurrent_replay_reads",
    "tls_enable",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "tls_verify",
    "tls_server_name",
    "max_payload_bytes",
    "buffer_capacity",
    "buffer_max_bytes",
    "overflow_policy",
    "buffer_mode",
    "spool_dir",
    "spool_max_bytes",
    "spool_sync_interval",
    "max_batch_rows",
    "max_batch_bytes",
    "max_batch_partitions",
    "max_multi_partition_batch_bytes",
    "batch_linger",
    "max_in_flight",
    "write_attempts",
    "write_give_up_after",
    "max_fetch_rows",
    "fetch_page_rows",
    "replay_floor",
    "replay_floor_lag",
    "max_clock_skew",
    "clock_check_interval",
];

/// One config value as the plugin hands it over. Typed on the Erlang side already, so the
/// core parses no numbers from text: durations are whole milliseconds, sizes whole bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigValue {
    Int(i64),
    Bool(bool),
    Text(String),
}

/// Consistency levels by the names the plugin's form uses.
const CONSISTENCIES: &[(&str, Consistency)] = &[
    ("any", Consistency::Any),
    ("one", Consistency::One),
    ("two", Consistency::Two),
    ("three", Consistency::Three),
    ("quorum", Consistency::Quorum),
    ("all", Consistency::All),
    ("local_quorum", Consistency::LocalQuorum),
    ("each_quorum", Consistency::EachQuorum),
    ("local_one", Consistency::LocalOne),
];

impl StoreConfig {
    /// Builds a config from typed values keyed by `CONFIG_KEYS`. Missing keys keep their
    /// defaults; unknown keys, values of the wrong type and bad values are errors naming
    /// the key. This and `validate` are the only place the rules live: the plugin only
    /// converts its form's values to these types.
    pub fn from_map(map: &HashMap<String, ConfigValue>) -> Result<Self, StoreError> {
        let mut cfg = StoreConfig::default();
        let mut tls_enable = false;
        let mut tls = TlsConfig::default();
        for (key, value) in map {
            let key = key.as_str();
            match key {
                "servers" => cfg.contact_points = parse_servers(text(key, value)?)?,
                "keyspace" => cfg.keyspace = text(key, value)?.trim().to_string(),
                "username" => cfg.username = optional_text(key, value)?,
                "password" => cfg.password = optional_text(key, value)?,
                "write_consistency" => cfg.write_consistency = consistency(key, value)?,
                "read_consistency" => cfg.read_consistency = consistency(key, value)?,
                "local_datacenter" => cfg.local_datacenter = optional_text(key, value)?,
                "request_timeout" => cfg.request_timeout = millis(key, value)?,
                "connect_timeout" => cfg.connect_timeout = millis(key, value)?,
                "reconnect_min_backoff" => cfg.reconnect_min_backoff = millis(key, value)?,
                "reconnect_max_backoff" => cfg.reconnect_max_backoff = millis(key, value)?,
                "create_table_if_missing" => cfg.create_table_if_missing = boolean(key, value)?,
                "pool_size" => cfg.pool_size = whole(key, value)?,
                "compression" => cfg.compression = compression(key, value)?,
                "auto_reconnect" => cfg.auto_reconnect = boolean(key, value)?,
                "topic_index" => cfg.topic_index = boolean(key, value)?,
                "topic_index_ttl" => cfg.topic_index_ttl = millis(key, value)?,
                "max_wildcard_topics" => cfg.max_wildcard_topics = whole(key, value)?,
                "max_concurrent_replay_reads" => {
                    cfg.max_concurrent_replay_reads = whole(key, value)?
                }
                "tls_enable" => tls_enable = boolean(key, value)?,
                "tls_ca_file" => tls.ca_file = optional_text(key, value)?,
                "tls_cert_file" => tls.cert_file = optional_text(key, value)?,
                "tls_key_file" => tls.key_file = optional_text(key, value)?,
                "tls_verify" => tls.verify = boolean(key, value)?,
                "tls_server_name" => tls.server_name = optional_text(key, value)?,
                "max_payload_bytes" => cfg.max_payload_bytes = whole(key, value)?,
                "buffer_capacity" => cfg.buffer_capacity = whole(key, value)?,
                "buffer_max_bytes" => cfg.buffer_max_bytes = whole(key, value)?,
                "overflow_policy" => cfg.overflow_policy = policy(key, value)?,
                "buffer_mode" => cfg.buffer_mode = buffer_mode(key, value)?,
                "spool_dir" => cfg.spool_dir = optional_text(key, value)?,
                "spool_max_bytes" => cfg.spool_max_bytes = whole(key, value)?,
                "spool_sync_interval" => cfg.spool_sync_interval = millis(key, value)?,
                "max_batch_rows" => cfg.max_batch_rows = whole(key, value)?,
                "max_batch_bytes" => cfg.max_batch_bytes = whole(key, value)?,
                "max_batch_partitions" => cfg.max_batch_partitions = whole(key, value)?,
                "max_multi_partition_batch_bytes" => {
                    cfg.max_multi_partition_batch_bytes = whole(key, value)?
                }
                "batch_linger" => cfg.batch_linger = millis(key, value)?,
                "max_in_flight" => cfg.max_in_flight = whole(key, value)?,
                "write_attempts" => cfg.write_attempts = whole(key, value)?,
                "write_give_up_after" => cfg.write_give_up_after = millis(key, value)?,
                "max_fetch_rows" => cfg.max_fetch_rows = whole(key, value)?,
                "fetch_page_rows" => cfg.fetch_page_rows = whole(key, value)?,
                "replay_floor" => cfg.replay_floor = boolean(key, value)?,
                "replay_floor_lag" => cfg.replay_floor_lag = millis(key, value)?,
                "max_clock_skew" => {
                    let d = millis(key, value)?;
                    cfg.max_clock_skew = (!d.is_zero()).then_some(d);
                }
                "clock_check_interval" => cfg.clock_check_interval = millis(key, value)?,
                _ => {
                    return Err(invalid(
                        key,
                        format!("unknown key; known keys are {}", CONFIG_KEYS.join(", ")),
                    ));
                }
            }
        }
        if tls_enable {
            cfg.tls = Some(tls);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// This config as `from_map` takes it, credentials left out. With the defaults it lets
    /// the plugin's tests check that its shipped defaults (`priv/config.hocon`) are ours.
    pub fn to_values(&self) -> Vec<(&'static str, ConfigValue)> {
        use ConfigValue::{Bool, Int, Text};
        let ms = |d: Duration| Int(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let n = |v: usize| Int(i64::try_from(v).unwrap_or(i64::MAX));
        let tls = self.tls.clone().unwrap_or_default();
        let path = |p: &Option<String>| Text(p.clone().unwrap_or_default());
        vec![
            ("servers", Text(self.contact_points.join(","))),
            ("keyspace", Text(self.keyspace.clone())),
            (
                "write_consistency",
                Text(consistency_name(self.write_consistency)),
            ),
            (
                "read_consistency",
                Text(consistency_name(self.read_consistency)),
            ),
            ("local_datacenter", path(&self.local_datacenter)),
            ("request_timeout", ms(self.request_timeout)),
            ("connect_timeout", ms(self.connect_timeout)),
            ("reconnect_min_backoff", ms(self.reconnect_min_backoff)),
            ("reconnect_max_backoff", ms(self.reconnect_max_backoff)),
            (
                "create_table_if_missing",
                Bool(self.create_table_if_missing),
            ),
            ("pool_size", n(self.pool_size)),
            (
                "compression",
                Text(
                    match self.compression {
                        None => "none",
                        Some(Compression::Lz4) => "lz4",
                        Some(Compression::Snappy) => "snappy",
                    }
                    .to_string(),
                ),
            ),
            ("auto_reconnect", Bool(self.auto_reconnect)),
            ("topic_index", Bool(self.topic_index)),
            ("topic_index_ttl", ms(self.topic_index_ttl)),
            ("max_wildcard_topics", n(self.max_wildcard_topics)),
            (
                "max_concurrent_replay_reads",
                n(self.max_concurrent_replay_reads),
            ),
            ("tls_enable", Bool(self.tls.is_some())),
            ("tls_ca_file", path(&tls.ca_file)),
            ("tls_cert_file", path(&tls.cert_file)),
            ("tls_key_file", path(&tls.key_file)),
            ("tls_verify", Bool(tls.verify)),
            ("tls_server_name", path(&tls.server_name)),
            ("max_payload_bytes", n(self.max_payload_bytes)),
            ("buffer_capacity", n(self.buffer_capacity)),
            ("buffer_max_bytes", n(self.buffer_max_bytes)),
            (
                "overflow_policy",
                Text(
                    match self.overflow_policy {
                        OverflowPolicy::DropNew => "drop_new",
                        OverflowPolicy::DropOldest => "drop_oldest",
                    }
                    .to_string(),
                ),
            ),
            (
                "buffer_mode",
                Text(
                    match self.buffer_mode {
                        BufferMode::Memory => "memory",
                        BufferMode::Disk => "disk",
                    }
                    .to_string(),
                ),
            ),
            ("spool_dir", path(&self.spool_dir)),
            (
                "spool_max_bytes",
                Int(i64::try_from(self.spool_max_bytes).unwrap_or(i64::MAX)),
            ),
            ("spool_sync_interval", ms(self.spool_sync_interval)),
            ("max_batch_rows", n(self.max_batch_rows)),
            ("max_batch_bytes", n(self.max_batch_bytes)),
            ("max_batch_partitions", n(self.max_batch_partitions)),
            (
                "max_multi_partition_batch_bytes",
                n(self.max_multi_partition_batch_bytes),
            ),
            ("batch_linger", ms(self.batch_linger)),
            ("max_in_flight", n(self.max_in_flight)),
            ("write_attempts", Int(i64::from(self.write_attempts))),
            ("write_give_up_after", ms(self.write_give_up_after)),
            ("max_fetch_rows", Int(i64::from(self.max_fetch_rows))),
            ("fetch_page_rows", Int(i64::from(self.fetch_page_rows))),
            ("replay_floor", Bool(self.replay_floor)),
            ("replay_floor_lag", ms(self.replay_floor_lag)),
            (
                "max_clock_skew",
                ms(self.max_clock_skew.unwrap_or(Duration::ZERO)),
            ),
            ("clock_check_interval", ms(self.clock_check_interval)),
        ]
    }

    /// The clock skew beyond which this node stops moving replay floors.
    pub fn clock_skew_limit(&self) -> Duration {
        self.max_clock_skew.unwrap_or(self.replay_floor_lag / 4)
    }

    /// Checks ranges and combinations. Called by `from_map` and by `Store::start`.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.contact_points.is_empty() {
            return Err(invalid("servers", "at least one host:port is required"));
        }
        for cp in &self.contact_points {
            parse_server(cp)?;
        }
        if !is_cql_identifier(&self.keyspace) {
            return Err(invalid(
                "keyspace",
                format!(
                    "{:?} is not a CQL identifier (letters, digits, _; starts with a letter; at most 48)",
                    self.keyspace
                ),
            ));
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(invalid(
                "password",
                "username and password must be given together",
            ));
        }
        if let Some(tls) = &self.tls {
            if tls.verify && tls.ca_file.is_none() {
                return Err(invalid(
                    "tls_ca_file",
                    "is required when tls_verify is true",
                ));
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(invalid(
                    "tls_key_file",
                    "tls_cert_file and tls_key_file go together",
                ));
            }
        }
        self.check_consistency()?;
        if self.topic_index_ttl.as_secs() > i32::MAX as u64 {
            return Err(invalid("topic_index_ttl", "must be at most 68 years"));
        }
        for (field, d) in [
            ("request_timeout", self.request_timeout),
            ("connect_timeout", self.connect_timeout),
            ("reconnect_min_backoff", self.reconnect_min_backoff),
            ("reconnect_max_backoff", self.reconnect_max_backoff),
        ] {
            if d.is_zero() {
                return Err(invalid(field, "must be greater than 0"));
            }
        }
        if self.batch_linger > Duration::from_secs(1) {
            return Err(invalid("batch_linger", "must be at most 1s"));
        }
        if self.reconnect_max_backoff < self.reconnect_min_backoff {
            return Err(invalid(
                "reconnect_max_backoff",
                "must not be below reconnect_min_backoff",
            ));
        }
        // Cassandra refuses mutations above half its commitlog segment (16 MiB by default);
        // base64 makes a non-UTF-8 payload 4/3 larger, so 10 MiB is the most that always fits.
        if self.max_payload_bytes == 0 || self.max_payload_bytes > 10 * 1024 * 1024 {
            return Err(invalid(
                "max_payload_bytes",
                "must be between 1 and 10485760 (10 MiB)",
            ));
        }
        // Every payload accepted must fit into an empty buffer.
        // A spooled write must fit: a payload at the limit, base64 at worst, plus its fields.
        if self.spool_dir.is_some() && self.spool_max_bytes < 2 * self.max_payload_bytes as u64 {
            return Err(invalid(
                "spool_max_bytes",
                format!(
                    "must be at least twice max_payload_bytes ({} bytes)",
                    2 * self.max_payload_bytes as u64
                ),
            ));
        }
        if self.buffer_max_bytes < self.max_payload_bytes {
            return Err(invalid(
                "buffer_max_bytes",
                format!(
                    "must be at least max_payload_bytes ({})",
                    self.max_payload_bytes
                ),
            ));
        }
        // A write that is still on its way when a floor scan starts must not be skipped:
        // half the lag has to cover a whole write attempt.
        if self.replay_floor_lag < self.request_timeout * 2 + Duration::from_secs(1) {
            return Err(invalid(
                "replay_floor_lag",
                "must be at least twice request_timeout plus 1s",
            ));
        }
        if self.write_give_up_after < Duration::from_secs(1)
            || self.write_give_up_after > Duration::from_secs(30 * 86_400)
        {
            return Err(invalid("write_give_up_after", "must be between 1s and 30d"));
        }
        if self.replay_floor_lag > Duration::from_secs(30 * 86_400) {
            return Err(invalid("replay_floor_lag", "must be at most 30d"));
        }
        // Two nodes each this far from Cassandra differ by twice as much, and a floor hides
        // rows of a publisher more than half the lag behind it (docs/design.md, "Clocks").
        if self
            .max_clock_skew
            .is_some_and(|d| d * 4 > self.replay_floor_lag)
        {
            return Err(invalid(
                "max_clock_skew",
                "must be at most a quarter of replay_floor_lag",
            ));
        }
        if self.clock_check_interval < Duration::from_millis(100)
            || self.clock_check_interval > Duration::from_secs(3_600)
        {
            return Err(invalid(
                "clock_check_interval",
                "must be between 100ms and 1h",
            ));
        }
        for (field, v, max) in [
            ("buffer_capacity", self.buffer_capacity, 10_000_000),
            ("pool_size", self.pool_size, 64),
            ("max_wildcard_topics", self.max_wildcard_topics, 1_000_000),
            (
                "max_concurrent_replay_reads",
                self.max_concurrent_replay_reads,
                10_000,
            ),
            ("max_batch_rows", self.max_batch_rows, 1_000),
            ("max_batch_bytes", self.max_batch_bytes, 1 << 30),
            ("max_batch_partitions", self.max_batch_partitions, 1_000),
            (
                "max_multi_partition_batch_bytes",
                self.max_multi_partition_batch_bytes,
                1 << 30,
            ),
            ("max_in_flight", self.max_in_flight, 10_000),
            ("write_attempts", self.write_attempts as usize, 100),
            ("max_fetch_rows", self.max_fetch_rows as usize, 1_000_000),
            ("fetch_page_rows", self.fetch_page_rows as usize, 100_000),
        ] {
            if v == 0 || v > max {
                return Err(invalid(field, format!("must be between 1 and {max}")));
            }
        }
        Ok(())
    }
}

impl StoreConfig {
    /// Where requests are coordinated, as far as the config tells: a broker that names its
    /// datacenter is in a cluster of several (the connection checks the cluster itself too).
    pub fn scope(&self) -> Scope {
        if self.local_datacenter.is_some() {
            Scope::SeveralDatacenters
        } else {
            Scope::OneDatacenter
        }
    }

    /// Cassandra refuses reads at ANY; and the replay floor is only safe when its scans see
    /// every stored row (docs/tombstones.md, "Consistency and datacenters").
    fn check_consistency(&self) -> Result<(), StoreError> {
        if self.read_consistency == Consistency::Any {
            return Err(invalid(
                "read_consistency",
                "any is for writes only (Cassandra refuses reads at ANY)",
            ));
        }
        if let Some(dc) = &self.local_datacenter
            && dc.chars().any(char::is_control)
        {
            return Err(invalid("local_datacenter", format!("{dc:?} is not a name")));
        }
        if self.replay_floor {
            self.check_floor_consistency(self.scope())?;
        }
        Ok(())
    }

    /// The replay floor with these levels in `scope`: an error naming the keys to change
    /// when a floor scan could miss a stored row and move the floor past it.
    pub fn check_floor_consistency(&self, scope: Scope) -> Result<(), StoreError> {
        let (w, r) = (self.write_consistency, self.read_consistency);
        if consistency::reads_see_writes(w, r, scope) {
            return Ok(());
        }
        let field = if w == Consistency::Any {
            "write_consistency"
        } else {
            "read_consistency"
        };
        let (where_, safe) = match scope {
            Scope::OneDatacenter => (
                "",
                "quorum, local_quorum or each_quorum for both, or all for one of them",
            ),
            Scope::SeveralDatacenters => (
                " in every datacenter",
                "each_quorum or all for one of them (the other local_quorum, quorum or \
                 each_quorum), or quorum for both",
            ),
        };
        Err(invalid(
            field,
            format!(
                "{} with write_consistency {} does not see every stored message{where_}, so \
                 replay_floor could skip one for good; use {safe}, or set replay_floor to false",
                consistency_name(r),
                consistency_name(w),
            ),
        ))
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> StoreError {
    StoreError::InvalidConfig {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn non_empty(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_string())
}

/// `"h1:9042,h2"`: a missing port means 9042.
fn parse_servers(value: &str) -> Result<Vec<String>, StoreError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (host, port) = parse_server(s)?;
            Ok(format!("{host}:{port}"))
        })
        .collect()
}

fn parse_server(s: &str) -> Result<(String, u16), StoreError> {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => (h, p),
        _ => (s, "9042"),
    };
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(invalid("servers", format!("{s:?} has no valid host")));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((host.to_string(), p)),
        _ => Err(invalid("servers", format!("{s:?}: port must be 1..65535"))),
    }
}

fn wrong_type(field: &str, expected: &str, got: &ConfigValue) -> StoreError {
    let got = match got {
        ConfigValue::Int(i) => i.to_string(),
        ConfigValue::Bool(b) => b.to_string(),
        ConfigValue::Text(t) => format!("{t:?}"),
    };
    invalid(field, format!("must be {expected}, not {got}"))
}

fn text<'v>(field: &str, v: &'v ConfigValue) -> Result<&'v str, StoreError> {
    match v {
        ConfigValue::Text(t) => Ok(t),
        other => Err(wrong_type(field, "text", other)),
    }
}

/// Empty text means "not set".
fn optional_text(field: &str, v: &ConfigValue) -> Result<Option<String>, StoreError> {
    Ok(non_empty(text(field, v)?.trim()))
}

fn boolean(field: &str, v: &ConfigValue) -> Result<bool, StoreError> {
    match v {
        ConfigValue::Bool(b) => Ok(*b),
        other => Err(wrong_type(field, "true or false", other)),
    }
}

/// A whole number that fits the field's type (so negative counts are refused here).
fn whole<T: TryFrom<i64>>(field: &str, v: &ConfigValue) -> Result<T, StoreError> {
    match v {
        ConfigValue::Int(i) => T::try_from(*i)
            .map_err(|_| invalid(field, format!("{i} is out of range for this field"))),
        other => Err(wrong_type(field, "a whole number", other)),
    }
}

/// A duration given as whole milliseconds.
fn millis(field: &str, v: &ConfigValue) -> Result<Duration, StoreError> {
    match v {
        ConfigValue::Int(i) => u64::try_from(*i)
            .map(Duration::from_millis)
            .map_err(|_| invalid(field, format!("{i} ms is negative"))),
        other => Err(wrong_type(field, "a whole number of milliseconds", other)),
    }
}

fn consistency(field: &str, v: &ConfigValue) -> Result<Consistency, StoreError> {
    let name = text(field, v)?.trim().to_ascii_lowercase();
    CONSISTENCIES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, c)| *c)
        .ok_or_else(|| {
            let names: Vec<&str> = CONSISTENCIES.iter().map(|(n, _)| *n).collect();
            invalid(
                field,
                format!("{name:?} is not a consistency level ({})", names.join(", ")),
            )
        })
}

fn consistency_name(c: Consistency) -> String {
    CONSISTENCIES
        .iter()
        .find(|(_, known)| *known == c)
        .map_or_else(
            || format!("{c:?}").to_ascii_lowercase(),
            |(n, _)| n.to_string(),
        )
}

fn compression(field: &str, v: &ConfigValue) -> Result<Option<Compression>, StoreError> {
    match text(field, v)?.trim() {
        "none" => Ok(None),
        "lz4" => Ok(Some(Compression::Lz4)),
        "snappy" => Ok(Some(Compression::Snappy)),
        other => Err(invalid(
            field,
            format!("{other:?} is not none, lz4 or snappy"),
        )),
    }
}

fn buffer_mode(field: &str, v: &ConfigValue) -> Result<BufferMode, StoreError> {
    match text(field, v)?.trim() {
        "memory" => Ok(BufferMode::Memory),
        "disk" => Ok(BufferMode::Disk),
        other => Err(invalid(field, format!("{other:?} is not memory or disk"))),
    }
}

fn policy(field: &str, v: &ConfigValue) -> Result<OverflowPolicy, StoreError> {
    match text(field, v)?.trim() {
        "drop_new" => Ok(OverflowPolicy::DropNew),
        "drop_oldest" => Ok(OverflowPolicy::DropOldest),
        other => Err(invalid(
            field,
            format!("{other:?} is not drop_new or drop_oldest"),
        )),
    }
}

/// An unquoted CQL identifier: what keyspace names may be (Cassandra limits them to 48 chars).
pub fn is_cql_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 48
}

#[cfg(test)]
mod tests {
    use super::ConfigValue::{Bool, Int, Text};
    use super::*;

    fn map(pairs: &[(&str, ConfigValue)]) -> HashMap<String, ConfigValue> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    fn t(s: &str) -> ConfigValue {
        Text(s.to_string())
    }

    fn field_of(err: StoreError) -> String {
        match err {
            StoreError::InvalidConfig { field, .. } => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        StoreConfig::default().validate().unwrap();
        let cfg = StoreConfig::from_map(&HashMap::new()).unwrap();
        assert_eq!(cfg.contact_points, vec!["127.0.0.1:9042"]);
        assert_eq!(cfg.keyspace, "mqtt");
    }

    #[test]
    fn parses_every_field() {
        let cfg = StoreConfig::from_map(&map(&[
            ("servers", t("10.0.0.1:9043, cass2 ,[::1]:9044")),
            ("keyspace", t("ks_1")),
            ("username", t("root")),
            ("password", t("public")),
            ("write_consistency", t("ONE")),
            ("read_consistency", t("local_one")),
            ("request_timeout", Int(2_000)),
            ("connect_timeout", Int(750)),
            ("reconnect_min_backoff", Int(50)),
            ("reconnect_max_backoff", Int(60_000)),
            ("create_table_if_missing", Bool(true)),
            ("pool_size", Int(2)),
            ("compression", t("lz4")),
            ("auto_reconnect", Bool(false)),
            ("topic_index", Bool(false)),
            ("topic_index_ttl", Int(0)),
            ("max_wildcard_topics", Int(50)),
            ("max_concurrent_replay_reads", Int(4)),
            ("max_payload_bytes", Int(1024 * 1024)),
            ("buffer_capacity", Int(10)),
            ("buffer_max_bytes", Int(64 * 1024 * 1024)),
            ("overflow_policy", t("drop_oldest")),
            ("max_batch_rows", Int(8)),
            ("max_in_flight", Int(4)),
            ("write_attempts", Int(5)),
            ("write_give_up_after", Int(3_600_000)),
            ("max_fetch_rows", Int(500)),
            ("fetch_page_rows", Int(100)),
            ("replay_floor", Bool(false)),
            ("replay_floor_lag", Int(300_000)),
        ]))
        .unwrap();
        assert_eq!(
            cfg.contact_points,
            vec!["10.0.0.1:9043", "cass2:9042", "[::1]:9044"]
        );
        assert_eq!(cfg.keyspace, "ks_1");
        assert_eq!(cfg.write_consistency, Consistency::One);
        assert_eq!(cfg.read_consistency, Consistency::LocalOne);
        assert_eq!(cfg.request_timeout, Duration::from_secs(2));
        assert_eq!(cfg.connect_timeout, Duration::from_millis(750));
        assert_eq!(cfg.reconnect_min_backoff, Duration::from_millis(50));
        assert_eq!(cfg.reconnect_max_backoff, Duration::from_secs(60));
        assert!(cfg.create_table_if_missing);
        assert_eq!(cfg.pool_size, 2);
        assert_eq!(cfg.compression, Some(Compression::Lz4));
        assert!(!cfg.auto_reconnect && !cfg.topic_index);
        assert_eq!(cfg.topic_index_ttl, Duration::ZERO);
        assert_eq!(cfg.max_wildcard_topics, 50);
        assert_eq!(cfg.max_concurrent_replay_reads, 4);
        assert_eq!(cfg.max_payload_bytes, 1024 * 1024);
        assert_eq!(cfg.buffer_max_bytes, 64 * 1024 * 1024);
        assert_eq!(cfg.overflow_policy, OverflowPolicy::DropOldest);
        assert_eq!(
            (cfg.max_batch_rows, cfg.max_in_flight, cfg.write_attempts),
            (8, 4, 5)
        );
        assert_eq!((cfg.max_fetch_rows, cfg.fetch_page_rows), (500, 100));
        assert_eq!(cfg.write_give_up_after, Duration::from_secs(3600));
        assert!(!cfg.replay_floor);
        assert_eq!(cfg.replay_floor_lag, Duration::from_secs(300));
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            ("servers", t("host:notaport")),
            ("servers", t("")),
            ("servers", t("host:0")),
            ("servers", Int(9042)),
            ("keyspace", t("mqtt; DROP TABLE x")),
            ("keyspace", t("1abc")),
            ("write_consistency", t("most")),
            ("request_timeout", t("soon")),
            ("request_timeout", t("5s")),
            ("request_timeout", Int(0)),
            ("request_timeout", Int(-1)),
            ("create_table_if_missing", t("yes")),
            ("max_payload_bytes", Int(11 * 1024 * 1024)),
            ("max_payload_bytes", t("lots")),
            ("buffer_capacity", Int(-1)),
            ("buffer_max_bytes", Int(1024)),
            ("buffer_max_bytes", Int(-1)),
            ("overflow_policy", t("block")),
            ("max_batch_rows", Int(0)),
            ("max_batch_bytes", Int(0)),
            ("max_batch_bytes", Int(2 << 30)),
            ("pool_size", Int(65)),
            ("pool_size", t("8")),
            ("compression", t("zstd")),
            ("auto_reconnect", Int(1)),
            ("replay_floor_lag", Int(5_000)),
            ("replay_floor_lag", Int(31 * 86_400_000)),
            ("write_give_up_after", Int(999)),
            ("write_give_up_after", Int(31 * 86_400_000)),
            ("max_clock_skew", Int(15_001)),
            ("max_clock_skew", Int(-1)),
            ("clock_check_interval", Int(99)),
            ("no_such_key", Int(1)),
        ];
        for (key, value) in cases {
            let err = StoreConfig::from_map(&map(&[(key, value.clone())])).unwrap_err();
            assert!(
                err.to_string().contains(key),
                "{key}={value:?}: message {err} does not name the field"
            );
            assert_eq!(field_of(err), key, "{key}={value:?}");
        }
    }

    #[test]
    fn credentials_come_in_pairs_and_are_redacted() {
        let err = StoreConfig::from_map(&map(&[("username", t("root"))])).unwrap_err();
        assert_eq!(field_of(err), "password");
        let cfg =
            StoreConfig::from_map(&map(&[("username", t("root")), ("password", t("s3cret"))]))
                .unwrap();
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>"));
        // Empty credentials are no credentials.
        let cfg = StoreConfig::from_map(&map(&[("username", t("")), ("password", t(""))])).unwrap();
        assert_eq!((cfg.username, cfg.password), (None, None));
    }

    #[test]
    fn backoff_order_is_checked() {
        let err = StoreConfig::from_map(&map(&[
            ("reconnect_min_backoff", Int(5_000)),
            ("reconnect_max_backoff", Int(1_000)),
        ]))
        .unwrap_err();
        assert_eq!(field_of(err), "reconnect_max_backoff");
    }

    #[test]
    fn tls_rules_name_the_tls_keys() {
        let err = StoreConfig::from_map(&map(&[
            ("tls_enable", Bool(true)),
            ("tls_verify", Bool(true)),
        ]))
        .unwrap_err();
        assert_eq!(field_of(err), "tls_ca_file");
        // Verification is the default: TLS on without a CA file is refused.
        let err = StoreConfig::from_map(&map(&[("tls_enable", Bool(true))])).unwrap_err();
        assert_eq!(field_of(err), "tls_ca_file");
        let err = StoreConfig::from_map(&map(&[
            ("tls_enable", Bool(true)),
            ("tls_verify", Bool(false)),
            ("tls_cert_file", t("/c.pem")),
        ]))
        .unwrap_err();
        assert_eq!(field_of(err), "tls_key_file");
        // Off, the TLS keys are not checked (the form always sends them).
        let cfg = StoreConfig::from_map(&map(&[
            ("tls_enable", Bool(false)),
            ("tls_verify", Bool(true)),
            ("tls_ca_file", t("")),
        ]))
        .unwrap();
        assert!(cfg.tls.is_none());
    }

    fn levels(write: &str, read: &str, dc: &str, floor: bool) -> Result<StoreConfig, StoreError> {
        StoreConfig::from_map(&map(&[
            ("write_consistency", t(write)),
            ("read_consistency", t(read)),
            ("local_datacenter", t(dc)),
            ("replay_floor", Bool(floor)),
        ]))
    }

    #[test]
    fn local_datacenter_is_optional_text() {
        assert_eq!(
            levels("local_quorum", "local_quorum", "", true)
                .unwrap()
                .local_datacenter,
            None
        );
        let cfg = levels("each_quorum", "local_quorum", " dc-east ", true).unwrap();
        assert_eq!(cfg.local_datacenter.as_deref(), Some("dc-east"));
        let err = StoreConfig::from_map(&map(&[("local_datacenter", Bool(true))])).unwrap_err();
        assert_eq!(field_of(err), "local_datacenter");
    }

    #[test]
    fn reads_at_any_are_refused_floor_or_not() {
        for floor in [true, false] {
            let err = levels("all", "any", "", floor).unwrap_err();
            assert_eq!(field_of(err), "read_consistency", "floor {floor}");
        }
    }

    /// Every pair the floor is refused with in one datacenter, and every one it is allowed
    /// with; the message names the keys to change.
    #[test]
    fn floor_needs_overlapping_levels_in_one_datacenter() {
        for (w, r) in [
            ("one", "one"),
            ("local_one", "local_one"),
            ("one", "local_quorum"),
            ("local_quorum", "one"),
            ("quorum", "one"),
            ("two", "two"),
            ("three", "quorum"),
            ("any", "all"),
            ("any", "local_quorum"),
            ("each_quorum", "local_one"),
        ] {
            let err = levels(w, r, "", true).unwrap_err();
            let text = err.to_string();
            for key in ["write_consistency", "replay_floor"] {
                assert!(text.contains(key), "{w}/{r}: {text}");
            }
            let expected = if w == "any" {
                "write_consistency"
            } else {
                "read_consistency"
            };
            assert_eq!(field_of(err), expected, "{w}/{r}");
            // Without the floor a missed row only shows later: allowed (but ANY reads).
            levels(w, r, "", false).unwrap();
        }
        for (w, r) in [
            ("local_quorum", "local_quorum"),
            ("quorum", "quorum"),
            ("local_quorum", "quorum"),
            ("quorum", "local_quorum"),
            ("each_quorum", "local_quorum"),
            ("local_quorum", "each_quorum"),
            ("all", "one"),
            ("one", "all"),
            ("local_one", "all"),
            ("all", "all"),
        ] {
            levels(w, r, "", true).unwrap_or_else(|e| panic!("{w}/{r}: {e}"));
        }
    }

    /// With local_datacenter set (several datacenters), LOCAL_QUORUM on both sides, or with
    /// QUORUM, no longer overlaps: a write in one datacenter, a scan in another.
    #[test]
    fn floor_needs_levels_that_overlap_across_datacenters() {
        for (w, r) in [
            ("local_quorum", "local_quorum"),
            ("local_quorum", "quorum"),
            ("quorum", "local_quorum"),
            ("local_one", "each_quorum"),
            ("one", "one"),
        ] {
            let err = levels(w, r, "dc1", true).unwrap_err();
            assert!(
                err.to_string().contains("every datacenter"),
                "{w}/{r}: {err}"
            );
            assert_eq!(field_of(err), "read_consistency", "{w}/{r}");
            levels(w, r, "dc1", false).unwrap();
        }
        for (w, r) in [
            ("each_quorum", "local_quorum"),
            ("local_quorum", "each_quorum"),
            ("each_quorum", "each_quorum"),
            ("quorum", "quorum"),
            ("quorum", "each_quorum"),
            ("each_quorum", "quorum"),
            ("all", "local_one"),
            ("local_one", "all"),
        ] {
            levels(w, r, "dc1", true).unwrap_or_else(|e| panic!("{w}/{r}: {e}"));
        }
    }

    #[test]
    fn to_values_covers_every_key_and_round_trips() {
        let values = StoreConfig::default().to_values();
        let keys: Vec<&str> = values.iter().map(|(k, _)| *k).collect();
        for key in CONFIG_KEYS {
            assert!(
                keys.contains(key) || ["username", "password"].contains(key),
                "{key} missing from to_values"
            );
        }
        let cfg = StoreConfig {
            tls: Some(TlsConfig {
                ca_file: Some("/ca.pem".into()),
                verify: true,
                ..TlsConfig::default()
            }),
            pool_size: 3,
            compression: Some(Compression::Snappy),
            reconnect_max_backoff: Duration::from_secs(7),
            write_consistency: Consistency::EachQuorum,
            local_datacenter: Some("dc2".into()),
            ..StoreConfig::default()
        };
        let map: HashMap<String, ConfigValue> = cfg
            .to_values()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let back = StoreConfig::from_map(&map).unwrap();
        assert_eq!(format!("{back:?}"), format!("{cfg:?}"));
    }
}
