#!/usr/bin/env bash
# Checks a plugin package the way a user and EMQX meet it, so that a packaging slip fails the
# build instead of an install:
#   - the .sha256 file next to it passes `sha256sum -c`;
#   - one top directory <name>-<vsn>/ holding exactly release.json, README.md, LICENSE and the
#     app directory, regular files only (EMQX drops symlinks when it extracts);
#   - the app has its .app, the default config, the form, its i18n and the NIF;
#   - release.json has the keys EMQX checks, name-vsn matching the file name, and no empty
#     strings (an empty repo or contact shows up blank in the dashboard);
#   - the NIF exports nif_init (what the VM looks up) and carries no symbol table (stripped).
#   test/check_package.sh [_build/plugin/<name>-<vsn>.tar.gz]
set -euo pipefail
cd "$(dirname "$0")/.."

pkg=${1:-$(ls _build/plugin/*.tar.gz 2>/dev/null | head -1)}
[ -f "$pkg" ] || { echo "check_package.sh: no package (run scripts/package.sh)" >&2; exit 1; }
nv=$(basename "$pkg" .tar.gz)
name=${nv%%-*}
failures=0
fail() { echo "check_package.sh: $*" >&2; failures=$((failures + 1)); }

(cd "$(dirname "$pkg")" && sha256sum --quiet -c "$nv.sha256") || fail "sha256sum -c $nv.sha256 failed"

listing=$(tar -tvzf "$pkg")
while read -r mode _ _ _ _ path; do
    case "$mode" in
    -* | d*) ;;
    *) fail "not a regular file or directory: $path ($mode)" ;;
    esac
    [ "${path%%/*}" = "$nv" ] || fail "outside the top directory $nv/: $path"
done <<<"$listing"
top=$(tar -tzf "$pkg" | sed -n "s|^$nv/\([^/]*\).*|\1|p" | sort -u | grep -v '^$' | tr '\n' ' ')
want=$(printf '%s\n' LICENSE README.md release.json "$nv" | sort | tr '\n' ' ')
[ "$top" = "$want" ] || fail "top directory holds [$top], expected [$want]"
for f in ebin/$name.app priv/config.hocon priv/config_schema.avsc priv/config_i18n.json \
    priv/lib${name}_nif.so; do
    grep -qx "$nv/$nv/$f" <<<"$(tar -tzf "$pkg")" || fail "missing $nv/$nv/$f"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$pkg" -C "$work"

python3 - "$work/$nv/release.json" "$nv" <<'PY' || fail "release.json: see above"
import json, sys
path, nv = sys.argv[1], sys.argv[2]
rel = json.load(open(path))
problems = []
for key in ("name", "rel_vsn", "rel_apps", "description"):
    if not rel.get(key):
        problems.append(f"{key} missing or empty")
if f"{rel.get('name')}-{rel.get('rel_vsn')}" != nv:
    problems.append(f"name-rel_vsn is not {nv}")
if rel.get("rel_apps") != [nv]:
    problems.append(f"rel_apps is {rel.get('rel_apps')}, expected [{nv!r}]")
if rel.get("with_config_schema") is not True:
    problems.append("with_config_schema is not true (EMQX 5.7/5.8 would not load the config)")
if not (rel.get("compatibility") or {}).get("emqx"):
    problems.append("compatibility.emqx missing")
def empties(value, where):
    if value == "":
        yield where
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from empties(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from empties(v, f"{where}[{i}]")
problems += [f"{w} is an empty string" for w in empties(rel, "release.json")]
for p in problems:
    print(f"check_package.sh: release.json: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
PY

so=$work/$nv/$nv/priv/lib${name}_nif.so
if [ -f "$so" ]; then
    nm -D --defined-only "$so" | grep -qw nif_init || fail "the NIF does not export nif_init"
    if readelf -S "$so" | grep -qw '\.symtab'; then
        fail "the NIF carries a symbol table (not stripped: Cargo.toml [profile.release] strip)"
    fi
fi

if [ "$failures" -gt 0 ]; then
    echo "check_package.sh: $pkg: $failures problem(s)" >&2
    exit 1
fi
echo "check_package.sh: $pkg: ok ($(du -k "$pkg" | cut -f1) KiB, NIF $(du -k "$so" | cut -f1) KiB)"
