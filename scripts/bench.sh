#!/usr/bin/env bash
# Benchmarks against the local Cassandra, each with its baseline measured in the same run.
# The machine is small and noisy (Cassandra shares its 2 cores), so the core and the NIF
# benchmarks alternate for BENCH_ROUNDS rounds and the summary compares medians.
#   core: pipeline vs one awaited INSERT at a time        -> bench-results/core.jsonl
#   NIF:  store/1 call times; end-to-end rate vs the core -> bench-results/nif.jsonl
#   tombstones: replay beside 200,000 acked rows, floor vs slices -> tombstones.jsonl
#   plugin (packaged, in the EMQX double): publish hook time vs a synchronous-insert hook,
#     hook-path rate vs the core, replay latencies, RSS through an outage -> plugin.jsonl
# Then one table of every figure with its baseline and target, appended as one JSON line to
# bench-results/summary.jsonl (format: docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${BENCH_ROUNDS:-3}
scripts/ensure-deps.sh rust java maven python erlang
test/cassandra/cassandra.sh start
mkdir -p bench-results
rebar3 as test compile >/dev/null
cargo bench -p offline_store --bench store_throughput --no-run 2>/dev/null
for round in $(seq "$rounds"); do
    echo "=== round $round of $rounds"
    cargo bench -p offline_store --bench store_throughput 2>/dev/null
    ceiling=$(tail -n 1 bench-results/core.jsonl | sed -n 's/.*"pipeline_msg_s":\([0-9.]*\).*/\1/p')
    CORE_CEILING_MSG_S=$ceiling erl -noshell \
        -pa _build/test/lib/emqx_offline_cassandra/ebin -pa _build/test/lib/emqx_offline_cassandra/test \
        -eval 'ok = emqx_offline_cassandra_nif_bench:run(), halt().'
done
cargo bench -p offline_store --bench tombstone_replay 2>/dev/null
ceiling=$(python3 -c '
import json, statistics, sys
rows = [json.loads(l) for l in open("bench-results/core.jsonl").read().splitlines()[-int(sys.argv[1]):]]
print(round(statistics.median(r["pipeline_msg_s"] for r in rows)))' "$rounds")
scripts/package.sh >/dev/null
CORE_CEILING_MSG_S=$ceiling erl -noshell -pa _build/test/lib/emqx_offline_cassandra/test \
    -eval 'ok = emqx_offline_cassandra_plugin_bench:run(), halt().'
erl -noshell -pa _build/test/lib/emqx_offline_cassandra/test \
    -eval 'ok = emqx_offline_cassandra_plugin_bench:run_outage(), halt().'
python3 scripts/bench-summary.py "$rounds" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
