#!/usr/bin/env bash
# Animate an image with the bundled tiny FrameBridge, offline, on a CPU.
# Sets up .venv (torch + the pack; .ci/setup_venv.sh says where torch comes from and how to pick
# the CPU build) on first use, then runs the generate command.
#   bash demo.sh [--image FILE] [--motion zoom-in] [--out out.webp] [--no-neural-prior] [--steps 25]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VENV="${FRAMEBRIDGE_VENV:-.venv}"
PY="$VENV/bin/python"
if ! { [ -x "$PY" ] && "$PY" -c "import torch, PIL, framebridge_core" 2>/dev/null; }; then
    bash .ci/setup_venv.sh "$VENV" standalone
fi
exec "$PY" -m framebridge_core generate "$@"
