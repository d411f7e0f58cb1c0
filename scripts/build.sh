#!/usr/bin/env bash
# Builds the project on a fresh machine: installs missing tools, builds the Rust crates
# and the Erlang app, and makes the plugin package (_build/plugin/*.tar.gz).
# --start-cassandra also starts the local Cassandra to try it.
set -euo pipefail
cd "$(dirname "$0")/.."

start_cassandra=
for arg in "$@"; do
    case "$arg" in
    --start-cassandra) start_cassandra=1 ;;
    *) echo "usage: scripts/build.sh [--start-cassandra]" >&2; exit 2 ;;
    esac
done

scripts/ensure-deps.sh rust erlang
cargo build --release --workspace
rebar3 compile    # builds the NIF (scripts/build-nif.sh) into priv/, then the Erlang app
scripts/package.sh
if [ -n "$start_cassandra" ]; then
    test/cassandra/cassandra.sh start
fi
