"""FrameBridge-VideoCrafter parity with the official lvdm code (fixtures in tests/fixtures/videocrafter/).

The fixtures were made by the official ``openaimodel3d.UNetModel``, ``Resampler``,
``LatentDiffusion.apply_model`` and ``BridgeFirstOrderSampler`` at a tiny config, with weights from
:func:`seeded_random_weights` (a function of the parameter names, so no weight files are stored):
the UNet and Resampler forward, and a 4-step CFG-7.5 sampling run with its recorded noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from framebridge_core.bridge.schedule import BridgeSchedule
from framebridge_core.families.videocrafter.bridge import VideoCrafterBridge, VideoCrafterConfig, saf_timesteps
from framebridge_core.families.videocrafter.resampler import ResamplerConfig
from framebridge_core.families.videocrafter.unet3d import UNet3DConfig
from framebridge_core.bridge.sampling import bridge_step, sample_bridge
from framebridge_core.testing import seeded_random_weights

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "videocrafter"
META = json.loads((FIX / "meta.json").read_text())
TOL = 1e-5


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a − ref| / max |ref|. Bridge states are compared relative to their scale: with CFG 7.5 and
    σ_999 = 5, x̂0 = x_t − σ·(F_u + 7.5(F_c − F_u)) amplifies float32 rounding of the network
    output ~40x; both implementations are then ~8e-5 (absolute, on |x̂0| ≈ 13) from a float64
    run, so an absolute 1e-5 would test float32 rounding, not the implementation."""
    return float((a - ref).abs().max() / ref.abs().max())


def tiny_config() -> VideoCrafterConfig:
    o, r = META["unet_official_kwargs"], META["resampler_official_kwargs"]
    unet = UNet3DConfig(in_channels=o["in_channels"], out_channels=o["out_channels"], model_channels=o["model_channels"],
                        channel_mult=tuple(o["channel_mult"]), num_res_blocks=o["num_res_blocks"],
                        attention_resolutions=tuple(o["attention_resolutions"]), num_head_channels=o["num_head_channels"],
                        transformer_depth=o["transformer_depth"], context_dim=o["context_dim"],
                        temporal_length=o["temporal_length"], default_fs=o["default_fs"])
    res = ResamplerConfig(**r)
    return VideoCrafterConfig(unet=unet, resampler=res, latent_size=8)


@pytest.fixture(scope="module")
def net() -> VideoCrafterBridge:
    torch.set_grad_enabled(False)
    model = VideoCrafterBridge(tiny_config()).eval()
    seeded_random_weights(model.diffusion_model, seed=1)
    seeded_random_weights(model.image_proj_model, seed=2)
    sums = META["weight_abs_sums"]
    got = float(sum(p.double().abs().sum() for p in model.diffusion_model.parameters()))
    assert got == pytest.approx(sums["unet"], rel=1e-9), "the seeded weights drifted from the fixture's"
    got = float(sum(p.double().abs().sum() for p in model.image_proj_model.parameters()))
    assert got == pytest.approx(sums["resampler"], rel=1e-9)
    yield model
    torch.set_grad_enabled(True)


@pytest.fixture(scope="module")
def fwd():
    return load_file(str(FIX / "forward.safetensors"))


@pytest.fixture(scope="module")
def samp():
    return load_file(str(FIX / "sampling.safetensors"))


def test_resampler_matches_official(net, fwd):
    out = net.image_proj_model(fwd["img_tokens"])
    assert out.shape == fwd["img_ctx"].shape == (2, 16 * META["frames"], 32)
    assert (out - fwd["img_ctx"]).abs().max() < TOL


@pytest.mark.parametrize("case", ["per_frame", "default_fs", "shared_context"])
def test_unet_forward_matches_official(net, fwd, case):
    ctx = torch.cat([fwd["text"], fwd["img_ctx"]], 1)
    if case == "per_frame":
        out, ref = net.diffusion_model(fwd["x"], fwd["t"], ctx, fwd["fs"]), fwd["out"]
    elif case == "default_fs":
        out, ref = net.diffusion_model(fwd["x"], fwd["t"], ctx), fwd["out_default_fs"]
    else:  # not 77 + 16·T tokens: every frame sees the same tokens
        out, ref = net.diffusion_model(fwd["x"], fwd["t"], fwd["shared_ctx"], fwd["fs"]), fwd["out_shared"]
    assert out.shape == ref.shape == (2, 4, META["frames"], 8, 8)
    assert ref.abs().mean() > 0.1, "a near-zero reference would make the comparison meaningless"
    err = float((out - ref).abs().max())
    assert err < TOL, err


