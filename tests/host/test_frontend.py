"""The shipped UI workflows in the real ComfyUI frontend, in headless Chromium.

The host suite's ComfyUI server serves its own frontend (the ``comfyui-frontend-package`` wheel
its requirements pin). Each UI-format workflow in ``workflows/`` is loaded into that page with
``app.loadGraphData`` and converted with the frontend's own ``app.graphToPrompt()``: the prompt it
makes must equal the workflow's API twin in ``workflows/api/`` (the twins are what the other host
tests run). The workflows that use only the bundled tiny models are then queued from the page and
must finish successfully on the server.

Needs the ``playwright`` package and Chromium (Debian's ``chromium`` at /usr/bin/chromium, or
FRAMEBRIDGE_CHROMIUM; playwright's own browser download is never used); without either every test
here is skipped with one line saying which is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.host

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
API = WORKFLOWS / "api"
UI_FILES = sorted(WORKFLOWS.glob("*.json"))
#: the workflows that run on the models shipped in pretrained/ (no download, real weights)
BUNDLED = [p for p in UI_FILES if p.stem.startswith("FrameBridge-Tiny-")]
#: flags for a root, offline, headless Chromium (no sandbox, no GPU, no calls home)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGE_TIMEOUT_MS = 120_000


def chromium_path() -> str | None:
    wanted = os.environ.get("FRAMEBRIDGE_CHROMIUM")
    if wanted:
        return wanted if os.access(wanted, os.X_OK) else None
    for candidate in ("/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def missing_browser() -> str:
    """'' when the frontend tests can run, else the one-line reason they are skipped."""
    if importlib.util.find_spec("playwright") is None:
        return "frontend tests skipped: the playwright package is not installed in this interpreter (pip install playwright)"
    if chromium_path() is None:
        return ("frontend tests skipped: no Chromium at /usr/bin/chromium (apt-get install chromium, "
                "or set FRAMEBRIDGE_CHROMIUM)")
    return ""


def normalize(value):
    """JSON values compared as the server reads them: numbers as numbers (2 == 2.0), and a bool is
    not a number (True != 1)."""
    if isinstance(value, bool):
        return ("bool", value)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return ("number", float(value))
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    return value


def prompt_diff(made: dict, twin: dict) -> list[str]:
    """Every difference between the frontend's prompt and the API twin, one line each."""
    diffs = []
    for nid in sorted(set(made) | set(twin), key=lambda n: (len(n), n)):
        if nid not in made:
            diffs.append(f"node {nid} ({twin[nid]['class_type']}): in the API twin, not in the frontend's prompt")
            continue
        if nid not in twin:
            diffs.append(f"node {nid} ({made[nid]['class_type']}): in the frontend's prompt, not in the API twin")
            continue
        a, b = made[nid], twin[nid]
        if a["class_type"] != b["class_type"]:
            diffs.append(f"node {nid}: class_type {a['class_type']!r} (frontend) vs {b['class_type']!r} (twin)")
            continue
        ia, ib = normalize(a.get("inputs", {})), normalize(b.get("inputs", {}))
        for key in sorted(set(ia) | set(ib)):
            if ia.get(key, "<absent>") != ib.get(key, "<absent>"):
                diffs.append(f"node {nid} ({a['class_type']}).{key}: frontend {a['inputs'].get(key, '<absent>')!r} "
                             f"vs twin {b['inputs'].get(key, '<absent>')!r}")
    return diffs


def test_prompt_diff_reports_what_differs():
    """The comparison itself: equal numbers of either type pass, any other change is reported."""
    twin = {"3": {"class_type": "FB_BridgeSampler", "inputs": {"cfg": 2, "steps": 25, "model": ["1", 0]}}}
    same = {"3": {"class_type": "FB_BridgeSampler", "inputs": {"cfg": 2.0, "steps": 25, "model": ["1", 0]},
                  "_meta": {"title": "Bridge Sampler"}}}
    assert prompt_diff(same, twin) == []
    changed = json.loads(json.dumps(same))
    changed["3"]["inputs"]["cfg"] = 2.5
    changed["3"]["inputs"]["model"] = ["2", 0]
    changed["4"] = {"class_type": "VAEDecode", "inputs": {}}
    diffs = prompt_diff(changed, twin)
    assert len(diffs) == 3 and any(".cfg" in d for d in diffs) and any(".model" in d for d in diffs)
    assert prompt_diff({"3": {"class_type": "FB_BridgeSampler", "inputs": {"cfg": True}}},
                       {"3": {"class_type": "FB_BridgeSampler", "inputs": {"cfg": 1}}})


class Frontend:
    """The open page and the uncaught errors its scripts raised so far."""

    def __init__(self, page, errors: list[str]):
        self.page, self.errors = page, errors

    def evaluate(self, script: str, arg):
        return self.page.evaluate(script, arg)


