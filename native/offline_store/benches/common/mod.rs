//! What the benchmarks share: their knobs and their results files.

use std::io::Write;

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
