#!/usr/bin/env bash
# Benchmarks against the local Cassandra, each with its baseline measured in the same run.
# The machine is small and noisy (Cassandra shares its 2 cores), so the core and the NIF
# benchmarks alternate for BENCH_ROUNDS rounds and the summary compares medians.
#   core: pipeline vs one awaited INSERT at a time        -> bench-results/core.jsonl
#   NIF:  store/1 call times; end-to-end rate vs the core -> bench-results/nif.jsonl
#   tombstones: replay beside 200,000 acked rows, floor vs slices -> tombstones.jsonl
#   wildcards: topic index lookup of one device among 100,000 topics vs reading them all
#     -> wildcards.jsonl
#   disk buffer (issue 14): submit_store p50/p99 and msg/s with buffer_mode disk vs memory
#     (healthy Cassandra); spool write rate during an outage vs a plain sequential write of the
#     same bytes, same sync policy, same disk; drain rate after it vs the core pipeline
#     -> spool.jsonl
#   plugin (packaged, in the EMQX double): publish hook time vs a synchronous-insert hook,
#     hook-path rate vs the core, replay latencies, RSS through an outage -> plugin.jsonl;
#     memory through an outage with 1 MB payloads vs buffer_max_size -> outage_large.jsonl;
#     CPU per stored + acked message (VM threads by group, Cassandra) vs hooks storing nothing
#     -> plugin_cpu.jsonl
#   CPU (issue 17): CPU per stored + acked message at 500 and 5,000 msg/s, rows per request,
#     Cassandra's CPU, on this tree and on BENCH_BASELINE_REV's build alternately -> cpu.jsonl;
#     callgrind instructions per message, both trees -> callgrind.jsonl (scripts/bench-cpu.sh)
#   cluster (the 3-node cluster of cassandra.sh, RF 3, LOCAL_QUORUM): stored msg/s with node 3
#     SIGKILLed vs all three up, failed writes in both -> cluster.jsonl
# Then one table of every figure with its baseline and target, appended as one JSON line to
# bench-results/summary.jsonl (format: docs/benchmarks.md).
# The benchmarks need the bench-only API (cargo feature bench_api): the plugin they install
# is packaged into _build/plugin-bench/, never into _build/plugin/.
# Erlang's log lines go to bench-results/erlang.log, so the tables stay clean.
# A Cassandra (or cluster) this script started is stopped at the end; KEEP_CASSANDRA=1 keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${BENCH_ROUNDS:-3}
step() { printf '\n=== %s\n' "$*"; }

step "tools"
scripts/ensure-deps.sh rust java maven python erlang
step "local Cassandra"
started_here=
if ! test/cassandra/cassandra.sh status >/dev/null && [ -z "${KEEP_CASSANDRA:-}" ]; then started_here=1; fi
cluster_started_here=
stop_cluster() {
    [ -z "$cluster_started_here" ] || test/cassandra/cassandra.sh cluster stop || true
    cluster_started_here=
}
stop_started() {
    stop_cluster
    [ -z "$started_here" ] || test/cassandra/cassandra.sh stop || true
}
trap stop_started EXIT
test/cassandra/cassandra.sh start
mkdir -p bench-results

export BENCH_API=1
export PLUGIN_PACKAGE_DIR=_build/plugin-bench
step "build: the NIF with the bench API (several minutes on a fresh clone)"
rebar3 as test compile
step "build: the core benchmarks"
cargo bench -p offline_store --bench store_throughput --no-run
cargo bench -p offline_store --bench tombstone_replay --no-run
cargo bench -p offline_store --bench wildcard_lookup --no-run
cargo bench -p offline_store --bench spool --no-run
cargo bench -p offline_store --bench cluster_throughput --no-run
step "build: the plugin package the plugin benchmark installs ($PLUGIN_PACKAGE_DIR)"
PACKAGE_DIR=$PLUGIN_PACKAGE_DIR scripts/package.sh

erlang_log=bench-results/erlang.log
: >"$erlang_log"
# erl_bench FUN: runs FUN() of a benchmark module in a fresh VM, its logger writing to a file.
erl_bench() {
    erl -noshell -pa _build/test/lib/emqx_offline_cassandra/ebin -pa _build/test/lib/emqx_offline_cassandra/test \
        -eval "ok = emqx_offline_cassandra_test_util:log_to_file(\"$erlang_log\"), ok = $1(), halt()."
}

for round in $(seq "$rounds"); do
    step "round $round of $rounds: core pipeline, then the NIF"
    cargo bench -p offline_store --bench store_throughput 2>/dev/null
    ceiling=$(tail -n 1 bench-results/core.jsonl | sed -n 's/.*"pipeline_msg_s":\([0-9.]*\).*/\1/p')
    CORE_CEILING_MSG_S=$ceiling erl_bench emqx_offline_cassandra_nif_bench:run
done
step "tombstones: replay beside acked rows"
cargo bench -p offline_store --bench tombstone_replay 2>/dev/null
step "wildcards: lookup in the topic index over 100,000 topics"
cargo bench -p offline_store --bench wildcard_lookup 2>/dev/null
step "disk buffer: healthy disk vs memory mode, spool writes during an outage, drain after it"
BENCH_ROUNDS=$rounds cargo bench -p offline_store --bench spool 2>/dev/null
ceiling=$(python3 -c '
import json, statistics, sys
rows = [json.loads(l) for l in open("bench-results/core.jsonl").read().splitlines()[-int(sys.argv[1]):]]
print(round(statistics.median(r["pipeline_msg_s"] for r in rows)))' "$rounds")
step "CPU per stored + acked message: this tree vs ${BENCH_BASELINE_REV-33a7b75} (issue 17; builds the baseline once)"
scripts/bench-cpu.sh cpu
if command -v valgrind >/dev/null; then
    step "instructions per stored + acked message under callgrind, this tree vs the baseline"
    scripts/bench-cpu.sh callgrind
fi
step "the packaged plugin in the EMQX double"
CORE_CEILING_MSG_S=$ceiling erl_bench emqx_offline_cassandra_plugin_bench:run
step "paced replay of a 100,000 backlog vs live delivery in the EMQX double (5.x path and 6.1.1+ extsub path)"
erl_bench emqx_offline_cassandra_replay_bench:run
step "the packaged plugin: CPU per stored + acked message at 500 and 5,000 msg/s vs hooks storing nothing"
erl_bench emqx_offline_cassandra_plugin_bench:run_cpu
step "the packaged plugin through a Cassandra outage of ${BENCH_OUTAGE_SECS:-600} s"
erl_bench emqx_offline_cassandra_plugin_bench:run_outage
step "the packaged plugin through a Cassandra outage of ${BENCH_OUTAGE_LARGE_SECS:-60} s with 1 MB payloads"
erl_bench emqx_offline_cassandra_plugin_bench:run_outage_large
# The cluster last, and stopped as soon as its step ends: its three JVMs would take the
# machine from the steps above.
step "3-node cluster: stored msg/s with node 3 SIGKILLed vs all three up"
if ! test/cassandra/cassandra.sh cluster status >/dev/null && [ -z "${KEEP_CASSANDRA:-}" ]; then cluster_started_here=1; fi
export CASSANDRA_CLUSTER=${CASSANDRA_CLUSTER:-127.0.0.1:${CASSANDRA_CLUSTER_PORT:-9044}}
test/cassandra/cassandra.sh cluster start
cargo bench -p offline_store --bench cluster_throughput
stop_cluster
step "summary"
python3 scripts/bench-summary.py "$rounds" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "Erlang log lines of the run: $erlang_log"
