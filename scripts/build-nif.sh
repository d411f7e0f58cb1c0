#!/usr/bin/env bash
# Builds the NIF library and copies it into priv/ (rebar3 runs this before compiling).
#   FAULT_INJECTION=1  adds the test-only NIFs that panic on purpose (used by `make test`).
set -euo pipefail
cd "$(dirname "$0")/.."
features=()
if [ -n "${FAULT_INJECTION:-}" ]; then features=(--features fault_injection); fi
cargo build --release -p emqx_offline_cassandra_nif "${features[@]}"
mkdir -p priv
# Copy (not link): EMQX drops symlinks from plugin packages. Write then rename, so a
# running VM that has the old file mapped keeps a valid file.
cp target/release/libemqx_offline_cassandra_nif.so priv/.libemqx_offline_cassandra_nif.so.tmp
mv -f priv/.libemqx_offline_cassandra_nif.so.tmp priv/libemqx_offline_cassandra_nif.so
