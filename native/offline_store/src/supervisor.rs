//! Connection supervision: build a session with retry and backoff, then probe it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::sleep;

use crate::connection;
use crate::error::StoreError;
use crate::shared::{Inner, set_state};
use crate::types::ConnState;

/// How often a connected store checks that Cassandra still answers.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How often a disconnected store tries a fresh session: a returning Cassandra is seen
/// within this plus one connection setup (about 0.2-0.3 s on a busy test machine).
const RECONNECT_INTERVAL: Duration = Duration::from_millis(200);

/// Keeps a session: builds it with retry and backoff, then probes it every second so the
/// state shows when Cassandra stops answering, and replaces it once Cassandra answers again.
pub(crate) async fn supervise(inner: Arc<Inner>) {
    let cfg = &inner.cfg;
    let mut shutdown = inner.shutdown.subscribe();
    let mut backoff = cfg.reconnect_min_backoff;
    let mut attempt = 0u32;
    let conn = loop {
        if inner.stopped() {
            return;
        }
        attempt += 1;
        match connection::connect_once(cfg).await {
            Ok(conn) => break Arc::new(conn),
            Err(e) => {
                if !cfg.auto_reconnect {
                    // No retry wanted: the first failure is final and says why.
                    set_state(&inner, ConnState::Error(e));
                    return;
                }
                let permanent = !e.is_transient();
                let wait = if permanent {
                    cfg.reconnect_max_backoff
                } else {
                    backoff
                };
                inner.state.send_if_modified(|s| {
                    if matches!(s, ConnState::Stopped) {
                        return false;
                    }
                    *s = if permanent {
                        ConnState::Error(e.clone())
                    } else {
                        ConnState::Connecting {
                            attempt,
                            last_error: Some(e.clone()),
                        }
                    };
                    true
                });
                backoff = (backoff * 2).min(cfg.reconnect_max_backoff);
                tokio::select! {
                    _ = sleep(wait) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    let mut conn = conn;
    *inner.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
    set_state(&inner, ConnState::Connected);
    inner.work.notify_one();
    loop {
        let connected = matches!(*inner.state.borrow(), ConnState::Connected);
        // Probe every second while connected; while not, try a fresh session often, so the
        // store is back well within a second of Cassandra answering again.
        let tick = if connected {
            PROBE_INTERVAL
        } else {
            RECONNECT_INTERVAL
        };
        tokio::select! {
            _ = sleep(tick) => {}
            _ = shutdown.changed() => return,
        }
        let next = if connected {
            probe(&conn, cfg.request_timeout).await
        } else {
            // Not the old session: its requests can wait on the driver's pool refill, which
            // backs off up to 10 s. A fresh session notices a returning Cassandra at once,
            // and fails fast (refused, or bounded by connect_timeout) while it is away.
            match connection::connect_once(cfg).await {
                Ok(fresh) => {
                    conn = Arc::new(fresh);
                    *inner.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
                    ConnState::Connected
                }
                Err(e) => ConnState::Disconnected {
                    reason: still_away(e, &inner),
                },
            }
        };
        let reconnected = !connected && next == ConnState::Connected;
        set_state(&inner, next);
        if reconnected {
            inner.work.notify_one();
        }
    }
}

/// Compares this node's clock with Cassandra's at every connect, every
/// `clock_check_interval`, and when asked (`ClockCheck::recheck`); a check that fails is
/// tried again at the next occasion, keeping the latest result. See `clock`.
pub(crate) async fn watch_clock(inner: Arc<Inner>) {
    let mut state = inner.state.subscribe();
    let mut shutdown = inner.shutdown.subscribe();
    let (interval, max) = (inner.cfg.clock_check_interval, inner.cfg.clock_skew_limit());
    loop {
        let up = matches!(*state.borrow_and_update(), ConnState::Connected);
        if up
            && let Some(conn) = inner.current()
            && let Ok(offset) = inner.clock.measure(&conn, inner.cfg.request_timeout).await
        {
            inner.clock.record(offset, max);
        }
        tokio::select! {
            _ = sleep(interval) => {}
            _ = inner.clock.recheck.notified() => {}
            // A (re)connect checks at once; other state changes wait for the interval.
            changed = connected(&mut state) => if !changed { return },
            _ = shutdown.changed() => return,
        }
    }
}

/// Waits until the state changes to `Connected`; false when the store is gone.
async fn connected(state: &mut tokio::sync::watch::Receiver<ConnState>) -> bool {
    loop {
        if state.changed().await.is_err() {
            return false;
        }
        if matches!(*state.borrow(), ConnState::Connected) {
            return true;
        }
    }
}

/// Tries the probe on the live session. A probe that met a dead node's broken pool is not
/// the cluster gone: while the driver still holds a connection to some node, the store
/// stays connected, and what the surviving nodes cannot take waits and shows as degraded
/// (`Store::degraded`). Without this, a cluster with two of three nodes down showed
/// "unreachable" while the third node was taking, or queueing, its writes.
async fn probe(conn: &connection::Connection, timeout: Duration) -> ConnState {
    match conn.session.execute_unpaged(&conn.probe, ()).await {
        Ok(_) => ConnState::Connected,
        Err(e) => match StoreError::from_driver(e, timeout) {
            StoreError::NotConnected { .. } if conn.some_node_connected() => ConnState::Connected,
            reason => ConnState::Disconnected { reason },
        },
    }
}

/// While Cassandra stays away, health keeps the reason it went away with, unless the
/// fresh attempt has a more specific one (a refused password, a TLS failure).
fn still_away(attempt: StoreError, inner: &Inner) -> StoreError {
    match (&attempt, &*inner.state.borrow()) {
        (
            StoreError::NotConnected { .. } | StoreError::Timeout(_),
            ConnState::Disconnected { reason },
        ) => reason.clone(),
        _ => attempt,
    }
}
