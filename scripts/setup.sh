#!/usr/bin/env bash
# Set up speechmerge on a fresh Debian machine (Python >= 3.11, root or sudo):
#   - espeak-ng from Debian (the built-in speech corpus is spoken by it),
#   - a virtual environment in .venv with torch 2.13.0 (CPU build) installed first,
#   - speechmerge itself with every extra, versions pinned by constraints.txt.
# Re-running is cheap: nothing is reinstalled unless pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v espeak-ng >/dev/null 2>&1; then
    echo "setup: installing espeak-ng (Debian package)"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq espeak-ng >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.setup-stamp"
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing Python packages into .venv"
    .venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
    .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e ".[builtin,ct2,dev]"
    echo "$want" > "$stamp"
fi