def test_forward_depends_on_every_input(net, fwd):
    """The comparison above can fail: each input changes the output."""
    ctx = torch.cat([fwd["text"], fwd["img_ctx"]], 1)
    base = net.diffusion_model(fwd["x"], fwd["t"], ctx, fwd["fs"])
    img_changed = torch.cat([fwd["text"], fwd["img_ctx"].flip(1)], 1)
    variants = [net.diffusion_model(fwd["x"], fwd["t"] + 1.0, ctx, fwd["fs"]),
                net.diffusion_model(fwd["x"], fwd["t"], ctx, fwd["fs"] + 1),
                net.diffusion_model(fwd["x"], fwd["t"], img_changed, fwd["fs"]),
                net.diffusion_model(fwd["x"].flip(2), fwd["t"], ctx, fwd["fs"]).flip(2)]
    for v in variants:
        assert (v - base).abs().max() > 1e-3


def test_saf_table_equals_the_official_buffer(samp):
    ours = saf_timesteps()
    theirs = samp["bridge_aligned_t"].double()
    assert float((ours - theirs).abs().max()) < 1e-4  # the official float32 arithmetic, emulated
    sched = BridgeSchedule()
    assert float(((sched.sigma - samp["bridge_sigmas"].double()) / sched.sigma).abs().max()) < 1e-6


def _official_run(net, samp, fwd):
    """Our loop with the official conditioning, recorded noise and trailing grid."""
    cfg = META["cfg"]
    ctx = net.context(fwd["text"], fwd["img_tokens"])
    uctx = net.context(samp["uc_text"], fwd["img_tokens"])  # CFG drops only the text
    prior = samp["prior"]
    records = []

    def denoise(x, i, y):
        x0 = net.x0(x, i, y, ctx, uctx, cfg_scale=cfg, fs=fwd["fs"])
        records.append(x0)
        return x0

    noises = [samp[f"noise{k}"] for k in range(META["steps"] - 1)]
    out = sample_bridge(denoise, prior, net.schedule, META["grid"], noise=noises)
    return out, records


def test_one_bridge_step_matches_official(net, samp, fwd):
    """First step from the prior at index 999: x̂0 (CFG 7.5, text-only) and the SDE update."""
    ctx = net.context(fwd["text"], fwd["img_tokens"])
    uctx = net.context(samp["uc_text"], fwd["img_tokens"])
    prior = samp["prior"]
    s, t = META["grid"][0], META["grid"][1]
    x0 = net.x0(prior, s, prior, ctx, uctx, cfg_scale=META["cfg"], fs=fwd["fs"])
    assert rel_err(x0, samp["step0_x0"]) < TOL
    x = bridge_step(prior, x0, s, t, net.schedule, noise=samp["noise0"])
    assert rel_err(x, samp["step0_out"]) < TOL


def test_sampling_loop_matches_official(net, samp, fwd):
    out, records = _official_run(net, samp, fwd)
    for k, x0 in enumerate(records):
        assert rel_err(x0, samp[f"step{k}_x0"]) < TOL, k
    assert rel_err(out, samp["samples"]) < TOL
    assert not torch.allclose(out, samp["prior"], atol=1e-2)


def test_cfg_unconditional_branch_keeps_the_image(net, samp, fwd):
    """Dropping the image tokens too (not the official inference) changes the result: the test
    above would notice an implementation that dropped them."""
    ctx = net.context(fwd["text"], fwd["img_tokens"])
    prior = samp["prior"]
    blank = net.context(samp["uc_text"], torch.zeros_like(fwd["img_tokens"]))
    x0 = net.x0(prior, 999, prior, ctx, blank, cfg_scale=META["cfg"], fs=fwd["fs"])
    assert rel_err(x0, samp["step0_x0"]) > 1e-3
