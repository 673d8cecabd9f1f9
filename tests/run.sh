#!/bin/sh
# Install what is missing into .venv and run the whole test suite: sh tests/run.sh [pytest args]
set -e
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
sh "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec .venv/bin/python -m pytest -q tests "$@"
