"""Render every UI workflow in workflows/ to workflows/img/<name>.png with the real ComfyUI frontend.

    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy-venv/bin/python .ci/render_workflow_images.py [--only NAME]

Starts ``main.py --cpu`` on a loopback port with this pack in a temporary ``custom_nodes/`` (nothing
is written into the ComfyUI checkout), opens its frontend in headless Chromium (Debian's
``chromium`` and the ``playwright`` package, as the host tests use; ``.ci/host_env.sh`` installs both),
loads each workflow with ``app.loadGraphData``, fits the graph into the view and saves a screenshot
with the menus and side bars hidden. Model files need not exist: the widgets show the names the
workflow stores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"
OUT = WORKFLOWS / "img"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEW = {"width": 1200, "height": 700}
ZOOM = 0.75           # readable node text; the window grows to fit the graph at this zoom
#: everything drawn over the graph canvas (menus, side bars, toasts, minimap), hidden for the picture
HIDE_CSS = """
.comfyui-menu, .comfyui-body-top, .comfyui-body-left, .comfyui-body-right, .comfyui-body-bottom,
.side-tool-bar-container, .workflow-tabs-container, .p-toast, .graph-canvas-menu, .litegraph-minimap,
.minimap-main-container, .actionbar, .comfy-menu, .selection-toolbox, .bottom-panel, .splitter-overlay,
.p-splitter-gutter, .comfyui-queue-button, .topbar, [class*="Minimap"], [class*="minimap"], .p-dialog-mask {
    display: none !important;
}
"""
LOAD = """async (wf) => {
    await window.app.loadGraphData(wf, true, true, null,
                                   {showMissingNodesDialog: false, showMissingModelsDialog: false});
    window.app.canvas.draw(true, true);
    return window.app.graph.nodes.length;
}"""
#: the nodes' boxes as the frontend sizes them (title bar included), and every pair that overlaps
BOXES = """() => {
    const boxes = window.app.graph.nodes.map((n) => {
        const b = new Float32Array(4);
        n.getBounding(b);
        return {id: n.id, title: n.title || n.type, x: b[0], y: b[1], w: b[2], h: b[3],
                pos: [n.pos[0], n.pos[1]], size: [n.size[0], n.size[1]]};
    });
    const overlaps = [];
    for (let i = 0; i < boxes.length; i++)
        for (let j = i + 1; j < boxes.length; j++) {
            const a = boxes[i], b = boxes[j];
            if (a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h)
                overlaps.push([a.title, b.title]);
        }
    return {boxes, overlaps};
}"""
#: zoom and pan so that every node and group fits the window; the screen rectangle of the graph
FIT = """(zoom) => {
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    const grow = (x, y, w, h) => {
        x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h);
    };
    for (const n of window.app.graph.nodes) {
        const b = new Float32Array(4);
        n.getBounding(b);
        grow(b[0], b[1], b[2], b[3]);
    }
    for (const g of (window.app.graph.groups || window.app.graph._groups || [])) {
        const [x, y, w, h] = g._bounding || g.bounding;
        grow(x, y, w, h);
    }
    const canvas = window.app.canvas, el = canvas.canvas, pad = 40;
    const scale = Math.min((el.clientWidth - 2 * pad) / (x1 - x0), (el.clientHeight - 2 * pad) / (y1 - y0), zoom);
    canvas.ds.scale = scale;
    canvas.ds.offset = [pad / scale - x0, pad / scale - y0];
    canvas.show_info = false;
    canvas.setDirty(true, true);
    canvas.draw(true, true);
    const r = el.getBoundingClientRect();
    return {scale, clip: {x: r.left + pad / 2, y: r.top + pad / 2,
                          width: (x1 - x0) * scale + pad, height: (y1 - y0) * scale + pad}};
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def comfyui_root() -> Path:
    env = os.environ.get("COMFYUI_PATH")
    for candidate in ([Path(env)] if env else []) + [REPO.parent.parent]:
        if (candidate / "main.py").is_file() and (candidate / "comfy").is_dir():
            return candidate
    sys.exit("set COMFYUI_PATH to a ComfyUI checkout (see .ci/host_env.sh), and run this script with its venv")


