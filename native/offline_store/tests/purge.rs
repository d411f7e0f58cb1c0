//! The operators' `count` and `purge` on a topic past Cassandra's tombstone limit: a topic
//! acked for a day holds more tombstones than one read may walk (100,000), and those are
//! the topics an operator wants to count and purge. Needs the local Cassandra.

mod common;

use std::time::Duration;

use common::*;
use offline_store::{FetchOptions, MsgId, StoreConfig};

/// More acks than `tombstone_failure_threshold` (100,000), spread over the last day.
const ACKED: u64 = 105_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_and_purge_work_past_the_tombstone_limit() {
    let topic = unique_topic("purge_tombstones");
    let _cleanup = Cleanup::topics(&[&topic]);
    // No floor: nothing lets a read start above the tombstones.
    let store = connect_with(StoreConfig {
        buffer_capacity: 150_000,
        replay_floor: false,
        ..config()
    })
    .await;
    // Acks of a day of messages (a delete needs no row to leave its tombstone).
    let day_ago_us = (now_ms() - 86_400_000) as u64 * 1000;
    for i in 0..ACKED {
        let msgid = MsgId::new(day_ago_us + i * 800_000, 0x00AB_CDEF_0123, i as u16);
        store.submit_delete(&topic, msgid).unwrap();
    }
    let live: Vec<_> = (0..5)
        .map(|i| message(&topic, format!("live{i}").as_bytes()))
        .collect();
    for m in &live {
        store.submit_store(m.clone()).unwrap();
    }
    store.flush(scaled(Duration::from_secs(300))).await.unwrap();
    let s = store.stats();
    assert_eq!((s.written, s.failed), (ACKED + 5, 0), "{s:?}");

    // The test is void unless a whole-partition count is aborted.
    let admin = admin().await;
    let whole = admin
        .query_unpaged(
            "SELECT count(*) FROM mqtt.mqtt_msg WHERE topic = ?",
            (&topic,),
        )
        .await;
    assert!(
        whole.is_err(),
        "Cassandra counted past its tombstone limit: test is void"
    );

    assert_eq!(store.count(&topic).await.unwrap(), 5);
    assert_eq!(store.purge(&topic).await.unwrap(), 5);
    assert_eq!(store.count(&topic).await.unwrap(), 0);
    assert!(
        store
            .fetch(&topic, FetchOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    // Published after the purge: kept.
    store.store(message(&topic, b"after")).await.unwrap();
    assert_eq!(store.count(&topic).await.unwrap(), 1);
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

/// The purge's tombstone carries Cassandra's time: rows written just before it (by this
/// node's clock, which agrees with Cassandra's here) are gone, and a message published a
/// few seconds after it by a broker whose clock is ahead (its write timestamp above the
/// purge's) is not swallowed when it lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_keeps_what_is_published_after_it() {
    let store = connect().await;
    let topic = unique_topic("purge_after");
    let _cleanup = Cleanup::topics(&[&topic]);
    for i in 0..3 {
        store
            .store(message(&topic, format!("{i}").as_bytes()))
            .await
            .unwrap();
    }
    assert_eq!(store.purge(&topic).await.unwrap(), 3);
    let mut ahead = message(&topic, b"from a clock 5 s ahead");
    let us = ahead.msgid.timestamp_us() + 5_000_000;
    ahead.msgid = MsgId::new(us, 0x00AB_CDEF_0124, 1);
    ahead.arrived_ms = (us / 1000) as i64;
    store.store(ahead).await.unwrap();
    let rows = store.fetch(&topic, FetchOptions::default()).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].payload, b"from a clock 5 s ahead");
    store.shutdown(scaled(Duration::from_secs(5))).await;
}
