#!/usr/bin/env bash
# Set up if needed, lint, and run the whole test suite (core, training, QGIS plugin).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
ruff check .
python -m pytest -q "$@"
