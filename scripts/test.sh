#!/usr/bin/env bash
# Runs the project's tests on a fresh machine; installs what is missing.
#   scripts/test.sh        every suite, against a real local Cassandra (make test; CI runs this)
#   scripts/test.sh unit   what needs no Cassandra: Rust unit tests, the EUnit suites of pure
#                          modules (config, topic, reason, cli, groups, replay, acked), config files
#   scripts/test.sh lint   rustfmt and clippy
# Every suite runs even when an earlier one failed; the run ends with a summary of all of
# them and fails if any failed. Only set-up failures (tools, Cassandra) stop it at once.
# The Cassandras this script started are stopped at the end (the 3-node cluster and the
# Cassandra 4.1 node right after their suites); KEEP_CASSANDRA=1 keeps them.
# TEST_TIME_SCALE (default 1) stretches every deadline of the tests on a busy machine.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-all}
case "$mode" in
all | unit | lint) ;;
*) echo "usage: scripts/test.sh [all|unit|lint]" >&2; exit 2 ;;
esac

step() { printf '\n=== %s\n' "$*"; }

passed=()
failed=()
last_rc=0
# suite NAME COMMAND...: runs one suite, records its outcome, never stops the run.
suite() {
    local name=$1 start rc
    shift
    step "$name"
    start=$(date +%s)
    set +e
    "$@"
    rc=$?
    set -e
    last_rc=$rc
    local took=$(($(date +%s) - start))
    if [ "$rc" = 0 ]; then
        passed+=("$name (${took}s)")
    else
        failed+=("$name (exit $rc, ${took}s)")
    fi
    return 0
}
# not_run NAME WHY: a suite that could not run because one it depends on failed.
not_run() {
    step "$1"
    echo "not run: $2"
    failed+=("$1 (not run: $2)")
}

summary() {
    step "summary"
    local s
    for s in "${passed[@]}"; do echo "  ok      $s"; done
    for s in "${failed[@]}"; do echo "  FAILED  $s"; done
    echo "suites: ${#passed[@]} passed, ${#failed[@]} failed"
    [ "${#failed[@]}" = 0 ]
}

lint() {
    suite "rustfmt" cargo fmt --all -- --check
    suite "clippy" cargo clippy --workspace --all-targets -- -D warnings
    suite "clippy (fault injection, bench API)" \
        cargo clippy --workspace --all-targets --features offline_nif/fault_injection,offline_nif/bench_api -- -D warnings
}

# EUnit modules: every test/*_tests.erl, one suite each.
eunit_modules() {
    local f
    for f in test/*_tests.erl; do basename "$f" .erl; done
}

config_files() {
    scripts/ensure-py-tools.sh && .cache/venv/bin/python test/check_plugin_config.py priv
}

packaged_nif_loads_on_glibc_2_31() {
    rm -rf .cache/glibc-check/pkg && mkdir -p .cache/glibc-check/pkg
    tar -xzf _build/plugin/emqx_offline_cassandra-*.tar.gz -C .cache/glibc-check/pkg
    test/glibc/check-glibc.sh .cache/glibc-check/pkg/*/*/priv/libemqx_offline_cassandra_nif.so
}

e2e() {
    rebar3 as test compile &&
        erl -noshell -pa _build/test/lib/emqx_offline_cassandra/test -eval 'emqx_offline_cassandra_e2e:run()'
}

# The seed scenario against another node (the e2e module and its helpers read CASSANDRA_NODE),
# in one EMQX mode, the newest: the modes differ on EMQX's side, which the run on 5.0 covers.
e2e_on() {
    rebar3 as test compile &&
        CASSANDRA_NODE=$1 erl -noshell -pa _build/test/lib/emqx_offline_cassandra/test \
            -eval "emqx_offline_cassandra_e2e:run(['5.10'])"
}

if [ "$mode" = lint ]; then
    step "tools"
    scripts/ensure-deps.sh rust
    lint
    summary
    exit
fi

