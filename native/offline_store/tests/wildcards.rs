//! Wildcard replay over large fleets (issue 15 part 2): the topic index is read by the
//! filter's literal prefix, so a device among 100,000 finds its own topics; filters that
//! start with a wildcard go through the roots list; a range of expired topics (tombstones
//! past Cassandra's abort limit) is read in narrower ranges; the index of earlier versions
//! is still read. Each test has a keyspace of its own, dropped at the end.

mod common;

use std::time::{Duration, Instant};

use common::*;
use offline_store::{FetchOptions, Store, StoreConfig};

/// A fresh keyspace of `name` with the store's tables, and a store on it.
async fn store_in(name: &str) -> Store {
    recreate_keyspace(&admin().await, name, 1).await;
    connect_with(StoreConfig {
        keyspace: name.into(),
        create_table_if_missing: true,
        topic_index: true,
        request_timeout: scaled(Duration::from_secs(10)),
        ..config()
    })
    .await
}

fn payloads(rows: Vec<offline_store::StoredMessage>) -> Vec<String> {
    rows.into_iter()
        .map(|r| String::from_utf8(r.payload).unwrap())
        .collect()
}

/// Median time of `n` lookups of `filter`, and what the last one found.
async fn timed_lookup(store: &Store, filter: &str, n: usize) -> (Duration, Vec<String>) {
    let mut times = Vec::with_capacity(n);
    let mut found = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        found = store.topics_matching(filter).await.unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    (times[n / 2], found)
}

/// The case: 100,000 devices under `devices/`; the subscriber of one of them
/// (whose topics sort last) gets the messages of its topics (3, and one with an empty last
/// level). Before, the lookup read the
/// first 10,000 topics of `devices` and found nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_among_100000_finds_its_topics() {
    let ks = "offline_test_wild_fleet";
    let _cleanup = Cleanup::keyspace(ks);
    let store = store_in(ks).await;
    let started = Instant::now();
    let fleet: Vec<String> = (0..99_999)
        .map(|i| format!("devices/d{i:05}/cmd"))
        .collect();
    store.index_topics_directly(&fleet, 0, 32).await.unwrap();
    let filled = started.elapsed();
    // Through the write path: the device's 3 topics, and neighbours that must not match.
    // `devices/d99999/` (an empty last level) matches `devices/d99999/+` and `/#` too.
    let mine = [
        "devices/d99999/cmd",
        "devices/d99999/cfg/a",
        "devices/d99999",
        "devices/d99999/",
    ];
    for (i, t) in mine.iter().enumerate() {
        store
            .store(message(t, format!("m{i}").as_bytes()))
            .await
            .unwrap();
    }
    for t in [
        "devices/d99999x/cmd",
        "devices/d9999/cmd",
        "devices/d99999.x",
        "other/d99999/x",
    ] {
        store.store(message(t, b"not mine")).await.unwrap();
    }

    let rows = store
        .fetch_matching("devices/d99999/#", FetchOptions::default())
        .await
        .unwrap();
    assert_eq!(payloads(rows), ["m0", "m1", "m2", "m3"], "oldest first");
    let (exact, found) = timed_lookup(&store, "devices/d99999/#", 5).await;
    let mut want: Vec<String> = mine.iter().map(|t| t.to_string()).collect();
    want.sort();
    assert_eq!(found, want);
    let (one_level, found) = timed_lookup(&store, "devices/d99999/+", 5).await;
    assert_eq!(found, ["devices/d99999/", "devices/d99999/cmd"]);
    // A wildcard second level reads every bucket of `devices`: 100,000 topics.
    let (every_device, found) = timed_lookup(&store, "devices/+/cfg/a", 3).await;
    assert_eq!(found, ["devices/d99999/cfg/a"]);
    // A filter starting with a wildcard: the roots list, then each root's range.
    let (rootless, found) = timed_lookup(&store, "+/d99999/#", 3).await;
    want.push("other/d99999/x".into());
    want.sort();
    assert_eq!(found, want);
    // More matches than max_wildcard_topics: exactly that many.
    let all = store.topics_matching("devices/#").await.unwrap();
    assert_eq!(all.len(), 10_000);
    println!(
        "index of 100,000 topics filled in {filled:?}; lookups (median): devices/d99999/# \
         {exact:?}, devices/d99999/+ {one_level:?}, devices/+/cfg/a {every_device:?}, \
         +/d99999/# {rootless:?}"
    );
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

/// 101,000 topics under one prefix that all expired: their index rows are tombstones, more
/// than Cassandra lets one read walk (`tombstone_failure_threshold`, 100,000). The lookup
/// reads the range in narrower ranges and finds the one live topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_topics_past_the_tombstone_limit_do_not_abort_the_lookup() {
    let ks = "offline_test_wild_expired";
    let _cleanup = Cleanup::keyspace(ks);
    let store = store_in(ks).await;
    // One second level: all in one index partition, as a fleet under `site/x/` would be.
    let expired: Vec<String> = (0..101_000).map(|i| format!("site/x/t{i:06}")).collect();
    store.index_topics_directly(&expired, 1, 32).await.unwrap();
    store
        .store(message("site/x/t100500/live", b"live"))
        .await
        .unwrap();
    // Index rows expire a second after they were written.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let raw = admin()
        .await
        .query_unpaged(
            format!(
                "SELECT topic FROM {ks}.mqtt_msg_topic_index WHERE root = 'site' AND bucket = ?"
            ),
            (offline_store::index_keys::bucket_of("x"),),
        )
        .await;
    assert!(
        raw.as_ref()
            .is_err_and(|e| e.to_string().contains("TOMBSTONES")),
        "the plain read of the partition must be aborted for this test to mean anything: {:?}",
        raw.map(|r| r.into_rows_result().map(|r| r.rows_num()).ok())
    );
    let before = store.stats().sliced_reads;
    let started = Instant::now();
    let found = store.topics_matching("site/x/#").await.unwrap();
    let took = started.elapsed();
    assert_eq!(found, ["site/x/t100500/live"]);
    assert!(
        store.stats().sliced_reads > before,
        "read in narrower ranges"
    );
    let rows = store
        .fetch_matching("+/x/#", FetchOptions::default())
        .await
        .unwrap();
    assert_eq!(payloads(rows), ["live"]);
    println!("lookup beside 101,000 expired topics: {took:?}");
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

