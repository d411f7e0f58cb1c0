#!/usr/bin/env bash
# Installs the Python tools of scripts/py-tools.txt into .cache/venv (git-ignored).
# Idempotent: reinstalls only when py-tools.txt changes.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/venv
stamp=$venv/.py-tools.sha256
want=$(sha256sum scripts/py-tools.txt | cut -d' ' -f1)
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    exit 0
fi
scripts/ensure-deps.sh python
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
echo "ensure-py-tools.sh: installing $(grep -c '^[a-z]' scripts/py-tools.txt) tools into $venv" >&2
"$venv/bin/pip" install -q -r scripts/py-tools.txt
echo "$want" >"$stamp"
