"""FrameBridge-CogVideoX inside a real ComfyUI, on random stand-in weights at a reduced width.

Stand-ins: the transformer as a diffusers ``transformer/`` folder (config.json + two shards + index,
2 layers, 768-wide text), the CogVideoX VAE as one safetensors (narrow channels), and a T5-base as the
text encoder (the pack takes whatever T5 the CLIP holds and checks its width against the model). The
shipped workflow runs as written, bad inputs give typed errors, and the server keeps serving.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.host

WORKFLOW = "FrameBridge-CogVideoX-I2V"
FOLDER = "FrameBridge-CogVideoX-2B"
VAE_FILE = "cogvideox_2b_vae.safetensors"
T5_FILE = "t5xxl_fp16.safetensors"
TEXT_W = 768  # T5-base width: ComfyUI builds a T5-base CLIP from these keys


def _transformer_config(in_channels=32):
    return dict(num_attention_heads=2, attention_head_dim=16, in_channels=in_channels, out_channels=16,
                time_embed_dim=32, text_embed_dim=TEXT_W, num_layers=2, patch_size=2, max_text_seq_length=226,
                sample_width=8, sample_height=8, sample_frames=9)


def write_transformer_folder(folder, in_channels=32, seed=3):
    from safetensors.torch import save_file

    from framebridge_core.families.cogvideox.network import CogVideoXConfig, CogVideoXTransformer
    from framebridge_core.testing import seeded_random_weights

    cfg = _transformer_config(in_channels)
    net = seeded_random_weights(CogVideoXTransformer(CogVideoXConfig.from_dict(cfg)), seed=seed)
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    keys = sorted(sd)
    half = len(keys) // 2
    folder.mkdir(parents=True, exist_ok=True)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[:half],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[half:]}
    for name, part in shards.items():
        save_file({k: sd[k] for k in part}, str(folder / name))
    index = {"metadata": {"total_size": sum(v.numel() * 4 for v in sd.values())},
             "weight_map": {k: name for name, part in shards.items() for k in part}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps({"_class_name": "CogVideoXTransformer3DModel", **cfg}))
    return net


def write_vae(path, seed=4):
    from safetensors.torch import save_file

    from framebridge_core.families.cogvideox.vae import CogVideoXVAE, CogVideoXVAEConfig
    from framebridge_core.testing import seeded_random_weights

    cfg = CogVideoXVAEConfig(block_out_channels=(8, 16, 16, 16), latent_channels=16, layers_per_block=1,
                             norm_num_groups=4)
    vae = seeded_random_weights(CogVideoXVAE(cfg), seed=seed)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(path),
              metadata={"framebridge.norm_num_groups": "4"})
    return vae


def write_t5_base(path):
    import os

    import torch
    from safetensors.torch import save_file

    import comfy.ops
    import comfy.text_encoders.t5 as t5

    config = json.loads(open(os.path.join(os.path.dirname(t5.__file__), "t5_config_base.json")).read())
    model = t5.T5(config, dtype=torch.float16, device="cpu", operations=comfy.ops.manual_cast)
    g = torch.Generator().manual_seed(7)
    sd = {}
    for k, v in model.state_dict().items():
        r = torch.randn(v.shape, generator=g)
        sd[k] = (1 + 0.1 * r if k.endswith("layer_norm.weight") else 0.02 * r).to(torch.float16).contiguous()
    save_file(sd, str(path))


@pytest.fixture(scope="module")
def stand_ins(host):
    models = host.base / "models"
    net = write_transformer_folder(models / "framebridge" / FOLDER)
    write_transformer_folder(models / "framebridge" / "CogVideoX-2B-T2V", in_channels=16)
    (models / "vae").mkdir(parents=True, exist_ok=True)
    vae = write_vae(models / "vae" / VAE_FILE)
    (models / "text_encoders").mkdir(parents=True, exist_ok=True)
    write_t5_base(models / "text_encoders" / T5_FILE)
    return net, vae


def _prompt(host, steps=3, small=True):
    """The shipped workflow with fewer steps; ``small``: a 64x64 image, fp32 weights (a quick CPU run)."""
    prompt = host.lower_steps(host.load_api(WORKFLOW), steps)
    if small:
        prompt["98"] = {"class_type": "ImageScale", "inputs": {"image": ["4", 0], "upscale_method": "bilinear",
                                                               "width": 64, "height": 64, "crop": "center"}}
        prior = prompt[host.node_id(prompt, "FB_BridgePriorFromImage")]["inputs"]
        prior.update(image=["98", 0], resize="none")
        prompt[host.node_id(prompt, "FB_LoadFrameBridge")]["inputs"]["weight_dtype"] = "default"
    return prompt


def test_the_transformer_folder_is_one_entry_of_load_framebridge(host, stand_ins):
    info = host.node_info("FB_LoadFrameBridge")
    spec = info["input"]["required"]["ckpt_name"]
    options = spec[1]["options"] if spec[0] == "COMBO" else spec[0]
    assert f"{FOLDER}/" in options
    assert not any(o.startswith(f"{FOLDER}/diffusion_pytorch_model") for o in options)


def test_workflow_runs_as_shipped(host, stand_ins):
    import torch

    prompt = _prompt(host, small=False)
    run = host.run(prompt)
    assert run.valid and run.success, run.describe()
    prior = run.output(host.node_id(prompt, "FB_BridgePriorFromImage"), 2)["samples"]
    assert tuple(prior.shape) == (1, 16, 5, 32, 32) and torch.isfinite(prior).all()
    latent = run.output(host.node_id(prompt, "FB_BridgeSampler"), 0)["samples"]
    assert latent.shape == prior.shape and torch.isfinite(latent).all() and not torch.equal(latent, prior)
    frames = run.output(host.node_id(prompt, "VAEDecode"), 0)
    assert tuple(frames.shape) == (17, 256, 256, 3) and float(frames.min()) >= 0 and float(frames.max()) <= 1
    saved = run.ui[host.node_id(prompt, "SaveAnimatedWEBP")]["images"]
    assert len(saved) == 1 and saved[0]["filename"].endswith(".webp")


def test_same_seed_same_video_and_the_model_sees_the_text(host, stand_ins):
    import torch

    a = host.run(_prompt(host, 2))
    b = host.run(_prompt(host, 2))
    node = host.node_id(_prompt(host, 2), "FB_BridgeSampler")
    assert torch.equal(a.output(node, 0)["samples"], b.output(node, 0)["samples"])
    other = _prompt(host, 2)
    other["5"]["inputs"]["text"] = "a red car on a mountain road"  # node 5: the prompt, 6: the empty negative
    c = host.run(other)
    assert c.success, c.describe()
    assert not torch.equal(a.output(node, 0)["samples"], c.output(node, 0)["samples"])


def test_fp8_weights_run_through_the_hosts_manual_cast(host, stand_ins):
    import torch

    prompt = _prompt(host, 2)
    prompt[host.node_id(prompt, "FB_LoadFrameBridge")]["inputs"]["weight_dtype"] = "fp8_e4m3fn"
    run = host.run(prompt)
    assert run.success, run.describe()
    fp32 = host.run(_prompt(host, 2))
    node = host.node_id(prompt, "FB_BridgeSampler")
    a, b = run.output(node, 0)["samples"], fp32.output(node, 0)["samples"]
    assert torch.isfinite(a).all() and not torch.equal(a, b)
    assert float((a - b).abs().mean()) < 0.5 * float(b.abs().mean())  # 8-bit weights, same video roughly


def test_text_is_exactly_226_tokens_of_the_clip_width(host, stand_ins):
    prompt = _prompt(host)
    run = host.run(prompt)
    cond = run.output("5", 0)
    assert tuple(cond[0][0].shape) == (1, 226, TEXT_W)


def _expect_error(host, prompt, node_type, exc, pattern):
    import re

    run = host.run(prompt)
    assert not run.success
    err = run.error
    assert err["node_type"] == node_type and err["exception_type"].endswith(exc), run.describe()
    assert re.search(pattern, err["exception_message"]), err["exception_message"]


def test_bad_inputs_give_typed_errors_and_the_host_keeps_serving(host, stand_ins):
    p = _prompt(host)
    p[host.node_id(p, "FB_BridgePriorFromImage")]["inputs"]["length"] = 16
    _expect_error(host, p, "FB_BridgePriorFromImage", "ShapeError", r"4k\+1.*Use 13 or 17")

    p = _prompt(host)
    for nid, n in list(p.items()):
        if n["class_type"] == "FB_CogVideoXTextEncode":
            n["class_type"] = "CLIPTextEncode"
            n["inputs"].pop("tokens")
    _expect_error(host, p, "FB_BridgePriorFromImage", "ShapeError", r"needs \(226, 768\).*CogVideoX Text Encode")

    p = _prompt(host)
    p[host.node_id(p, "FB_LoadFrameBridge")]["inputs"]["ckpt_name"] = "CogVideoX-2B-T2V/"
    _expect_error(host, p, "FB_LoadFrameBridge", "CheckpointError", r"plain CogVideoX text-to-video transformer")

    p = _prompt(host)
    p["99"] = {"class_type": "VAELoader", "inputs": {"vae_name": "sd-vae-ft-ema.safetensors"}}
    p[host.node_id(p, "FB_BridgePriorFromImage")]["inputs"]["vae"] = ["99", 0]
    _expect_error(host, p, "FB_BridgePriorFromImage", "ShapeError", r"needs the CogVideoX VAE")

    run = host.run(_prompt(host, 1))
    assert run.success, run.describe()


def test_core_sampler_custom_advanced_gives_the_bridge_samplers_video(host, stand_ins):
    """CFGGuider + Bridge SAMPLER + Bridge Schedule in core SamplerCustomAdvanced == Bridge Sampler."""
    import torch

    prompt = _prompt(host, 3)
    sampler = prompt.pop(host.node_id(prompt, "FB_BridgeSampler"))["inputs"]
    prompt.update({
        "20": {"class_type": "RandomNoise", "inputs": {"noise_seed": sampler["seed"]}},
        "21": {"class_type": "CFGGuider", "inputs": {"model": sampler["model"], "positive": sampler["positive"],
                                                       "negative": sampler["negative"], "cfg": sampler["cfg"]}},
        "22": {"class_type": "FB_BridgeSamplerSelect", "inputs": {"method": sampler["method"], "eta": sampler["eta"]}},
        "23": {"class_type": "FB_BridgeSchedule", "inputs": {"model": sampler["model"], "steps": sampler["steps"],
                                                              "spacing": sampler["spacing"]}},
        "8": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["20", 0], "guider": ["21", 0], "sampler": ["22", 0],
                                                                "sigmas": ["23", 0], "latent_image": sampler["prior"]}},
    })
    custom = host.run(prompt)
    assert custom.success, custom.describe()
    reference = host.run(_prompt(host, 3))
    a = custom.output("8", 0)["samples"]
    b = reference.output(host.node_id(_prompt(host, 3), "FB_BridgeSampler"), 0)["samples"]
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())


def test_auto_settings_are_the_models_own_defaults(host, stand_ins):
    """A fresh Bridge Sampler (steps 0, spacing/method auto, cfg 0) samples with CogVideoX's 50 / trailing / 6 / sde."""
    import torch

    auto, explicit = _prompt(host, 50), _prompt(host, 50)
    node = host.node_id(auto, "FB_BridgeSampler")
    auto[node]["inputs"].update(steps=0, spacing="auto", cfg=0.0, method="auto")
    explicit[node]["inputs"].update(steps=50, spacing="trailing", cfg=6.0, method="sde")
    a, b = host.run(auto), host.run(explicit)
    assert a.success and b.success, a.describe() + b.describe()
    assert torch.equal(a.output(node, 0)["samples"], b.output(node, 0)["samples"])
    schema = host.node_info("FB_BridgeSampler")["input"]["required"]
    assert schema["steps"][1]["default"] == 0 and "CogVideoX 50, trailing, CFG 6" in schema["steps"][1]["tooltip"]
