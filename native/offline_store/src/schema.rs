//! The fixed `mqtt_msg` table: what it must look like, how to check a live one, and the
//! statement that creates it when the operator allows that.

/// Name of the table; fixed, like its structure.
pub const TABLE: &str = "mqtt_msg";

/// The product's own side table: which topics have stored messages, so that a wildcard
/// subscription finds its topics without scanning `mqtt_msg`. Partition (first level, bucket
/// of the second level) holds the topics, sorted, so a filter reads the range of its
/// literal prefix (`index_keys`); partitions ([`ROOTS_PARTITION`], bucket of the first level)
/// list the first levels with the buckets they use (for filters that start with a
/// wildcard). `mqtt_msg` itself is never changed.
pub const INDEX_TABLE: &str = "mqtt_msg_topic_index";

/// The topic index before buckets: (first level, topic), one partition per first level.
/// No longer written; read (when it exists) until its rows expire, so that an upgrade
/// finds the topics indexed before it. Drop it `topic_index_ttl` after upgrading.
pub const LEGACY_INDEX_TABLE: &str = "mqtt_msg_topics";

/// The first level of the index partitions that list first levels. MQTT forbids U+0000 in
/// topic names, so no real first level can collide with it.
pub const ROOTS_PARTITION: &str = "\u{0}";

/// The product's second side table: per topic, a msgid below which every `mqtt_msg` row is
/// known to be deleted (the replay floor). Reads start there, so the tombstones that acks
/// leave below it are never walked again. Design and safety argument: docs/tombstones.md.
pub const FLOOR_TABLE: &str = "mqtt_msg_floor";

/// The third side table: which node replays a shared subscription group's backlog (see
/// `claims`). Created by the first claim.
pub const CLAIMS_TABLE: &str = "mqtt_msg_replay_claims";

/// One column as `system_schema.columns` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    /// `partition_key`, `clustering`, `regular` or `static`.
    pub kind: String,
    /// Position inside the partition key or clustering key; -1 for other columns.
    pub position: i32,
    /// `asc`, `desc` or `none`.
    pub clustering_order: String,
    /// CQL type, e.g. `text`.
    pub cql_type: String,
}

/// (name, kind, position, clustering order, type) of every column the product needs.
const EXPECTED: &[(&str, &str, i32, &str, &str)] = &[
    ("topic", "partition_key", 0, "none", "text"),
    ("msgid", "clustering", 0, "desc", "text"),
    ("arrived", "regular", -1, "none", "timestamp"),
    ("payload", "regular", -1, "none", "text"),
    ("qos", "regular", -1, "none", "int"),
    ("retain", "regular", -1, "none", "int"),
    ("sender", "regular", -1, "none", "text"),
];

