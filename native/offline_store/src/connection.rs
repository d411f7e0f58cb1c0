//! One connection attempt: build the driver session, check the schema (see
//! `table_checks`), prepare statements.
//! Retrying belongs to the caller (`Store`'s supervisor task).

use std::time::Duration;

use std::num::NonZeroUsize;

use scylla::client::PoolSize;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::statement::prepared::PreparedStatement;

use crate::config::StoreConfig;
use crate::consistency::{self, Scope};
use crate::error::StoreError;
use crate::expiry::ExpiryLimit;
use crate::schema;
use crate::table_checks::{self, table_exists};

/// A live session and the statements prepared on it. Statements are built from the
/// validated keyspace identifier only; every value is a bind marker.
pub(crate) struct Connection {
    pub session: Session,
    pub insert: PreparedStatement,
    pub delete: PreparedStatement,
    /// Newest first (the clustering order), from a msgid lower bound.
    pub select_newest: PreparedStatement,
    /// Oldest first, msgid >= bound (`fetch_after`).
    #[cfg(feature = "bench_api")]
    pub select_from: PreparedStatement,
    /// Oldest first, msgid > cursor (`fetch_after`).
    #[cfg(feature = "bench_api")]
    pub select_after: PreparedStatement,
    /// Oldest first within `[from, below)`: a paced replay's first page of a topic.
    pub replay_from: PreparedStatement,
    /// Oldest first within `(cursor, below)`: a paced replay's next page.
    pub replay_after: PreparedStatement,
    /// Msgids only, newest first within `[lower, below)`: where a newest-N replay starts.
    pub replay_ids: PreparedStatement,
    /// Cheap liveness probe.
    pub probe: PreparedStatement,
    /// The coordinator's clock, ms since the epoch (see `clock`).
    pub clock: PreparedStatement,
    /// Deletes a whole topic partition (admin purge).
    pub purge: PreparedStatement,
    /// Live rows of a topic (admin count).
    pub count: PreparedStatement,
    /// Live rows of a topic within `[lower, upper)`: a count in slices, for a partition
    /// whose tombstones a whole count would walk past Cassandra's limit.
    pub count_range: PreparedStatement,
    /// Topic index (`None` when `topic_index` is off): write a topic's rows, read ranges of
    /// topics (`index_reads`).
    pub index: Option<IndexStatements>,
    /// Newest first within `[lower, upper)`: replay in bounded slices.
    pub select_range: PreparedStatement,
    /// The replay floor (`None` when `replay_floor` is off).
    pub floor: Option<FloorStatements>,
    /// Drops a topic's floor before a late write: (timestamp, topic). Also with the floor
    /// off while `mqtt_msg_floor` exists, so that floors left from when it was on cannot
    /// hide what is written late meanwhile once it is on again (docs/tombstones.md).
    pub floor_reset: Option<PreparedStatement>,
    /// What limits a row's TTL on this cluster (its nodes' versions and storage mode).
    pub expiry_limit: ExpiryLimit,
}

impl Connection {
    /// True while the driver holds a connection to at least one node. A request that met a
    /// dead node's broken pool then says nothing about the cluster as a whole: the nodes
    /// that are up keep taking writes (what they cannot take waits as degraded).
    pub(crate) fn some_node_connected(&self) -> bool {
        self.session
            .get_cluster_state()
            .get_nodes_info()
            .iter()
            .any(|node| node.is_connected())
    }
}

pub(crate) struct FloorStatements {
    /// `msgid` of one topic's floor.
    pub read: PreparedStatement,
    /// Sets it: (ttl, timestamp, msgid, topic).
    pub write: PreparedStatement,
    /// Drops it: (timestamp, topic).
    pub reset: PreparedStatement,
    /// The oldest live msgid within `[lower, upper)`.
    pub first_live: PreparedStatement,
}

pub(crate) struct IndexStatements {
    /// A topic's row: (root, bucket, topic, ttl).
    pub insert: PreparedStatement,
    /// A bucket in use, added to its first level's row in the roots list:
    /// (ttl, {bucket}, ROOTS_PARTITION, bucket of the root, root).
    pub add_root_bucket: PreparedStatement,
    /// `topic, buckets` of one partition within `[lo, hi)`: (root, bucket, lo, hi).
    pub select_range: PreparedStatement,
    /// The same from `lo` on, for a range without an upper end: (root, bucket, lo).
    pub select_from: PreparedStatement,
    /// Reads of the index before buckets, while that table exists (see
    /// `schema::LEGACY_INDEX_TABLE`).
    pub legacy: Option<LegacyIndexStatements>,
}

