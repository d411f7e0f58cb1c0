//! Test builds only (`fault_injection`): NIFs that panic or stall on purpose, to prove the
//! caller still gets a reply and a panic becomes an error.

use std::time::Duration;

use rustler::{Encoder, Env, LocalPid, Term};

use crate::atoms;
use crate::reply::{Reply, spawn_replying};
use crate::runtime::running;

/// A fetch whose task panics, to prove the caller still gets a reply.
#[rustler::nif]
fn debug_panicking_fetch<'a>(env: Env<'a>, pid: LocalPid, reference: Term<'a>) -> Term<'a> {
    let Some((_, handle)) = running() else {
        return (atoms::error(), atoms::not_started()).encode(env);
    };
    let reply = Reply::new(pid, reference);
    spawn_replying(&handle, reply, async { panic!("injected panic") });
    atoms::ok().encode(env)
}

/// A fetch that takes `ms` milliseconds, to have requests pending at `stop`.
#[rustler::nif]
fn debug_sleeping_fetch<'a>(env: Env<'a>, pid: LocalPid, reference: Term<'a>, ms: u64) -> Term<'a> {
    let Some((_, handle)) = running() else {
        return (atoms::error(), atoms::not_started()).encode(env);
    };
    let reply = Reply::new(pid, reference);
    spawn_replying(&handle, reply, async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(Vec::new())
    });
    atoms::ok().encode(env)
}

/// A NIF that panics on the calling scheduler.
#[rustler::nif]
fn debug_panic(env: Env) -> Term {
    let _ = env;
    panic!("injected panic in a NIF call")
}

/// Shifts this node's clock as the store's clock check sees it (ms, positive: ahead of
/// Cassandra) and checks at once, to see floors hold and health and the alarm react.
#[rustler::nif]
fn debug_clock_offset(env: Env, offset_ms: i64) -> Term {
    match running() {
        Some((store, _)) => {
            store.inject_clock_offset(offset_ms);
            atoms::ok().encode(env)
        }
        None => (atoms::error(), atoms::not_started()).encode(env),
    }
}
