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
# The NIF is built once, by rebar3's pre-compile hook (scripts/build-nif.sh, against the
# glibc 2.31 sysroot); package.sh's `rebar3 release` finds it up to date.
rebar3 compile
scripts/package.sh
if [ -n "$start_cassandra" ]; then
    test/cassandra/cassandra.sh start
fi
