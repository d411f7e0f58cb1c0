//! The storage core against a real Cassandra (test/cassandra/cassandra.sh start).
//! Every test uses its own topics (or keyspace), so they run in parallel on one node.

mod common;

use std::time::{Duration, Instant};

use common::*;
use offline_store::{ConnState, FetchOptions, MsgId, OverflowPolicy, StoreConfig, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_store_fetch_delete() {
    let store = connect().await;
    let topic = unique_topic("round_trip");
    let _cleanup = Cleanup::topics(&[&topic]);
    let mut msg = message(&topic, b"{\"temp\": 21.5}");
    msg.qos = 2;
    msg.retain = true;
    msg.sender = "sensor-7".into();
    store.store(msg.clone()).await.unwrap();

    let rows = store.fetch(&topic, FetchOptions::default()).await.unwrap();
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.topic, topic);
    assert_eq!(row.msgid, msg.msgid.as_str());
    assert_eq!(row.payload, msg.payload);
    assert_eq!((row.qos, row.retain), (2, true));
    assert_eq!(row.sender, "sensor-7");
    assert_eq!(row.arrived_ms, msg.arrived_ms);

    // What cqlsh would show: the UTF-8 payload as is, retain as 1.
    let check = admin()
        .await
        .query_unpaged(
            "SELECT payload, retain, qos FROM mqtt.mqtt_msg WHERE topic = ? AND msgid = ?",
            (&topic, msg.msgid.as_str()),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row::<(String, i32, i32)>()
        .unwrap();
    assert_eq!(check, ("{\"temp\": 21.5}".to_string(), 1, 2));

    store.delete(&topic, msg.msgid).await.unwrap();
    assert!(
        store
            .fetch(&topic, FetchOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_messages_come_back_in_publish_order() {
    let store = connect().await;
    let topic = unique_topic("order");
    let _cleanup = Cleanup::topics(&[&topic]);
    let msgs: Vec<_> = (0..200)
        .map(|i| message(&topic, format!("m{i}").as_bytes()))
        .collect();
    // Submitted all at once: batches and concurrency must not change the order read back.
    for m in msgs.iter().rev() {
        store.submit_store(m.clone()).unwrap();
    }
    store.flush(scaled(Duration::from_secs(20))).await.unwrap();

    let rows = store.fetch(&topic, FetchOptions::default()).await.unwrap();
    let got: Vec<_> = rows.iter().map(|r| r.payload.clone()).collect();
    let want: Vec<_> = msgs.iter().map(|m| m.payload.clone()).collect();
    assert_eq!(got, want);
    let stats = store.stats();
    assert!(stats.is_balanced(), "{stats:?}");
    assert_eq!(stats.written, 200);
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_returns_the_newest_oldest_first_and_since_cuts_by_time() {
    let store = connect().await;
    let topic = unique_topic("limit");
    let _cleanup = Cleanup::topics(&[&topic]);
    let base = now_ms() - 10 * 3_600_000;
    let mut msgs = Vec::new();
    for hour in 0..10i64 {
        let mut m = message(&topic, format!("h{hour}").as_bytes());
        m.arrived_ms = base + hour * 3_600_000;
        m.msgid = MsgId::new(m.arrived_ms as u64 * 1000, 1, hour as u16);
        store.store(m.clone()).await.unwrap();
        msgs.push(m);
    }
    let payloads = |rows: Vec<offline_store::StoredMessage>| -> Vec<String> {
        rows.into_iter()
            .map(|r| String::from_utf8(r.payload).unwrap())
            .collect()
    };

    let newest3 = store
        .fetch(
            &topic,
            FetchOptions {
                limit: Some(3),
                since_ms: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(payloads(newest3), ["h7", "h8", "h9"]);

    let last_2h = store
        .fetch(
            &topic,
            FetchOptions {
                limit: None,
                since_ms: Some(msgs[8].arrived_ms),
            },
        )
        .await
        .unwrap();
    assert_eq!(payloads(last_2h), ["h8", "h9"]);

    let both = store
        .fetch(
            &topic,
            FetchOptions {
                limit: Some(1),
                since_ms: Some(msgs[5].arrived_ms),
            },
        )
        .await
        .unwrap();
    assert_eq!(payloads(both), ["h9"]);

    // The rest stays stored.
    assert_eq!(
        store
            .fetch(&topic, FetchOptions::default())
            .await
            .unwrap()
            .len(),
        10
    );

    // Cursor walk, oldest first, in steps of 4, honouring since.
    let mut seen = Vec::new();
    let mut cursor: Option<MsgId> = None;
    loop {
        let page = store
            .fetch_after(&topic, cursor.as_ref(), Some(msgs[2].arrived_ms), 4)
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        cursor = Some(MsgId::parse(&page.last().unwrap().msgid).unwrap());
        seen.extend(payloads(page));
    }
    assert_eq!(seen, ["h2", "h3", "h4", "h5", "h6", "h7", "h8", "h9"]);
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_that_arrives_before_its_insert_still_wins() {
    let store = connect().await;
    let topic = unique_topic("delete_first");
    let _cleanup = Cleanup::topics(&[&topic]);
    let msgs: Vec<_> = (0..500)
        .map(|i| message(&topic, format!("{i}").as_bytes()))
        .collect();
    for m in &msgs {
        store.delete(&topic, m.msgid).await.unwrap();
    }
    for m in &msgs {
        store.submit_store(m.clone()).unwrap();
    }
    store.flush(scaled(Duration::from_secs(20))).await.unwrap();
    assert_eq!(store.stats().failed, 0);
    let left = store.fetch(&topic, FetchOptions::default()).await.unwrap();
    assert!(left.is_empty(), "{} rows resurrected", left.len());
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_binary_payloads_round_trip() {
    let store = connect().await;
    let topic = unique_topic("binary");
    let _cleanup = Cleanup::topics(&[&topic]);
    let mut seed = 0xDEAD_BEEF_u64;
    let mut sent = Vec::new();
    for len in [0usize, 1, 2, 3, 17, 255, 1024, 65_536, 1 << 20] {
        let m = message(&topic, &random_bytes(&mut seed, len));
        store.submit_store(m.clone()).unwrap();
        sent.push(m.payload);
    }
    // Text that looks like the binary marker must not be mistaken for it.
    let tricky = format!("{}AAAA", offline_store::payload::BINARY_MARKER).into_bytes();
    store.submit_store(message(&topic, &tricky)).unwrap();
    sent.push(tricky);
    store.flush(scaled(Duration::from_secs(30))).await.unwrap();
    assert_eq!(store.stats().failed, 0, "{:?}", store.stats());

    let got: Vec<_> = store
        .fetch(&topic, FetchOptions::default())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(got.len(), sent.len());
    for (i, (g, s)) in got.iter().zip(&sent).enumerate() {
        assert!(g == s, "payload {i} ({} bytes) changed", s.len());
    }
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn largest_payload_is_stored_and_a_larger_one_is_refused() {
    let store = connect().await;
    let topic = unique_topic("large");
    let _cleanup = Cleanup::topics(&[&topic]);
    let max = store.config().max_payload_bytes;
    let mut seed = 7u64;
    let biggest = message(&topic, &random_bytes(&mut seed, max));
    store.store(biggest.clone()).await.unwrap();
    let got = store.fetch(&topic, FetchOptions::default()).await.unwrap();
    assert_eq!(got[0].payload.len(), max);
    assert!(got[0].payload == biggest.payload);

    let too_big = message(&topic, &vec![b'x'; max + 1]);
    match store.submit_store(too_big) {
        Err(StoreError::PayloadTooLarge { size, max: m }) => assert_eq!((size, m), (max + 1, max)),
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert_eq!(store.stats().rejected, 1);
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expires_the_row() {
    let store = connect().await;
    let topic = unique_topic("ttl");
    let _cleanup = Cleanup::topics(&[&topic]);
    let mut m = message(&topic, b"short-lived");
    m.ttl_secs = Some(1);
    store.store(m).await.unwrap();
    assert_eq!(
        store
            .fetch(&topic, FetchOptions::default())
            .await
            .unwrap()
            .len(),
        1
    );
    // Expired after a second: poll until the row is gone (a busy node may lag).
    let deadline = Instant::now() + scaled(Duration::from_secs(10));
    while !store
        .fetch(&topic, FetchOptions::default())
        .await
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the row outlived its TTL");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_topics_through_the_pipeline_all_land() {
    let store = connect().await;
    let topics: Vec<_> = (0..20).map(|_| unique_topic("pipeline")).collect();
    let _cleanup = Cleanup::topics(&topics);
    let mut ids = Vec::new();
    for i in 0..4000 {
        let t = &topics[i % topics.len()];
        let m = message(t, format!("{i}").as_bytes());
        ids.push((t.clone(), m.msgid));
        store.submit_store(m).unwrap();
    }
    store.flush(scaled(Duration::from_secs(60))).await.unwrap();
    let s = store.stats();
    assert_eq!((s.written, s.failed, s.dropped), (4000, 0, 0), "{s:?}");
    assert!(s.batches < 4000, "writes were not batched: {s:?}");
    for t in &topics {
        assert_eq!(
            store.fetch(t, FetchOptions::default()).await.unwrap().len(),
            200
        );
    }
    // Ack them all through the pipeline too.
    for (t, id) in &ids {
        store.submit_delete(t, *id).unwrap();
    }
    store.flush(scaled(Duration::from_secs(60))).await.unwrap();
    for t in &topics {
        assert!(
            store
                .fetch(t, FetchOptions::default())
                .await
                .unwrap()
                .is_empty()
        );
    }
    assert!(store.stats().is_balanced());
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_an_authentication_error() {
    let cfg = StoreConfig {
        password: Some("not-the-password".into()),
        ..config()
    };
    let started = Instant::now();
    let err = offline_store::Store::connect(cfg, scaled(Duration::from_secs(20)))
        .await
        .err()
        .expect("connect with a wrong password must fail");
    assert!(matches!(err, StoreError::AuthFailed(_)), "{err:?}");
    assert!(err.to_string().contains("authentication failed"), "{err}");
    assert!(
        started.elapsed() < scaled(Duration::from_secs(15)),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_keyspace_is_named() {
    let cfg = StoreConfig {
        keyspace: "no_such_keyspace_here".into(),
        ..config()
    };
    let err = offline_store::Store::connect(cfg, scaled(Duration::from_secs(20)))
        .await
        .err()
        .unwrap();
    assert_eq!(
        err,
        StoreError::KeyspaceMissing("no_such_keyspace_here".into())
    );
}

async fn fresh_keyspace(name: &str) {
    common::recreate_keyspace(&admin().await, name, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_column_is_a_schema_mismatch() {
    let ks = "offline_test_mismatch";
    let _cleanup = Cleanup::keyspace(ks);
    fresh_keyspace(ks).await;
    admin()
        .await
        .query_unpaged(
            format!(
                "CREATE TABLE {ks}.mqtt_msg (topic text, msgid text, arrived timestamp, payload blob, \
                 qos int, retain int, sender text, PRIMARY KEY (topic, msgid)) \
                 WITH CLUSTERING ORDER BY (msgid DESC)"
            ),
            (),
        )
        .await
        .unwrap();
    let cfg = StoreConfig {
        keyspace: ks.into(),
        ..config()
    };
    let err = offline_store::Store::connect(cfg, scaled(Duration::from_secs(20)))
        .await
        .err()
        .unwrap();
    match &err {
        StoreError::SchemaMismatch(what) => {
            assert!(
                what.contains("`payload` has type blob, expected text"),
                "{what}"
            )
        }
        other => panic!("expected SchemaMismatch, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_table_is_an_error_unless_creation_is_enabled() {
    let ks = "offline_test_create";
    let _cleanup = Cleanup::keyspace(ks);
    fresh_keyspace(ks).await;
    let cfg = StoreConfig {
        keyspace: ks.into(),
        ..config()
    };
    let err = offline_store::Store::connect(cfg.clone(), scaled(Duration::from_secs(20)))
        .await
        .err()
        .unwrap();
    assert_eq!(err, StoreError::TableMissing(ks.into()));

    let store = connect_with(StoreConfig {
        create_table_if_missing: true,
        ..cfg
    })
    .await;
    let topic = unique_topic("created");
    let _cleanup = Cleanup::topics(&[&topic]);
    store.store(message(&topic, b"x")).await.unwrap();
    assert_eq!(
        store
            .fetch(&topic, FetchOptions::default())
            .await
            .unwrap()
            .len(),
        1
    );
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cassandra_gives_a_clear_error_in_bounded_time() {
    let cfg = StoreConfig {
        contact_points: vec!["127.0.0.1:1".into()],
        connect_timeout: Duration::from_secs(1),
        ..config()
    };
    let started = Instant::now();
    let err = offline_store::Store::connect(cfg.clone(), scaled(Duration::from_secs(2)))
        .await
        .err()
        .unwrap();
    assert!(
        started.elapsed() < scaled(Duration::from_secs(4)),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(err.kind(), "not_connected", "{err:?}");

    // Started in the background instead: the state says why, reads fail fast, writes wait
    // in the buffer.
    let store = offline_store::Store::start(cfg).unwrap();
    let deadline = Instant::now() + scaled(Duration::from_secs(10));
    while !matches!(
        store.state(),
        ConnState::Connecting {
            last_error: Some(_),
            ..
        }
    ) {
        assert!(Instant::now() < deadline, "still {:?}", store.state());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match store.state() {
        ConnState::Connecting {
            last_error: Some(e),
            attempt,
        } => {
            assert!(attempt >= 1);
            assert_eq!(e.kind(), "not_connected");
        }
        other => panic!("expected Connecting with an error, got {other:?}"),
    }
    let t = Instant::now();
    let err = store
        .fetch("t/1", FetchOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "not_connected");
    assert!(t.elapsed() < scaled(Duration::from_millis(100)));
    store.submit_store(message("t/1", b"waits")).unwrap();
    assert_eq!(store.stats().buffered, 1);
    let report = store.shutdown(Duration::from_millis(100)).await;
    assert_eq!(report.abandoned, 1);
    let s = store.stats();
    assert_eq!(s.failed, 1);
    assert!(s.is_balanced(), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_buffer_follows_the_overflow_policy() {
    for policy in [OverflowPolicy::DropNew, OverflowPolicy::DropOldest] {
        // Unreachable node: nothing drains, so the buffer fills.
        let cfg = StoreConfig {
            contact_points: vec!["127.0.0.1:1".into()],
            buffer_capacity: 5,
            overflow_policy: policy,
            ..config()
        };
        let store = offline_store::Store::start(cfg).unwrap();
        let results: Vec<_> = (0..8)
            .map(|i| store.submit_store(message("t/full", format!("{i}").as_bytes())))
            .collect();
        let s = store.stats();
        assert_eq!(s.buffered, 5, "{policy:?}");
        assert_eq!(s.dropped, 3, "{policy:?}");
        match policy {
            OverflowPolicy::DropNew => {
                assert!(results[..5].iter().all(Result::is_ok));
                assert!(
                    results[5..]
                        .iter()
                        .all(|r| matches!(r, Err(StoreError::Overloaded { capacity: 5 })))
                );
                assert_eq!(s.accepted, 5);
            }
            OverflowPolicy::DropOldest => {
                assert!(results.iter().all(Result::is_ok));
                assert_eq!((s.accepted, s.evicted), (8, 3));
            }
        }
        assert!(s.is_balanced(), "{s:?}");
        store.shutdown(Duration::ZERO).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_filters_find_their_topics_through_the_index() {
    let store = connect().await;
    let base = unique_topic("wild");
    let _cleanup = Cleanup::topics(
        &["1", "2/x", "3", "2/y/z"]
            .map(|s| format!("{base}/{s}"))
            .into_iter()
            .chain([format!("{base}x/1")])
            .collect::<Vec<_>>(),
    );
    let mut publish = Vec::new();
    for (suffix, payload) in [
        ("1", "a"),
        ("2/x", "b"),
        ("3", "c"),
        ("1", "d"),
        ("2/y/z", "e"),
    ] {
        let m = message(&format!("{base}/{suffix}"), payload.as_bytes());
        store.store(m.clone()).await.unwrap();
        publish.push(m);
    }
    // Elsewhere, must not match.
    store
        .store(message(&format!("{base}x/1"), b"other"))
        .await
        .unwrap();
    let payloads = |rows: Vec<offline_store::StoredMessage>| -> Vec<String> {
        rows.into_iter()
            .map(|r| String::from_utf8(r.payload).unwrap())
            .collect()
    };

    let all = store
        .fetch_matching(&format!("{base}/#"), FetchOptions::default())
        .await
        .unwrap();
    assert_eq!(
        payloads(all),
        ["a", "b", "c", "d", "e"],
        "oldest first across topics"
    );

    let one_level = store
        .fetch_matching(&format!("{base}/+"), FetchOptions::default())
        .await
        .unwrap();
    assert_eq!(payloads(one_level), ["a", "c", "d"]);

    let newest2 = store
        .fetch_matching(
            &format!("{base}/#"),
            FetchOptions {
                limit: Some(2),
                since_ms: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(payloads(newest2), ["d", "e"], "limit applies across topics");

    // A filter whose first level is a wildcard goes through the list of first levels.
    let rest = base.split_once('/').unwrap().1;
    let rooted = store
        .fetch_matching(&format!("+/{rest}/2/#"), FetchOptions::default())
        .await
        .unwrap();
    assert_eq!(payloads(rooted), ["b", "e"]);

    let mut topics = store.topics_matching(&format!("{base}/#")).await.unwrap();
    topics.sort();
    assert_eq!(
        topics,
        [
            format!("{base}/1"),
            format!("{base}/2/x"),
            format!("{base}/2/y/z"),
            format!("{base}/3")
        ]
    );
    // The index is a side table: mqtt_msg itself only has the messages.
    let index_rows = admin()
        .await
        .query_unpaged(
            "SELECT topic FROM mqtt.mqtt_msg_topic_index WHERE root = 'test' AND bucket = ?",
            (offline_store::index_keys::bucket_of("wild"),),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows_num();
    assert!(index_rows >= 5);
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_ttl_is_read_back() {
    let store = connect().await;
    let topic = unique_topic("ttl_read");
    let _cleanup = Cleanup::topics(&[&topic]);
    let mut with_ttl = message(&topic, b"expires");
    with_ttl.ttl_secs = Some(600);
    store.store(with_ttl).await.unwrap();
    store.store(message(&topic, b"stays")).await.unwrap();
    let rows = store.fetch(&topic, FetchOptions::default()).await.unwrap();
    let ttl = rows[0].ttl_secs.expect("row written with a TTL");
    assert!((590..=600).contains(&ttl), "{ttl}");
    assert_eq!(rows[1].ttl_secs, None);
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_writes_survive_a_reconfiguration() {
    // The old store cannot reach Cassandra, so its writes wait in the buffer...
    let old = offline_store::Store::start(StoreConfig {
        contact_points: vec!["127.0.0.1:1".into()],
        ..config()
    })
    .unwrap();
    let topic = unique_topic("handover");
    let _cleanup = Cleanup::topics(&[&topic]);
    for i in 0..3 {
        old.submit_store(message(&topic, format!("{i}").as_bytes()))
            .unwrap();
    }
    let (report, handover) = old.shutdown_with_handover(Duration::from_millis(50)).await;
    assert_eq!((report.abandoned, handover.len()), (0, 3));
    let s = old.stats();
    assert_eq!((s.handed_over, s.failed), (3, 0));
    assert!(s.is_balanced(), "{s:?}");

    // ...and the store built from the corrected config writes them.
    let new = connect().await;
    assert_eq!(new.adopt(handover), 0);
    new.flush(scaled(Duration::from_secs(10))).await.unwrap();
    let rows = new.fetch(&topic, FetchOptions::default()).await.unwrap();
    assert_eq!(rows.len(), 3);
    new.shutdown(scaled(Duration::from_secs(5))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auto_reconnect_the_first_failure_is_final() {
    let store = offline_store::Store::start(StoreConfig {
        contact_points: vec!["127.0.0.1:1".into()],
        auto_reconnect: false,
        ..config()
    })
    .unwrap();
    let err = store
        .wait_connected(scaled(Duration::from_secs(10)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "not_connected");
    assert!(
        matches!(store.state(), ConnState::Error(_)),
        "{:?}",
        store.state()
    );
    store.shutdown(Duration::ZERO).await;
}

/// Issue "prove it": 100,000 trials where the delete is issued before its insert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_acks_before_their_inserts_leave_no_row() {
    let store = connect_with(StoreConfig {
        buffer_capacity: 250_000,
        ..config()
    })
    .await;
    let topics: Vec<_> = (0..100).map(|_| unique_topic("ack_first")).collect();
    let _cleanup = Cleanup::topics(&topics);
    let msgs: Vec<_> = (0..100_000)
        .map(|i| message(&topics[i % topics.len()], b"x"))
        .collect();
    for m in &msgs {
        store.submit_delete(&m.topic, m.msgid).unwrap();
        store.submit_store(m.clone()).unwrap();
    }
    store.flush(scaled(Duration::from_secs(300))).await.unwrap();
    let s = store.stats();
    assert_eq!((s.written, s.failed, s.dropped), (200_000, 0, 0), "{s:?}");
    let mut left = 0;
    for t in &topics {
        left += store.fetch(t, FetchOptions::default()).await.unwrap().len();
    }
    assert_eq!(
        left, 0,
        "rows resurrected by inserts that came after their deletes"
    );
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_and_purge_a_topic() {
    let store = connect().await;
    let topic = unique_topic("purge");
    let _cleanup = Cleanup::topics(&[&topic]);
    for i in 0..5 {
        store
            .store(message(&topic, format!("{i}").as_bytes()))
            .await
            .unwrap();
    }
    assert_eq!(store.count(&topic).await.unwrap(), 5);
    assert_eq!(store.purge(&topic).await.unwrap(), 5);
    assert_eq!(store.count(&topic).await.unwrap(), 0);
    // Later messages are stored again.
    store.store(message(&topic, b"after")).await.unwrap();
    assert_eq!(store.count(&topic).await.unwrap(), 1);
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

/// Messages published `age` ago and later, one every `step_us`, on one topic.
fn published_since(
    topic: &str,
    start_us: u64,
    step_us: u64,
    n: u64,
) -> Vec<offline_store::Message> {
    (0..n)
        .map(|i| {
            let us = start_us + i * step_us;
            let mut m = message(topic, format!("old{i}").as_bytes());
            m.msgid = MsgId::new(us, 0x00AB_CDEF_0123, (i & 0xFFFF) as u16);
            m.arrived_ms = (us / 1000) as i64;
            m
        })
        .collect()
}

/// `n` messages on `topic` published an hour ago, one a second, written by a store without
/// the floor, so a test starts beside stored history. Their writes are late: they drop the
/// topic's floor for half a lag (also with the floor off), so that lag is short here.
async fn stored_hour_old_history(topic: &str, n: u64) -> Vec<offline_store::Message> {
    let hour_ago_us = (now_ms() - 3_600_000) as u64 * 1000;
    let old = published_since(topic, hour_ago_us, 1_000_000, n);
    let history = connect_with(StoreConfig {
        replay_floor: false,
        request_timeout: Duration::from_secs(1),
        replay_floor_lag: Duration::from_secs(3),
        ..config()
    })
    .await;
    for m in &old {
        history.submit_store(m.clone()).unwrap();
    }
    history
        .flush(scaled(Duration::from_secs(60)))
        .await
        .unwrap();
    history.shutdown(scaled(Duration::from_secs(5))).await;
    // The floor resets of those late writes carry a timestamp half a lag ahead: a floor a
    // scan writes before then loses to them.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    old
}

/// Issue "prove it" §2: every ack leaves a tombstone, and Cassandra aborts a read that walks
/// more than 100,000 of them (`tombstone_failure_threshold`). A topic drained by a
/// subscriber for a day (200,000 messages acked in order) plus 100 waiting must still
/// replay: without a floor through slices, with one in a single short read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_survives_two_hundred_thousand_acked_rows() {
    let topic = unique_topic("tombstones");
    let _cleanup = Cleanup::topics(&[&topic]);
    let day_ago_us = (now_ms() - 86_400_000) as u64 * 1000;
    let acked = published_since(&topic, day_ago_us, 400_000, 200_000);
    let live: Vec<_> = (0..100)
        .map(|i| message(&topic, format!("live{i}").as_bytes()))
        .collect();
    let want: Vec<_> = live.iter().map(|m| m.payload.clone()).collect();
    // A day of history, written in seconds by a store without the floor (its writes all
    // count as late, landing a day after their publish: each batch drops the floor for half
    // a lag, the shortest lag here).
    let history = connect_with(StoreConfig {
        buffer_capacity: 250_000,
        replay_floor: false,
        replay_floor_lag: Duration::from_secs(11),
        ..config()
    })
    .await;
    for m in &acked {
        history.submit_store(m.clone()).unwrap();
    }
    history
        .flush(scaled(Duration::from_secs(300)))
        .await
        .unwrap();

    let store = connect_with(StoreConfig {
        buffer_capacity: 250_000,
        ..config()
    })
    .await;
    for m in &acked {
        store.submit_delete(&m.topic, m.msgid).unwrap();
    }
    for m in &live {
        store.submit_store(m.clone()).unwrap();
    }
    store.flush(scaled(Duration::from_secs(300))).await.unwrap();
    let s = store.stats();
    assert_eq!((s.written, s.failed, s.dropped), (200_100, 0, 0), "{s:?}");

    // Without a floor the plain read is aborted; the slices still return every live row.
    let started = Instant::now();
    let rows = history
        .fetch(&topic, FetchOptions::default())
        .await
        .unwrap_or_else(|e| panic!("replay over 200,000 tombstones failed: {e}"));
    let sliced = started.elapsed();
    let got: Vec<_> = rows.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(got, want);
    assert_eq!(history.stats().sliced_reads, 1, "{:?}", history.stats());
    history.shutdown(scaled(Duration::from_secs(5))).await;

    // The deletes moved the floor up in the background; once it passed the acked rows a
    // replay is one read that walks no tombstone of theirs.
    let last_acked = acked.last().unwrap().msgid.to_string();
    let admin = admin().await;
    let floor_passed = || async {
        floor_of(&admin, &topic)
            .await
            .is_some_and(|f| f > last_acked)
    };
    // Generous: on a busy machine the scan's slices through 200,000 tombstones can each
    // take seconds (it still passed in 13 s alone).
    let deadline = Instant::now() + scaled(Duration::from_secs(300));
    while !floor_passed().await {
        assert!(
            Instant::now() < deadline,
            "floor never passed the acked rows: {:?}",
            store.stats()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = Instant::now();
    let rows = store.fetch(&topic, FetchOptions::default()).await.unwrap();
    let floored = started.elapsed();
    let got: Vec<_> = rows.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(got, want);
    assert_eq!(store.stats().sliced_reads, 0, "{:?}", store.stats());
    assert_eq!(store.count(&topic).await.unwrap(), 100);
    eprintln!(
        "replay of 100 live rows beside 200,000 tombstones: sliced {sliced:?}, from the floor {floored:?}"
    );
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

/// The floor must never hide a message: a write that lands long after its publish (held
/// in the buffer through an outage) below a floor resets that floor first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_write_below_the_floor_is_still_replayed() {
    let topic = unique_topic("late");
    let _cleanup = Cleanup::topics(&[&topic]);
    let old = stored_hour_old_history(&topic, 1_100).await;

    let store = connect_with(StoreConfig {
        request_timeout: Duration::from_secs(1),
        replay_floor_lag: Duration::from_secs(3),
        ..config()
    })
    .await;
    for m in &old[..600] {
        store.submit_delete(&m.topic, m.msgid).unwrap();
    }
    store.flush(scaled(Duration::from_secs(60))).await.unwrap();
    let admin = admin().await;
    let read_floor = || floor_of(&admin, &topic);
    let deadline = Instant::now() + scaled(Duration::from_secs(60));
    while read_floor().await.as_deref() != Some(old[600].msgid.as_str()) {
        assert!(Instant::now() < deadline, "floor: {:?}", read_floor().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Published 50 minutes ago, between acked rows: below the floor.
    let mut late = message(&topic, b"late");
    late.msgid = MsgId::new(old[300].msgid.timestamp_us() + 1, 0x00AB_CDEF_0999, 1);
    late.arrived_ms = (late.msgid.timestamp_us() / 1000) as i64;
    // Scans counted from before the late write: its reset schedules one of its own.
    let scans = store.stats().floor_scans;
    store.store(late.clone()).await.unwrap();
    assert_eq!(store.stats().floor_resets, 1);
    let replayed = |rows: Vec<offline_store::StoredMessage>| {
        rows.iter().any(|r| r.msgid == late.msgid.as_str())
    };
    assert!(replayed(
        store.fetch(&topic, FetchOptions::default()).await.unwrap()
    ));

    // More acks start more scans, during and after the reset's shadow: none hides it.
    for m in &old[600..] {
        store.submit_delete(&m.topic, m.msgid).unwrap();
    }
    store.flush(scaled(Duration::from_secs(60))).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deadline = Instant::now() + scaled(Duration::from_secs(60));
    while store.stats().floor_scans == scans {
        assert!(Instant::now() < deadline, "no scan after the late write");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = store.fetch(&topic, FetchOptions::default()).await.unwrap();
    assert!(
        replayed(rows.clone()),
        "late message hidden; floor {:?}",
        read_floor().await
    );
    assert_eq!(rows.len(), 1);
    if let Some(f) = read_floor().await {
        assert!(
            f.as_str() <= late.msgid.as_str(),
            "floor {f} above the late message"
        );
    }
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

/// Issue 12 §6 run 1: a late write resets its topic's floor, and no more acks may come.
/// The floor must come back by itself once the reset can no longer be overwritten (half a
/// lag), not after another 500 acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_floor_is_rebuilt_without_more_acks() {
    let topic = unique_topic("rebuild");
    let _cleanup = Cleanup::topics(&[&topic]);
    let old = stored_hour_old_history(&topic, 1_000).await;

    let store = connect_with(StoreConfig {
        request_timeout: Duration::from_secs(1),
        replay_floor_lag: Duration::from_secs(3),
        ..config()
    })
    .await;
    // Exactly 500 acks: the scan they start sees all of them.
    for m in &old[..500] {
        store.submit_delete(&m.topic, m.msgid).unwrap();
    }
    store.flush(scaled(Duration::from_secs(60))).await.unwrap();
    let admin = admin().await;
    let read_floor = || floor_of(&admin, &topic);
    let floor = Some(old[500].msgid.to_string());
    let deadline = Instant::now() + scaled(Duration::from_secs(60));
    while read_floor().await != floor {
        assert!(Instant::now() < deadline, "floor: {:?}", read_floor().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Published 50 minutes ago, above the floor: late, so its write resets the floor.
    let scans = store.stats().floor_scans;
    let mut late = message(&topic, b"late");
    late.msgid = MsgId::new(old[600].msgid.timestamp_us() + 1, 0x00AB_CDEF_0999, 1);
    late.arrived_ms = (late.msgid.timestamp_us() / 1000) as i64;
    store.store(late.clone()).await.unwrap();
    assert_eq!(store.stats().floor_resets, 1);

    // No more acks: the floor is back at the oldest live row all the same.
    let deadline = Instant::now() + scaled(Duration::from_secs(60));
    while read_floor().await != floor {
        assert!(
            Instant::now() < deadline,
            "floor not rebuilt after the reset: {:?}, {:?}",
            read_floor().await,
            store.stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(store.stats().floor_scans > scans, "{:?}", store.stats());
    let rows = store.fetch(&topic, FetchOptions::default()).await.unwrap();
    assert_eq!(rows.len(), 501);
    assert!(rows.iter().any(|r| r.msgid == late.msgid.as_str()));
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

/// Issue 12 §6 run 3: the floor stopped at a row whose ack landed after the scan that 500
/// acks started, and nothing scanned again until 500 more acks. Acks that follow a scan
/// get one more once they stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_catches_up_with_acks_after_its_last_scan() {
    let topic = unique_topic("settle");
    let _cleanup = Cleanup::topics(&[&topic]);
    let old = stored_hour_old_history(&topic, 700).await;

    let store = connect_with(config()).await;
    let admin = admin().await;
    let read_floor = || floor_of(&admin, &topic);
    let wait_for_floor = |want: String| {
        let (read_floor, store) = (&read_floor, &store);
        async move {
            let deadline = Instant::now() + scaled(Duration::from_secs(60));
            while read_floor().await.as_deref() != Some(want.as_str()) {
                assert!(
                    Instant::now() < deadline,
                    "floor {:?}, expected {want}; {:?}",
                    read_floor().await,
                    store.stats()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // 500 acks start a scan that sees them all.
    for m in &old[..500] {
        store.submit_delete(&m.topic, m.msgid).unwrap();
    }
    store.flush(scaled(Duration::from_secs(60))).await.unwrap();
    wait_for_floor(old[500].msgid.to_string()).await;
    // 100 more, and then none.
    for m in &old[500..600] {
        store.submit_delete(&m.topic, m.msgid).unwrap();
    }
    store.flush(scaled(Duration::from_secs(60))).await.unwrap();
    wait_for_floor(old[600].msgid.to_string()).await;
    assert_eq!(store.count(&topic).await.unwrap(), 100);
    store.shutdown(scaled(Duration::from_secs(5))).await;
}
