#!/bin/sh
# Create a venv (Python 3.11) beside the repository and install a requirements file into it:
#   sh scripts/setup_env.sh                                          requirements.txt -> .venv (CPU / laptop pins)
#   sh scripts/setup_env.sh requirements-cluster.txt .venv-cluster  the GPU cluster pins (what environment.yml installs)
# Sourced by scripts/demo.sh and tests/run.sh; a no-op when everything is installed.
set -e
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REQS="$ROOT/${1:-requirements.txt}"
VENV="$ROOT/${2:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV with $($PY --version)"
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.requirements.sha"
WANT="$("$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$REQS")"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "[setup] installing $(basename "$REQS") into $VENV (first run: a few minutes)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQS"
    echo "$WANT" > "$STAMP"
fi
