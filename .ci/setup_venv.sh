#!/usr/bin/env bash
# Make the virtual environment the pack runs in: bash .ci/setup_venv.sh VENV EXTRA
#
# torch comes from, in this order:
#   1. VENV itself, when it already imports torch (kept as it is, whatever its version);
#   2. the python3 that runs this script, when it imports torch (a CUDA or ROCm build you already
#      have): VENV is created with --system-site-packages and reuses it, nothing is downloaded;
#   3. pip: torch==$FRAMEBRIDGE_TORCH_VERSION (default 2.13.0), from $FRAMEBRIDGE_TORCH_INDEX when
#      set. On Linux a plain `pip install torch` from PyPI is the CUDA build (several GB of CUDA
#      libraries); for the CPU build (about 200 MB) set
#      FRAMEBRIDGE_TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Then the pack is installed editable with its EXTRA (standalone, test, ...), which never lists
# torch, so pip keeps the torch chosen above.
set -euo pipefail
VENV="$1"
EXTRA="$2"
PY="$VENV/bin/python"
PIP=(-m pip install --quiet --disable-pip-version-check)

if [ ! -x "$PY" ]; then
    if python3 -c "import torch" 2>/dev/null; then
        python3 -m venv --system-site-packages "$VENV"
    else
        python3 -m venv "$VENV"
    fi
fi
if "$PY" -c "import torch" 2>/dev/null; then
    echo "using the torch already there: $("$PY" -c 'import torch; print(torch.__version__, torch.__file__)')" >&2
else
    spec="torch==${FRAMEBRIDGE_TORCH_VERSION:-2.13.0}"
    if [ -n "${FRAMEBRIDGE_TORCH_INDEX:-}" ]; then
        "$PY" "${PIP[@]}" "$spec" --index-url "$FRAMEBRIDGE_TORCH_INDEX"
    else
        "$PY" "${PIP[@]}" "$spec"
    fi
fi
"$PY" "${PIP[@]}" -e ".[$EXTRA]"
"$PY" -c "import torch; print('torch', torch.__version__)" >&2
