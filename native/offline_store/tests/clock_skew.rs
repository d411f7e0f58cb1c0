//! A node whose clock is off from Cassandra's moves no replay floor until it is back in
//! bounds (`max_clock_skew`, by default a quarter of `replay_floor_lag`). The skew is
//! injected (`Store::inject_clock_offset`, feature `fault_injection`): the test machine's
//! clock is Cassandra's. Needs the local Cassandra (test/cassandra/cassandra.sh start).

mod common;

use std::time::{Duration, Instant};

use common::*;
use offline_store::{Message, MsgId, Store, StoreConfig};

/// `n` messages of `topic` published an hour ago, one a second, written by a store
/// without the floor. Their late landing still resets the topic's floor half a lag ahead
/// (`lag`: the test store's, so that reset is long past when its scans run).
async fn hour_old_history(topic: &str, n: u64, lag: Duration) -> Vec<Message> {
    let start_us = (now_ms() - 3_600_000) as u64 * 1000;
    let old: Vec<Message> = (0..n)
        .map(|i| {
            let msgid = MsgId::new(start_us + i * 1_000_000, 0x00AB_CDEF_0777, i as u16);
            Message {
                arrived_ms: (msgid.timestamp_us() / 1000) as i64,
                msgid,
                ..message(topic, format!("old{i}").as_bytes())
            }
        })
        .collect();
    let history = connect_with(StoreConfig {
        replay_floor: false,
        request_timeout: Duration::from_secs(1),
        replay_floor_lag: lag,
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
    old
}

async fn wait_for(what: &str, store: &Store, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + scaled(Duration::from_secs(60));
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: {:?}", store.stats());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_clock_holds_the_floors_until_it_is_back() {
    let topic = unique_topic("skew");
    let _cleanup = Cleanup::topics(&[&topic]);
    let lag = Duration::from_secs(4);
    let old = hour_old_history(&topic, 600, lag).await;
    let store = connect_with(StoreConfig {
        request_timeout: Duration::from_secs(1),
        replay_floor_lag: lag,
        clock_check_interval: Duration::from_millis(200),
        ..config()
    })
    .await;
    assert_eq!(store.config().clock_skew_limit(), Duration::from_secs(1));

    // Ahead by 10 s (from the same machine's clock): skewed, and measured as such.
    store.inject_clock_offset(10_000);
    wait_for("never skewed", &store, async || {
        store.stats().clock_skewed == 1
    })
    .await;
    let s = store.stats();
    assert!(
        (9_000..=11_000).contains(&s.clock_offset_ms),
        "offset {} ms",
        s.clock_offset_ms
    );
    assert_eq!(s.clock_skews, 1);

    // 500 acks would move the floor to old[500] at once (tests/live.rs); skewed, it holds.
    for m in &old[..500] {
        store.submit_delete(&m.topic, m.msgid).unwrap();
    }
    store.flush(scaled(Duration::from_secs(60))).await.unwrap();
    let admin = admin().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        floor_of(&admin, &topic).await,
        None,
        "a skewed node moved a floor"
    );
    assert_eq!(store.stats().floor_scans, 0);

    // Back in bounds: the held scan is tried again and the floor catches up.
    store.inject_clock_offset(0);
    wait_for("still skewed", &store, async || {
        store.stats().clock_skewed == 0
    })
    .await;
    let want = old[500].msgid.to_string();
    wait_for(
        &format!("floor never moved to {want} after the skew"),
        &store,
        async || {
            let f = floor_of(&admin, &topic).await;
            f.as_deref() == Some(want.as_str())
        },
    )
    .await;
    let s = store.stats();
    assert!(
        s.clock_offset_ms.abs() < 1_000,
        "offset {} ms",
        s.clock_offset_ms
    );
    assert_eq!(s.clock_skews, 1);

    // Behind counts the same.
    store.inject_clock_offset(-5_000);
    wait_for("behind, never skewed", &store, async || {
        store.stats().clock_skewed == 1
    })
    .await;
    assert_eq!(store.stats().clock_skews, 2);
    store.shutdown(scaled(Duration::from_secs(5))).await;
}
