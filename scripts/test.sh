#!/usr/bin/env bash
# Install, make sure PostgreSQL and Mosquitto answer, lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
scripts/services.sh
ruff check .
mypy
python3 -m pytest -m "unit or integration" -q -p no:cacheprovider "$@"
