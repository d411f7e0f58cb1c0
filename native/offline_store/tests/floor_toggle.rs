//! Floors across stores (standing for EMQX nodes or restarts): `replay_floor` turned off and
//! on again, where floors kept in `mqtt_msg_floor` from when it was on must not hide a
//! message written late while it was off (docs/tombstones.md, "Turning the floor off and
//! on"); and a scan hidden by another store's reset, which must come back without it.
//! Needs the local Cassandra.

mod common;

use std::time::{Duration, Instant};

use common::*;
use offline_store::{FetchOptions, Message, MsgId, StoreConfig};

/// A short lag, so that floors move within the test.
fn with_floor(on: bool) -> StoreConfig {
    StoreConfig {
        replay_floor: on,
        request_timeout: Duration::from_secs(1),
        replay_floor_lag: Duration::from_secs(3),
        ..config()
    }
}

/// `n` messages published an hour ago, one a second.
fn hour_old(topic: &str, n: u64) -> Vec<Message> {
    let hour_ago_us = (now_ms() - 3_600_000) as u64 * 1000;
    (0..n)
        .map(|i| {
            let us = hour_ago_us + i * 1_000_000;
            let mut m = message(topic, format!("old{i}").as_bytes());
            m.msgid = MsgId::new(us, 0x00AB_CDEF_0123, i as u16);
            m.arrived_ms = (us / 1000) as i64;
            m
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_written_late_while_the_floor_was_off_is_replayed_when_it_is_on_again() {
    let topic = unique_topic("floor_toggle");
    let _cleanup = Cleanup::topics(&[&topic]);
    let old = hour_old(&topic, 1_100);
    let admin = admin().await;
    let read_floor = || floor_of(&admin, &topic);

    // On: history stored, 600 acked, the floor moves up to the oldest live row.
    let on = connect_with(with_floor(true)).await;
    for m in &old {
        on.submit_store(m.clone()).unwrap();
    }
    on.flush(scaled(Duration::from_secs(60))).await.unwrap();
    for m in &old[..600] {
        on.submit_delete(&m.topic, m.msgid).unwrap();
    }
    on.flush(scaled(Duration::from_secs(60))).await.unwrap();
    let deadline = Instant::now() + scaled(Duration::from_secs(60));
    while read_floor().await.as_deref() != Some(old[600].msgid.as_str()) {
        assert!(Instant::now() < deadline, "floor: {:?}", read_floor().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    on.shutdown(scaled(Duration::from_secs(5))).await;

    // Off: a message published 50 minutes ago (below the floor) lands now, e.g. buffered
    // through an outage. The store still drops the topic's floor before writing it.
    let off = connect_with(with_floor(false)).await;
    let mut late = message(&topic, b"late");
    late.msgid = MsgId::new(old[300].msgid.timestamp_us() + 1, 0x00AB_CDEF_0999, 1);
    late.arrived_ms = (late.msgid.timestamp_us() / 1000) as i64;
    off.store(late.clone()).await.unwrap();
    assert_eq!(off.stats().floor_resets, 1, "{:?}", off.stats());
    assert_eq!(
        read_floor().await,
        None,
        "the floor outlived the late write"
    );
    off.shutdown(scaled(Duration::from_secs(5))).await;

    // On again: the late message is replayed, also after more acks move the floor again.
    let again = connect_with(with_floor(true)).await;
    let has_late =
        |rows: &[offline_store::StoredMessage]| rows.iter().any(|r| r.msgid == late.msgid.as_str());
    let rows = again.fetch(&topic, FetchOptions::default()).await.unwrap();
    assert!(has_late(&rows), "late message hidden by an old floor");
    assert_eq!(rows.len(), 501);
    for m in &old[600..] {
        again.submit_delete(&m.topic, m.msgid).unwrap();
    }
    again.flush(scaled(Duration::from_secs(60))).await.unwrap();
    let deadline = Instant::now() + scaled(Duration::from_secs(60));
    while again.stats().floor_scans == 0 {
        assert!(Instant::now() < deadline, "no scan: {:?}", again.stats());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = again.fetch(&topic, FetchOptions::default()).await.unwrap();
    assert!(
        has_late(&rows),
        "late message hidden; floor {:?}",
        read_floor().await
    );
    assert_eq!(rows.len(), 1);
    again.shutdown(scaled(Duration::from_secs(5))).await;
}

/// Store A writes a late message (its topic's floor is reset with a timestamp half a lag
/// ahead) and stops at once, before it could rebuild the floor. Store B's acks then start a
/// scan whose floor the reset hides; B finds that out and scans again once the reset has
/// passed, with no more acks. (Before: the floor stayed unset until the topic's next 500
/// acks; seen as "floor never passed the acked rows" in live.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_floor_hidden_by_another_stores_reset_is_rebuilt_without_more_acks() {
    let topic = unique_topic("floor_shadowed");
    let _cleanup = Cleanup::topics(&[&topic]);
    let old = hour_old(&topic, 501);
    let admin = admin().await;

    let a = connect_with(with_floor(true)).await;
    a.store(old[500].clone()).await.unwrap();
    assert_eq!(a.stats().floor_resets, 1, "{:?}", a.stats());
    a.shutdown(scaled(Duration::from_secs(5))).await;

    // 500 acks of rows below it (never stored: the tombstones are what counts): one scan.
    let b = connect_with(with_floor(true)).await;
    for m in &old[..500] {
        b.submit_delete(&m.topic, m.msgid).unwrap();
    }
    b.flush(scaled(Duration::from_secs(60))).await.unwrap();
    let deadline = Instant::now() + scaled(Duration::from_secs(60));
    while floor_of(&admin, &topic).await.as_deref() != Some(old[500].msgid.as_str()) {
        assert!(
            Instant::now() < deadline,
            "floor {:?}: {:?}",
            floor_of(&admin, &topic).await,
            b.stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.shutdown(scaled(Duration::from_secs(5))).await;
}
