#!/usr/bin/env bash
# Install what the IOC and its tests need on a fresh Debian bookworm machine (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql-15)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs npm)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)  # browser tests; Playwright drives Debian's Chromium
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  else
    echo "missing system packages: ${need_apt[*]} (install them with apt-get as root)" >&2
  fi
fi

python3 -m pip install -q --disable-pip-version-check -e ".[dev]"
# The TimescaleDB stand-in for tests (PGlite + TimescaleDB, WebAssembly) lives in tests/support/pglite.
if command -v npm >/dev/null 2>&1 && [ ! -d tests/support/pglite/node_modules ]; then
  (cd tests/support/pglite && npm ci --legacy-peer-deps --no-audit --no-fund --loglevel=error)
fi
