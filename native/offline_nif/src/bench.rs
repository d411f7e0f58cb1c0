//! Bench builds only (`bench_api`): API for the plugin benchmark
//! (test/emqx_offline_cassandra_plugin_bench.erl), left out of the shipped library.

use offline_store::{Message, StoreError};
use rustler::{Encoder, Env, LocalPid, Term};

use crate::atoms;
use crate::input;
use crate::reply::{Reply, spawn_replying_with};
use crate::runtime::running;
use crate::terms::error_term;

/// One INSERT awaited on its own, bypassing the pipeline: the design of one-write-per-call
/// plugins, kept for the benchmark's baseline. Replies `{offline_cassandra, Ref, {ok, 0} |
/// {error, Reason}}`.
#[rustler::nif(name = "nif_insert_awaited")]
fn insert_awaited<'a>(
    env: Env<'a>,
    pid: Term<'a>,
    reference: Term<'a>,
    topic: Term<'a>,
    msgid: Term<'a>,
    payload: Term<'a>,
) -> Term<'a> {
    let Some((store, handle)) = running() else {
        return (atoms::error(), atoms::not_started()).encode(env);
    };
    let request = (|| {
        let pid: LocalPid = input::arg(pid, "pid", "a local pid")?;
        let message = Message {
            topic: input::text(topic, "topic")?,
            msgid: input::msgid(msgid)?,
            sender: String::new(),
            qos: 1,
            retain: false,
            payload: input::bytes(payload, "payload")?.as_slice().to_vec(),
            arrived_ms: 0,
            ttl_secs: None,
        };
        Ok::<_, StoreError>((pid, message))
    })();
    let (pid, message) = match request {
        Ok(r) => r,
        Err(e) => return error_term(env, &e),
    };
    let reply = Reply::new(pid, reference);
    let work = async move { store.store_unbatched(message).await.map(|()| 0u64) };
    spawn_replying_with(&handle, reply, work, |env, n| (atoms::ok(), n).encode(env));
    atoms::ok().encode(env)
}
