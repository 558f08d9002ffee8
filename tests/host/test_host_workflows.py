"""The shipped workflows inside a real ComfyUI: every API twin runs, the twins agree, runs repeat,
and each UI workflow is exactly its API twin under the live node schemas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.host

REPO = Path(__file__).resolve().parents[2]
# the Latte workflows run on the random stand-in weights of conftest; others have their own tests
API_NAMES = sorted(p.stem for p in (REPO / "workflows" / "api").glob("FrameBridge-Latte-*.json"))
UI_FILES = sorted((REPO / "workflows").glob("*.json"))
SAMPLERS = ("FB_BridgeSampler", "SamplerCustomAdvanced")
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"MarkdownNote", "Note", "Reroute", "PrimitiveNode"}
NP = "FrameBridge-Latte-NeuralPrior-I2V"

def sampler_id(host, prompt) -> str:
    ids = [nid for nid, n in prompt.items() if n["class_type"] in SAMPLERS]
    assert len(ids) == 1
    return ids[0]


def run_ok(host, prompt):
    run = host.run(prompt)
    assert run.valid and run.success, run.describe()
    assert run.error is None
    return run


def test_the_three_latte_workflows_are_there():
    assert API_NAMES == ["FrameBridge-Latte-I2V", "FrameBridge-Latte-I2V-SamplerCustomAdvanced",
                         "FrameBridge-Latte-NeuralPrior-I2V"]


@pytest.mark.parametrize("name", API_NAMES)
def test_api_twin_runs_end_to_end(host, name):
    torch = pytest.importorskip("torch")
    from PIL import Image

    prompt = host.lower_steps(host.load_api(name), 4)
    run = run_ok(host, prompt)
    f, c, s, px = (host.shape[k] for k in ("frames", "latent_channels", "latent_size", "pixels"))

    # the prior: the image latent repeated over the frames, or the neural prior's coarse video
    prior_node = host.node_id(prompt, "FB_BridgePriorFromImage")
    static = run.output(prior_node, 2)["samples"]
    assert tuple(static.shape) == (f, c, s, s) and torch.isfinite(static).all()
    assert torch.equal(static, static[:1].expand_as(static)), "the static prior must repeat one frame"
    prior = static
    if "FB_NeuralPrior" in {n["class_type"] for n in prompt.values()}:
        prior = run.output(host.node_id(prompt, "FB_NeuralPrior"), 2)["samples"]
        assert tuple(prior.shape) == (f, c, s, s) and torch.isfinite(prior).all()
        assert not torch.equal(prior[0], prior[-1]), "the neural prior should give a moving coarse video"

    latent = run.output(sampler_id(host, prompt), 0)["samples"]
    assert tuple(latent.shape) == (f, c, s, s)
    assert latent.dtype == torch.float32 and torch.isfinite(latent).all()
    assert not torch.equal(latent, prior), "sampling must move away from the prior"

    image = run.output(host.node_id(prompt, "VAEDecode"), 0)
    assert tuple(image.shape) == (f, px, px, 3)
    assert torch.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0

    saved = run.ui[host.node_id(prompt, "SaveAnimatedWEBP")]["images"]
    assert len(saved) == 1 and saved[0]["filename"].endswith(".webp") and saved[0]["type"] == "output"
    path = host.base / "output" / saved[0]["subfolder"] / saved[0]["filename"]
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as webp:
        assert webp.format == "WEBP" and webp.size == (px, px) and webp.n_frames == f


def test_samplercustomadvanced_equals_bridge_sampler_for_the_same_seed(host):
    torch = pytest.importorskip("torch")

    def latent(name, seed):
        prompt = host.set_seed(host.lower_steps(host.load_api(name), 4), seed)
        return run_ok(host, prompt).output(sampler_id(host, prompt), 0)["samples"]

    one = latent("FrameBridge-Latte-I2V", 7)
    custom = latent("FrameBridge-Latte-I2V-SamplerCustomAdvanced", 7)
    assert torch.equal(one, custom), f"max |diff| {float((one - custom).abs().max())}"
    other = latent("FrameBridge-Latte-I2V-SamplerCustomAdvanced", 8)
    assert not torch.equal(custom, other)
    assert float((custom - other).abs().max()) > 1e-3, "a different seed should give a different video"


@pytest.mark.parametrize("name", ["FrameBridge-Latte-I2V", NP])
def test_the_same_prompt_twice_gives_the_same_video(host, name):
    torch = pytest.importorskip("torch")
    prompt = host.lower_steps(host.load_api(name), 4)
    runs = [run_ok(host, json.loads(json.dumps(prompt))) for _ in range(2)]  # a fresh executor each time
    for node, slot in ((sampler_id(host, prompt), 0), (host.node_id(prompt, "VAEDecode"), 0)):
        a, b = (r.output(node, slot) for r in runs)
        a, b = (x["samples"] if isinstance(x, dict) else x for x in (a, b))
        assert torch.equal(a, b), f"node {node} differs between two runs"


def test_api_twins_validate_unchanged(host):
    """The twins as shipped (50 steps, the real file names) pass ComfyUI's own validation."""
    import asyncio

    for name in API_NAMES:
        ok, err, outputs, node_errors = asyncio.run(host.execution.validate_prompt("v", host.load_api(name), None))
        assert ok, (name, err, node_errors)
        assert outputs == [host.node_id(host.load_api(name), "SaveAnimatedWEBP")]


