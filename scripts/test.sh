#!/usr/bin/env bash
# The whole test suite on a fresh machine: system packages, a virtualenv, lint, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# redis-server is a real dependency of the Redis store tests (Debian package).
if ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'

.venv/bin/ruff check sdk processor tests bench examples
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
