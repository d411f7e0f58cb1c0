//! The NIF of the shared-group replay claims (see `offline_store::claims`): one call for
//! claim, refresh and release, replying by message like `fetch`.

use std::time::Duration;

use offline_store::{Claim, StoreError};
use rustler::{Atom, Encoder, Env, LocalPid, Term};

use crate::atoms;
use crate::input;
use crate::reply::{Reply, spawn_replying_with};
use crate::runtime::running;
use crate::terms::error_term;

/// `Op` on the claim of `Group` and `Filter` by `Holder` (this node's name), with a TTL of
/// `TtlMs`. `Pid` later receives `{offline_cassandra, Ref, Reply}`: for `claim`, `{ok, held}`
/// or `{ok, {held_by, Holder}}`; for `refresh`, `{ok, true | false}` (false: no longer
/// ours); for `release`, `{ok, true}`; or `{error, Reason}`.
#[rustler::nif(name = "nif_replay_claim")]
#[allow(clippy::too_many_arguments)]
fn replay_claim<'a>(
    env: Env<'a>,
    pid: Term<'a>,
    reference: Term<'a>,
    op: Term<'a>,
    group: Term<'a>,
    filter: Term<'a>,
    holder: Term<'a>,
    ttl_ms: Term<'a>,
) -> Term<'a> {
    let Some((store, handle)) = running() else {
        return (atoms::error(), atoms::not_started()).encode(env);
    };
    let request = (|| {
        let pid: LocalPid = input::arg(pid, "pid", "a local pid")?;
        let op: Atom = input::arg(op, "op", "claim, refresh or release")?;
        if op != atoms::claim() && op != atoms::refresh() && op != atoms::release() {
            return Err(StoreError::InvalidInput(
                "op must be claim, refresh or release".into(),
            ));
        }
        let group = input::text(group, "group")?;
        let filter = input::text(filter, "filter")?;
        let holder = input::text(holder, "holder")?;
        let ttl_ms: u64 = input::arg(ttl_ms, "ttl", "a whole number of milliseconds")?;
        Ok((
            pid,
            op,
            group,
            filter,
            holder,
            Duration::from_millis(ttl_ms),
        ))
    })();
    let (pid, op, group, filter, holder, ttl) = match request {
        Ok(r) => r,
        Err(e) => return error_term(env, &e),
    };
    let reply = Reply::new(pid, reference);
    spawn_replying_with(
        &handle,
        reply,
        async move {
            if op == atoms::claim() {
                match store.claim_replay(&group, &filter, &holder, ttl).await? {
                    Claim::Held => Ok(None),
                    Claim::HeldBy(other) => Ok(Some(other)),
                }
            } else if op == atoms::refresh() {
                let ours = store
                    .refresh_replay_claim(&group, &filter, &holder, ttl)
                    .await?;
                Ok((!ours).then(String::new))
            } else {
                store.release_replay_claim(&group, &filter, &holder).await?;
                Ok(None)
            }
        },
        move |env, other: Option<String>| match other {
            None if op == atoms::claim() => (atoms::ok(), atoms::held()).encode(env),
            None => (atoms::ok(), true).encode(env),
            Some(_) if op == atoms::refresh() => (atoms::ok(), false).encode(env),
            Some(h) => (atoms::ok(), (atoms::held_by(), h)).encode(env),
        },
    );
    atoms::ok().encode(env)
}