/// `topic` of one partition of the old index: `[lo, hi)` (root, lo, hi) and from `lo` on.
pub(crate) struct LegacyIndexStatements {
    pub select_range: PreparedStatement,
    pub select_from: PreparedStatement,
}

/// Rows per page of an index read: they are small (a topic), and a lookup over 100,000
/// topics should not take 100 round trips.
const INDEX_PAGE_ROWS: i32 = 5_000;

/// `TTL(payload)`: seconds left before Cassandra expires the row, null without a TTL.
/// `WRITETIME(payload)`: when the row was written (µs); later than its msgid's time for
/// rows written without our `USING TIMESTAMP` (EMQX 4.x), whose delete must come after it.
const COLUMNS: &str =
    "msgid, arrived, payload, qos, retain, sender, TTL(payload), WRITETIME(payload)";

pub(crate) async fn connect_once(cfg: &StoreConfig) -> Result<Connection, StoreError> {
    let timeout = cfg.request_timeout;
    let profile = ExecutionProfile::builder()
        .consistency(cfg.write_consistency)
        .request_timeout(Some(cfg.request_timeout))
        .load_balancing_policy(load_balancing(cfg))
        .build()
        .into_handle();
    let mut builder = SessionBuilder::new()
        .known_nodes(&cfg.contact_points)
        .connection_timeout(cfg.connect_timeout)
        .compression(cfg.compression)
        .pool_size(PoolSize::PerHost(
            NonZeroUsize::new(cfg.pool_size).unwrap_or(NonZeroUsize::MIN),
        ))
        .default_execution_profile_handle(profile)
        // Token-aware routing needs the keyspace's replication; the schema check below
        // reads the rest, so the driver fetches no tables.
        .fetch_schema_metadata(true)
        .fetch_full_schema_metadata(false)
        .keyspaces_to_fetch([cfg.keyspace.to_ascii_lowercase()])
        .keepalive_interval(Duration::from_secs(5))
        .keepalive_timeout(Duration::from_secs(10));
    if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
        builder = builder.user(user, password);
    }
    if let Some(tls) = &cfg.tls {
        builder = builder.tls_context(Some(crate::tls::client_config(tls)?));
    }
    // The builder's own attempts are bounded by connect_timeout per node; add a hard cap so
    // one attempt never hangs the supervisor.
    let build_deadline = cfg.connect_timeout * 2 + Duration::from_secs(1);
    let session = tokio::time::timeout(build_deadline, builder.build())
        .await
        .map_err(|_| StoreError::NotConnected {
            reason: format!("no node answered within {build_deadline:?}"),
        })?
        .map_err(|e| match StoreError::from_driver(e, timeout) {
            StoreError::Timeout(_) | StoreError::Db(_) => StoreError::NotConnected {
                reason: "no contact point answered".into(),
            },
            other => other,
        })?;

    check_datacenters(&session, cfg)?;
    table_checks::check_or_create_table(&session, cfg).await?;
    let expiry_limit = read_expiry_limit(&session).await;
    let mut conn = prepare_all(session, cfg).await?;
    conn.expiry_limit = expiry_limit;
    Ok(conn)
}

/// Token-aware, and with `local_datacenter` that datacenter's nodes only. Requests leave it
/// only when no level is LOCAL_*: a LOCAL_QUORUM request coordinated in another datacenter
/// would count that datacenter's replicas, not the ones users meant (the DataStax drivers
/// refuse it too); such requests wait for a local node instead.
fn load_balancing(
    cfg: &StoreConfig,
) -> std::sync::Arc<dyn scylla::policies::load_balancing::LoadBalancingPolicy> {
    let builder = DefaultPolicy::builder().token_aware(true);
    match &cfg.local_datacenter {
        Some(dc) => builder
            .prefer_datacenter(dc.clone())
            .permit_dc_failover(
                !consistency::is_local(cfg.write_consistency)
                    && !consistency::is_local(cfg.read_consistency),
            )
            .build(),
        None => builder.build(),
    }
}

