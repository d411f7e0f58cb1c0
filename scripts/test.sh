#!/usr/bin/env bash
# Runs every test on a fresh machine. Installs what is missing, starts the local
# Cassandra (tests need it: none of them skip without it), runs the checks and the tests.
# A Cassandra this script started is stopped at the end; KEEP_CASSANDRA=1 keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }

step "tools"
scripts/ensure-deps.sh rust java maven python erlang

step "local Cassandra"
started_here=
if ! test/cassandra/cassandra.sh status >/dev/null; then started_here=1; fi
test/cassandra/cassandra.sh start
if [ -n "$started_here" ] && [ -z "${KEEP_CASSANDRA:-}" ]; then
    trap 'test/cassandra/cassandra.sh stop' EXIT
fi

step "local Cassandra with TLS (client certificates required), for the TLS tests"
tls_started_here=
if ! test/tls/cassandra-tls.sh status >/dev/null; then tls_started_here=1; fi
test/tls/cassandra-tls.sh start
if [ -n "$tls_started_here" ] && [ -z "${KEEP_CASSANDRA:-}" ]; then
    trap 'test/tls/cassandra-tls.sh stop; [ -z "$started_here" ] || test/cassandra/cassandra.sh stop' EXIT
fi

export CASSANDRA_TLS_NODE=${CASSANDRA_TLS_NODE:-127.0.0.1:${CASSANDRA_TLS_PORT:-9342}}

step "cassandra.sh behaviour"
test/cassandra/test_cassandra_sh.sh

step "rustfmt"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --workspace --all-targets --features offline_nif/fault_injection -- -D warnings

step "Rust tests (unit + live against Cassandra)"
cargo test --workspace

step "Erlang tests: the NIF (fault-injection build) against Cassandra"
FAULT_INJECTION=1 rebar3 eunit

step "plugin config files (config.hocon against config_schema.avsc, i18n)"
scripts/ensure-py-tools.sh
.cache/venv/bin/python test/check_plugin_config.py priv

step "package"
scripts/package.sh
rebar3 as test compile

step "the packaged NIF loads with Debian 11's glibc 2.31 (the EMQX 5.0-5.4 images)"
rm -rf .cache/glibc-check/pkg && mkdir -p .cache/glibc-check/pkg
tar -xzf _build/plugin/emqx_offline_cassandra-*.tar.gz -C .cache/glibc-check/pkg
test/glibc/check-glibc.sh .cache/glibc-check/pkg/*/*/priv/libemqx_offline_cassandra_nif.so

step "end to end: the packaged plugin in the EMQX double, seed scenario"
erl -noshell -pa _build/test/lib/emqx_offline_cassandra/test -eval 'emqx_offline_cassandra_e2e:run()'

step "all tests passed"
