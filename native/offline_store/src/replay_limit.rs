//! How replay reads share Cassandra: a node-wide limit, and bounded retries.
//!
//! After a network blip thousands of clients reconnect within a second and each subscribe
//! starts a replay. Every replay read (a plan, or the next page of one topic) takes one of
//! `max_concurrent_replay_reads` turns first; the others queue (fairly, first come first
//! served) instead of flooding Cassandra. A read that fails for a reason time may fix (not
//! connected, timed out, overloaded) gives its turn back, waits with a doubling backoff and
//! tries again, for at most `REPLAY_RETRY_FOR`: a replay started while Cassandra is away
//! completes once it is back, instead of being logged and forgotten.

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::StoreError;
use crate::shared::Inner;
use crate::stats::Counters;
use crate::store::Store;

/// The first wait before a failed replay read is tried again; each retry doubles it.
const REPLAY_RETRY_FIRST_WAIT: Duration = Duration::from_millis(100);
/// The longest wait between two tries.
const REPLAY_RETRY_MAX_WAIT: Duration = Duration::from_secs(2);
/// How long a replay read keeps trying: its reads and backoffs, not its waits for a turn.
/// The Erlang side waits 90 s for a reply (queue included). 60 s, not 20 as before, and the
/// queue no longer counted: after a 5 s outage, 10,000 replays sharing 8 turns on a busy
/// node gave a thousand of them up (their 20 s ran out in the queue and in reads that timed
/// out) while Cassandra was answering again.
const REPLAY_RETRY_FOR: Duration = Duration::from_secs(60);

/// One turn of the node's replay reads: counted in `replay_reads` while held.
pub(crate) struct ReplayTurn<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    counters: &'a Counters,
}

impl Drop for ReplayTurn<'_> {
    fn drop(&mut self) {
        Counters::sub(&self.counters.replay_reads, 1);
    }
}

impl Inner {
    /// Waits for a turn to read for a replay (see the module doc).
    pub(crate) async fn replay_turn(&self) -> ReplayTurn<'_> {
        // Never closed: the semaphore lives as long as the store.
        let permit = self
            .replay_reads
            .acquire()
            .await
            .expect("the replay read semaphore is never closed");
        let now = self.counters.replay_reads.fetch_add(1, Relaxed) + 1;
        self.counters.replay_reads_peak.fetch_max(now, Relaxed);
        ReplayTurn {
            _permit: permit,
            counters: &self.counters,
        }
    }
}

impl Store {
    /// Runs `read` in a turn, and again after a backoff while it fails transiently (for at
    /// most `REPLAY_RETRY_FOR`, and not after the store stopped).
    pub(crate) async fn replay_read<T, F, Fut>(&self, mut read: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        // Time spent reading and backing off; waiting for a turn does not count, so a
        // replay far back in the queue after an outage still gets its tries.
        let mut spent = Duration::ZERO;
        let mut wait = REPLAY_RETRY_FIRST_WAIT;
        loop {
            let result = {
                let _turn = self.inner.replay_turn().await;
                let started = Instant::now();
                let result = read().await;
                spent += started.elapsed();
                result
            };
            match result {
                Err(e)
                    if e.is_transient()
                        && !self.inner.stopped.load(Relaxed)
                        && spent + wait < REPLAY_RETRY_FOR =>
                {
                    Counters::add(&self.inner.counters.replay_read_retries, 1);
                    tokio::time::sleep(wait).await;
                    spent += wait;
                    wait = (wait * 2).min(REPLAY_RETRY_MAX_WAIT);
                }
                other => return other,
            }
        }
    }
}
