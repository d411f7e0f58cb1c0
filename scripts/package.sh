#!/usr/bin/env bash
# Builds the plugin package exactly as EMQX installs it:
#   _build/plugin/emqx_offline_cassandra-<vsn>.tar.gz  (+ .sha256)
# holding emqx_offline_cassandra-<vsn>/{release.json, README.md, LICENSE, emqx_offline_cassandra-<vsn>/{ebin,priv}},
# regular files only (EMQX drops symlinks when it extracts). Users get the README and the
# LICENSE; the developer docs (docs/) stay in the source tree. The .sha256 file is in
# `sha256sum -c` format. test/check_package.sh checks the result.
set -euo pipefail
cd "$(dirname "$0")/.."
# PACKAGE_DIR=dir puts the package elsewhere; only there may BENCH_API=1 add the bench-only
# NIFs (scripts/bench.sh does). _build/plugin/ always gets the production NIF.
out=${PACKAGE_DIR:-_build/plugin}
unset FAULT_INJECTION # the package carries the production NIF
if [ "$out" = _build/plugin ]; then unset BENCH_API; fi
scripts/ensure-deps.sh erlang binutils

name=emqx_offline_cassandra
vsn=$(sed -n 's/.*{vsn, *"\([^"]*\)"}.*/\1/p' erlang_src/$name.app.src)
nv=$name-$vsn

rebar3 release >/dev/null
src=_build/default/rel/$name/lib/$nv
[ -d "$src/ebin" ] || { echo "package.sh: $src/ebin missing after rebar3 release" >&2; exit 1; }

rm -rf "${out:?}/$nv" "$out/$nv.tar.gz" "$out/$nv.sha256"
mkdir -p "$out/$nv"
cp -rL "$src" "$out/$nv/$nv"
cp README.md "$out/$nv/README.md"
cp LICENSE "$out/$nv/LICENSE"
built_on=$(erl -noshell -eval 'io:format("~s", [erlang:system_info(otp_release)]), halt().')
cat >"$out/$nv/release.json" <<JSON
{
  "name": "$name",
  "rel_vsn": "$vsn",
  "rel_apps": ["$nv"],
  "description": "Offline MQTT messages in Apache Cassandra: stores QoS 1/2 publishes, replays them on subscribe, deletes them on ack.",
  "with_config_schema": true,
  "hidden": false,
  "authors": ["emqx_offline_cassandra developers"],
  "builder": {"name": "emqx_offline_cassandra developers"},
  "functionality": ["Offline messages", "Cassandra"],
  "compatibility": {"emqx": "~> 5.0 or ~> 6.0"},
  "metadata_vsn": "0.2.0",
  "built_on_otp_release": "$built_on",
  "nif_requires": "GLIBC_MIN",
  "git_commit_or_build_date": "$(git rev-parse --short HEAD 2>/dev/null || date -u +%Y-%m-%d)"
}
JSON

# The NIF needs the glibc of the build host (Rust's std links its symbol versions): say so.
glibc_min=$(objdump -T "$src/priv/libemqx_offline_cassandra_nif.so" | grep -o 'GLIBC_[0-9.]*' | sort -V | tail -1)
echo "package.sh: the NIF needs ${glibc_min/_/ } or newer on the EMQX host" >&2
sed -i "s/GLIBC_MIN/${glibc_min/_/ }, x86_64 Linux, NIF 2.16 (OTP 24+)/" "$out/$nv/release.json"

if [ -n "$(find "$out/$nv" ! -type f ! -type d)" ]; then
    echo "package.sh: non-regular files in the package:" >&2
    find "$out/$nv" ! -type f ! -type d >&2
    exit 1
fi
for f in priv/config.hocon priv/config_schema.avsc priv/config_i18n.json priv/libemqx_offline_cassandra_nif.so; do
    [ -f "$out/$nv/$nv/$f" ] || { echo "package.sh: $f missing from the package" >&2; exit 1; }
done

tar -C "$out" -czf "$out/$nv.tar.gz" "$nv"
(cd "$out" && sha256sum "$nv.tar.gz" >"$nv.sha256")
test/check_package.sh "$out/$nv.tar.gz" >&2
echo "$out/$nv.tar.gz"
