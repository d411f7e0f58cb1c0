#!/usr/bin/env bash
# Makes the certificates the TLS tests use, in DIR (default .cache/tls): a CA, a Cassandra
# server certificate for 127.0.0.1 / cassandra.test signed by it, a client certificate
# for mutual TLS, and a second, unrelated CA. Idempotent: an existing set is kept.
set -euo pipefail
dir=${1:-$(cd "$(dirname "$0")/../.." && pwd)/.cache/tls}
mkdir -p "$dir"
cd "$dir"
[ -f .complete ] && exit 0
days=3650
ca() { # name
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.pem" -days $days -subj "/CN=$1" 2>/dev/null
}
leaf() { # name ca san extendedKeyUsage
    openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$1" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=%s\n' "$3" "$4" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -out "$1.pem" -days $days -extfile "$1.ext" 2>/dev/null
    # PKCS#8, as Cassandra's PEM keystore and rustls both read it.
    openssl pkcs8 -topk8 -nocrypt -in "$1.key" -out "$1.pk8"
}
ca test-ca
ca other-ca
leaf server test-ca "IP:127.0.0.1,DNS:cassandra.test" serverAuth
leaf client test-ca "DNS:client.test" clientAuth
cat server.pk8 server.pem >server-keystore.pem
touch .complete
echo "certificates in $dir"
