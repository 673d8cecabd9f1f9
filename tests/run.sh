#!/bin/sh
# Install what is missing into .venv and run the whole test suite: sh tests/run.sh [pytest args]
set -e
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
sh "$ROOT/scripts/setup_env.sh"
# The retrieval-page test renders in a real headless browser (skipped when none is found).
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian's chromium and a CJK font for the page test"
    { apt-get update -qq && apt-get install -y -qq chromium fonts-wqy-microhei; } >/dev/null 2>&1 \
        || echo "[setup] could not install chromium: the page-rendering test will be skipped"
fi
cd "$ROOT"
exec .venv/bin/python -m pytest -q tests "$@"
