"""FrameBridge-CogVideoX sampling against the official pipeline (``pipeline_cogvideox_image2video.py`` with
``use_bridge=True``, channel concat, 4 steps, CFG 6; tiny random transformer, recorded step noise).

The fixture was made offline from the official code and diffusers; its JSON says how. Our bridge wrapper,
SAF table and sampler reproduce every step and the final latent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from framebridge_core.bridge.sampling import sample_bridge
from framebridge_core.bridge.schedule import BridgeSchedule
from framebridge_core.families.cogvideox.bridge import CogVideoXBridge, aligned_state, saf_timesteps, x0_from_v
from framebridge_core.families.cogvideox.network import CogVideoXConfig

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "cogvideox"


@pytest.fixture(scope="module")
def official():
    meta = json.loads((FIX / "sampling_official.json").read_text(encoding="utf-8"))
    with safe_open(str(FIX / "sampling_official.safetensors"), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return meta, tensors


@pytest.fixture(scope="module")
def bridge(official):
    meta, t = official
    net = CogVideoXBridge(CogVideoXConfig.from_dict(meta["transformer_config"]))
    prefix = "transformer."
    net.transformer.load_state_dict({k[len(prefix):]: v for k, v in t.items() if k.startswith(prefix)}, strict=True)
    return net.eval()


def test_saf_table_is_the_official_one(official):
    _, t = official
    ours = saf_timesteps()
    assert torch.equal(ours.float(), t["bridge.aligned_t"])  # bit-identical float32 table
    assert [round(float(ours[i]), 3) for i in (999, 749, 499, 249)] == [965.716, 648.828, 482.080, 257.681]


def test_bridge_tables_and_grid_are_the_official_ones(official):
    meta, t = official
    s = BridgeSchedule()
    assert s.timesteps(4, "trailing") == meta["bridge_grid"] == [999, 749, 499, 249]
    for ours, name in ((s.a, "coef_x0"), (s.b, "coef_x1"), (s.c, "sqrt_var"), (s.sigma, "sigmas")):
        assert torch.allclose(ours.float(), t[f"bridge.{name}"], rtol=1e-6, atol=0)


def test_each_step_matches(official, bridge):
    meta, t = official
    y = t["prior_latent"]
    for i, idx in enumerate(meta["bridge_grid"]):
        x = t[f"x.{i}"]
        ii = torch.tensor([idx])
        z = aligned_state(x, ii, y, bridge.schedule)
        assert torch.allclose(z, t[f"z_in.{i}"][1:], rtol=1e-5, atol=1e-7)
        tt = bridge.timestep(ii)
        assert torch.equal(tt, t[f"t_tilde.{i}"][:1])
        with torch.no_grad():
            raw = bridge(z.repeat(2, 1, 1, 1, 1), tt.repeat(2), y.repeat(2, 1, 1, 1, 1), t[f"text_in.{i}"])
        want = t[f"model_out_raw.{i}"]
        assert (raw - want).abs().max() <= 1e-5 * want.abs().max()
        v = raw[0:1] + meta["cfg_scale"] * (raw[1:2] - raw[0:1])
        x0 = x0_from_v(v, z, ii, bridge.schedule)
        if i == len(meta["bridge_grid"]) - 1:
            assert (x0 - t["final_latent"]).abs().max() <= 1e-4 * t["final_latent"].abs().max()


def test_the_whole_run_matches_the_official_final_latent(official, bridge):
    meta, t = official
    y = t["prior_latent"]
    text, uncond = t["prompt_embeds"], t["negative_prompt_embeds"]
    noise = [t[f"noise.{i}"] for i in range(meta["num_steps"] - 1)]

    def denoise(x, i, prior):
        with torch.no_grad():
            return bridge.x0(x, i, prior, text, uncond, cfg_scale=meta["cfg_scale"])

    out = sample_bridge(denoise, y, bridge.schedule, meta["bridge_grid"], method="sde", noise=noise)
    want = t["final_latent"]
    err = float((out - want).abs().max() / want.abs().max())
    assert err <= 1e-4, err
    assert torch.equal(t["x_T"], y)  # the official x_T is the prior itself (no noise)
