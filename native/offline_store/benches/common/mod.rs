//! What the benchmarks share: their knobs, their messages and their results files.
#![allow(dead_code)] // each bench binary uses a part

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use offline_store::{Message, MsgId};

/// Message ids in publish order from one bench "node": the clock in µs, strictly rising.
pub struct Ids {
    node: u64,
    last_us: u64,
}

impl Ids {
    pub fn new(node: u64) -> Self {
        Ids { node, last_us: 0 }
    }

    pub fn next(&mut self) -> MsgId {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        self.last_us = now.max(self.last_us + 1);
        MsgId::new(self.last_us, self.node, (self.last_us & 0xFFFF) as u16)
    }
}

/// A QoS 1 message published now, kept an hour (benchmarks leave no rows behind for good).
pub fn message(ids: &mut Ids, topic: &str, payload: &[u8]) -> Message {
    let msgid = ids.next();
    Message {
        topic: topic.to_string(),
        arrived_ms: (msgid.timestamp_us() / 1000) as i64,
        msgid,
        sender: "bench".into(),
        qos: 1,
        retain: false,
        payload: payload.to_vec(),
        ttl_secs: Some(3600),
    }
}

/// A numeric knob from the environment, or its default.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Appends one JSON line to `BENCH_RESULTS`, or else to `bench-results/<default_file>` at
/// the project's root (docs/benchmarks.md). A file that cannot be written is reported, not
/// fatal: the figures are printed anyway.
pub fn append_result(default_file: &str, line: &str) {
    let results = std::env::var("BENCH_RESULTS").unwrap_or_else(|_| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let root = root.canonicalize().unwrap_or(root);
        root.join("bench-results")
            .join(default_file)
            .display()
            .to_string()
    });
    if let Some(dir) = std::path::Path::new(&results).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&results)
    {
        Ok(mut f) => {
            let _ = writeln!(f, "{line}");
            println!("results appended to {results}");
        }
        Err(e) => eprintln!("could not write {results}: {e}"),
    }
}
