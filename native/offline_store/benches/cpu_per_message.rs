//! CPU per stored and acked message (issue 17), at fixed rates over many topics: every
//! message is submitted, then deleted `BENCH_ACK_DELAY_MS` later as a subscriber's ack would
//! delete it. Measured per thread from /proc (so the noise of a shared machine, which changes
//! wall times, hardly changes the figures):
//!
//! * the pipeline: the whole process's CPU minus the submitting ("hook") thread and the main
//!   thread, i.e. the runtime's threads ("offline_cassandra", as in the NIF) and any thread
//!   the store starts;
//! * the hook: the submitting thread, minus what the same paced loop costs without a store
//!   call (the "stores nothing" phase of the same run);
//! * the Cassandra process serving `CASSANDRA_NODE`, minus its own CPU while idle (the same
//!   "stores nothing" phase);
//! * rows per request (`written / batches` of the store's stats) and floor scans.
//!
//! With `BENCH_BASELINE_BIN` (the same benchmark built from the baseline tree, see
//! scripts/bench-cpu.sh and docs/benchmarks.md) each rate runs on the baseline and on this
//! tree, alternating, and the table shows both with their ratios.
//!
//!   cargo bench -p offline_store --bench cpu_per_message
//!   cpu_per_message --callgrind-workload N     (see `callgrind_workload`)
//!
//! Env: CASSANDRA_NODE (127.0.0.1:9042), BENCH_CPU_RATES (500,5000 msg/s), BENCH_CPU_SECS (25),
//! BENCH_CPU_IDLE_SECS (10), BENCH_CPU_ROUNDS (1), BENCH_TOPICS (100), BENCH_PAYLOAD (128),
//! BENCH_ACK_DELAY_MS (50), BENCH_WORKERS (2, the NIF's default), BENCH_CASSANDRA_PID (found
//! from the CQL port when unset), BENCH_BASELINE_BIN, BENCH_BASELINE_LABEL, BENCH_TREE_LABEL,
//! BENCH_RESULTS (default bench-results/cpu.jsonl), BENCH_STORE_CONFIG (core keys over the
//! defaults, `key=value,...`; see `store_config`).

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Ids, env_num, message};
use offline_store::{MsgId, Store, StoreConfig};

/// Name of the runtime's threads, as the NIF names them (native/offline_nif/src/runtime.rs).
const RUNTIME_THREAD: &str = "offline_cassandra";
const HOOK_THREAD: &str = "bench_hook";
/// A store or ack call longer than this was descheduled: it counts as this much CPU.
const HOOK_CALL_CAP_NS: u64 = 50_000;
/// Linux's USER_HZ: the unit of utime/stime in /proc/*/stat.
const TICKS_PER_SEC: f64 = 100.0;

/// One phase's figures by name (printed, passed from a baseline child, written as JSON).
type Figures = BTreeMap<String, f64>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--callgrind-workload") {
        let n = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(1000);
        callgrind_workload(n);
        return;
    }
    let rates: Vec<u64> = std::env::var("BENCH_CPU_RATES")
        .unwrap_or_else(|_| "500,5000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    if std::env::var("BENCH_CPU_CHILD").is_ok() {
        // A baseline child: measure, print the figures for the parent, nothing else.
        for &rate in &rates {
            let f = measure(rate);
            let kv: Vec<String> = f.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("RESULT {}", kv.join(" "));
        }
        return;
    }
    let baseline = std::env::var("BENCH_BASELINE_BIN").ok();
    let rounds = env_num("BENCH_CPU_ROUNDS", 1);
    let mut runs: Vec<(String, u64, Figures)> = Vec::new();
    let here = std::env::var("BENCH_TREE_LABEL").unwrap_or_else(|_| "current".into());
    let there = std::env::var("BENCH_BASELINE_LABEL").unwrap_or_else(|_| "baseline".into());
    for round in 1..=rounds {
        for &rate in &rates {
            if let Some(bin) = &baseline {
                eprintln!("round {round}: {rate} msg/s on the baseline ({bin})");
                runs.push((there.clone(), rate, run_child(bin, rate)));
            }
            eprintln!("round {round}: {rate} msg/s on this tree");
            runs.push((here.clone(), rate, measure(rate)));
        }
    }
    report(&runs, &here, &there);
}