if [ "$mode" = unit ]; then
    step "tools"
    scripts/ensure-deps.sh rust python erlang
    suite "Rust unit tests" cargo test -p offline_store --lib
    for m in config topic reason cli groups replay acked; do
        suite "EUnit: emqx_offline_cassandra_${m}_tests" rebar3 eunit --module="emqx_offline_cassandra_${m}_tests"
    done
    suite "plugin config files (config.hocon against config_schema.avsc, i18n)" config_files
    summary
    exit
fi

step "tools"
scripts/ensure-deps.sh rust java maven python erlang

step "local Cassandra"
started_here=
if ! test/cassandra/cassandra.sh status >/dev/null; then started_here=1; fi
tls_started_here=
if ! test/tls/cassandra-tls.sh status >/dev/null; then tls_started_here=1; fi
cluster_started_here=
stop_cluster() {
    # `return 0`, not `return`: called from the EXIT trap, a bare return would hand back the
    # status the script failed with, and set -e would end the trap before the other stops.
    if [ -n "${KEEP_CASSANDRA:-}" ] || [ -z "$cluster_started_here" ]; then return 0; fi
    test/cassandra/cassandra.sh cluster stop || true
    cluster_started_here=
}
# Cassandra 4.1 on JDK 11 (127.0.0.1:9045), beside 5.0: the suites whose outcome depends on
# the version run on it too (docs/development.md, "Cassandra 4.1 beside 5.0").
c41_started_here=
cassandra41() {
    CASSANDRA_VERSION=${CASSANDRA41_VERSION:-4.1.10} CASSANDRA_PORT=${CASSANDRA41_PORT:-9045} \
        CASSANDRA_STORAGE_PORT=${CASSANDRA41_STORAGE_PORT:-7005} CASSANDRA_HEAP=${CASSANDRA41_HEAP:-768M} \
        test/cassandra/cassandra.sh "$@"
}
stop_cassandra41() {
    if [ -n "${KEEP_CASSANDRA:-}" ] || [ -z "$c41_started_here" ]; then return 0; fi
    cassandra41 stop || true
    c41_started_here=
}
# The two datacenters (127.0.0.1 in dc1, 127.0.0.2 in dc2, CQL 9046), like the cluster.
dc_started_here=
stop_dc() {
    if [ -n "${KEEP_CASSANDRA:-}" ] || [ -z "$dc_started_here" ]; then return 0; fi
    test/cassandra/cassandra.sh dc stop || true
    dc_started_here=
}
stop_started() {
    stop_cluster
    stop_dc
    stop_cassandra41
    if [ -n "${KEEP_CASSANDRA:-}" ]; then return 0; fi
    [ -z "$tls_started_here" ] || test/tls/cassandra-tls.sh stop || true
    [ -z "$started_here" ] || test/cassandra/cassandra.sh stop || true
}
trap stop_started EXIT
test/cassandra/cassandra.sh start

step "local Cassandra with TLS (client certificates required), for the TLS tests"
test/tls/cassandra-tls.sh start
export CASSANDRA_TLS_NODE=${CASSANDRA_TLS_NODE:-127.0.0.1:${CASSANDRA_TLS_PORT:-9342}}

