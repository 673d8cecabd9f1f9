#!/bin/sh
# Create a venv (Python 3.11) beside the repository and install a requirements file into it, or find the
# interpreter the launch scripts use; `sh scripts/setup_env.sh --help` lists the forms.
# Run by scripts/demo.sh, tests/run.sh and the launch scripts; a no-op when everything is installed.
set -e
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
case "${1:-}" in
    -h | --help)
        cat <<USAGE
usage: sh scripts/setup_env.sh [REQUIREMENTS [VENV]]
       sh scripts/setup_env.sh --find-python
  REQUIREMENTS  requirements file to install (default requirements.txt: the CPU / laptop pins;
                requirements-cluster.txt: the GPU cluster pins, what environment.yml installs)
  VENV          the venv to create beside the repository (default .venv)
  --find-python print the interpreter train.sh and the evaluate scripts use: PYTHON when set, else the
                activated virtualenv (\$VIRTUAL_ENV) or conda env (\$CONDA_PREFIX), else $ROOT/.venv, else
                python on PATH when it has torch; when none has torch, .venv is set up first
environment:
  PYTHON        with REQUIREMENTS: the python that creates the venv (default python3)
USAGE
        exit 0 ;;
esac

has_torch() {
    "$1" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)' 2>/dev/null
}

if [ "${1:-}" = --find-python ]; then
    if [ -n "$PYTHON" ]; then
        case "$PYTHON" in */*) echo "$PYTHON" ;; *) command -v "$PYTHON" || echo "$PYTHON" ;; esac
        exit 0
    fi
    # an activated environment is the user's choice (on a cluster: the CUDA build of its nodes), so it wins
    # over a .venv left in the checkout (maybe another machine's pins); conda's base env is active by default
    # at login rather than chosen, so without torch it is passed over
    for ENV in "$VIRTUAL_ENV" "$CONDA_PREFIX"; do
        [ -n "$ENV" ] || continue
        if [ -x "$ENV/bin/python" ] && has_torch "$ENV/bin/python"; then
            echo "$ENV/bin/python"
            exit 0
        fi
        if [ "$ENV" = "$CONDA_PREFIX" ] && [ "${CONDA_DEFAULT_ENV:-}" = base ]; then continue; fi
        echo "error: the activated environment $ENV has no torch ($ENV/bin/python): install the requirements into" \
             "it (pip install -r $ROOT/requirements-cluster.txt), deactivate it, or set PYTHON=/path/to/python" >&2
        exit 2
    done
    if [ -x "$ROOT/.venv/bin/python" ] && has_torch "$ROOT/.venv/bin/python"; then
        echo "$ROOT/.venv/bin/python"
        exit 0
    fi
    for CANDIDATE in python python3; do
        if command -v "$CANDIDATE" >/dev/null 2>&1 && has_torch "$CANDIDATE"; then
            command -v "$CANDIDATE"
            exit 0
        fi
    done
    echo "[setup] no python with torch (PYTHON, an activated env, $ROOT/.venv, python on PATH):" \
         "setting up $ROOT/.venv" >&2
    sh "$ROOT/scripts/setup_env.sh" >&2
    echo "$ROOT/.venv/bin/python"
    exit 0
fi

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
