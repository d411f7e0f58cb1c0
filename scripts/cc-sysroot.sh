#!/usr/bin/env bash
# The C compiler and linker for the NIF: the host's gcc against the glibc 2.31 sysroot of
# scripts/ensure-sysroot.sh (NIF_SYSROOT). Used for Rust's final link and for C code built
# by crates (aws-lc). gcc searches its own multiarch directories (the host's
# /usr/lib/x86_64-linux-gnu) before the sysroot's, so the sysroot's start files (-B) and
# libraries (-L) are named first.
root=${NIF_SYSROOT:?NIF_SYSROOT is not set}
exec gcc --sysroot="$root" -B"$root/usr/lib/x86_64-linux-gnu" \
    -L"$root/lib/x86_64-linux-gnu" -L"$root/usr/lib/x86_64-linux-gnu" "$@"
