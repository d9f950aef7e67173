#!/usr/bin/env bash
# Install, then run the whole demo: simulated city -> MQTT -> ingest -> analytics -> live wall display.
# Uses IOC_DATABASE_URL / IOC_MQTT_URL when set, else local PostgreSQL/Mosquitto, else private ones.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/ioc demo "$@"