suite "cassandra.sh behaviour" test/cassandra/test_cassandra_sh.sh
lint
suite "Rust unit tests" cargo test -p offline_store --lib
for t in native/offline_store/tests/*.rs; do
    # cluster.rs needs the 3-node cluster: its own step below.
    [ "$(basename "$t" .rs)" != cluster ] || continue
    # multi_dc.rs needs the two datacenters: their own step below.
    [ "$(basename "$t" .rs)" != multi_dc ] || continue
    suite "Rust against Cassandra: $(basename "$t" .rs)" cargo test -p offline_store --test "$(basename "$t" .rs)"
done
# A 3-node cluster of its own (127.0.0.1-3, CQL 9044), started here and stopped as soon as
# its suites end (also when they fail), to give the machine back to the suites after it.
step "3-node Cassandra cluster, for the cluster tests"
if ! test/cassandra/cassandra.sh cluster status >/dev/null; then cluster_started_here=1; fi
export CASSANDRA_CLUSTER=${CASSANDRA_CLUSTER:-127.0.0.1:${CASSANDRA_CLUSTER_PORT:-9044}}
suite "start the 3-node cluster" test/cassandra/cassandra.sh cluster start
if [ "$last_rc" = 0 ]; then
    suite "cassandra.sh cluster behaviour" test/cassandra/test_cassandra_sh.sh cluster
    suite "Rust against the 3-node cluster: cluster (nodes SIGKILLed under load)" \
        cargo test -p offline_store --test cluster
else
    not_run "cassandra.sh cluster behaviour" "the cluster did not start"
    not_run "Rust against the 3-node cluster: cluster" "the cluster did not start"
fi
stop_cluster
# Two datacenters of one node each, started here and stopped right after their suite.
step "two datacenters (dc1: 127.0.0.1, dc2: 127.0.0.2), for the multi-datacenter tests"
if ! test/cassandra/cassandra.sh dc status >/dev/null; then dc_started_here=1; fi
export CASSANDRA_DC=${CASSANDRA_DC:-127.0.0.1:${CASSANDRA_DC_PORT:-9046}}
suite "start the two datacenters" test/cassandra/cassandra.sh dc start
if [ "$last_rc" = 0 ]; then
    suite "Rust against two datacenters: multi_dc (dc1 cut off, the floor, the checks)" \
        cargo test -p offline_store --test multi_dc
else
    not_run "Rust against two datacenters: multi_dc" "the two datacenters did not start"
fi
stop_dc
# The Erlang suites load the fault-injection build (NIFs that panic on purpose).
for m in $(eunit_modules); do
    suite "EUnit: $m" env FAULT_INJECTION=1 rebar3 eunit --module="$m"
done
suite "plugin config files (config.hocon against config_schema.avsc, i18n)" config_files
suite "package" scripts/package.sh
package_rc=$last_rc
if [ "$package_rc" = 0 ]; then
    suite "the packaged NIF loads with Debian 11's glibc 2.31 (the EMQX 5.0-5.4 images)" packaged_nif_loads_on_glibc_2_31
    suite "end to end: the packaged plugin in the EMQX double, seed scenario" e2e
else
    not_run "the packaged NIF loads with Debian 11's glibc 2.31" "the package was not built"
    not_run "end to end: the packaged plugin in the EMQX double" "the package was not built"
fi
# Cassandra 4.1 of its own (127.0.0.1:9045, JDK 11 from PyPI), started here and stopped as
# soon as its suites end: the live core suite (every statement and read path), expiry (the
# TTL limit differs before 5.0) and the seed scenario end to end, again on 4.1.
step "Cassandra 4.1, for the suites that run on both versions"
if ! cassandra41 status >/dev/null; then c41_started_here=1; fi
node41=127.0.0.1:${CASSANDRA41_PORT:-9045}
suite "start Cassandra 4.1" cassandra41 start
if [ "$last_rc" = 0 ]; then
    suite "cassandra.sh behaviour on 4.1" test/cassandra/test_cassandra_sh.sh 4.1
    suite "Rust against Cassandra 4.1: live" env CASSANDRA_NODE="$node41" \
        cargo test -p offline_store --test live
    suite "Rust against Cassandra 4.1: expiry" env CASSANDRA_NODE="$node41" \
        cargo test -p offline_store --test expiry
    if [ "$package_rc" = 0 ]; then
        suite "end to end on Cassandra 4.1: the packaged plugin in the EMQX double (5.10), seed scenario" \
            e2e_on "$node41"
    else
        not_run "end to end on Cassandra 4.1" "the package was not built"
    fi
else
    not_run "Cassandra 4.1 suites" "Cassandra 4.1 did not start"
fi
stop_cassandra41
summary
