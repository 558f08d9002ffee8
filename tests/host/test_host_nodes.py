"""Registration in a real ComfyUI: the pack's nodes, their menu categories and their tooltips."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.host

REPO = Path(__file__).resolve().parents[2]

FB_NODES = ("FB_LoadFrameBridge", "FB_LoadNeuralPrior", "FB_UCF101Class", "FB_CameraMotion", "FB_BridgePriorFromImage",
            "FB_NeuralPrior", "FB_BridgeSampler", "FB_BridgeSamplerSelect", "FB_BridgeSchedule",
            "FB_LoadFrameBridgeCheckpoint", "FB_FrameStride", "FB_LoadCogVideoXVAE", "FB_CogVideoXTextEncode",
            "FB_ExtendVideo", "FB_Prompt2Prompt", "FB_Prompt2PromptSplit")


def test_all_framebridge_nodes_are_registered_under_framebridge(host):
    registered = sorted(k for k in host.nodes.NODE_CLASS_MAPPINGS if k.startswith("FB_"))
    assert registered == sorted(FB_NODES)
    for node in FB_NODES:
        info = host.node_info(node)
        assert info["category"].startswith("FrameBridge"), (node, info["category"])
        assert info["display_name"] and info["display_name"] != node, node
        assert info["description"], node
        assert info["python_module"].startswith("custom_nodes."), (node, info["python_module"])


def test_pack_loaded_from_the_linked_checkout(host):
    dirs = {name: path for name, path in host.nodes.LOADED_MODULE_DIRS.items() if "FrameBridge" in name}
    assert list(dirs) == ["ComfyUI-FrameBridge"], dirs
    assert Path(dirs["ComfyUI-FrameBridge"]).resolve() == REPO


@pytest.mark.parametrize("node", FB_NODES)
def test_every_input_has_a_tooltip(host, node):
    inputs = host.node_class(node).INPUT_TYPES()
    missing = []
    count = 0
    for section in ("required", "optional"):
        for name, spec in inputs.get(section, {}).items():
            count += 1
            opts = spec[1] if len(spec) > 1 else {}
            if not str(opts.get("tooltip", "")).strip():
                missing.append(name)
    assert count > 0
    assert missing == [], f"{node}: inputs without a tooltip: {missing}"
