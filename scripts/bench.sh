#!/usr/bin/env bash
# Benchmarks against the local Cassandra; each prints its figures with a baseline from the
# same run and appends a JSON line to bench-results/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh rust java maven python
test/cassandra/cassandra.sh start
cargo bench -p offline_store --bench store_throughput
