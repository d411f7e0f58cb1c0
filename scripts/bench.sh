#!/usr/bin/env bash
# Benchmarks against the local Cassandra, each with its baseline measured in the same run.
# The machine is small and noisy (Cassandra shares its 2 cores), so the core and the NIF
# benchmarks alternate for BENCH_ROUNDS rounds and the summary compares medians.
#   core: pipeline vs one awaited INSERT at a time        -> bench-results/core.jsonl
#   NIF:  store/1 call times; end-to-end rate vs the core -> bench-results/nif.jsonl
#   plugin (packaged, in the EMQX double): publish hook time, replay latencies -> plugin.jsonl
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
scripts/package.sh >/dev/null
erl -noshell -pa _build/test/lib/emqx_offline_cassandra/test \
    -eval 'ok = emqx_offline_cassandra_plugin_bench:run(), halt().'
python3 - "$rounds" <<'PY'
import json, statistics, sys
n = int(sys.argv[1])
def last(path):
    with open(path) as f:
        return [json.loads(l) for l in f.read().splitlines()[-n:]]
core, nif = last("bench-results/core.jsonl"), last("bench-results/nif.jsonl")
med = lambda rows, k: statistics.median(r[k] for r in rows)
print(f"\n=== summary: medians of {n} alternating rounds")
print("| figure | median | target |\n|---|---|---|")
print(f"| core: one awaited INSERT at a time | {med(core,'baseline_msg_s'):.0f} msg/s | |")
print(f"| core: pipeline | {med(core,'pipeline_msg_s'):.0f} msg/s | |")
print(f"| core: pipeline / one-at-a-time | {med(core,'ratio'):.1f}x | |")
print(f"| NIF store/1 call p50 / p99 / max | {med(nif,'call_ns_p50')/1000:.1f} / {med(nif,'call_ns_p99')/1000:.1f} / {med(nif,'call_ns_max')/1000:.1f} us | p99 <= 20 us, max < 100 us |")
print(f"| NIF end to end, Erlang -> Cassandra | {med(nif,'end_to_end_msg_s'):.0f} msg/s | |")
print(f"| NIF end to end / core pipeline | {med(nif,'end_to_end_msg_s')/med(core,'pipeline_msg_s'):.2f}x | >= 0.9x |")
PY