/// Runs the baseline's build of this benchmark for one rate and reads its figures.
fn run_child(bin: &str, rate: u64) -> Figures {
    let out = std::process::Command::new(bin)
        .env("BENCH_CPU_CHILD", "1")
        .env("BENCH_CPU_RATES", rate.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("baseline benchmark {bin}: {e}"));
    assert!(out.status.success(), "baseline benchmark {bin} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("baseline benchmark {bin} printed no RESULT line:\n{text}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// CPU seconds so far of one thread (ns precision from schedstat, else ticks from stat).
fn thread_cpu(pid: &str, tid: &str) -> f64 {
    let sched = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"));
    if let Some(ns) = sched
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
    {
        return ns as f64 / 1e9;
    }
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
        .map(|s| stat_cpu(&s))
        .unwrap_or(0.0)
}

/// utime + stime (seconds) of a /proc/*/stat line: fields 14 and 15, counted after the
/// command name (which may hold spaces).
fn stat_cpu(stat: &str) -> f64 {
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / TICKS_PER_SEC
}

/// Kernel-mode CPU seconds (stime) of a /proc/*/stat line: syscalls, wake-ups.
fn stat_sys(stat: &str) -> f64 {
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let stime = rest
        .split_whitespace()
        .nth(12)
        .and_then(|x| x.parse::<u64>().ok());
    stime.unwrap_or(0) as f64 / TICKS_PER_SEC
}

/// Context switches so far of one of our threads (voluntary ones are its sleeps: each is
/// a wake-up later).
fn thread_switches(tid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("ctxt_switches:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// CPU seconds of a whole process, its finished threads included.
fn process_cpu(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| stat_cpu(&s))
        .unwrap_or(0.0)
}

/// Thread id -> (name, CPU seconds) of the live threads of a process ("self" or a pid).
fn threads(pid: &str) -> BTreeMap<String, (String, f64)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
    {
        let Ok(e) = e else { continue };
        let tid = e.file_name().to_string_lossy().into_owned();
        let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let cpu = thread_cpu(pid, &tid);
        out.insert(tid, (name, cpu));
    }
    out
}

/// A thread's group: its name without the pool index (`MutationStage-12` -> `MutationStage`).
fn thread_group(name: &str) -> String {
    name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == ':' || c == '#')
        .replace(' ', "_")
}

/// Our own thread id (the directory of /proc/thread-self).
fn own_tid() -> String {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// The Cassandra serving `node`: `BENCH_CASSANDRA_PID`, else the process holding the socket
/// that listens on its port (from /proc/net/tcp and the processes' fds).
fn cassandra_pid(node: &str) -> Option<String> {
    if let Ok(pid) = std::env::var("BENCH_CASSANDRA_PID") {
        return Some(pid);
    }
    let port: u16 = node.rsplit_once(':')?.1.parse().ok()?;
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let listening = f.get(3) == Some(&"0A");
            let on_port = f
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port);
            if listening && on_port {
                inodes.push(format!("socket:[{}]", f.get(9)?));
            }
        }
    }
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| target.as_os_str() == i.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// What one phase used: wall time, CPU by part, and the submit calls' times.
#[derive(Default)]
struct Usage {
    wall: f64,
    process: f64,
    process_sys: f64,
    /// Context switches of the runtime's threads alive at both samples.
    switches: u64,
    hook: f64,
    main: f64,
    runtime_threads: f64,
    cassandra: f64,
    /// CPU seconds by thread group of the threads alive at both samples.
    cassandra_groups: BTreeMap<String, f64>,
    calls_ns: Vec<u64>,
    messages: u64,
}

/// A sample of every CPU counter a phase compares.
struct Sample {
    at: Instant,
    process: f64,
    process_sys: f64,
    /// Context switches of the runtime's threads, by thread id.
    switches: BTreeMap<String, u64>,
    threads: BTreeMap<String, (String, f64)>,
    cassandra: f64,
    cassandra_threads: BTreeMap<String, (String, f64)>,
}