/// What only the cluster can tell: `local_datacenter` must be one of its datacenters (or
/// no request would have a node to go to), and a cluster of several datacenters needs
/// `local_datacenter` set, or levels the replay floor is safe with across them.
fn check_datacenters(session: &Session, cfg: &StoreConfig) -> Result<(), StoreError> {
    let mut dcs: Vec<String> = session
        .get_cluster_state()
        .get_nodes_info()
        .iter()
        .filter_map(|node| node.datacenter.clone())
        .collect();
    dcs.sort();
    dcs.dedup();
    match &cfg.local_datacenter {
        Some(dc) if !dcs.is_empty() && !dcs.contains(dc) => Err(StoreError::InvalidConfig {
            field: "local_datacenter".into(),
            reason: format!(
                "{dc:?} is not a datacenter of this cluster (it has {})",
                dcs.join(", ")
            ),
        }),
        None if dcs.len() > 1 && cfg.replay_floor => cfg
            .check_floor_consistency(Scope::SeveralDatacenters)
            .map_err(|e| {
                let why = match e {
                    StoreError::InvalidConfig { reason, .. } => reason,
                    other => other.to_string(),
                };
                StoreError::InvalidConfig {
                    field: "local_datacenter".into(),
                    reason: format!(
                        "must be set: the cluster has several datacenters ({}); read_consistency {why}",
                        dcs.join(", ")
                    ),
                }
            }),
        _ => Ok(()),
    }
}

/// The expiry limit of the cluster, from every node's `release_version` (`system.local`
/// and `system.peers`) and the coordinator's `storage_compatibility_mode`. Read once per
/// connection: a cluster changed later is seen at the next reconnect, and until then rows
/// are clamped as before, which is safe. What cannot be read counts as an old cluster (see
/// `ExpiryLimit::of_cluster`).
async fn read_expiry_limit(session: &Session) -> ExpiryLimit {
    let mut versions = Vec::new();
    for cql in [
        "SELECT release_version FROM system.local",
        "SELECT release_version FROM system.peers",
    ] {
        match text_column(session, cql).await {
            Some(values) => versions.extend(values),
            None => return ExpiryLimit::Before2038,
        }
    }
    let mode = text_column(
        session,
        "SELECT value FROM system_views.settings WHERE name = 'storage_compatibility_mode'",
    )
    .await
    .and_then(|values| values.into_iter().next());
    ExpiryLimit::of_cluster(versions.iter().map(String::as_str), mode.as_deref())
}

/// Every value of a one-text-column query without bound values; `None` if it failed or a
/// value is null.
async fn text_column(session: &Session, cql: &str) -> Option<Vec<String>> {
    let rows = session
        .query_unpaged(cql, ())
        .await
        .ok()?
        .into_rows_result()
        .ok()?;
    rows.rows::<(Option<String>,)>()
        .ok()?
        .map(|row| row.ok().and_then(|(v,)| v))
        .collect()
}

/// Whether a failed prepare says its table is not ready yet on the coordinator: not known
/// ("does not exist" in 5.0, "unconfigured table" in 4.x), or known to the schema but its
/// storage not set up yet (a server error, `IllegalArgumentException: Unknown CF <table id>`,
/// seen in CI when two stores created and prepared the floor table at once on a fresh node).
fn table_not_ready(error: &str) -> bool {
    ["does not exist", "unconfigured table", "Unknown CF "]
        .iter()
        .any(|words| error.contains(words))
}

