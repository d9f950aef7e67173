#!/usr/bin/env bash
# Install what the IOC and its tests need on a fresh Debian/Ubuntu machine (idempotent).
# Python packages go into a project virtual environment, .venv (PEP 668: never into a system Python).
# IOC_PYTHON chooses the interpreter that creates it (default: python3 on the PATH; CI uses /usr/bin/python3).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${IOC_PYTHON:-python3}
need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
[ -x /usr/lib/postgresql/15/bin/initdb ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
[ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null 2>&1 || need_apt+=(nats-server)  # JetStream tests
[ -x /usr/bin/chromium ] || need_apt+=(chromium)  # browser tests; Playwright drives Debian's Chromium
# A distribution Python may lack venv/ensurepip (Debian and Ubuntu split them into python3-venv).
"$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  else
    echo "missing system packages: ${need_apt[*]} (install them with apt-get as root)" >&2
  fi
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  rm -rf .venv
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade "pip>=23.1"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
# The TimescaleDB stand-in for tests (PGlite + TimescaleDB, WebAssembly) lives in tests/support/pglite.
if command -v npm >/dev/null 2>&1 && [ ! -d tests/support/pglite/node_modules ]; then
  (cd tests/support/pglite && npm ci --legacy-peer-deps --no-audit --no-fund --loglevel=error)
fi