fn sample(cassandra: &Option<String>) -> Sample {
    let own = threads("self");
    let switches = own
        .iter()
        .filter(|(_, (name, _))| is_runtime_thread(name))
        .map(|(tid, _)| (tid.clone(), thread_switches(tid)))
        .collect();
    Sample {
        at: Instant::now(),
        process: process_cpu("self"),
        process_sys: std::fs::read_to_string("/proc/self/stat")
            .map(|s| stat_sys(&s))
            .unwrap_or(0.0),
        switches,
        threads: own,
        cassandra: cassandra.as_deref().map(process_cpu).unwrap_or(0.0),
        cassandra_threads: cassandra.as_deref().map(threads).unwrap_or_default(),
    }
}

fn usage_between(a: &Sample, b: &Sample, hook_tid: &str, main_tid: &str) -> Usage {
    let delta = |tid: &str| {
        let end = b.threads.get(tid).map(|t| t.1).unwrap_or(0.0);
        let start = a.threads.get(tid).map(|t| t.1).unwrap_or(0.0);
        end - start
    };
    let runtime_threads = b
        .threads
        .iter()
        .filter(|(_, (name, _))| is_runtime_thread(name))
        .map(|(tid, _)| delta(tid))
        .sum();
    let mut cassandra_groups = BTreeMap::new();
    for (tid, (name, end)) in &b.cassandra_threads {
        if let Some((_, start)) = a.cassandra_threads.get(tid) {
            *cassandra_groups.entry(thread_group(name)).or_insert(0.0) += end - start;
        }
    }
    Usage {
        wall: (b.at - a.at).as_secs_f64(),
        process: b.process - a.process,
        process_sys: b.process_sys - a.process_sys,
        switches: b
            .switches
            .iter()
            .filter_map(|(tid, end)| Some(end - a.switches.get(tid)?))
            .sum(),
        hook: delta(hook_tid),
        main: delta(main_tid),
        runtime_threads,
        cassandra: b.cassandra - a.cassandra,
        cassandra_groups,
        ..Usage::default()
    }
}

/// The runtime's threads (their names cut to 15 characters by the kernel).
fn is_runtime_thread(name: &str) -> bool {
    !name.is_empty() && RUNTIME_THREAD.starts_with(name)
}

/// The store's defaults, logged in to `node`, with `BENCH_STORE_CONFIG` on top: core keys
/// as `key=value,key=value` (numbers are milliseconds or counts, as in the NIF's map), to
/// compare settings within one run (e.g. `batch_linger=100`, `compression=lz4`).
fn store_config(node: &str) -> StoreConfig {
    use offline_store::config::ConfigValue;
    let mut map = std::collections::HashMap::from([
        ("servers".to_string(), ConfigValue::Text(node.to_string())),
        ("username".to_string(), ConfigValue::Text("root".into())),
        ("password".to_string(), ConfigValue::Text("public".into())),
    ]);
    let extra = std::env::var("BENCH_STORE_CONFIG").unwrap_or_default();
    for pair in extra.split(',').filter(|p| !p.trim().is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .unwrap_or_else(|| panic!("BENCH_STORE_CONFIG: {pair:?} is not key=value"));
        let value = match value.trim() {
            "true" => ConfigValue::Bool(true),
            "false" => ConfigValue::Bool(false),
            v => v
                .parse::<i64>()
                .map_or_else(|_| ConfigValue::Text(v.to_string()), ConfigValue::Int),
        };
        map.insert(key.trim().to_string(), value);
    }
    StoreConfig::from_map(&map).unwrap_or_else(|e| panic!("BENCH_STORE_CONFIG: {e}"))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env_num("BENCH_WORKERS", 2) as usize)
        .max_blocking_threads(2)
        .thread_name(RUNTIME_THREAD)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn run_id() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// One rate: a "stores nothing" phase (the paced loop alone, the store idle), then the
