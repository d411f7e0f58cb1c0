//! Error kinds from real failures, against the local Cassandra (see tests/common): the
//! classification reads the driver's error types (src/error/driver.rs), and these check that
//! the driver really hands over those types for each situation.

mod common;

use std::time::{Duration, Instant};

use common::{config, node};
use offline_store::{Store, StoreConfig, TlsConfig};

/// A TLS client on Cassandra's plain-text port: rustls rejects the first bytes it reads, and
/// that is a configuration to fix (tls_failed, not retried as transient), not an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_plain_text_port_is_tls_failed() {
    let cfg = StoreConfig {
        tls: Some(TlsConfig {
            verify: false,
            ..TlsConfig::default()
        }),
        connect_timeout: Duration::from_secs(3),
        ..config()
    };
    let started = Instant::now();
    let err = match Store::connect(cfg, Duration::from_secs(20)).await {
        Ok(_) => panic!("TLS connected to the plain-text port {}", node()),
        Err(e) => e,
    };
    assert_eq!(err.kind(), "tls_failed", "{err:?}");
    assert!(!err.is_transient(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
}

/// A refused login says it in the server's words, not the driver's nesting (live.rs checks
/// the kind; this checks what a user reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_auth_failed_in_the_servers_words() {
    let cfg = StoreConfig {
        password: Some("not-the-password".into()),
        ..config()
    };
    let err = match Store::connect(cfg, Duration::from_secs(20)).await {
        Ok(_) => panic!("connected with a wrong password"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), "auth_failed", "{err:?}");
    assert!(!err.is_transient());
    let text = err.to_string();
    assert!(
        text.contains("and/or password are incorrect") && !text.contains("pool is broken"),
        "{text}"
    );
}