@pytest.fixture(scope="module")
def page(comfy_server):
    """The frontend of the session's ComfyUI server, open in headless Chromium."""
    why = missing_browser()
    if why:
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.goto(comfy_server.url + "/", wait_until="load")
            # ready: the app object, its graph, and our node definitions registered from /object_info
            page.wait_for_function(
                "() => window.app && window.app.graph && window.app.api"
                " && window.LiteGraph && window.LiteGraph.registered_node_types['FB_BridgeSampler']",
                timeout=PAGE_TIMEOUT_MS)
            yield Frontend(page, errors)
        finally:
            browser.close()


LOAD_AND_CONVERT = """async (wf) => {
    await window.app.loadGraphData(wf, true, true, null,
                                   {showMissingNodesDialog: false, showMissingModelsDialog: false});
    const missing = window.app.graph.nodes
        .filter((n) => !window.LiteGraph.registered_node_types[n.type])
        .map((n) => n.type);
    const made = await window.app.graphToPrompt();
    return {missing, output: made.output, workflow: made.workflow};
}"""


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_the_frontend_turns_the_ui_workflow_into_its_api_twin(page, path):
    wf = json.loads(path.read_text(encoding="utf-8"))
    twin = json.loads((API / path.name).read_text(encoding="utf-8"))
    result = page.evaluate(LOAD_AND_CONVERT, wf)
    assert result["missing"] == [], f"the frontend does not know these node types: {result['missing']}"
    diffs = prompt_diff(result["output"], twin)
    assert diffs == [], f"{path.name}: the frontend's graphToPrompt differs from workflows/api/{path.name}:\n" + \
        "\n".join(diffs)


OVERLAPS = """async (wf) => {
    await window.app.loadGraphData(wf, true, true, null,
                                   {showMissingNodesDialog: false, showMissingModelsDialog: false});
    window.app.canvas.draw(true, true);
    await new Promise((done) => setTimeout(done, 300));   // text boxes take their size on the first frames
    const boxes = window.app.graph.nodes.map((n) => {
        const b = new Float32Array(4);
        n.getBounding(b);
        return [n.title || n.type, b[0], b[1], b[2], b[3]];
    });
    const pairs = [];
    for (let i = 0; i < boxes.length; i++)
        for (let j = i + 1; j < boxes.length; j++) {
            const [ta, ax, ay, aw, ah] = boxes[i], [tb, bx, by, bw, bh] = boxes[j];
            if (ax < bx + bw && bx < ax + aw && ay < by + bh && by < ay + ah) pairs.push(`${ta} / ${tb}`);
        }
    return pairs;
}"""


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_no_two_nodes_overlap_as_the_frontend_draws_them(page, path):
    """Node boxes as the frontend sizes them (a long title or a text box makes a node wider or taller
    than the size stored in the file): a workflow whose nodes hide each other looks broken."""
    wf = json.loads(path.read_text(encoding="utf-8"))
    assert page.evaluate(OVERLAPS, wf) == [], f"{path.name}: move or shorten these nodes"


LOAD_FOR_QUEUE = """async (wf) => {
    await window.app.loadGraphData(wf, true, true, null,
                                   {showMissingNodesDialog: false, showMissingModelsDialog: false});
    return await window.app.graphToPrompt();
}"""
QUEUE = "async (made) => await window.app.api.queuePrompt(0, made)"


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_the_bundled_model_workflow_queued_from_the_page_succeeds(page, comfy_server, path):
    from PIL import Image

    wf = json.loads(path.read_text(encoding="utf-8"))
    page.errors.clear()  # the page is shared: count only what this workflow raises
    made = page.evaluate(LOAD_FOR_QUEUE, wf)
    # the frontend itself raised nothing while loading and converting the workflow
    assert page.errors == [], page.errors
    # queued through the API client, as the Queue button's last step does (app.queuePrompt would
    # also track the job in the page's stores, which this test does not need: their bookkeeping
    # of a job queued this way is not checked)
    reply = page.evaluate(QUEUE, made)
    assert reply.get("node_errors") in ({}, None) and reply.get("prompt_id"), reply
    entry = comfy_server.wait_history(reply["prompt_id"], timeout=300.0)
    assert entry["status"]["status_str"] == "success", (entry["status"], comfy_server.log_tail())
    twin = json.loads((API / path.name).read_text(encoding="utf-8"))
    save = [nid for nid, n in twin.items() if n["class_type"] == "SaveAnimatedWEBP"]
    assert len(save) == 1
    saved = entry["outputs"][save[0]]["images"]
    assert len(saved) == 1
    extend = [n["inputs"]["frames"] for n in twin.values() if n["class_type"] == "FB_ExtendVideo"]
    frames = extend[0] if extend else next(n["inputs"]["length"] for n in twin.values()
                                           if n["class_type"] == "FB_BridgePriorFromImage")
    with Image.open(comfy_server.base / "output" / saved[0]["subfolder"] / saved[0]["filename"]) as webp:
        assert webp.n_frames == frames


def test_bundled_workflows_are_there():
    assert {p.name for p in BUNDLED} >= {"FrameBridge-Tiny-Animate-Image.json"}
