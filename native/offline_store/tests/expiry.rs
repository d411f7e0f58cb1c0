//! Expiry against the real Cassandra: a publisher's expiry is clamped to what Cassandra
//! accepts (never failing the row or its batch), and counts from the publish, so a message
//! that waited is written with the time it has left, or not at all.

mod common;

use std::time::Duration;

use common::*;
use offline_store::{FetchOptions, Store};

/// Cassandra's largest TTL (20 years), on 5.0 the only limit.
const MAX_TTL: i32 = 630_720_000;

/// The largest TTL the test Cassandra takes now, as the store computes it: 20 years on 5.0+
/// with `storage_compatibility_mode: NONE`; otherwise (4.x, and 5.0 in its default
/// `CASSANDRA_4` mode, also when the setting is unset) expiring a day before 2038-01-19T03:14:06Z.
async fn ttl_limit_now() -> i32 {
    let admin = admin().await;
    let text = |cql: &'static str| {
        let admin = &admin;
        async move {
            admin
                .query_unpaged(cql, ())
                .await
                .unwrap()
                .into_rows_result()
                .unwrap()
                .maybe_first_row::<(Option<String>,)>()
                .unwrap()
                .and_then(|(v,)| v)
                .unwrap_or_default()
        }
    };
    let version = text("SELECT release_version FROM system.local").await;
    // No such setting before 5.0: no row, the old limit.
    let mode =
        text("SELECT value FROM system_views.settings WHERE name = 'storage_compatibility_mode'")
            .await;
    let major: u32 = version.split('.').next().unwrap().parse().unwrap();
    if major >= 5 && mode == "NONE" {
        MAX_TTL
    } else {
        MAX_TTL.min((2_147_483_646 - 86_400 - now_ms() / 1000) as i32)
    }
}

/// Measured on a real broker before the clamp: 11 messages to one topic, one with expiry
/// 0xFFFFFFFF, and Cassandra refused the batch ("ttl is too large"), losing its neighbours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_expiry_is_clamped_and_its_neighbours_are_stored() {
    let topic = unique_topic("ttl_hostile");
    let _cleanup = Cleanup::topics(&[&topic]);
    // Submitted before the session is up, so the eleven go out together, as after an outage.
    let store = Store::start(config()).unwrap();
    let mut sent = Vec::new();
    for i in 0..11u32 {
        let mut m = message(&topic, format!("m{i}").as_bytes());
        m.ttl_secs = match i {
            3 => Some(MAX_TTL as u32),
            5 => Some(u32::MAX),
            7 => Some(3600),
            _ => None,
        };
        sent.push(m.payload.clone());
        store.submit_store(m).unwrap();
    }
    store
        .wait_connected(scaled(Duration::from_secs(20)))
        .await
        .unwrap();
    store.flush(scaled(Duration::from_secs(20))).await.unwrap();
    let s = store.stats();
    assert_eq!((s.written, s.failed, s.expired), (11, 0, 0), "{s:?}");
    let rows = store.fetch(&topic, FetchOptions::default()).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(),
        sent
    );
    let limit = ttl_limit_now().await;
    // Cassandra's own maximum, refused before 5.0 (and by 5.0 in its 4.x compatibility
    // mode) as expiring after 2038-01-19: stored with the TTL that version takes.
    for (i, asked) in [(3, "630,720,000 s"), (5, "0xFFFFFFFF s")] {
        let got = rows[i].ttl_secs.expect("clamped, not dropped");
        // Cassandra and the test read the clock at different moments: a second either way.
        assert!(
            (limit - 60..=limit + 1).contains(&got),
            "{asked}: {got} vs {limit}"
        );
    }
    let hour = rows[7].ttl_secs.unwrap();
    assert!((3540..=3600).contains(&hour), "{hour}");
    assert_eq!(rows[0].ttl_secs, None);
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

/// A message published 30 s ago with a 600 s expiry has 570 s left; one published 10 s ago
/// with a 5 s expiry is not written at all (counted `expired`, nothing to replay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_counts_from_the_publish() {
    let store = connect().await;
    let topic = unique_topic("ttl_from_publish");
    let _cleanup = Cleanup::topics(&[&topic]);
    let mut waited = message(&topic, b"waited 30 s");
    waited.arrived_ms -= 30_000;
    waited.ttl_secs = Some(600);
    let mut gone = message(&topic, b"expired while waiting");
    gone.arrived_ms -= 10_000;
    gone.ttl_secs = Some(5);
    let fresh = message(&topic, b"no expiry");
    store.store(waited).await.unwrap();
    store.store(gone).await.unwrap();
    store.store(fresh).await.unwrap();
    let s = store.stats();
    assert_eq!((s.written, s.expired, s.failed), (2, 1, 0), "{s:?}");
    assert!(s.is_balanced(), "{s:?}");
    let rows = store.fetch(&topic, FetchOptions::default()).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].payload, b"waited 30 s");
    let left = rows[0].ttl_secs.unwrap();
    assert!((560..=570).contains(&left), "{left}");
    assert_eq!(rows[1].ttl_secs, None);
    store.shutdown(scaled(Duration::from_secs(5))).await;
}
