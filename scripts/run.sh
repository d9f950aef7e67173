#!/usr/bin/env bash
# Install, migrate, and run the API with an embedded ingest worker against local PostgreSQL + Mosquitto.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
scripts/services.sh
.venv/bin/ioc db upgrade
exec .venv/bin/ioc serve --ingest --host "${IOC_HOST:-127.0.0.1}" --port "${IOC_PORT:-8000}"
