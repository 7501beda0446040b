#!/usr/bin/env bash
# The demo: set up (idempotent; fast when done), then run the demo study on the built-in Whisper base
# and the built-in espeak-ng corpus, and say where the report is.
#   scripts/demo.sh                 first run about 24 min on a 2-core CPU (README: measured); a rerun comes from the store
#   scripts/demo.sh --workers 2     extra options go to `speechmerge study`
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export TRANSFORMERS_VERBOSITY=${TRANSFORMERS_VERBOSITY:-error}
.venv/bin/speechmerge study recipes/demo.yaml "$@"
echo
echo "report: $(pwd)/runs/demo/report/report.html (and report.md beside it)"
echo "scores: .venv/bin/speechmerge results runs/demo --stage test"
