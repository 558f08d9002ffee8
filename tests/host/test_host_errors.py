"""Bad input inside a real ComfyUI: the run stops at the right node with one of the pack's typed
errors, and the message names the value and the fix."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.host

I2V = "FrameBridge-Latte-I2V"
NP = "FrameBridge-Latte-NeuralPrior-I2V"

def _set(host, prompt, class_type, **inputs):
    prompt[host.node_id(prompt, class_type)]["inputs"].update(inputs)
    return prompt


def neural_prior_file_as_bridge(host):
    return _set(host, host.load_api(I2V), "FB_LoadFrameBridge", ckpt_name=host.files["nwarp"])


def truncated_checkpoint(host):
    return _set(host, host.load_api(I2V), "FB_LoadFrameBridge", ckpt_name=host.files["truncated"])


def wrong_length(host):
    return _set(host, host.load_api(I2V), "FB_BridgePriorFromImage", length=24)


def eight_channel_model_without_neural_prior(host):
    prompt = host.load_api(NP)
    prior = host.node_id(prompt, "FB_BridgePriorFromImage")
    for class_type in ("FB_NeuralPrior", "FB_LoadNeuralPrior"):
        del prompt[host.node_id(prompt, class_type)]
    sampler = prompt[host.node_id(prompt, "FB_BridgeSampler")]["inputs"]
    sampler.update(positive=[prior, 0], negative=[prior, 1], prior=[prior, 2])
    return prompt


def four_channel_model_with_neural_prior(host):
    return _set(host, host.load_api(NP), "FB_LoadFrameBridge", ckpt_name=host.files["bridge4"])


def sixteen_channel_vae(host):
    return _set(host, host.load_api(I2V), "VAELoader", vae_name=host.files["vae16"])


CASES = [
    # (prompt builder, failing node type, exception class, substrings of the message)
    (neural_prior_file_as_bridge, "FB_LoadFrameBridge", "CheckpointError",
     ["framebridge_latte_nwarp.pt", "neural prior", "'Load Neural Prior'"]),
    (truncated_checkpoint, "FB_LoadFrameBridge", "CheckpointError",
     ["truncated.safetensors", "truncated or corrupt", "Re-download"]),
    (wrong_length, "FB_BridgePriorFromImage", "ShapeError",
     ["length=24", "16-frame", "Set length to 16"]),
    (eight_channel_model_without_neural_prior, "FB_BridgeSampler", "ConfigError",
     ["neural prior (8 input channels)", "'Neural Prior'"]),
    pytest.param(four_channel_model_with_neural_prior, "FB_BridgeSampler", "ConfigError",
                 ["does not take a neural prior", "4 input channels", "'Neural Prior'"],
                 id="four_channel_model_with_neural_prior"),
    (sixteen_channel_vae, "FB_BridgePriorFromImage", "ShapeError",
     ["16-channel latents", "4-channel latents", "sd-vae-ft-ema"]),
]


@pytest.mark.parametrize("build,node_type,exc,needles", CASES,
                         ids=[c.id if hasattr(c, "marks") else c[0].__name__ for c in CASES])
def test_bad_input_gives_a_typed_error_that_names_the_fix(host, build, node_type, exc, needles):
    prompt = host.lower_steps(build(host), 2)
    run = host.run(prompt)
    assert run.valid, f"the prompt should pass validation and fail while running: {run.describe()}"
    assert not run.success
    err = run.error
    assert err is not None, run.describe()
    assert err["node_type"] == node_type, run.describe()
    assert err["node_id"] == host.node_id(prompt, node_type)
    assert err["exception_type"].rsplit(".", 1)[-1] == exc, err["exception_type"]
    assert ".framebridge_core.errors." in err["exception_type"], err["exception_type"]
    message = err["exception_message"]
    for needle in needles:
        assert needle.lower() in message.lower(), f"{needle!r} not in {message!r}"
    # nothing after the failing node ran
    save = host.node_id(prompt, "SaveAnimatedWEBP")
    assert save not in run.ui


def test_a_missing_weights_file_is_named(host):
    """ComfyUI 0.3.64 does not check V3 combo values at validation, so the loader reports it."""
    prompt = host.load_api(I2V)
    prompt[host.node_id(prompt, "FB_LoadFrameBridge")]["inputs"]["ckpt_name"] = "missing.pt"
    run = host.run(prompt)
    if not run.valid:  # a ComfyUI that validates combo values refuses it up front
        assert "missing.pt" in str(run.node_errors)
        return
    assert not run.success and run.error["node_type"] == "FB_LoadFrameBridge"
    assert "missing.pt" in run.error["exception_message"] and "framebridge" in run.error["exception_message"]
