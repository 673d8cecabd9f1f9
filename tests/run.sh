#!/bin/sh
# Install what is missing and run the whole test suite:
#   sh tests/run.sh [pytest args]                  laptop pins (requirements.txt, .venv)
#   sh tests/run.sh --cluster-pins [pytest args]   cluster pins (requirements-cluster.txt, .venv-cluster), on the CPU
set -e
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REQS=requirements.txt
VENV=.venv
if [ "${1:-}" = "--cluster-pins" ]; then
    REQS=requirements-cluster.txt
    VENV=.venv-cluster
    shift
fi
sh "$ROOT/scripts/setup_env.sh" "$REQS" "$VENV"
# The retrieval-page test renders in a real headless browser (skipped when none is found).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian's chromium and a CJK font for the page test"
    { apt-get update -qq && apt-get install -y -qq chromium fonts-wqy-microhei; } >/dev/null 2>&1 \
        || echo "[setup] could not install chromium: the page-rendering test will be skipped"
fi
cd "$ROOT"
echo "[tests] $REQS: $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)')"
# the launch scripts the tests start (train.sh, the evaluate scripts) use the same interpreter
PYTHON="$ROOT/$VENV/bin/python"
export PYTHON
# a test still running after 15 minutes has hung: pytest-timeout prints every thread's stack and stops the run
exec "$PYTHON" -m pytest -q -o timeout=900 -o timeout_method=thread tests "$@"
