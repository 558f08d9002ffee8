#!/usr/bin/env bash
# Animate an image with the bundled tiny FrameBridge, offline, on a CPU.
# Sets up .venv (CPU build of torch + the pack) on first use, then runs the generate command.
#   bash demo.sh [--image FILE] [--motion zoom-in] [--out out.webp] [--no-neural-prior] [--steps 25]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VENV="${FRAMEBRIDGE_VENV:-.venv}"
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
fi
if ! "$PY" -c "import torch, PIL, framebridge_core" 2>/dev/null; then
    "$PY" -m pip install --quiet --disable-pip-version-check torch==2.13.0
    "$PY" -m pip install --quiet --disable-pip-version-check -e ".[standalone]"
fi
exec "$PY" -m framebridge_core generate "$@"
