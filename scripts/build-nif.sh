#!/usr/bin/env bash
# Builds the NIF library and copies it into priv/ (rebar3 runs this before compiling).
# It is linked against glibc 2.31 (Debian 11's, see scripts/ensure-sysroot.sh), so the one
# library loads on every EMQX 5.0-6.x image; the tests load the same library that ships.
#   FAULT_INJECTION=1  adds the test-only NIFs that panic on purpose (used by `make test`).
#   BENCH_API=1        adds the benchmark-only API (nif_insert_awaited; used by `make bench`).
#   NIF_HOST_GLIBC=1   links against the build host's glibc instead (no download).
set -euo pipefail
cd "$(dirname "$0")/.."
features=()
if [ -n "${FAULT_INJECTION:-}" ]; then features+=(--features fault_injection); fi
if [ -n "${BENCH_API:-}" ]; then features+=(--features bench_api); fi
triple=x86_64-unknown-linux-gnu
if [ -z "${NIF_HOST_GLIBC:-}" ]; then
    NIF_SYSROOT=$(scripts/ensure-sysroot.sh)
    export NIF_SYSROOT
    export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=$PWD/scripts/cc-sysroot.sh
    export CC_x86_64_unknown_linux_gnu=$PWD/scripts/cc-sysroot.sh
    cargo build --release --target "$triple" -p emqx_offline_cassandra_nif "${features[@]}"
    lib=target/$triple/release/libemqx_offline_cassandra_nif.so
else
    cargo build --release -p emqx_offline_cassandra_nif "${features[@]}"
    lib=target/release/libemqx_offline_cassandra_nif.so
fi
mkdir -p priv
# Copy (not link): EMQX drops symlinks from plugin packages. Write then rename, so a
# running VM that has the old file mapped keeps a valid file.
cp "$lib" priv/.libemqx_offline_cassandra_nif.so.tmp
mv -f priv/.libemqx_offline_cassandra_nif.so.tmp priv/libemqx_offline_cassandra_nif.so
