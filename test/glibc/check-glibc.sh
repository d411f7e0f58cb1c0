#!/usr/bin/env bash
# Checks that the NIF in priv/ loads with Debian 11's C library (glibc 2.31, libgcc_s from
# GCC 10), the oldest that EMQX 5.0-5.4 images ship: its symbol versions, and a real dlopen
# under that release's dynamic loader.
set -euo pipefail
cd "$(dirname "$0")/../.."
lib=${1:-priv/libemqx_offline_cassandra_nif.so}
root=$(scripts/ensure-sysroot.sh)
newest=$(objdump -T "$lib" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
echo "newest glibc symbol version needed: $newest"
if [ "$(printf '%s\nGLIBC_2.31\n' "$newest" | sort -V | tail -1)" != GLIBC_2.31 ]; then
    echo "FAIL: $lib needs $newest, newer than Debian 11's GLIBC_2.31" >&2
    exit 1
fi
mkdir -p .cache/glibc-check
# The BEAM provides the enif_* functions; Rust reaches them through the GOT, so they must
# exist at load time: the loader defines inert ones (never called) and exports them.
nm -D --undefined-only "$lib" | awk '$2 ~ /^enif_/ {print "void " $2 "(void) {}"}' \
    > .cache/glibc-check/enif_stubs.c
NIF_SYSROOT=$root scripts/cc-sysroot.sh -O1 -rdynamic -o .cache/glibc-check/load_nif \
    test/glibc/load_nif.c .cache/glibc-check/enif_stubs.c -ldl
libs=$root/lib/x86_64-linux-gnu:$root/usr/lib/x86_64-linux-gnu
"$root/lib64/ld-linux-x86-64.so.2" --library-path "$libs" .cache/glibc-check/load_nif "$(realpath "$lib")"
