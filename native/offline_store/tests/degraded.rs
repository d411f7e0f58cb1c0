//! Cassandra answers but cannot take writes: a real `Unavailable` from the single test node,
//! provoked with a keyspace of replication factor 3 written at QUORUM (2 replicas needed,
//! 1 alive). The writes wait instead of failing, the store says it is degraded, and they
//! land once the keyspace is altered to RF 1; past `write_give_up_after` they are failed.
//! Also: a batch is capped in bytes, so 40 one-megabyte binary payloads queued behind an
//! outage are all stored; and without the cap, the batch Cassandra refuses as too big is
//! halved until every row is stored. A write Cassandra refuses with another transient
//! error past its quick attempts (here `Unauthorized`: MODIFY revoked while the store runs)
//! waits too, and lands once the permission is back.

mod common;

use std::time::{Duration, Instant};

use common::*;
use offline_store::{ConnState, Store, StoreConfig};
use scylla::statement::Consistency;

/// A keyspace of its own with replication factor `rf` (the store creates its tables).
async fn keyspace_with_rf(name: &str, rf: u32) {
    common::recreate_keyspace(&admin().await, name, rf as usize).await;
}

async fn alter_rf(name: &str, rf: u32) {
    admin()
        .await
        .query_unpaged(
            format!(
                "ALTER KEYSPACE {name} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': '{rf}'}}"
            ),
            (),
        )
        .await
        .unwrap();
}

fn quorum_config(keyspace: &str) -> StoreConfig {
    StoreConfig {
        keyspace: keyspace.into(),
        create_table_if_missing: true,
        write_consistency: Consistency::Quorum,
        read_consistency: Consistency::One,
        // QUORUM writes and ONE reads do not overlap, which the replay floor needs
        // (refused with it); these tests are about the writes.
        replay_floor: false,
        ..config()
    }
}