# ---- UI workflow <-> API twin under the live schemas ---------------------------------------------


def live_widgets(info: dict) -> list:
    """Widget names in the order the frontend stores widgets_values; None = a UI-only value."""
    names = []
    for section in ("required", "optional"):
        for name in info["input_order"].get(section, []):
            spec = info["input"][section][name]
            kind = "COMBO" if isinstance(spec[0], list) else spec[0]
            opts = spec[1] if len(spec) > 1 else {}
            if kind not in WIDGET_TYPES or opts.get("forceInput"):
                continue
            names.append(name)
            if opts.get("control_after_generate"):
                names.append(None)  # "fixed" / "randomize"
            if opts.get("image_upload"):
                names.append(None)  # the upload button's value ("image")
    return names


def live_sockets(info: dict) -> list:
    out = []
    for section in ("required", "optional"):
        for name in info["input_order"].get(section, []):
            spec = info["input"][section][name]
            kind = "COMBO" if isinstance(spec[0], list) else spec[0]
            if kind not in WIDGET_TYPES:
                out.append((name, kind))
    return out


def test_static_widget_table_matches_the_live_schemas(host, workflow_table):
    for node in host.fb_nodes:
        assert tuple(live_widgets(host.node_info(node))) == workflow_table.OUR_WIDGETS[node], node


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_is_its_api_twin_under_the_live_schemas(host, path):
    wf = json.loads(path.read_text(encoding="utf-8"))
    prompt = host.load_api(path.stem)
    links = {link[0]: link for link in wf["links"]}
    for n in wf["nodes"]:
        if n["type"] in FRONTEND_ONLY:
            continue
        assert n["type"] in host.nodes.NODE_CLASS_MAPPINGS, n["type"]
        info = host.node_info(n["type"])
        # sockets: the UI lists exactly the schema's socket inputs, with their types
        assert [(i["name"], i["type"]) for i in n["inputs"]] == live_sockets(info), n["type"]
        assert [(o["name"], o["type"]) for o in n["outputs"]] == list(zip(info["output_name"], info["output"])), n["type"]
        # widgets: positional widgets_values map onto the API twin's literal inputs
        names = live_widgets(info)
        assert len(n["widgets_values"]) == len(names), (n["type"], n["widgets_values"], names)
        expected = {k: v for k, v in zip(names, n["widgets_values"]) if k is not None}
        for i in n["inputs"]:
            if i["link"] is not None:
                _, src, src_slot, _, _, typ = links[i["link"]]
                expected[i["name"]] = [str(src), src_slot]
        assert prompt[str(n["id"])]["inputs"] == expected, n["type"]
