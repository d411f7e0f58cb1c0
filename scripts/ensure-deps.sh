#!/usr/bin/env bash
# Installs the system tools the project needs, from Debian's packages, only when missing.
#   ensure-deps.sh java | maven | erlang | rust | python | binutils | all
# Idempotent: a tool already on PATH is left alone; `apt-get update` runs at most once per call.
set -euo pipefail

updated=
apt_install() {
    local sudo=
    [ "$(id -u)" = 0 ] || sudo=sudo
    if [ -z "$updated" ]; then $sudo apt-get update -qq; updated=1; fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need() { command -v "$1" >/dev/null 2>&1; }

ensure() {
    case "$1" in
    java) need java || apt_install openjdk-17-jdk-headless ;;
    maven) need mvn || apt_install maven ;;
    erlang) need erl && need rebar3 || apt_install erlang-nox erlang-dev erlang-eunit erlang-common-test rebar3 ;;
    binutils) need objdump || apt_install binutils ;;
    python) need python3 && python3 -m venv --help >/dev/null 2>&1 || apt_install python3 python3-venv ;;
    rust)
        need cargo || {
            echo "ensure-deps.sh: cargo not found; install Rust with rustup (https://rustup.rs)" >&2
            exit 1
        }
        if need rustup; then
            cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
            cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
        fi
        ;;
    all) for t in java maven python rust; do ensure "$t"; done ;;
    *) echo "ensure-deps.sh: unknown tool $1" >&2; exit 2 ;;
    esac
}

for tool in "${@:-all}"; do ensure "$tool"; done
