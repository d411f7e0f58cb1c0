#!/usr/bin/env bash
# CPU per stored + acked message (issue 17), this tree against a baseline commit, in one run:
# benches/cpu_per_message.rs is built from this tree and from BENCH_BASELINE_REV (a git
# worktree kept in BENCH_BASELINE_DIR with a target dir of its own, so later runs only rebuild
# what changed), and the rates alternate between the two builds (docs/benchmarks.md).
#
#   scripts/bench-cpu.sh                    both rates, the baseline and this tree
#   scripts/bench-cpu.sh callgrind          instructions per message under callgrind, both trees
#   BENCH_BASELINE_REV= scripts/bench-cpu.sh   this tree only
#
# Env: BENCH_BASELINE_REV (33a7b75: the commit before issue 17's changes), BENCH_BASELINE_DIR
# (_build/bench-baseline/<rev>), CASSANDRA_NODE (127.0.0.1:9042; the Cassandra must run), the
# benchmark's knobs (BENCH_CPU_RATES, BENCH_CPU_SECS, BENCH_CPU_ROUNDS, ...: see the bench),
# BENCH_CALLGRIND_SIZES ("300 2300": the two workload sizes whose difference is divided).
# The baseline gets this tree's copy of the benchmark (and of benches/common), so both
# measure the same way; the store's API it uses must exist in the baseline too.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
rev=${BENCH_BASELINE_REV-33a7b75}
mode=${1:-cpu}

# bench_bin DIR: builds cpu_per_message in the workspace at DIR, prints its executable's path.
bench_bin() {
    (cd "$1" && cargo bench -p offline_store --bench cpu_per_message --no-run --message-format=json) |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cpu_per_message" and m.get("executable"):
        print(m["executable"])'
}

# Callgrind needs the symbols the release profile strips (a second set of artifacts in the
# same target dir: the strip setting is part of their hash, so neither build undoes the other).
[ "$mode" = callgrind ] && export CARGO_PROFILE_BENCH_STRIP=none
echo "build: this tree's benchmark" >&2
current=$(bench_bin "$root")
[ -n "$current" ] || { echo "bench-cpu.sh: the benchmark did not build" >&2; exit 1; }
baseline=
if [ -n "$rev" ]; then
    dir=${BENCH_BASELINE_DIR:-$root/_build/bench-baseline/$rev}
    if [ ! -e "$dir/Cargo.toml" ]; then
        echo "worktree of $rev in $dir" >&2
        mkdir -p "$(dirname "$dir")"
        git worktree add --detach "$dir" "$rev" >&2
    fi
    benches=$dir/native/offline_store/benches
    cp native/offline_store/benches/cpu_per_message.rs "$benches/"
    cp native/offline_store/benches/common/mod.rs "$benches/common/mod.rs"
    grep -q 'name = "cpu_per_message"' "$dir/native/offline_store/Cargo.toml" ||
        printf '\n[[bench]]\nname = "cpu_per_message"\nharness = false\n' >>"$dir/native/offline_store/Cargo.toml"
    echo "build: the benchmark on $rev (several minutes the first time)" >&2
    baseline=$(CARGO_TARGET_DIR=$dir/target bench_bin "$dir")
    [ -n "$baseline" ] || { echo "bench-cpu.sh: the benchmark did not build on $rev" >&2; exit 1; }
fi

case $mode in
cpu)
    BENCH_BASELINE_BIN=$baseline BENCH_BASELINE_LABEL=${rev:-baseline} \
        BENCH_TREE_LABEL=$(git describe --always --dirty 2>/dev/null || echo current) \
        "$current"
    ;;
callgrind)
    # Instructions (Ir) of the whole process for two workload sizes; their difference over
    # the difference in messages is the cost of one stored + acked message.
    read -r small large <<<"${BENCH_CALLGRIND_SIZES:-300 2300}"
    out=$root/bench-results/callgrind
    mkdir -p "$out"
    results=${BENCH_RESULTS:-$root/bench-results/callgrind.jsonl}
    for tree in ${baseline:+baseline} current; do
        bin=$current; [ "$tree" = baseline ] && bin=$baseline
        for n in $small $large; do
            valgrind --tool=callgrind --callgrind-out-file="$out/$tree.$n.out" "$bin" --callgrind-workload "$n" \
                >"$out/$tree.$n.log" 2>&1 || { tail -20 "$out/$tree.$n.log"; exit 1; }
        done
        label=$([ "$tree" = baseline ] && echo "$rev" || git describe --always --dirty)
        echo
        echo "== $tree ($label)"
        scripts/callgrind-per-message.py "$out/$tree.$small.out" "$small" "$out/$tree.$large.out" "$large" 25 |
            tee "$out/$tree.top.txt"
        figures=$(scripts/callgrind-per-message.py "$out/$tree.$small.out" "$small" "$out/$tree.$large.out" "$large" --json)
        echo "{\"bench\":\"callgrind\",\"unix_ms\":$(date +%s%3N),\"tree\":\"$tree\",\"rev\":\"$label\",\"small\":$small,\"large\":$large,${figures#\{}" >>"$results"
    done
    if [ -n "$baseline" ]; then
        tail -n 2 "$results" | python3 -c '
import json, sys
b, c = [json.loads(l) for l in sys.stdin]
for k in ("ir_per_msg", "ir_per_msg_no_rep_string"):
    print(f"{k}: {b[k]:,} -> {c[k]:,} ({c[k] / b[k]:.2f}x)")'
    fi
    echo "results appended to $results; profiles in $out (callgrind_annotate --inclusive=yes FILE)"
    ;;
*)
    echo "usage: $0 [cpu|callgrind]" >&2
    exit 2
    ;;
esac
