//! The side tables (`mqtt_msg_topic_index`, `mqtt_msg_floor`) for a role that may not create
//! tables: a DBA creates them once, and the store must use them without ever sending a
//! CREATE (Cassandra checks the permission before `IF NOT EXISTS`). Needs the local
//! Cassandra (test/cassandra/cassandra.sh start), with its authorizer on.

mod common;

use std::time::{Duration, Instant};

use common::*;
use offline_store::{FetchOptions, MsgId, StoreConfig, StoreError, schema};
use scylla::client::session::Session;

const PASSWORD: &str = "side-tables-pw";

/// As root: a fresh keyspace with `mqtt_msg` (and the side tables when asked), and a
/// login role that may only read and write it.
async fn keyspace_for_a_role_without_create(ks: &str, role: &str, side_tables: bool) -> Session {
    let admin = admin().await;
    let run = |cql: String| run_cql(&admin, cql);
    run(format!("DROP KEYSPACE IF EXISTS {ks}")).await;
    run(format!(
        "CREATE KEYSPACE {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': '1'}}"
    ))
    .await;
    run(schema::create_table_cql(ks)).await;
    if side_tables {
        run(schema::create_index_table_cql(ks)).await;
        run(schema::create_floor_table_cql(ks)).await;
    }
    role_for_keyspace(&admin, ks, role, PASSWORD).await;
    admin
}