/// After an upgrade, topics indexed by an earlier version (table `mqtt_msg_topics`, one
/// partition per first level) are still found, while that table exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_in_the_index_of_earlier_versions_are_found() {
    let ks = "offline_test_wild_legacy";
    let _cleanup = Cleanup::keyspace(ks);
    let admin = admin().await;
    recreate_keyspace(&admin, ks, 1).await;
    let run = |cql: String| run_cql(&admin, cql);
    run(offline_store::schema::create_table_cql(ks)).await;
    run(format!(
        "CREATE TABLE {ks}.mqtt_msg_topics (root text, topic text, PRIMARY KEY (root, topic))"
    ))
    .await;
    // As the earlier version wrote them: the message, its topic, its first level.
    let m = message("old/a/1", b"from before");
    run(format!(
        "INSERT INTO {ks}.mqtt_msg (topic, msgid, arrived, payload, qos, retain, sender) \
         VALUES ('old/a/1', '{}', {}, 'from before', 1, 0, 'c')",
        m.msgid, m.arrived_ms
    ))
    .await;
    for (root, topic) in [
        ("old", "old/a/1"),
        (offline_store::schema::ROOTS_PARTITION, "old"),
    ] {
        admin
            .query_unpaged(
                format!("INSERT INTO {ks}.mqtt_msg_topics (root, topic) VALUES (?, ?)"),
                (root, topic),
            )
            .await
            .unwrap();
    }
    let store = connect_with(StoreConfig {
        keyspace: ks.into(),
        topic_index: true,
        ..config()
    })
    .await;
    // One topic in both indexes is found once.
    store.store(message("old/a/2", b"after")).await.unwrap();
    store
        .index_topics_directly(&["old/a/1".to_string()], 0, 1)
        .await
        .unwrap();
    for filter in ["old/#", "old/a/+", "+/a/#", "#"] {
        let rows = store
            .fetch_matching(filter, FetchOptions::default())
            .await
            .unwrap();
        assert_eq!(payloads(rows), ["from before", "after"], "{filter}");
        assert_eq!(
            store.topics_matching(filter).await.unwrap(),
            ["old/a/1", "old/a/2"],
            "{filter}"
        );
    }
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

/// A role that may use the new index but not read the former one (a DBA granted table by
/// table) is told so when the store connects, not by every wildcard replay failing later:
/// Cassandra checks SELECT when a statement runs, not when it is prepared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_former_index_the_role_cannot_read_is_named_at_connect() {
    let (ks, role) = (
        "offline_test_wild_legacy_role",
        "offline_test_wild_no_select",
    );
    let password = "wild-legacy-pw";
    let _cleanup = Cleanup::keyspace(ks).and_role(role);
    let admin = admin().await;
    recreate_keyspace(&admin, ks, 1).await;
    let run = |cql: String| run_cql(&admin, cql);
    run(offline_store::schema::create_table_cql(ks)).await;
    run(offline_store::schema::create_index_table_cql(ks)).await;
    run(format!(
        "CREATE TABLE {ks}.mqtt_msg_topics (root text, topic text, PRIMARY KEY (root, topic))"
    ))
    .await;
    run(format!("DROP ROLE IF EXISTS {role}")).await;
    run(format!(
        "CREATE ROLE {role} WITH PASSWORD = '{password}' AND LOGIN = true"
    ))
    .await;
    for table in ["mqtt_msg", "mqtt_msg_topic_index"] {
        run(format!("GRANT SELECT ON TABLE {ks}.{table} TO {role}")).await;
        run(format!("GRANT MODIFY ON TABLE {ks}.{table} TO {role}")).await;
    }
    let cfg = StoreConfig {
        keyspace: ks.into(),
        username: Some(role.into()),
        password: Some(password.into()),
        topic_index: true,
        replay_floor: false,
        ..config()
    };
    let err = Store::connect(cfg.clone(), scaled(Duration::from_secs(20)))
        .await
        .err()
        .expect("connected without SELECT on mqtt_msg_topics");
    assert_eq!(err.kind(), "index_unavailable", "{err}");
    let text = err.to_string();
    for advice in ["mqtt_msg_topics", "grant SELECT", "drop it"] {
        assert!(text.contains(advice), "{advice} not in: {text}");
    }
    run(format!(
        "GRANT SELECT ON TABLE {ks}.mqtt_msg_topics TO {role}"
    ))
    .await;
    // Cassandra caches permissions (2 s by default): the grant is seen within a few seconds.
    let deadline = Instant::now() + scaled(Duration::from_secs(30));
    let store = loop {
        match Store::connect(cfg.clone(), scaled(Duration::from_secs(20))).await {
            Ok(store) => break store,
            Err(e) if Instant::now() < deadline && e.kind() == "index_unavailable" => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            Err(e) => panic!("still refused after the grant: {e}"),
        }
    };
    assert_eq!(
        store.topics_matching("a/#").await.unwrap(),
        Vec::<String>::new()
    );
    store.shutdown(scaled(Duration::from_secs(5))).await;
}
