#!/usr/bin/env bash
# Prepare the real ComfyUI host for the host suite (tests/host) and print two lines for .ci/run:
#
#     COMFYUI_PATH=<ComfyUI root>
#     HOST_PYTHON=<interpreter with ComfyUI's requirements, the pack's dependencies, pytest, playwright>
#
# Everything goes outside the repository, into a cache folder reused between runs on one machine
# (FRAMEBRIDGE_HOST_CACHE, default ~/.cache/framebridge-host):
#   ComfyUI/   the pinned ComfyUI source snapshot, unpacked (skipped when COMFYUI_PATH is set or
#              the pack sits in ComfyUI/custom_nodes/: that ComfyUI is used as it is)
#   venv/      the host venv (FRAMEBRIDGE_HOST_VENV overrides it). ComfyUI 0.3.64 imports
#              torchvision at start-up, and the registry's torchvision does not import beside the
#              CPU torch 2.13 wheel, so the host venv takes torch 2.14.1 + torchvision 0.29.1 (run on
#              the CPU with --cpu). torchaudio is left out (no build fits; ComfyUI only logs its
#              audio nodes as not loaded). A stamp file records a complete install; an unchanged
#              install is not repeated.
# Debian's chromium is installed when missing and apt-get is there (root), for the frontend test;
# playwright drives it (its own browser download is never used).
#
# The snapshot is looked for at FRAMEBRIDGE_COMFYUI_SNAPSHOT, default ../shared/host/ComfyUI-0.3.64.tar.gz
# from the repository root. Exit status 3 with a message on stderr: no host to run against.
# Progress goes to stderr; only the two lines above go to stdout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$(pwd)"

CACHE="${FRAMEBRIDGE_HOST_CACHE:-$HOME/.cache/framebridge-host}"
SNAPSHOT="${FRAMEBRIDGE_COMFYUI_SNAPSHOT:-../shared/host/ComfyUI-0.3.64.tar.gz}"
HOST_VENV="${FRAMEBRIDGE_HOST_VENV:-$CACHE/venv}"
TORCH_PIN="torch==2.14.1"
TORCHVISION_PIN="torchvision==0.29.1"
# what the host venv needs besides ComfyUI's requirements: the pack's runtime dependencies
# (pyproject's [project] dependencies), its test extra, requests (app/frontend_management.py imports it
# but ComfyUI's requirements.txt does not list it) and the frontend test's browser driver
EXTRA_REQS=("safetensors>=0.4" "einops>=0.6" "kornia>=0.7" "pytest>=7.4" "numpy>=1.24" "pillow>=9" "psutil" "requests" "playwright")

say() { echo "host: $*" >&2; }
is_comfyui() { [ -f "$1/main.py" ] && [ -f "$1/nodes.py" ] && [ -d "$1/comfy" ]; }

# ---- which ComfyUI --------------------------------------------------------------------------------
if [ -n "${COMFYUI_PATH:-}" ]; then
    COMFY="$COMFYUI_PATH"
    if ! is_comfyui "$COMFY"; then
        echo "COMFYUI_PATH=$COMFY is not a ComfyUI checkout (no main.py, nodes.py, comfy/)" >&2
        exit 2
    fi
elif [ "$(basename "$(dirname "$REPO")")" = "custom_nodes" ] && is_comfyui "$(dirname "$(dirname "$REPO")")"; then
    COMFY="$(dirname "$(dirname "$REPO")")"
elif [ -f "$SNAPSHOT" ]; then
    COMFY="$CACHE/ComfyUI"
    stamp_want="$(basename "$SNAPSHOT") $(stat -c %s "$SNAPSHOT")"
    if [ "$(cat "$CACHE/.unpacked" 2>/dev/null || true)" != "$stamp_want" ] || ! is_comfyui "$COMFY"; then
        say "unpacking $SNAPSHOT into $CACHE"
        mkdir -p "$CACHE"
        rm -rf "$COMFY" "$CACHE/.unpacked"
        tar -xzf "$SNAPSHOT" -C "$CACHE"
        is_comfyui "$COMFY" || { echo "$SNAPSHOT did not unpack to ComfyUI/" >&2; exit 2; }
        echo "$stamp_want" > "$CACHE/.unpacked"
    fi
else
    echo "no ComfyUI host: no COMFYUI_PATH, not in ComfyUI/custom_nodes/, no snapshot at $SNAPSHOT" >&2
    exit 3
fi
COMFY="$(cd "$COMFY" && pwd)"

# ---- the host venv --------------------------------------------------------------------------------
# The stamp names everything the install depends on; a change in any of it reinstalls.
want_stamp="$(printf '%s\n' "$TORCH_PIN" "$TORCHVISION_PIN" "${EXTRA_REQS[@]}"; cat "$COMFY/requirements.txt")"
want_stamp="$(printf '%s' "$want_stamp" | sha256sum | cut -d' ' -f1)"
STAMP="$HOST_VENV/.framebridge-host-ready"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$want_stamp" ]; then
    say "building the host venv in $HOST_VENV (torch 2.14.1 and ComfyUI's requirements: a few GB, minutes)"
    rm -f "$STAMP"
    [ -x "$HOST_VENV/bin/python" ] || python3 -m venv "$HOST_VENV"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    printf '%s\n' "$TORCH_PIN" "$TORCHVISION_PIN" > "$work/pins.txt"
    # ComfyUI's requirements without torch, torchvision and torchaudio (unpinned there)
    grep -vE '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*([<>=!~;#].*)?$' "$COMFY/requirements.txt" > "$work/requirements.txt"
    # --no-compile: pip's byte-compilation trips over PYTHONDONTWRITEBYTECODE on some pips
    pip_install() { nice -n 10 "$HOST_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile "$@"; }
    pip_install "$TORCH_PIN" "$TORCHVISION_PIN"
    pip_install -c "$work/pins.txt" -r "$work/requirements.txt" "${EXTRA_REQS[@]}"
    "$HOST_VENV/bin/python" - <<'EOF' >&2
import torch, torchvision
assert torch.__version__.split("+")[0] == "2.14.1", torch.__version__
print("host venv: torch", torch.__version__, "torchvision", torchvision.__version__)
EOF
    echo "$want_stamp" > "$STAMP"
fi

# ---- Chromium for the frontend test ---------------------------------------------------------------
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "installing Debian's chromium for the frontend test"
    if ! { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2; }; then
        say "could not install chromium: the frontend test will be skipped"
    fi
fi

echo "COMFYUI_PATH=$COMFY"
echo "HOST_PYTHON=$HOST_VENV/bin/python"
