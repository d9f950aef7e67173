#!/usr/bin/env bash
# Install (into .venv), make sure PostgreSQL and Mosquitto answer, lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
scripts/services.sh
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
mypy
# Two processes (pytest-xdist), each test file kept in one: most integration tests wait on brokers, subprocesses
# and clocks, not on the CPU. Each process has its own database and Mosquitto (tests/conftest.py).
# `scripts/test.sh -n 0` runs serially; other pytest options may follow too (a file, -k, -x).
python -m pytest -m "unit or integration" -q -p no:cacheprovider --durations=25 -n 2 --dist loadfile \
  --no-loadscope-reorder "$@"
