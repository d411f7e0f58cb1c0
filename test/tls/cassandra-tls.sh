#!/usr/bin/env bash
# Starts (or stops) a second local Cassandra with client_encryption_options on and client
# certificates required, for the TLS tests: CQL on 127.0.0.1:${CASSANDRA_TLS_PORT:-9342},
# certificates from make-certs.sh. `cassandra-tls.sh start|stop|status`.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
certs=${TLS_CERTS_DIR:-$ROOT/.cache/tls}
"$HERE/make-certs.sh" "$certs" >/dev/null
yaml=$ROOT/.cache/cassandra-tls.yaml
mkdir -p "$(dirname "$yaml")"
cat >"$yaml" <<YAML
client_encryption_options:
  enabled: true
  optional: false
  require_client_auth: true
  keystore: $certs/server-keystore.pem
  truststore: $certs/test-ca.pem
  ssl_context_factory:
    class_name: org.apache.cassandra.security.PEMBasedSslContextFactory
YAML
export CASSANDRA_PORT=${CASSANDRA_TLS_PORT:-9342} CASSANDRA_STORAGE_PORT=${CASSANDRA_TLS_STORAGE_PORT:-7300}
export CASSANDRA_HEAP=512M CASSANDRA_EXTRA_YAML=$yaml CASSANDRA_SKIP_BOOTSTRAP=1
exec "$ROOT/test/cassandra/cassandra.sh" "${1:-start}"
