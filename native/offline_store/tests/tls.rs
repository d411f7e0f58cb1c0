//! TLS to a real Cassandra with `client_encryption_options` on (client certificates
//! required), using the certificates `test/tls/make-certs.sh` makes. scripts/test.sh starts
//! that node (CASSANDRA_TLS_NODE, default 127.0.0.1:9342; certificates in TLS_CERTS_DIR,
//! default .cache/tls). Without it these tests fail; they never skip.

use std::time::Duration;

use offline_store::config::ConfigValue;
use offline_store::{FetchOptions, Message, MsgId, Store, StoreConfig, StoreError, TlsConfig};
use scylla::client::session_builder::SessionBuilder;

fn node() -> String {
    std::env::var("CASSANDRA_TLS_NODE").unwrap_or_else(|_| "127.0.0.1:9342".into())
}

fn cert(name: &str) -> String {
    let dir = std::env::var("TLS_CERTS_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../.cache/tls").into());
    format!("{dir}/{name}")
}

fn good_tls() -> TlsConfig {
    TlsConfig {
        ca_file: Some(cert("test-ca.pem")),
        cert_file: Some(cert("client.pem")),
        key_file: Some(cert("client.pk8")),
        verify: true,
        server_name: None,
    }
}

fn config(tls: TlsConfig) -> StoreConfig {
    StoreConfig {
        contact_points: vec![node()],
        username: Some("cassandra".into()),
        password: Some("cassandra".into()),
        keyspace: "mqtt_tls".into(),
        tls: Some(tls),
        connect_timeout: Duration::from_secs(3),
        ..StoreConfig::default()
    }
}

/// Creates keyspace and table over TLS as the default superuser (which appears a few
/// seconds after a fresh node starts: retried).
async fn ensure_schema() {
    let tls = offline_store::tls::client_config(&good_tls()).unwrap();
    let mut last = String::new();
    for _ in 0..60 {
        match SessionBuilder::new()
            .known_node(node())
            .user("cassandra", "cassandra")
            .tls_context(Some(tls.clone()))
            .build()
            .await
        {
            Ok(session) => {
                session
                    .query_unpaged(
                        "CREATE KEYSPACE IF NOT EXISTS mqtt_tls WITH replication = {'class': 'SimpleStrategy', 'replication_factor': '1'}",
                        (),
                    )
                    .await
                    .unwrap();
                session
                    .query_unpaged(offline_store::schema::create_table_cql("mqtt_tls"), ())
                    .await
                    .unwrap();
                session.await_schema_agreement().await.unwrap();
                return;
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("cannot reach the TLS Cassandra at {}: {last}", node());
}

async fn connect_err(tls: TlsConfig) -> StoreError {
    match Store::connect(config(tls), Duration::from_secs(8)).await {
        Ok(_) => panic!("connected, but should not have"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_mutual_tls_connects_and_stores() {
    ensure_schema().await;
    let store = Store::connect(config(good_tls()), Duration::from_secs(20))
        .await
        .unwrap();
    let topic = format!("tls/{}", std::process::id());
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    store
        .store(Message {
            topic: topic.clone(),
            msgid: MsgId::new(now_us, 1, 1),
            sender: "tls-client".into(),
            qos: 1,
            retain: false,
            payload: b"over tls".to_vec(),
            arrived_ms: (now_us / 1000) as i64,
            ttl_secs: Some(600),
        })
        .await
        .unwrap();
    let rows = store.fetch(&topic, FetchOptions::default()).await.unwrap();
    assert_eq!(rows[0].payload, b"over tls");
    store.shutdown(Duration::from_secs(5)).await;

    // The certificate also names cassandra.test: checking that name works too.
    let named = TlsConfig {
        server_name: Some("cassandra.test".into()),
        ..good_tls()
    };
    let store = Store::connect(config(named), Duration::from_secs(20))
        .await
        .unwrap();
    store.shutdown(Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_is_refused_with_the_reason() {
    ensure_schema().await;
    let err = connect_err(TlsConfig {
        ca_file: Some(cert("other-ca.pem")),
        ..good_tls()
    })
    .await;
    assert_eq!(err.kind(), "tls_failed", "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_host_name_is_refused_with_the_reason() {
    ensure_schema().await;
    let err = connect_err(TlsConfig {
        server_name: Some("wrong.example".into()),
        ..good_tls()
    })
    .await;
    assert_eq!(err.kind(), "tls_failed", "{err}");
    assert!(
        err.to_string()
            .contains("not valid for name \"wrong.example\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_client_certificate_is_refused() {
    ensure_schema().await;
    let err = connect_err(TlsConfig {
        cert_file: None,
        key_file: None,
        ..good_tls()
    })
    .await;
    assert!(
        matches!(err.kind(), "tls_failed" | "not_connected"),
        "{err:?}"
    );
    println!("without a client certificate: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_to_the_tls_port_fails_clearly() {
    ensure_schema().await;
    let mut cfg = config(good_tls());
    cfg.tls = None;
    let err = match Store::connect(cfg, Duration::from_secs(8)).await {
        Ok(_) => panic!("plain text connected to a TLS-only port"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), "not_connected", "{err:?}");
    println!("plain text to the TLS port: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_config_problems_name_their_field() {
    let err = StoreConfig::from_map(
        &[("tls_enable", true), ("tls_verify", true)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), ConfigValue::Bool(v)))
            .collect(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("tls_ca_file"), "{err}");
}
