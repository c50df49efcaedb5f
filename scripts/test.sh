#!/usr/bin/env bash
# The whole test suite on a fresh machine: system packages, a virtualenv, lint, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real dependencies of the tests (Debian packages): redis-server of the Redis store tests,
# chromium of the relay pages' browser tests, prometheus (with promtool) of the alert and
# dashboard tests (tests/ops).
if ! command -v redis-server >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1 \
    || ! command -v promtool >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server chromium prometheus >/dev/null
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'

.venv/bin/ruff check sdk processor tests bench examples
.venv/bin/mypy

# --- TypeScript SDK (sdk/js) ------------------------------------------------------------------
# Installed from package-lock.json, built and tested with node --test; before pytest, because
# tests/js drives the built SDK through a real relay (and skips, saying so, without a build).
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  (cd sdk/js && npm ci --no-audit --no-fund && npm run build && npm test)
else
  echo "node/npm not found: skipping the TypeScript SDK (tests/js skips too)" >&2
fi
# --- end TypeScript SDK -----------------------------------------------------------------------

.venv/bin/python -m pytest "$@"

# The SDK and the Langfuse SDK app again with langfuse 4.x (5.x needs a Langfuse v4 server, so
# apps on v3 servers run 4.x): a second virtualenv, reusing pip's cache.
[ -x .venv-lf4/bin/python ] || "$PY" -m venv .venv-lf4
.venv-lf4/bin/python -m pip install -q -e '.[dev]' 'langfuse>=4.14,<5'
.venv-lf4/bin/python -m pytest -q -p no:cacheprovider tests/sdk tests/e2e/test_langfuse_sdk_app.py tests/e2e/test_tracing_only.py tests/e2e/test_guarded_rollout.py
