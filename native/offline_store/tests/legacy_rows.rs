//! Rows other writers left in `mqtt_msg`: those EMQX 4.x's "offline messages to Cassandra"
//! action wrote (a plain INSERT without `USING TIMESTAMP`, so Cassandra stamps each row
//! when it lands, after the publish time inside its msgid), and rows whose msgid is not
//! EMQX's at all. Needs the local Cassandra (test/cassandra/cassandra.sh start).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use offline_store::{FetchOptions, StoreEvent, StoredMessage};
use scylla::client::session::Session;
use scylla::value::CqlTimestamp;

/// The insert of EMQX 4.x's action (`emqx_backend_cassa_actions:insert_message/4`): no
/// client timestamp, no TTL, `retain` as 0/1, `arrived` the publish time in ms.
const INSERT_4X: &str = "INSERT INTO mqtt.mqtt_msg (topic, msgid, sender, qos, payload, arrived, retain) \
     VALUES (?, ?, ?, ?, ?, ?, ?)";

async fn insert_as_4x(admin: &Session, topic: &str, msgid: &str, arrived_ms: i64, payload: &str) {
    admin
        .query_unpaged(
            INSERT_4X,
            (
                topic,
                msgid,
                "client-4x",
                1i32,
                payload,
                CqlTimestamp(arrived_ms),
                0i32,
            ),
        )
        .await
        .unwrap();
}

async fn write_time(admin: &Session, topic: &str, msgid: &str) -> Option<i64> {
    admin
        .query_unpaged(
            "SELECT WRITETIME(payload) FROM mqtt.mqtt_msg WHERE topic = ? AND msgid = ?",
            (topic, msgid),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .maybe_first_row::<(Option<i64>,)>()
        .unwrap()
        .and_then(|(w,)| w)
}

fn payloads(rows: &[StoredMessage]) -> Vec<String> {
    rows.iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect()
}

/// 4.x rows between our own: replayed in publish order, and each ack (with the write time
/// replay read) deletes it. The delete our own rows get (msgid time + 1 µs) would not: the
/// 4.x row was stamped later, and Cassandra keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_emqx_4_wrote_are_replayed_in_order_and_removed_by_their_ack() {
    let topic = unique_topic("legacy");
    let _cleanup = Cleanup::topics(&[&topic]);
    let store = connect().await;
    let admin = admin().await;

    // Publish order: ours, 4.x, ours, 4.x, ours. Every id is taken first, so each 4.x row
    // lands after its publish, as it did through the 4.x action's async insert.
    let msgs: Vec<_> = (0..5)
        .map(|i| message(&topic, format!("m{i}").as_bytes()))
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    for (i, m) in msgs.iter().enumerate() {
        if i % 2 == 1 {
            let text = String::from_utf8(m.payload.clone()).unwrap();
            insert_as_4x(&admin, &topic, m.msgid.as_str(), m.arrived_ms, &text).await;
        } else {
            store.store(m.clone()).await.unwrap();
        }
    }
    let legacy = &msgs[1];
    let stamped = write_time(&admin, &topic, legacy.msgid.as_str())
        .await
        .unwrap();
    assert!(
        stamped > legacy.msgid.timestamp_us() as i64 + 1,
        "the premise: Cassandra stamped the 4.x row after its publish ({stamped})"
    );

    let rows = store.fetch(&topic, FetchOptions::default()).await.unwrap();
    assert_eq!(
        payloads(&rows),
        ["m0", "m1", "m2", "m3", "m4"],
        "publish order"
    );
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.msgid, msgs[i].msgid.as_str());
        // Only the 4.x rows carry a write time: ours were written at their msgid's.
        assert_eq!(r.written_us.is_some(), i % 2 == 1, "{r:?}");
    }
    assert_eq!(rows[1].written_us, Some(stamped));
    assert_eq!(
        (rows[1].sender.as_str(), rows[1].qos, rows[1].retain),
        ("client-4x", 1, false)
    );

    // The delete of our own rows does not remove a 4.x row.
    store.delete(&topic, legacy.msgid).await.unwrap();
    assert_eq!(
        write_time(&admin, &topic, legacy.msgid.as_str()).await,
        Some(stamped),
        "a delete at the msgid's time + 1 µs lost to the later write"
    );

    // Acked as replayed: every row goes.
    for (r, m) in rows.iter().zip(&msgs) {
        store
            .delete_written(&topic, m.msgid, r.written_us)
            .await
            .unwrap();
    }
    let left = store.fetch(&topic, FetchOptions::default()).await.unwrap();
    assert!(left.is_empty(), "{:?}", payloads(&left));
    assert_eq!(store.count(&topic).await.unwrap(), 0);
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

/// Rows whose msgid is not the 32 upper-case hex digits EMQX writes cannot be replayed
/// (an EMQX message id is that GUID) nor deleted by an ack (a delete goes to the canonical
/// text): they are left out, counted, reported once per topic, and stay stored. The
/// messages beside them replay as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_with_a_msgid_emqx_never_writes_are_left_out_counted_and_kept() {
    let topic = unique_topic("unreadable");
    let _cleanup = Cleanup::topics(&[&topic]);
    let store = connect().await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    store.set_event_sink(Box::new(move |e| {
        if let StoreEvent::UnreadableRows { .. } = e {
            sink.lock().unwrap().push(e);
        }
    }));
    let admin = admin().await;

    let ours = message(&topic, b"ours");
    store.store(ours.clone()).await.unwrap();
    let lower = next_msgid().as_str().to_ascii_lowercase();
    for (id, payload) in [("msg-17", "hand-made"), (lower.as_str(), "lower case")] {
        insert_as_4x(&admin, &topic, id, now_ms(), payload).await;
    }

    for _ in 0..2 {
        let rows = store.fetch(&topic, FetchOptions::default()).await.unwrap();
        assert_eq!(payloads(&rows), ["ours"]);
    }
    assert_eq!(store.stats().unreadable_rows, 4, "two rows, two reads");
    let seen = events.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "once per topic: {seen:?}");
    let StoreEvent::UnreadableRows {
        topic: t, count, ..
    } = &seen[0]
    else {
        unreachable!()
    };
    assert_eq!((t.as_str(), *count), (topic.as_str(), 2));

    // Never lost: both are still there, untouched.
    for id in ["msg-17", lower.as_str()] {
        assert!(write_time(&admin, &topic, id).await.is_some(), "{id} gone");
    }
    store.shutdown(scaled(Duration::from_secs(5))).await;
}
