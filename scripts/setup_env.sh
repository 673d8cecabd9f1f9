#!/bin/sh
# Create .venv (Python 3.11) beside the repository and install requirements.txt into it.
# Sourced by scripts/demo.sh and tests/run.sh; a no-op when everything is installed.
set -e
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
    echo "[setup] creating $ROOT/.venv with $($PY --version)"
    "$PY" -m venv "$ROOT/.venv"
fi
STAMP="$ROOT/.venv/.requirements.sha"
WANT="$("$ROOT/.venv/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$ROOT/requirements.txt")"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "[setup] installing requirements.txt into .venv (first run: a few minutes)"
    "$ROOT/.venv/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements.txt"
    echo "$WANT" > "$STAMP"
fi