fn as_role(ks: &str, role: &str) -> StoreConfig {
    StoreConfig {
        keyspace: ks.into(),
        username: Some(role.into()),
        password: Some(PASSWORD.into()),
        topic_index: true,
        replay_floor: true,
        request_timeout: Duration::from_secs(1),
        replay_floor_lag: Duration::from_secs(3),
        ..config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn side_tables_a_dba_created_work_without_create_permission() {
    let (ks, role) = ("offline_test_dba_tables", "offline_test_no_create");
    let _cleanup = Cleanup::keyspace(ks).and_role(role);
    let admin = keyspace_for_a_role_without_create(ks, role, true).await;

    // The role really may not create: the same CREATE the store would send is refused.
    let role_session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(node())
        .user(role, PASSWORD)
        .build()
        .await
        .unwrap();
    let refused = role_session
        .query_unpaged(schema::create_floor_table_cql(ks), ())
        .await;
    assert!(refused.is_err(), "the role may create tables: test is void");

    // History published an hour ago, written as root without a floor (not late writes).
    let base = unique_topic("dba");
    let topic = format!("{base}/a");
    let other = format!("{base}/b");
    let hour_ago_us = (now_ms() - 3_600_000) as u64 * 1000;
    let old: Vec<_> = (0..510u64)
        .map(|i| {
            let us = hour_ago_us + i * 1_000_000;
            let mut m = message(&topic, format!("old{i}").as_bytes());
            m.msgid = MsgId::new(us, 0x00AB_CDEF_0123, (i & 0xFFFF) as u16);
            m.arrived_ms = (us / 1000) as i64;
            m
        })
        .collect();
    // Late writes: they drop the floor for half a lag, also with the floor off.
    let history = connect_with(StoreConfig {
        keyspace: ks.into(),
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

    // The store connects as the role with both side tables on: no index/floor_unavailable.
    let store = connect_with(as_role(ks, role)).await;
    store.store(message(&other, b"new")).await.unwrap();
    let wildcard = store
        .fetch_matching(&format!("{base}/#"), FetchOptions::default())
        .await
        .unwrap();
    assert_eq!(
        wildcard.len(),
        old.len() + 1,
        "wildcard replay through the index"
    );
    assert_eq!(wildcard.last().unwrap().payload, b"new");

    // 500 acks move the floor, written as the role.
    for m in &old[..500] {
        store.submit_delete(&m.topic, m.msgid).unwrap();
    }
    store.flush(scaled(Duration::from_secs(60))).await.unwrap();
    let floor = || async {
        admin
            .query_unpaged(
                format!("SELECT msgid FROM {ks}.mqtt_msg_floor WHERE topic = ?"),
                (&topic,),
            )
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .maybe_first_row::<(String,)>()
            .unwrap()
            .map(|(f,)| f)
    };
    let want = Some(old[500].msgid.to_string());
    let deadline = Instant::now() + scaled(Duration::from_secs(60));
    while floor().await != want {
        assert!(
            Instant::now() < deadline,
            "floor {:?}, stats {:?}",
            floor().await,
            store.stats()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = store.fetch(&topic, FetchOptions::default()).await.unwrap();
    assert_eq!(rows.len(), 10);
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_side_tables_and_create_permission_the_error_says_what_to_do() {
    let (ks, role) = ("offline_test_no_side_tables", "offline_test_no_create2");
    let _cleanup = Cleanup::keyspace(ks).and_role(role);
    keyspace_for_a_role_without_create(ks, role, false).await;

    let err = offline_store::Store::connect(as_role(ks, role), scaled(Duration::from_secs(20)))
        .await
        .err()
        .expect("connected without the index table");
    match &err {
        StoreError::IndexUnavailable(_) => {}
        other => panic!("expected IndexUnavailable, got {other:?}"),
    }
    let text = err.to_string();
    for advice in [
        "mqtt_msg_topic_index",
        "grant CREATE",
        "topic_index = false",
    ] {
        assert!(text.contains(advice), "{text}");
    }

    let err = offline_store::Store::connect(
        StoreConfig {
            topic_index: false,
            ..as_role(ks, role)
        },
        scaled(Duration::from_secs(20)),
    )
    .await
    .err()
    .expect("connected without the floor table");
    match &err {
        StoreError::FloorUnavailable(_) => {}
        other => panic!("expected FloorUnavailable, got {other:?}"),
    }
    let text = err.to_string();
    for advice in ["mqtt_msg_floor", "grant CREATE", "replay_floor = false"] {
        assert!(text.contains(advice), "{text}");
    }
}

/// A keyspace name is case-insensitive like an unquoted CQL name: `Offline_Test_KS_Case` is
/// the keyspace `offline_test_ks_case` for the schema check, the created table and side
/// tables, writes, replay (plain and wildcard), the floor, count and purge alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyspace_name_in_upper_case_is_the_same_keyspace_everywhere() {
    let ks = "offline_test_ks_case";
    let _cleanup = Cleanup::keyspace(ks);
    let admin = admin().await;
    recreate_keyspace(&admin, ks, 1).await;
    let cfg = StoreConfig {
        keyspace: "Offline_Test_KS_Case".into(),
        create_table_if_missing: true,
        topic_index: true,
        replay_floor: true,
        ..config()
    };
    // Creates the tables (with the default request timeout: a CREATE takes a while).
    connect_with(cfg.clone())
        .await
        .shutdown(scaled(Duration::from_secs(5)))
        .await;
    let tables = admin
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
            (ks,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(String,)>()
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect::<Vec<_>>();
    for t in [schema::TABLE, schema::INDEX_TABLE, schema::FLOOR_TABLE] {
        assert!(tables.iter().any(|x| x == t), "{t} not in {ks}: {tables:?}");
    }
    // A short lag: the late writes below drop the floor for half of it.
    let store = connect_with(StoreConfig {
        request_timeout: Duration::from_secs(1),
        replay_floor_lag: Duration::from_secs(3),
        ..cfg
    })
    .await;

    let topic = unique_topic("ks_case");
    let old: Vec<_> = (0..510u64)
        .map(|i| {
            let us = (now_ms() as u64 - 3_600_000) * 1000 + i * 1_000_000;
            let mut m = message(&topic, format!("old{i}").as_bytes());
            m.msgid = MsgId::new(us, 0x00AB_CDEF_0123, i as u16);
            m.arrived_ms = (us / 1000) as i64;
            m
        })
        .collect();
    for m in &old {
        store.submit_store(m.clone()).unwrap();
    }
    store.flush(scaled(Duration::from_secs(60))).await.unwrap();
    let stored = admin
        .query_unpaged(
            format!("SELECT count(*) FROM {ks}.mqtt_msg WHERE topic = ?"),
            (&topic,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .single_row::<(i64,)>()
        .unwrap()
        .0;
    assert_eq!(stored, 510);
    let base = topic.rsplit_once('/').unwrap().0;
    let wildcard = store
        .fetch_matching(&format!("{base}/#"), FetchOptions::default())
        .await
        .unwrap();
    assert_eq!(wildcard.len(), 510, "wildcard replay through the index");

    // 500 acks move the floor, in the same keyspace.
    for m in &old[..500] {
        store.submit_delete(&m.topic, m.msgid).unwrap();
    }
    store.flush(scaled(Duration::from_secs(60))).await.unwrap();
    let floor = || async {
        admin
            .query_unpaged(
                format!("SELECT msgid FROM {ks}.mqtt_msg_floor WHERE topic = ?"),
                (&topic,),
            )
            .await
            .unwrap()
            .into_rows_result()
            .unwrap()
            .maybe_first_row::<(String,)>()
            .unwrap()
            .map(|(f,)| f)
    };
    let deadline = Instant::now() + scaled(Duration::from_secs(60));
    while floor().await.as_deref() != Some(old[500].msgid.as_str()) {
        assert!(Instant::now() < deadline, "floor: {:?}", floor().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.count(&topic).await.unwrap(), 10);
    assert_eq!(store.purge(&topic).await.unwrap(), 10);
    assert!(
        store
            .fetch(&topic, FetchOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    store.shutdown(scaled(Duration::from_secs(5))).await;
}

/// With the floor off the store still resets the floors of late writes while
/// `mqtt_msg_floor` exists (docs/tombstones.md, "Turning the floor off and on again"). A role
/// that may not write that table is told so at connect, not when a late write needs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_floor_off_a_floor_table_the_role_cannot_write_is_named() {
    let (ks, role) = (
        "offline_test_floor_off_no_modify",
        "offline_test_no_floor_modify",
    );
    let _cleanup = Cleanup::keyspace(ks).and_role(role);
    let admin = keyspace_for_a_role_without_create(ks, role, true).await;
    let run = |cql: String| run_cql(&admin, cql);
    // MODIFY on the message table and the index only.
    run(format!("REVOKE MODIFY ON KEYSPACE {ks} FROM {role}")).await;
    for table in [schema::TABLE, schema::INDEX_TABLE] {
        run(format!("GRANT MODIFY ON TABLE {ks}.{table} TO {role}")).await;
    }
    let floor_off = StoreConfig {
        replay_floor: false,
        ..as_role(ks, role)
    };
    // Permissions are cached for a moment (permissions_validity, 2 s by default).
    let deadline = Instant::now() + scaled(Duration::from_secs(30));
    let err = loop {
        match offline_store::Store::connect(floor_off.clone(), scaled(Duration::from_secs(20)))
            .await
        {
            Err(e) => break e,
            Ok(store) => {
                store.shutdown(scaled(Duration::from_secs(5))).await;
                assert!(
                    Instant::now() < deadline,
                    "connected without MODIFY on the floor table"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    match &err {
        StoreError::FloorUnavailable(_) => {}
        other => panic!("expected FloorUnavailable, got {other:?}"),
    }
    let text = err.to_string();
    for advice in [schema::FLOOR_TABLE, "grant MODIFY", "drop the table"] {
        assert!(text.contains(advice), "{text}");
    }

    run(format!(
        "GRANT MODIFY ON TABLE {ks}.{} TO {role}",
        schema::FLOOR_TABLE
    ))
    .await;
    let deadline = Instant::now() + scaled(Duration::from_secs(30));
    loop {
        match offline_store::Store::connect(floor_off.clone(), scaled(Duration::from_secs(20)))
            .await
        {
            Ok(store) => {
                store.shutdown(scaled(Duration::from_secs(5))).await;
                break;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "still refused after the grant: {e}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
