"""A real ComfyUI server (python main.py) on 127.0.0.1: a bad prompt fails with our message, a
good one succeeds afterwards, and the server keeps answering."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.host


def test_server_reports_our_error_then_runs_a_good_prompt(host, comfy_server):
    from PIL import Image

    info = comfy_server.get("/object_info/FB_BridgeSampler")["FB_BridgeSampler"]
    assert info["category"].startswith("FrameBridge")
    assert info["input_order"]["required"][:4] == ["model", "positive", "negative", "prior"]

    bad = host.lower_steps(host.load_api("FrameBridge-Latte-I2V"), 2)
    bad[host.node_id(bad, "FB_LoadFrameBridge")]["inputs"]["ckpt_name"] = host.files["truncated"]
    status, reply = comfy_server.post("/prompt", {"prompt": bad, "client_id": "fb-host-test"})
    assert status == 200 and reply["node_errors"] == {}, reply
    entry = comfy_server.wait_history(reply["prompt_id"])
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    errors = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    assert len(errors) == 1, entry["status"]["messages"]
    assert errors[0]["node_type"] == "FB_LoadFrameBridge"
    assert errors[0]["exception_type"].endswith(".framebridge_core.errors.CheckpointError")
    assert "truncated or corrupt" in errors[0]["exception_message"]
    assert host.files["truncated"] in errors[0]["exception_message"]

    good = host.lower_steps(host.load_api("FrameBridge-Latte-I2V"), 2)
    status, reply = comfy_server.post("/prompt", {"prompt": good, "client_id": "fb-host-test"})
    assert status == 200 and reply["node_errors"] == {}, reply
    entry = comfy_server.wait_history(reply["prompt_id"])
    assert entry["status"]["status_str"] == "success", (entry["status"], comfy_server.log_tail())
    saved = entry["outputs"][host.node_id(good, "SaveAnimatedWEBP")]["images"]
    assert len(saved) == 1
    path = comfy_server.base / "output" / saved[0]["subfolder"] / saved[0]["filename"]
    with Image.open(path) as webp:
        assert webp.n_frames == host.shape["frames"] and webp.size == (host.shape["pixels"],) * 2

    # a graph with a wrong link type is refused up front (IMAGE into the sampler's LATENT prior)
    invalid = host.load_api("FrameBridge-Latte-I2V")
    sampler = host.node_id(invalid, "FB_BridgeSampler")
    invalid[sampler]["inputs"]["prior"] = [host.node_id(invalid, "LoadImage"), 0]
    status, reply = comfy_server.post("/prompt", {"prompt": invalid, "client_id": "fb-host-test"})
    assert status == 400 and sampler in reply["node_errors"], reply
    assert "prior" in json.dumps(reply["node_errors"][sampler])

    # still alive and answering
    assert comfy_server.proc.poll() is None
    assert "FB_BridgeSampler" in comfy_server.get("/object_info/FB_BridgeSampler")


def test_the_server_serves_every_node_help_page_where_the_frontend_looks(host, comfy_server):
    """The frontend asks /extensions/<pack folder>/docs/<node_id>.md for a custom node's help panel."""
    import urllib.request

    for node in host.fb_nodes:
        url = f"{comfy_server.url}/extensions/ComfyUI-FrameBridge/docs/{node}.md"
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode("utf-8")
        title = host.node_info(node)["display_name"]
        assert reply.status == 200 and text.startswith(f"# {title}"), (node, text[:80])