/// Compares a live table with the expected one. Extra *regular* columns are accepted (the
/// product never reads them); any other difference is reported, all of them in one message.
pub fn check_columns(columns: &[ColumnInfo]) -> Result<(), String> {
    let mut problems = Vec::new();
    for &(name, kind, position, order, cql_type) in EXPECTED {
        match columns.iter().find(|c| c.name == name) {
            None => problems.push(format!("column `{name}` is missing")),
            Some(c) => {
                if c.cql_type != cql_type {
                    problems.push(format!(
                        "column `{name}` has type {}, expected {cql_type}",
                        c.cql_type
                    ));
                }
                if c.kind != kind || c.position != position {
                    problems.push(format!(
                        "column `{name}` is {} (position {}), expected {kind} (position {position})",
                        c.kind, c.position
                    ));
                }
                if kind == "clustering" && c.clustering_order != order {
                    problems.push(format!(
                        "column `{name}` has clustering order {}, expected {order}",
                        c.clustering_order
                    ));
                }
            }
        }
    }
    for c in columns {
        let known = EXPECTED.iter().any(|e| e.0 == c.name);
        if !known && c.kind != "regular" {
            problems.push(format!(
                "unexpected {} column `{}` (the key must be PRIMARY KEY (topic, msgid))",
                c.kind, c.name
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The keyspace Cassandra stores for the configured name: like an unquoted CQL name, the
/// configured one is case-insensitive (`MQTT` is `mqtt`), so every statement, schema check
/// and side table agrees on one keyspace. Case-sensitive (quoted) keyspace names are not
/// supported. `configured` must be a validated CQL identifier.
pub fn keyspace_name(configured: &str) -> String {
    configured.to_ascii_lowercase()
}

/// The keyspace as it is written in CQL: [`keyspace_name`], quoted, so that a name that is
/// also a CQL keyword (`select`, `table`) still parses.
pub fn keyspace_cql(configured: &str) -> String {
    format!("\"{}\"", keyspace_name(configured))
}

/// `CREATE TABLE IF NOT EXISTS` for the product's table, as schema.cql has it for
/// Cassandra 4.0+. `keyspace` must already be a validated CQL identifier.
pub fn create_table_cql(keyspace: &str) -> String {
    let keyspace = keyspace_cql(keyspace);
    format!(
        "CREATE TABLE IF NOT EXISTS {keyspace}.{TABLE} (\
         topic text, msgid text, arrived timestamp, payload text, qos int, retain int, sender text, \
         PRIMARY KEY (topic, msgid)) WITH CLUSTERING ORDER BY (msgid DESC) \
         AND bloom_filter_fp_chance = 0.01 \
         AND caching = {{'keys': 'ALL', 'rows_per_partition': 'NONE'}} \
         AND comment = '' \
         AND compaction = {{'class': 'org.apache.cassandra.db.compaction.SizeTieredCompactionStrategy', 'max_threshold': '32', 'min_threshold': '4'}} \
         AND compression = {{'chunk_length_in_kb': '64', 'class': 'org.apache.cassandra.io.compress.LZ4Compressor'}} \
         AND crc_check_chance = 1.0 AND default_time_to_live = 0 AND gc_grace_seconds = 864000 \
         AND max_index_interval = 2048 AND memtable_flush_period_in_ms = 0 AND min_index_interval = 128 \
         AND speculative_retry = '99PERCENTILE'"
    )
}

/// `CREATE TABLE IF NOT EXISTS` for the topic index. `keyspace` is a validated identifier.
/// Its rows are never deleted, only expire (every replica expires them alike), so their
/// tombstones need not outlive Cassandra's hint window (3 h): a short `gc_grace_seconds`
/// lets compaction drop them early.
pub fn create_index_table_cql(keyspace: &str) -> String {
    let keyspace = keyspace_cql(keyspace);
    format!(
        "CREATE TABLE IF NOT EXISTS {keyspace}.{INDEX_TABLE} (root text, bucket int, topic text, \
         buckets set<int>, PRIMARY KEY ((root, bucket), topic)) \
         WITH gc_grace_seconds = 10800 \
         AND comment = 'emqx_offline_cassandra: topics with stored messages, for wildcard replay'"
    )
}

/// `CREATE TABLE IF NOT EXISTS` for the replay floor. `keyspace` is a validated identifier.
pub fn create_floor_table_cql(keyspace: &str) -> String {
    let keyspace = keyspace_cql(keyspace);
    format!(
        "CREATE TABLE IF NOT EXISTS {keyspace}.{FLOOR_TABLE} (topic text PRIMARY KEY, msgid text) \
         WITH comment = 'emqx_offline_cassandra: per topic, every mqtt_msg row below msgid is deleted'"
    )
}

/// `CREATE TABLE IF NOT EXISTS` for the shared-group replay claims: one row per group and
/// filter, written with a TTL by lightweight transactions.
pub fn create_claims_table_cql(keyspace: &str) -> String {
    let keyspace = keyspace_cql(keyspace);
    format!(
        "CREATE TABLE IF NOT EXISTS {keyspace}.{CLAIMS_TABLE} (grp text, filter text, holder text, \
         PRIMARY KEY ((grp, filter))) WITH gc_grace_seconds = 10800 \
         AND comment = 'emqx_offline_cassandra: the node replaying a shared group, while it does'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected_columns() -> Vec<ColumnInfo> {
        EXPECTED
            .iter()
            .map(|&(name, kind, position, order, t)| ColumnInfo {
                name: name.into(),
                kind: kind.into(),
                position,
                clustering_order: order.into(),
                cql_type: t.into(),
            })
            .collect()
    }

    #[test]
    fn the_seed_table_passes() {
        check_columns(&expected_columns()).unwrap();
    }

    #[test]
    fn each_difference_is_named() {
        let mut cols = expected_columns();
        cols[4].cql_type = "bigint".into(); // qos
        cols[1].clustering_order = "asc".into(); // msgid
        cols.retain(|c| c.name != "sender");
        let err = check_columns(&cols).unwrap_err();
        assert!(err.contains("`qos` has type bigint, expected int"), "{err}");
        assert!(err.contains("`msgid` has clustering order asc"), "{err}");
        assert!(err.contains("`sender` is missing"), "{err}");
    }

    #[test]
    fn the_keyspace_is_one_case_insensitive_name_quoted_everywhere() {
        assert_eq!(keyspace_name("MQTT_Offline"), "mqtt_offline");
        assert_eq!(keyspace_cql("MQTT_Offline"), "\"mqtt_offline\"");
        assert_eq!(keyspace_cql("select"), "\"select\"");
        for cql in [
            create_table_cql("MQTT_Offline"),
            create_index_table_cql("MQTT_Offline"),
            create_floor_table_cql("MQTT_Offline"),
        ] {
            assert!(
                cql.starts_with("CREATE TABLE IF NOT EXISTS \"mqtt_offline\"."),
                "{cql}"
            );
        }
    }

    #[test]
    fn extra_regular_column_is_fine_extra_key_is_not() {
        let mut cols = expected_columns();
        cols.push(ColumnInfo {
            name: "note".into(),
            kind: "regular".into(),
            position: -1,
            clustering_order: "none".into(),
            cql_type: "text".into(),
        });
        check_columns(&cols).unwrap();
        cols.push(ColumnInfo {
            name: "bucket".into(),
            kind: "clustering".into(),
            position: 1,
            clustering_order: "asc".into(),
            cql_type: "int".into(),
        });
        assert!(check_columns(&cols).unwrap_err().contains("`bucket`"));
    }
}