/// Prepares `cql`, trying again for up to 10 s while Cassandra answers that its table is not
/// ready (`table_not_ready`). A side table another store has just created can be listed in
/// system_schema (and pass schema agreement) a moment before the coordinator prepares
/// statements on it: seen with two stores connecting or claiming at once against a fresh
/// keyspace on a loaded machine.
pub(crate) async fn prepare_once_visible(
    session: &Session,
    cql: &str,
    timeout: Duration,
) -> Result<PreparedStatement, StoreError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match session.prepare(cql).await {
            Ok(stmt) => return Ok(stmt),
            Err(e) => {
                if !table_not_ready(&e.to_string()) || tokio::time::Instant::now() >= deadline {
                    return Err(StoreError::from_driver(e, timeout));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn prepare_all(session: Session, cfg: &StoreConfig) -> Result<Connection, StoreError> {
    let ks = &schema::keyspace_cql(&cfg.keyspace);
    let t = schema::TABLE;
    let timeout = cfg.request_timeout;
    let prepare = |cql: String, read: bool| {
        let session = &session;
        async move {
            let mut stmt = prepare_once_visible(session, &cql, timeout).await?;
            // Fixed keys, explicit timestamps: replaying any of these is harmless.
            stmt.set_is_idempotent(true);
            if read {
                stmt.set_consistency(cfg.read_consistency);
                stmt.set_page_size(cfg.fetch_page_rows as i32);
            } else {
                stmt.set_consistency(cfg.write_consistency);
            }
            Ok::<_, StoreError>(stmt)
        }
    };
    let insert = prepare(
        format!(
            "INSERT INTO {ks}.{t} (topic, msgid, arrived, payload, qos, retain, sender) \
             VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ? AND TIMESTAMP ?"
        ),
        false,
    )
    .await?;
    let delete = prepare(
        format!("DELETE FROM {ks}.{t} USING TIMESTAMP ? WHERE topic = ? AND msgid = ?"),
        false,
    )
    .await?;
    let select_newest = prepare(
        format!("SELECT {COLUMNS} FROM {ks}.{t} WHERE topic = ? AND msgid >= ? LIMIT ?"),
        true,
    )
    .await?;
    #[cfg(feature = "bench_api")]
    let select_from = prepare(
        format!(
            "SELECT {COLUMNS} FROM {ks}.{t} WHERE topic = ? AND msgid >= ? ORDER BY msgid ASC LIMIT ?"
        ),
        true,
    )
    .await?;
    #[cfg(feature = "bench_api")]
    let select_after = prepare(
        format!(
            "SELECT {COLUMNS} FROM {ks}.{t} WHERE topic = ? AND msgid > ? ORDER BY msgid ASC LIMIT ?"
        ),
        true,
    )
    .await?;
    let replay_from = prepare(
        format!(
            "SELECT {COLUMNS} FROM {ks}.{t} WHERE topic = ? AND msgid >= ? AND msgid < ? \
             ORDER BY msgid ASC LIMIT ?"
        ),
        true,
    )
    .await?;
    let replay_after = prepare(
        format!(
            "SELECT {COLUMNS} FROM {ks}.{t} WHERE topic = ? AND msgid > ? AND msgid < ? \
             ORDER BY msgid ASC LIMIT ?"
        ),
        true,
    )
    .await?;
    let replay_ids = prepare(
        format!("SELECT msgid FROM {ks}.{t} WHERE topic = ? AND msgid >= ? AND msgid < ? LIMIT ?"),
        true,
    )
    .await?;
    let probe = prepare(
        "SELECT release_version FROM system.local WHERE key = 'local'".to_string(),
        true,
    )
    .await?;
    let clock = prepare(
        "SELECT toUnixTimestamp(now()) FROM system.local WHERE key = 'local'".to_string(),
        true,
    )
    .await?;
    let purge = prepare(
        format!("DELETE FROM {ks}.{t} USING TIMESTAMP ? WHERE topic = ?"),
        false,
    )
    .await?;
    let count_range = prepare(
        format!("SELECT count(*) FROM {ks}.{t} WHERE topic = ? AND msgid >= ? AND msgid < ?"),
        true,
    )
    .await?;
    let count = prepare(
        format!("SELECT count(*) FROM {ks}.{t} WHERE topic = ? AND msgid >= ?"),
        true,
    )
    .await?;
    let select_range = prepare(
        format!(
            "SELECT {COLUMNS} FROM {ks}.{t} WHERE topic = ? AND msgid >= ? AND msgid < ? LIMIT ?"
        ),
        true,
    )
    .await?;
    let floor = if cfg.replay_floor {
        let f = schema::FLOOR_TABLE;
        let unavailable = |e: StoreError| StoreError::FloorUnavailable(e.to_string());
        let read = prepare(format!("SELECT msgid FROM {ks}.{f} WHERE topic = ?"), true)
            .await
            .map_err(unavailable)?;
        let write = prepare(
            format!("UPDATE {ks}.{f} USING TTL ? AND TIMESTAMP ? SET msgid = ? WHERE topic = ?"),
            false,
        )
        .await
        .map_err(unavailable)?;
        let reset = prepare(
            format!("DELETE msgid FROM {ks}.{f} USING TIMESTAMP ? WHERE topic = ?"),
            false,
        )
        .await
        .map_err(unavailable)?;
        let first_live = prepare(
            format!(
                "SELECT msgid FROM {ks}.{t} WHERE topic = ? AND msgid >= ? AND msgid < ? \
                 ORDER BY msgid ASC LIMIT 1"
            ),
            true,
        )
        .await?;
        Some(FloorStatements {
            read,
            write,
            reset,
            first_live,
        })
    } else {
        None
    };
    let floor_reset = match &floor {
        Some(f) => Some(f.reset.clone()),
        None => {
            let table = schema::FLOOR_TABLE;
            let name = schema::keyspace_name(&cfg.keyspace);
            if table_exists(&session, &name, table, timeout).await? {
                let unavailable = |e: StoreError| match e {
                    StoreError::Db(_) => StoreError::FloorUnavailable(format!(
                        "{e}; with replay_floor off the store still drops the floor of a topic \
                         written late (so that the floor cannot hide it once it is on again): \
                         grant MODIFY on {table}, or drop the table"
                    )),
                    other => other,
                };
                let cql =
                    format!("DELETE msgid FROM {ks}.{table} USING TIMESTAMP ? WHERE topic = ?");
                let reset = prepare(cql, false).await.map_err(unavailable)?;
                // Cassandra checks MODIFY when a statement runs, not when it is prepared: a
                // reset now, of a topic MQTT forbids (U+0000) at timestamp 1, deletes nothing
                // and shows the permission before a late write needs it.
                session
                    .execute_unpaged(&reset, (1_i64, schema::ROOTS_PARTITION))
                    .await
                    .map_err(|e| unavailable(StoreError::from_driver(e, timeout)))?;
                Some(reset)
            } else {
                None
            }
        }
    };
    let index = if cfg.topic_index {
        let table = schema::INDEX_TABLE;
        let insert = prepare(
            format!("INSERT INTO {ks}.{table} (root, bucket, topic) VALUES (?, ?, ?) USING TTL ?"),
            false,
        )
        .await?;
        let add_root_bucket = prepare(
            format!(
                "UPDATE {ks}.{table} USING TTL ? SET buckets = buckets + ? \
                 WHERE root = ? AND bucket = ? AND topic = ?"
            ),
            false,
        )
        .await?;
        let select = |cql: String| async {
            let mut stmt = prepare(cql, true).await?;
            stmt.set_page_size(INDEX_PAGE_ROWS);
            Ok::<_, StoreError>(stmt)
        };
        let where_ = "WHERE root = ? AND bucket = ? AND topic >= ?";
        let select_range = select(format!(
            "SELECT topic, buckets FROM {ks}.{table} {where_} AND topic < ?"
        ))
        .await?;
        let select_from =
            select(format!("SELECT topic, buckets FROM {ks}.{table} {where_}")).await?;
        let legacy_table = schema::LEGACY_INDEX_TABLE;
        let name = schema::keyspace_name(&cfg.keyspace);
        let legacy = if table_exists(&session, &name, legacy_table, timeout).await? {
            let where_ = "WHERE root = ? AND topic >= ?";
            let unreadable = |e: StoreError| match e {
                StoreError::Db(e) => StoreError::IndexUnavailable(format!(
                    "{e}; {legacy_table} (the topic index of earlier versions) is read until \
                     its rows expire: grant SELECT on it, or drop it if wildcard replay may \
                     miss topics stored before the upgrade"
                )),
                other => other,
            };
            let select_range = select(format!(
                "SELECT topic FROM {ks}.{legacy_table} {where_} AND topic < ?"
            ))
            .await
            .map_err(unreadable)?;
            let select_from = select(format!("SELECT topic FROM {ks}.{legacy_table} {where_}"))
                .await
                .map_err(unreadable)?;
            // Cassandra checks SELECT when a statement runs, not when it is prepared: one
            // read of nothing (an empty range) shows the permission now.
            session
                .execute_unpaged(&select_range, (schema::ROOTS_PARTITION, "", ""))
                .await
                .map_err(|e| unreadable(StoreError::from_driver(e, timeout)))?;
            Some(LegacyIndexStatements {
                select_range,
                select_from,
            })
        } else {
            None
        };
        Some(IndexStatements {
            insert,
            add_root_bucket,
            select_range,
            select_from,
            legacy,
        })
    } else {
        None
    };
    Ok(Connection {
        session,
        index,
        purge,
        count,
        count_range,
        insert,
        delete,
        select_newest,
        #[cfg(feature = "bench_api")]
        select_from,
        #[cfg(feature = "bench_api")]
        select_after,
        select_range,
        replay_from,
        replay_after,
        replay_ids,
        floor,
        floor_reset,
        probe,
        clock,
        expiry_limit: ExpiryLimit::Before2038,
    })
}

#[cfg(test)]
mod tests {
    use super::table_not_ready;

    #[test]
    fn a_table_being_created_is_waited_for_and_other_refusals_are_not() {
        for words in [
            "Database returned an error: The query is syntactically correct but invalid, \
             Error message: table mqtt_msg_floor does not exist",
            "Error message: unconfigured table mqtt_msg_floor",
            "Database returned an error: Internal server error. This indicates a server-side \
             bug, Error message: java.lang.IllegalArgumentException: Unknown CF \
             0b009830-eb52-11f1-a426-75ab38c81c59",
        ] {
            assert!(table_not_ready(words), "{words}");
        }
        for words in [
            "User offline_test has no SELECT permission on <table mqtt.mqtt_msg_floor>",
            "Internal server error: java.lang.NullPointerException",
        ] {
            assert!(!table_not_ready(words), "{words}");
        }
    }
}
