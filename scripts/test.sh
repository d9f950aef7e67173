#!/usr/bin/env bash
# Install (into .venv), make sure PostgreSQL and Mosquitto answer, lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
scripts/services.sh
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
mypy
python -m pytest -m "unit or integration" -q -p no:cacheprovider --durations=25 "$@"