/// store + ack phase, on a store of its own.
fn measure(rate: u64) -> Figures {
    let node = std::env::var("CASSANDRA_NODE").unwrap_or_else(|_| "127.0.0.1:9042".into());
    let secs = env_num("BENCH_CPU_SECS", 25);
    let idle_secs = env_num("BENCH_CPU_IDLE_SECS", 10);
    let topics = env_num("BENCH_TOPICS", 100) as usize;
    let payload = vec![b'x'; env_num("BENCH_PAYLOAD", 128) as usize];
    let ack_delay = Duration::from_millis(env_num("BENCH_ACK_DELAY_MS", 50));
    let cassandra = cassandra_pid(&node);
    if cassandra.is_none() {
        eprintln!("no Cassandra process found for {node}: its CPU is not measured");
    }
    let rt = runtime();
    let store = rt
        .block_on(Store::connect(store_config(&node), Duration::from_secs(60)))
        .unwrap_or_else(|e| {
            panic!("Cassandra at {node}: {e} (run test/cassandra/cassandra.sh start)")
        });
    let run = run_id();
    let topic_names: Vec<String> = (0..topics)
        .map(|i| format!("bench/cpu/{run}/{i}"))
        .collect();
    let mut ids = Ids::new(0xC0_0017);
    // Warm up: every topic indexed, connections and statements used, before any window.
    rt.block_on(async {
        for t in &topic_names {
            let m = message(&mut ids, t, &payload);
            store.store(m.clone()).await.unwrap();
            store.delete(&m.topic, m.msgid).await.unwrap();
        }
    });
    let main_tid = own_tid();

    let idle = paced(
        &store,
        &rt,
        &cassandra,
        &main_tid,
        rate,
        idle_secs,
        None,
        &topic_names,
        &payload,
        ack_delay,
        &mut ids,
    );
    let before = store.stats();
    let busy = paced(
        &store,
        &rt,
        &cassandra,
        &main_tid,
        rate,
        secs,
        Some(()),
        &topic_names,
        &payload,
        ack_delay,
        &mut ids,
    );
    let after = store.stats();
    rt.block_on(store.shutdown(Duration::from_secs(10)));
    drop(rt);
    assert_eq!(after.failed, before.failed, "writes failed: {after:?}");
    let writes = after.written - before.written;
    assert_eq!(
        writes,
        2 * busy.messages,
        "every store and ack written: {after:?}"
    );

    let n = busy.messages as f64;
    let us = |cpu: f64| cpu * 1e6 / n;
    // Per-second rates of the idle phase, charged for the busy phase's wall time.
    let idle_rate = |cpu: f64| cpu / idle.wall * busy.wall;
    let pipeline = busy.process - busy.hook - busy.main;
    // The hook's part: the time inside the store and ack calls, each counted at most
    // HOOK_CALL_CAP_NS (a longer call was descheduled on a busy machine: wall time, not
    // CPU). The paced loop around them is the benchmark's; net of it, the thread's CPU
    // is noisier (`hook_thread_net_us`).
    let hook = busy
        .calls_ns
        .iter()
        .map(|&ns| ns.min(HOOK_CALL_CAP_NS))
        .sum::<u64>() as f64
        / 1e9;
    let hook_wall = busy.calls_ns.iter().sum::<u64>() as f64 / 1e9;
    let hook_net = busy.hook - idle_rate(idle.hook);
    let mut calls = busy.calls_ns.clone();
    calls.sort_unstable();
    let pct = |p: f64| calls[((calls.len() as f64 - 1.0) * p).round() as usize] as f64;
    let requests = (after.batches - before.batches) as f64;
    let mut f = Figures::new();
    f.insert("rate".into(), rate as f64);
    f.insert("achieved_msg_s".into(), n / busy.wall);
    f.insert("messages".into(), n);
    f.insert("secs".into(), busy.wall);
    f.insert("pipeline_us".into(), us(pipeline));
    f.insert("runtime_threads_us".into(), us(busy.runtime_threads));
    f.insert("process_sys_us".into(), us(busy.process_sys));
    f.insert("runtime_switches_per_msg".into(), busy.switches as f64 / n);
    f.insert(
        "idle_runtime_switches_s".into(),
        idle.switches as f64 / idle.wall,
    );
    f.insert("hook_us".into(), us(hook));
    f.insert("hook_wall_us".into(), us(hook_wall));
    f.insert("hook_thread_net_us".into(), us(hook_net));
    f.insert("hook_thread_us".into(), us(busy.hook));
    f.insert("plugin_us".into(), us(pipeline + hook));
    f.insert(
        "cassandra_us".into(),
        us(busy.cassandra - idle_rate(idle.cassandra)),
    );
    f.insert("cassandra_raw_us".into(), us(busy.cassandra));
    f.insert(
        "idle_pipeline_pct".into(),
        100.0 * (idle.process - idle.hook - idle.main) / idle.wall,
    );
    f.insert(
        "idle_cassandra_pct".into(),
        100.0 * idle.cassandra / idle.wall,
    );
    f.insert("idle_hook_pct".into(), 100.0 * idle.hook / idle.wall);
    // Writes that cancelled out before they were sent (an insert and its ack's delete) took
    // no request; the baseline's stats have no such field.
    let cancelled = stat_field(&after, "cancelled") - stat_field(&before, "cancelled");
    f.insert(
        "rows_per_request".into(),
        (writes - cancelled) as f64 / requests.max(1.0),
    );
    f.insert("cancelled_per_msg".into(), cancelled as f64 / n);
    f.insert("requests_per_msg".into(), requests / n);
    f.insert(
        "floor_scans".into(),
        (after.floor_scans - before.floor_scans) as f64,
    );
    f.insert("retries".into(), (after.retries - before.retries) as f64);
    f.insert("submit_ns_p50".into(), pct(0.5));
    f.insert("submit_ns_p99".into(), pct(0.99));
    f.insert("cassandra_found".into(), cassandra.is_some() as u8 as f64);
    f.insert(
        "cassandra_threads_us".into(),
        us(busy.cassandra_groups.values().sum()),
    );
    for (group, cpu) in &busy.cassandra_groups {
        f.insert(format!("cassandra_thread_{group}_us"), us(*cpu));
    }
    f
}