def chromium() -> str:
    for candidate in (os.environ.get("FRAMEBRIDGE_CHROMIUM", ""), "/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    sys.exit("no Chromium at /usr/bin/chromium: apt-get install chromium, or set FRAMEBRIDGE_CHROMIUM")


def start_server(root: Path, base: Path) -> tuple[subprocess.Popen, str]:
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "ComfyUI-FrameBridge").symlink_to(REPO, target_is_directory=True)
    port = free_port()
    log = open(base / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                             "--base-directory", str(base), "--database-url", "sqlite:///:memory:",
                             "--disable-auto-launch"], cwd=root, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"ComfyUI exited with {proc.returncode}:\n{(base / 'server.log').read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url + "/object_info/FB_BridgeSampler", timeout=5).read()
            return proc, url
        except OSError:
            time.sleep(1)
    proc.kill()
    sys.exit("ComfyUI did not answer within 600 s")


#: user settings for the page: no template browser on first start, no minimap or canvas statistics
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False,
            "Comfy.Workflow.ShowMissingModelsWarning": False, "Comfy.Workflow.ShowMissingNodesWarning": False}


def shrink(path: Path) -> None:
    """A 128-colour palette: the graph is flat colours, and the file gets about 3x smaller."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def render(url: str, names: list[str]) -> list[Path]:
    import json

    req = urllib.request.Request(url + "/settings", data=json.dumps(SETTINGS).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).read()

    from playwright.sync_api import sync_playwright

    OUT.mkdir(exist_ok=True)
    written = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEW, device_scale_factor=1)
            page.set_default_timeout(120_000)
            page.goto(url + "/", wait_until="load")
            page.wait_for_function("() => window.app && window.app.graph && window.app.canvas && window.LiteGraph"
                                   " && window.LiteGraph.registered_node_types['FB_BridgeSampler']")
            page.add_style_tag(content=HIDE_CSS)
            for name in names:
                wf = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
                count = page.evaluate(LOAD, wf)
                page.wait_for_timeout(300)           # nodes with text boxes take their size on the first frames
                layout = page.evaluate(BOXES)
                # below a zoom of about 0.6 the canvas drops all text: size the window to the graph instead
                b = layout["boxes"]
                width = max(x["x"] + x["w"] for x in b) - min(x["x"] for x in b)
                height = max(x["y"] + x["h"] for x in b) - min(x["y"] for x in b)
                page.set_viewport_size({"width": max(VIEW["width"], int(width * ZOOM) + 100),
                                        "height": max(VIEW["height"], int(height * ZOOM) + 100)})
                page.wait_for_timeout(300)
                info = page.evaluate(FIT, ZOOM)
                page.wait_for_timeout(500)           # DOM widgets (text boxes) follow the canvas transform
                target = OUT / f"{name}.png"
                page.screenshot(path=str(target), clip=info["clip"])
                shrink(target)
                print(f"{target.relative_to(REPO)}: {count} nodes, zoom {info['scale']:.2f}, "
                      f"overlapping nodes: {layout['overlaps'] or 'none'}")
                written.append(target)
        finally:
            browser.close()
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", default=[], help="a workflow name (without .json); repeatable")
    args = ap.parse_args(argv)
    names = args.only or sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    unknown = [n for n in names if not (WORKFLOWS / f"{n}.json").is_file()]
    if unknown:
        sys.exit(f"no workflow {unknown} in workflows/; choose from {sorted(p.stem for p in WORKFLOWS.glob('*.json'))}")
    base = Path(tempfile.mkdtemp(prefix="fb-render-"))
    proc, url = start_server(comfyui_root(), base)
    try:
        render(url, names)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
