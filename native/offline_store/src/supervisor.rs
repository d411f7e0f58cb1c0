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

/// Keeps a session: builds it with retry and backoff, then probes it every second so the
/// state shows when Cassandra stops answering (the driver reconnects by itself).
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
        // Probe every second while connected; while not, look twice as often.
        let tick = if connected {
            PROBE_INTERVAL
        } else {
            PROBE_INTERVAL / 2
        };
        tokio::select! {
            _ = sleep(tick) => {}
            _ = shutdown.changed() => return,
        }
        let probe = conn.session.execute_unpaged(&conn.probe, ()).await;
        let next = match probe {
            Ok(_) => ConnState::Connected,
            Err(e) if connected => ConnState::Disconnected {
                reason: StoreError::from_driver(e, cfg.request_timeout),
            },
            Err(e) => {
                // The driver's own pool refill backs off up to 10 s; a fresh session
                // notices a returning Cassandra at once.
                match connection::connect_once(cfg).await {
                    Ok(fresh) => {
                        conn = Arc::new(fresh);
                        *inner.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
                        ConnState::Connected
                    }
                    Err(_) => ConnState::Disconnected {
                        reason: StoreError::from_driver(e, cfg.request_timeout),
                    },
                }
            }
        };
        let reconnected = !connected && next == ConnState::Connected;
        set_state(&inner, next);
        if reconnected {
            inner.work.notify_one();
        }
    }
}