/// Submits `rate` messages a second for `secs` from a thread of its own, each acked
/// (deleted) `ack_delay` later, and waits until all are written. With `store_calls` None it
/// runs the same loop (pacing, choosing topics) without building messages or calling the
/// store: a hook that stores nothing.
#[allow(clippy::too_many_arguments)]
fn paced(
    store: &Store,
    rt: &tokio::runtime::Runtime,
    cassandra: &Option<String>,
    main_tid: &str,
    rate: u64,
    secs: u64,
    store_calls: Option<()>,
    topics: &[String],
    payload: &[u8],
    ack_delay: Duration,
    ids: &mut Ids,
) -> Usage {
    let total = rate * secs;
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let s = store.clone();
    let topics = topics.to_vec();
    let payload = payload.to_vec();
    let mut local_ids = Ids::new(0xC0_0017);
    std::mem::swap(&mut local_ids, ids);
    let hook = std::thread::Builder::new()
        .name(HOOK_THREAD.into())
        .spawn(move || {
            tid_tx.send(own_tid()).unwrap();
            go_rx.recv().unwrap();
            let mut calls = Vec::with_capacity(2 * total as usize);
            let mut acks: VecDeque<(Instant, usize, MsgId)> = VecDeque::new();
            let start = Instant::now();
            let mut sent = 0u64;
            let mut chosen = 0usize;
            while sent < total || !acks.is_empty() {
                let now = Instant::now();
                let due = ((now - start).as_secs_f64() * rate as f64) as u64;
                while sent < due.min(total) {
                    let i = sent as usize % topics.len();
                    if store_calls.is_some() {
                        let m = message(&mut local_ids, &topics[i], &payload);
                        let msgid = m.msgid;
                        let t = Instant::now();
                        s.submit_store(m).unwrap();
                        calls.push(t.elapsed().as_nanos() as u64);
                        acks.push_back((now + ack_delay, i, msgid));
                    } else {
                        chosen = chosen.wrapping_add(std::hint::black_box(i));
                    }
                    sent += 1;
                }
                while acks.front().is_some_and(|a| a.0 <= now) {
                    let (_, i, msgid) = acks.pop_front().unwrap();
                    let t = Instant::now();
                    s.submit_delete(&topics[i], msgid).unwrap();
                    calls.push(t.elapsed().as_nanos() as u64);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            std::hint::black_box(chosen);
            done_tx.send(()).unwrap();
            // Stay alive until the end sample: a finished thread leaves /proc/self/task.
            go_rx.recv().unwrap();
            (calls, local_ids)
        })
        .expect("hook thread");
    let hook_tid = tid_rx.recv().unwrap();
    let start = sample(cassandra);
    go_tx.send(()).unwrap();
    done_rx.recv().unwrap();
    rt.block_on(store.flush(Duration::from_secs(300)))
        .expect("flush");
    let end = sample(cassandra);
    go_tx.send(()).unwrap();
    let (calls, back_ids) = hook.join().unwrap();
    *ids = back_ids;
    let mut u = usage_between(&start, &end, &hook_tid, main_tid);
    u.calls_ns = calls;
    u.messages = total;
    u
}

/// A deterministic workload for `valgrind --tool=callgrind`: `n` messages in steps of one
/// message per topic (100 topics; `BENCH_CALLGRIND_STEP` topics per step, 1 for a request
/// per write whatever the batching), each step stored and flushed, then deleted and flushed.
/// Run it at two sizes and divide the difference of the instruction counts by the difference
/// of `n`: instructions per stored + acked message, without the connect and warm-up.
fn callgrind_workload(n: u64) {
    let node = std::env::var("CASSANDRA_NODE").unwrap_or_else(|_| "127.0.0.1:9042".into());
    let topics = env_num("BENCH_TOPICS", 100) as usize;
    let per_step = env_num("BENCH_CALLGRIND_STEP", topics as u64).max(1) as usize;
    let payload = vec![b'x'; env_num("BENCH_PAYLOAD", 128) as usize];
    let rt = runtime();
    rt.block_on(async {
        let store = Store::connect(store_config(&node), Duration::from_secs(120))
            .await
            .unwrap_or_else(|e| panic!("Cassandra at {node}: {e}"));
        let run = run_id();
        let names: Vec<String> = (0..topics)
            .map(|i| format!("bench/callgrind/{run}/{i}"))
            .collect();
        let mut ids = Ids::new(0xCA_11);
        for t in &names {
            let m = message(&mut ids, t, &payload);
            store.store(m.clone()).await.unwrap();
            store.delete(&m.topic, m.msgid).await.unwrap();
        }
        let before = store.stats();
        let mut done = 0u64;
        while done < n {
            let step: Vec<_> = names
                .iter()
                .take(per_step.min((n - done) as usize))
                .map(|t| message(&mut ids, t, &payload))
                .collect();
            for m in &step {
                store.submit_store(m.clone()).unwrap();
            }
            store.flush(Duration::from_secs(600)).await.unwrap();
            for m in &step {
                store.submit_delete(&m.topic, m.msgid).unwrap();
            }
            store.flush(Duration::from_secs(600)).await.unwrap();
            done += step.len() as u64;
        }
        let after = store.stats();
        assert_eq!(after.written - before.written, 2 * n, "{after:?}");
        println!(
            "callgrind workload: {n} messages stored and acked, {} requests",
            after.batches - before.batches
        );
        store.shutdown(Duration::from_secs(10)).await;
    });
}

/// Prints the table (with ratios when there is a baseline) and appends one JSON line per
/// run to the results file.
fn report(runs: &[(String, u64, Figures)], here: &str, there: &str) {
    const SHOWN: [(&str, &str); 12] = [
        ("plugin_us", "plugin CPU µs/msg (pipeline + hook)"),
        ("pipeline_us", "  pipeline threads µs/msg"),
        ("hook_us", "  hook: store + ack calls µs/msg"),
        ("cassandra_us", "Cassandra CPU µs/msg (net of idle)"),
        ("rows_per_request", "rows per request"),
        ("requests_per_msg", "requests per message"),
        ("process_sys_us", "  in the kernel (whole process) µs/msg"),
        (
            "runtime_switches_per_msg",
            "  runtime threads' context switches per msg",
        ),
        (
            "idle_runtime_switches_s",
            "  idle runtime's context switches per s",
        ),
        ("idle_pipeline_pct", "idle pipeline CPU %"),
        ("submit_ns_p50", "submit call p50 ns"),
        ("achieved_msg_s", "achieved msg/s"),
    ];
    let median = |tree: &str, rate: u64, key: &str| -> Option<f64> {
        let mut v: Vec<f64> = runs
            .iter()
            .filter(|(t, r, _)| t == tree && *r == rate)
            .filter_map(|(_, _, f)| f.get(key).copied())
            .collect();
        v.sort_by(|a, b| a.total_cmp(b));
        match v.len() {
            0 => None,
            n if n % 2 == 0 => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
            n => Some(v[n / 2]),
        }
    };
    let mut rates: Vec<u64> = runs.iter().map(|r| r.1).collect();
    rates.dedup();
    rates.sort_unstable();
    rates.dedup();
    let with_baseline = runs.iter().any(|r| r.0 == there);
    // Cassandra's busiest thread groups over all runs, for the breakdown rows.
    let mut groups: BTreeMap<String, f64> = BTreeMap::new();
    for (_, _, f) in runs {
        for (k, v) in f {
            if k.starts_with("cassandra_thread_") {
                *groups.entry(k.clone()).or_insert(0.0) += v;
            }
        }
    }
    let mut groups: Vec<(String, f64)> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.total_cmp(&a.1));
    let labels: Vec<(String, String)> = groups
        .iter()
        .take(6)
        .map(|(k, _)| {
            let name = k
                .trim_start_matches("cassandra_thread_")
                .trim_end_matches("_us");
            (k.clone(), format!("  Cassandra threads {name} µs/msg"))
        })
        .collect();
    println!();
    println!("CPU per stored + acked message (medians of the rounds)");
    for rate in rates {
        println!();
        if with_baseline {
            println!("| {rate} msg/s | {there} | {here} | {here} / {there} |");
            println!("|---|---|---|---|");
        } else {
            println!("| {rate} msg/s | {here} |");
            println!("|---|---|");
        }
        let shown = SHOWN
            .iter()
            .map(|(k, l)| (k.to_string(), l.to_string()))
            .chain(labels.iter().cloned());
        for (key, label) in shown {
            let key = key.as_str();
            let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
            let now = median(here, rate, key);
            if !with_baseline {
                println!("| {label} | {} |", cell(now));
                continue;
            }
            let before = median(there, rate, key);
            let ratio = match (now, before) {
                (Some(n), Some(b)) if b != 0.0 => format!("{:.2}x", n / b),
                _ => "-".into(),
            };
            println!("| {label} | {} | {} | {ratio} |", cell(before), cell(now));
        }
    }
    let unix_ms = run_id();
    for (tree, _, f) in runs {
        let fields: Vec<String> = f.iter().map(|(k, v)| format!("\"{k}\":{v:.3}")).collect();
        common::append_result(
            "cpu.jsonl",
            &format!(
                "{{\"bench\":\"cpu_per_message\",\"unix_ms\":{unix_ms},\"tree\":\"{tree}\",\"baseline\":{},{}}}",
                tree == there,
                fields.join(",")
            ),
        );
    }
}

/// A counter of the stats by name, read from their `Debug` form so that the same benchmark
/// builds against a tree whose stats lack it (0 then).
fn stat_field(stats: &impl std::fmt::Debug, name: &str) -> u64 {
    let text = format!("{stats:?}");
    let key = format!("{name}: ");
    text.find(&key)
        .and_then(|at| {
            text[at + key.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}