async fn wait_until(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + scaled(deadline);
    while !done() {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn rows_in(keyspace: &str, topic: &str) -> usize {
    admin()
        .await
        .query_unpaged(
            format!("SELECT msgid FROM {keyspace}.mqtt_msg WHERE topic = ?"),
            (topic,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(String,)>()
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_writes_wait_and_land_when_enough_replicas_are_there() {
    let ks = format!("degraded_wait_{}", now_ms());
    let _cleanup = Cleanup::keyspace(&ks);
    keyspace_with_rf(&ks, 3).await;
    let store = connect_with(quorum_config(&ks)).await;
    let topic = unique_topic("unavailable");
    for i in 0..20 {
        store
            .submit_store(message(&topic, format!("m{i}").as_bytes()))
            .unwrap();
    }
    wait_until("20 writes wait", Duration::from_secs(20), || {
        store.stats().waiting == 20
    })
    .await;
    // They wait, none failed, and the store says why while it stays connected.
    let s = store.stats();
    assert_eq!((s.failed, s.written, s.buffered), (0, 0, 20), "{s:?}");
    assert!(s.waited >= 20 && s.is_balanced(), "{s:?}");
    assert_eq!(store.state(), ConnState::Connected);
    let degraded = store.degraded().expect("degraded while writes wait");
    assert_eq!(degraded.waiting, 20);
    assert_eq!(
        degraded.reason, "Unavailable: 1 replica alive, QUORUM needs 2",
        "{degraded:?}"
    );
    // Retried with backoff, not given up: still waiting a few seconds later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = store.stats();
    assert_eq!((s.waiting, s.failed), (20, 0), "{s:?}");

    alter_rf(&ks, 1).await;
    wait_until(
        "every waiting write landed",
        Duration::from_secs(30),
        || store.stats().written == 20,
    )
    .await;
    let s = store.stats();
    assert_eq!((s.waiting, s.failed, s.buffered), (0, 0, 0), "{s:?}");
    assert!(s.is_balanced(), "{s:?}");
    assert_eq!(store.degraded(), None);
    assert_eq!(rows_in(&ks, &topic).await, 20);
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_waiting_longer_than_the_limit_is_counted_failed() {
    let ks = format!("degraded_give_up_{}", now_ms());
    let _cleanup = Cleanup::keyspace(&ks);
    keyspace_with_rf(&ks, 3).await;
    let store = connect_with(StoreConfig {
        write_give_up_after: Duration::from_secs(2),
        ..quorum_config(&ks)
    })
    .await;
    let topic = unique_topic("give_up");
    let started = Instant::now();
    let results: Vec<_> = (0..5)
        .map(|i| {
            let store = store.clone();
            let msg = message(&topic, format!("m{i}").as_bytes());
            tokio::spawn(async move { store.store(msg).await })
        })
        .collect();
    wait_until("5 writes given up", Duration::from_secs(30), || {
        store.stats().gave_up == 5
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "given up after {:?}, before the limit",
        started.elapsed()
    );
    for r in results {
        let err = r.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), "db_error", "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("write_give_up_after") && text.contains("Unavailable"),
            "{text}"
        );
    }
    let s = store.stats();
    assert_eq!((s.failed, s.waiting, s.written), (5, 0, 0), "{s:?}");
    assert!(s.is_balanced(), "{s:?}");
    assert_eq!(store.degraded(), None);
    store.shutdown(Duration::ZERO).await;
}

/// 40 non-UTF-8 1 MB payloads to `topic`, buffered by a store that cannot reach Cassandra
/// (as in an outage), then handed to a store built from `cfg` before it connects: they
/// reach it all at once, as after an outage. Returns the connected store and the payloads.
async fn forty_megabytes_behind_an_outage(cfg: StoreConfig, topic: &str) -> (Store, Vec<Vec<u8>>) {
    let old = Store::start(StoreConfig {
        contact_points: vec!["127.0.0.1:1".into()],
        ..config()
    })
    .unwrap();
    let mut seed = 0x5EED_u64;
    let payloads: Vec<Vec<u8>> = (0..40)
        .map(|_| {
            let mut p = random_bytes(&mut seed, 1_000_000);
            p[0] = 0xFF; // never valid UTF-8: stored as base64, 1.33 MB each
            p
        })
        .collect();
    for p in &payloads {
        old.submit_store(message(topic, p)).unwrap();
    }
    let (_, handover) = old.shutdown_with_handover(Duration::ZERO).await;
    assert_eq!(handover.len(), 40);
    let store = Store::start(cfg).unwrap();
    assert_eq!(store.adopt(handover), 0);
    store
        .wait_connected(scaled(Duration::from_secs(20)))
        .await
        .unwrap();
    store.flush(scaled(Duration::from_secs(60))).await.unwrap();
    (store, payloads)
}

async fn newest_three_are(store: &Store, topic: &str, payloads: &[Vec<u8>]) {
    let rows = store
        .fetch(
            topic,
            offline_store::FetchOptions {
                limit: Some(3),
                since_ms: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    for (row, sent) in rows.iter().zip(&payloads[payloads.len() - 3..]) {
        assert!(row.payload == *sent, "payload changed on the way");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_one_megabyte_binary_payloads_queued_behind_an_outage_are_all_stored() {
    let topic = unique_topic("forty_mb");
    let _cleanup = Cleanup::topics(&[&topic]);
    // The first batch could hold 32 of them (42 MB, which Cassandra refuses) but for the
    // byte cap: 4 MiB, so 3 a batch.
    let (store, payloads) = forty_megabytes_behind_an_outage(config(), &topic).await;
    let s = store.stats();
    assert_eq!((s.written, s.failed), (40, 0), "{s:?}");
    assert!(s.batches >= 14, "batches of at most 3: {s:?}");
    assert_eq!(rows_in("mqtt", &topic).await, 40);
    newest_three_are(&store, &topic, &payloads).await;
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

/// Without the byte cap the batch of 32 goes out whole, 42 MB: Cassandra refuses it
/// ("Request is too big", an `Invalid`), and so it is halved until the halves fit (8 rows,
/// 10.7 MB): every row is stored and none failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cassandra_refuses_as_too_big_is_halved_until_every_row_is_stored() {
    let topic = unique_topic("halved");
    let _cleanup = Cleanup::topics(&[&topic]);
    let cfg = StoreConfig {
        max_batch_bytes: 1 << 30,
        ..config()
    };
    let (store, payloads) = forty_megabytes_behind_an_outage(cfg, &topic).await;
    let s = store.stats();
    assert_eq!((s.written, s.failed), (40, 0), "{s:?}");
    assert_eq!((s.refused_invalid, s.refused_protocol), (0, 0), "{s:?}");
    // 40 rows in batches of at most 32 are 2 requests; the refused ones were sent again.
    assert!(s.batches > 2, "nothing was halved: {s:?}");
    assert_eq!(rows_in("mqtt", &topic).await, 40);
    newest_three_are(&store, &topic, &payloads).await;
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

/// MODIFY revoked from the store's role after it connected: each write is refused with
/// `Unauthorized`, tried `write_attempts` times, then waits (none failed) with the server's
/// words as the reason; granted again, every write lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_refused_for_a_revoked_permission_wait_and_land_once_it_is_granted() {
    const PASSWORD: &str = "degraded-revoked-pw";
    let ks = format!("degraded_revoked_{}", now_ms());
    let role = "offline_test_revoked_modify";
    let _cleanup = Cleanup::keyspace(&ks).and_role(role);
    let admin = admin().await;
    common::recreate_keyspace(&admin, &ks, 1).await;
    let run = |cql: String| run_cql(&admin, cql);
    run(offline_store::schema::create_table_cql(&ks)).await;
    role_for_keyspace(&admin, &ks, role, PASSWORD).await;
    let store = connect_with(StoreConfig {
        keyspace: ks.clone(),
        username: Some(role.into()),
        password: Some(PASSWORD.into()),
        topic_index: false,
        replay_floor: false,
        ..config()
    })
    .await;

    run(format!("REVOKE MODIFY ON KEYSPACE {ks} FROM {role}")).await;
    // Permissions are cached for a moment (permissions_validity, 2 s by default): writes go
    // out until one is refused, then the next ones wait behind it.
    let topic = unique_topic("revoked");
    let mut sent = 0u64;
    let end = Instant::now() + scaled(Duration::from_secs(30));
    while store.stats().waiting == 0 {
        assert!(
            Instant::now() < end,
            "no write refused 30 s after REVOKE: {:?}",
            store.stats()
        );
        store
            .submit_store(message(&topic, format!("m{sent}").as_bytes()))
            .unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..10 {
        store
            .submit_store(message(&topic, format!("after{i}").as_bytes()))
            .unwrap();
    }
    sent += 10;
    // Every write is refused, tried its 3 quick attempts, and waits (or is being retried).
    let all_wait = || {
        let waiting = store.degraded().map_or(0, |d| d.waiting);
        waiting + store.stats().written == sent && store.stats().retries >= 2
    };
    wait_until("every write waits", Duration::from_secs(30), all_wait).await;
    // A few backoffs later, none failed, all still wait.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = store.stats();
    assert_eq!(s.failed, 0, "{s:?}");
    let degraded = store.degraded().expect("degraded while writes wait");
    assert_eq!(degraded.waiting + s.written, sent, "{degraded:?} {s:?}");
    assert!(
        degraded.reason.contains("MODIFY") || degraded.reason.contains("permission"),
        "the reason does not name the permission: {degraded:?}"
    );

    run(format!("GRANT MODIFY ON KEYSPACE {ks} TO {role}")).await;
    wait_until(
        "every write landed after the grant",
        Duration::from_secs(60),
        || store.stats().written == sent,
    )
    .await;
    let s = store.stats();
    assert_eq!((s.waiting, s.failed, s.buffered), (0, 0, 0), "{s:?}");
    assert_eq!(store.degraded(), None);
    assert_eq!(rows_in(&ks, &topic).await as u64, sent);
    store.shutdown(scaled(Duration::from_secs(5))).await;
}
