#!/usr/bin/env bash
# Set up (see setup.sh), check lint and formatting (ruff), and run the test suite on every core
# (pytest-xdist; PYTEST_WORKERS=0 runs it in one process).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-auto}" --dist worksteal "$@"
