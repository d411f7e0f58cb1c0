//! The reply guard: every request that answers by message gets exactly one answer, even
//! when its task panics or is dropped at shutdown.

use offline_store::{StoreError, StoredMessage};
use rustler::{Encoder, Env, LocalPid, OwnedEnv, Term};
use tokio::runtime::Handle;

use crate::atoms;
use crate::terms::{error_term, rows_term};

/// Exactly one reply per request: sent by `send`, or by `Drop` with `{error, Reason}` when
/// the task is dropped unsent (runtime shut down, or a panic unwound through it).
pub struct Reply {
    target: Option<ReplyTarget>,
}

struct ReplyTarget {
    pid: LocalPid,
    env: OwnedEnv,
    reference: rustler::env::SavedTerm,
}

impl ReplyTarget {
    fn send<F>(mut self, body: F)
    where
        F: for<'b> FnOnce(Env<'b>) -> Term<'b>,
    {
        let reference = &self.reference;
        // Err only when the receiver is gone: nobody left to tell.
        let _ = self.env.send_and_clear(&self.pid, |env| {
            (atoms::offline_cassandra(), reference.load(env), body(env))
        });
    }
}

impl Reply {
    /// A reply to `pid` tagged `{offline_cassandra, Reference, _}`.
    pub fn new(pid: LocalPid, reference: Term) -> Self {
        let env = OwnedEnv::new();
        let reference = env.save(reference);
        Reply {
            target: Some(ReplyTarget {
                pid,
                env,
                reference,
            }),
        }
    }

    fn send<F>(mut self, body: F)
    where
        F: for<'b> FnOnce(Env<'b>) -> Term<'b>,
    {
        if let Some(target) = self.target.take() {
            target.send(body);
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        let Some(target) = self.target.take() else {
            return;
        };
        let reason = if std::thread::panicking() {
            atoms::panic()
        } else {
            atoms::shutdown()
        };
        let send = move || target.send(|env| (atoms::error(), reason).encode(env));
        if rustler::thread::is_scheduler_thread() {
            // A task dropped on a BEAM thread (spawned while the runtime was stopping):
            // sending is not allowed here, so a short-lived thread sends the error.
            std::thread::spawn(send);
        } else {
            send();
        }
    }
}

/// Runs `work` on the runtime and replies with its result. A panic inside `work` is caught
/// (tokio reports it through the join handle) and becomes `{error, {panic, Message}}`.
pub fn spawn_replying<F>(handle: &Handle, reply: Reply, work: F)
where
    F: std::future::Future<Output = Result<Vec<StoredMessage>, StoreError>> + Send + 'static,
{
    spawn_replying_with(handle, reply, work, |env, rows| {
        (atoms::ok(), rows_term(env, &rows)).encode(env)
    });
}

/// Runs `work` on the runtime and replies `encode(result)`, `{error, Reason}`, or
/// `{error, {panic, Message}}` when `work` panicked (tokio reports that through the join
/// handle; the `Reply` guard covers a task dropped at shutdown).
pub fn spawn_replying_with<T, F, E>(handle: &Handle, reply: Reply, work: F, encode: E)
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    E: for<'b> FnOnce(Env<'b>, T) -> Term<'b> + Send + 'static,
{
    let inner = handle.spawn(work);
    handle.spawn(async move {
        match inner.await {
            Ok(Ok(value)) => reply.send(|env| encode(env, value)),
            Ok(Err(e)) => reply.send(|env| error_term(env, &e)),
            Err(join) => {
                let what = if join.is_panic() {
                    panic_message(join.into_panic())
                } else {
                    "task cancelled".to_string()
                };
                reply.send(|env| (atoms::error(), (atoms::panic(), what.as_str())).encode(env))
            }
        }
    });
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}
