"""Shipped workflows: every UI workflow and every API twin parses, and each UI workflow and its
API twin describe the same graph (node types, links, and the widget values of our nodes).

No ComfyUI needed. The widget order of our nodes is written down in ``OUR_WIDGETS`` below; the
host tests (``tests/host``) check that table and the core nodes' widgets against the live node
schemas of a real ComfyUI.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
API = WORKFLOWS / "api"

#: Marks a UI-only widget value (the "fixed"/"randomize" control stored after a seed widget).
CONTROL = None

#: Widget inputs of our nodes in schema order, as the UI stores them in ``widgets_values``.
OUR_WIDGETS: dict[str, tuple] = {
    "FB_LoadFrameBridge": ("ckpt_name", "weight_dtype"),
    "FB_LoadNeuralPrior": ("ckpt_name",),
    "FB_UCF101Class": ("class_name",),
    "FB_CameraMotion": ("motion",),
    "FB_LoadFrameBridgeCheckpoint": ("ckpt_name", "weight_dtype"),
    "FB_FrameStride": ("frame_stride",),
    "FB_BridgePriorFromImage": ("length", "resize"),
    "FB_NeuralPrior": (),
    "FB_BridgeSampler": ("seed", CONTROL, "steps", "spacing", "cfg", "method", "eta"),
    "FB_BridgeSamplerSelect": ("method", "eta"),
    "FB_BridgeSchedule": ("steps", "spacing"),
    "FB_LoadCogVideoXVAE": ("vae_name", "tiled", "dtype"),
    "FB_CogVideoXTextEncode": ("text", "tokens"),
    "FB_ExtendVideo": ("frames", "overlap", "seed", CONTROL, "steps", "spacing", "cfg", "method", "eta"),
    "FB_Prompt2Prompt": ("source_prompt", "target_prompt", "mode", "cross_replace_steps", "self_replace_steps",
                         "blend_source_words", "blend_target_words", "reweight_words", "reweight_strength"),
    "FB_Prompt2PromptSplit": (),
}

#: Nodes that exist only in the frontend; they have no API-format counterpart.
FRONTEND_ONLY = {"MarkdownNote", "Note", "Reroute", "PrimitiveNode"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}

UI_FILES = sorted(WORKFLOWS.glob("*.json"))
API_FILES = sorted(API.glob("*.json"))


def load(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def ui_links(wf: dict) -> dict[int, list]:
    return {link[0]: link for link in wf["links"]}


def test_there_are_workflows_and_every_ui_workflow_has_an_api_twin():
    names = {p.name for p in UI_FILES}
    assert {"FrameBridge-Latte-I2V.json", "FrameBridge-Latte-NeuralPrior-I2V.json"} <= names
    assert {"FrameBridge-Latte-I2V-SamplerCustomAdvanced.json"} <= {p.name for p in API_FILES}
    missing = sorted(n for n in names if not (API / n).is_file())
    assert missing == [], f"UI workflows without an API twin in workflows/api: {missing}"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_is_a_consistent_litegraph_graph(path):
    wf = load(path)
    assert wf["version"] == 0.4
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]), "duplicate node ids"
    links = ui_links(wf)
    assert len(links) == len(wf["links"]), "duplicate link ids"
    assert wf["last_node_id"] >= max(nodes) and wf["last_link_id"] >= max(links)
    for n in wf["nodes"]:
        for key in ("id", "type", "pos", "size", "inputs", "outputs", "widgets_values", "properties", "mode"):
            assert key in n, f"node {n.get('id')} has no {key!r}"
        assert len(n["pos"]) == 2 and len(n["size"]) == 2
        if n["type"] not in FRONTEND_ONLY:
            assert n["properties"]["Node name for S&R"] == n["type"]
        for slot, inp in enumerate(n["inputs"]):
            if inp["link"] is not None:
                lid, src, src_slot, dst, dst_slot, typ = links[inp["link"]]
                assert (dst, dst_slot, typ) == (n["id"], slot, inp["type"]), f"link {lid} does not end at {n['id']}:{slot}"
        for slot, out in enumerate(n["outputs"]):
            assert out.get("slot_index", slot) == slot
            for lid in out["links"] or []:
                assert links[lid][1:3] == [n["id"], slot] and links[lid][5] == out["type"]
    for lid, src, src_slot, dst, dst_slot, typ in wf["links"]:
        assert lid in (nodes[src]["outputs"][src_slot]["links"] or [])
        assert nodes[dst]["inputs"][dst_slot]["link"] == lid
    # every FrameBridge node and the seed widget store exactly the values the schema implies
    for n in wf["nodes"]:
        if n["type"] in OUR_WIDGETS:
            order = OUR_WIDGETS[n["type"]]
            assert len(n["widgets_values"]) == len(order), (n["type"], n["widgets_values"])
            for name, value in zip(order, n["widgets_values"]):
                if name is CONTROL:
                    assert value in CONTROL_VALUES


LATTE_UI = [p for p in UI_FILES if p.name.startswith("FrameBridge-Latte")]
TINY_UI = [p for p in UI_FILES if p.name.startswith("FrameBridge-Tiny")]


@pytest.mark.parametrize("path", LATTE_UI, ids=lambda p: p.name)
def test_latte_ui_workflow_explains_where_the_weights_go(path):
    wf = load(path)
    notes = [n for n in wf["nodes"] if n["type"] == "MarkdownNote"]
    assert len(notes) == 1
    text = notes[0]["widgets_values"][0]
    assert "models/framebridge" in text
    assert "vae/" in text and "sd-vae-ft-ema" in text
    for n in wf["nodes"]:
        if n["type"] in ("FB_LoadFrameBridge", "FB_LoadNeuralPrior"):
            assert n["widgets_values"][0] in text, f"the note does not name {n['widgets_values'][0]}"
        if n["type"] == "VAELoader":
            assert n["widgets_values"][0] in text
    # the official Google Drive ids (docs/math.md §5.3)
    drive = {"FB_LoadNeuralPrior": "1fLRDaGctvedjYsMC_KG5FqBuD1HNyt2a"}
    types = {n["type"] for n in wf["nodes"]}
    bridge = "1O51G3ZPGkqItdlkde-jXOc765kbVBGbc" if "FB_NeuralPrior" in types else "15_AfLQl6cnXmoBnxRibnHQzwwqxexp_P"
    assert bridge in text
    for t, drive_id in drive.items():
        if t in types:
            assert drive_id in text


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_api_twin_is_a_valid_prompt(path):
    prompt = load(path)
    assert isinstance(prompt, dict) and prompt
    for nid, node in prompt.items():
        assert isinstance(nid, str) and nid.isdigit()
        assert set(node) <= {"class_type", "inputs", "_meta"} and isinstance(node["inputs"], dict)
        assert node["class_type"] not in FRONTEND_ONLY
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                src, slot = value
                assert src in prompt and isinstance(slot, int) and slot >= 0, (nid, name, value)
        if node["class_type"] in OUR_WIDGETS:
            widgets = {w for w in OUR_WIDGETS[node["class_type"]] if w is not CONTROL}
            literal = {k for k, v in node["inputs"].items() if not isinstance(v, list)}
            assert literal == widgets, (node["class_type"], literal)
    assert any(n["class_type"].startswith("Save") for n in prompt.values()), "no output node"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_and_api_twin_describe_the_same_graph(path):
    wf, prompt = load(path), load(API / path.name)
    backend = [n for n in wf["nodes"] if n["type"] not in FRONTEND_ONLY]
    assert Counter(n["type"] for n in backend) == Counter(n["class_type"] for n in prompt.values())
    assert {str(n["id"]) for n in backend} == set(prompt), "the twins should use the same node ids"
    links = ui_links(wf)
    for n in backend:
        api = prompt[str(n["id"])]
        assert api["class_type"] == n["type"]
        linked = {}
        for inp in n["inputs"]:
            if inp["link"] is not None:
                _, src, src_slot, *_ = links[inp["link"]]
                linked[inp["name"]] = [str(src), src_slot]
        assert {k: v for k, v in api["inputs"].items() if isinstance(v, list)} == linked, n["type"]
        if n["type"] in OUR_WIDGETS:
            ui_values = {name: v for name, v in zip(OUR_WIDGETS[n["type"]], n["widgets_values"]) if name is not CONTROL}
            api_values = {k: v for k, v in api["inputs"].items() if not isinstance(v, list)}
            assert ui_values == api_values, n["type"]


def _by_type(prompt: dict, class_type: str) -> dict:
    found = [n["inputs"] for n in prompt.values() if n["class_type"] == class_type]
    assert len(found) == 1, f"expected one {class_type}, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("name,bridge,neural", [
    ("FrameBridge-Latte-I2V", "framebridge_latte_ucf101.pt", False),
    ("FrameBridge-Latte-NeuralPrior-I2V", "framebridge_latte_ucf101_nwarp.pt", True),
    ("FrameBridge-Latte-I2V-SamplerCustomAdvanced", "framebridge_latte_ucf101.pt", False),
])
def test_api_twins_use_the_official_latte_settings(name, bridge, neural):
    prompt = load(API / f"{name}.json")
    assert _by_type(prompt, "FB_LoadFrameBridge")["ckpt_name"] == bridge
    assert _by_type(prompt, "VAELoader")["vae_name"] == "sd-vae-ft-ema.safetensors"
    assert _by_type(prompt, "FB_BridgePriorFromImage")["length"] == 16
    assert _by_type(prompt, "SaveAnimatedWEBP")["fps"] == 8
    types = {n["class_type"] for n in prompt.values()}
    assert ("FB_NeuralPrior" in types) == neural and ("FB_LoadNeuralPrior" in types) == neural
    if neural:
        assert _by_type(prompt, "FB_LoadNeuralPrior")["ckpt_name"] == "framebridge_latte_nwarp.pt"
    if "SamplerCustomAdvanced" in types:
        assert "FB_BridgeSampler" not in types
        sched, sampler = _by_type(prompt, "FB_BridgeSchedule"), _by_type(prompt, "FB_BridgeSamplerSelect")
        assert (sched["steps"], sched["spacing"], sampler["method"]) == (50, "iddpm", "sde")
        assert _by_type(prompt, "CFGGuider")["cfg"] == 7.0
        assert {"RandomNoise", "CFGGuider"} <= types
    else:
        s = _by_type(prompt, "FB_BridgeSampler")
        assert (s["steps"], s["spacing"], s["cfg"], s["method"]) == (50, "iddpm", 7.0, "sde")


@pytest.mark.parametrize("path", TINY_UI, ids=lambda p: p.name)
def test_tiny_workflow_uses_the_bundled_models_and_core_nodes_only(path):
    wf, prompt = load(path), load(API / path.name)
    notes = [n for n in wf["nodes"] if n["type"] == "MarkdownNote"]
    assert len(notes) == 1 and "no download" in notes[0]["widgets_values"][0].lower()
    assert "pixel_space" in notes[0]["widgets_values"][0]
    types = {n["class_type"] for n in prompt.values()}
    assert {t for t in types if not t.startswith("FB_")} <= {"LoadImage", "VAELoader", "VAEDecode", "ImageScaleBy",
                                                             "SaveAnimatedWEBP"}
    assert _by_type(prompt, "VAELoader")["vae_name"] == "pixel_space"
    bundled = {p.name for p in (ROOT / "pretrained").glob("*.safetensors")}
    for t in ("FB_LoadFrameBridge", "FB_LoadNeuralPrior"):
        if t in types:
            assert _by_type(prompt, t)["ckpt_name"] in bundled, t
    s = _by_type(prompt, "FB_BridgeSampler")
    assert (s["steps"], s["spacing"], s["cfg"], s["method"]) == (25, "trailing", 2.0, "sde")
    assert _by_type(prompt, "FB_BridgePriorFromImage")["length"] == 16
    # the main Tiny workflow goes through the neural prior (it follows the motion best); -StillPrior not
    assert ("FB_NeuralPrior" in types) == (not path.stem.endswith("StillPrior"))


def test_workflows_readme_lists_every_workflow():
    text = (WORKFLOWS / "README.md").read_text(encoding="utf-8")
    for p in UI_FILES + API_FILES:
        assert p.name in text, f"workflows/README.md does not mention {p.name}"
    assert "COMFYUI_PATH" in text and "tests/host" in text


def test_every_ui_workflow_has_its_picture_shown_in_the_readme():
    """workflows/img/<name>.png, drawn by the real frontend (.ci/render_workflow_images.py)."""
    from PIL import Image

    text = (WORKFLOWS / "README.md").read_text(encoding="utf-8")
    for p in UI_FILES:
        picture = WORKFLOWS / "img" / f"{p.stem}.png"
        assert picture.is_file(), f"no {picture.relative_to(ROOT)}: run .ci/render_workflow_images.py --only {p.stem}"
        with Image.open(picture) as im:
            assert im.width >= 600 and im.height >= 200, (picture.name, im.size)
        assert f"(img/{p.stem}.png)" in text, f"workflows/README.md does not show img/{p.stem}.png"
    assert {q.stem for q in (WORKFLOWS / "img").glob("*.png")} == {p.stem for p in UI_FILES}
