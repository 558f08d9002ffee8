"""End-to-end FrameBridge-Latte sampling parity with the official bridge SDE loop.

The fixture tests/fixtures/latte/sampling.safetensors was recorded by running the official
`GaussianDiffusion.bridge_sde_sample_loop` (SpacedDiffusion with IDDPM respacing "8",
`model_stage="bridge"`, `model_predict_type="eps_psi"`, `condition_type="concat_pre"`, no SNR
alignment) on the tiny official Latte models of tests/fixtures/latte/weights_*.safetensors,
capturing every `torch.randn_like` draw of the loop (first half of the batch under CFG: the
official `forward_with_cfg` only reads the first half of the state). Cases:

* bridge4_nocfg: static prior (condition frame repeated), `model.forward`, class label.
* bridge4_cfg7: the same with the official `forward_with_cfg`, scale 7.0, null class 5.
* nwarp_bridge8_cfg7: neural prior: coarse = nwarp(frame repeated), prior = coarse, 8-channel
  bridge input cat([[cond; x_t], [cond; coarse]], channels), CFG 7.0.

Here the same thing is reproduced with framebridge_core's schedule and sampler:
``denoise(x, i, y) = x - sigma_i * eps_psi(cat([cond, x], frames), t=i, label)[:, 1:]``.
"""

import pytest
import torch
from safetensors.torch import load_file

from framebridge_core.bridge.schedule import BridgeSchedule
from latte_fixture import LAT, META, TOL, fixture_weights, tiny_config
from framebridge_core.families.latte.network import LatteModel, LatteNeuralPrior
from framebridge_core.bridge.sampling import sample_bridge

def _load(module, name):
    module.load_state_dict(fixture_weights(name), strict=True)
    return module.eval()


@pytest.fixture(scope="module")
def rec():
    return load_file(str(LAT / "sampling.safetensors"))


@pytest.fixture(scope="module")
def schedule():
    return BridgeSchedule(beta_min=0.01, beta_max=50.0, num_steps=1000)


def latte_denoiser(model: LatteModel, schedule, cond, label, cfg_scale=1.0, coarse=None):
    """The FrameBridge-Latte denoiser: eps_psi network -> x0_hat = x_t - sigma_i * eps."""

    def denoise(x, i, prior):
        t = torch.full((x.shape[0],), i, dtype=torch.long)
        eps = model.eps_psi(x, t, label, cond, coarse, cfg_scale=cfg_scale)
        return x - float(schedule.sigma[i]) * eps

    return denoise


def test_iddpm_grid_is_latte_space_timesteps(schedule):
    grid = schedule.timesteps(META["steps"], "iddpm")
    assert grid == META["iddpm_timesteps"] == [999, 856, 714, 571, 428, 285, 143, 0]
    for case in META["sampling_cases"].values():
        assert sorted(case["timestep_map"], reverse=True) == grid


@pytest.mark.parametrize("case", ["bridge4_nocfg", "bridge4_cfg7"])
@torch.no_grad()
def test_static_prior_sampling_matches_official(case, rec, schedule):
    info = META["sampling_cases"][case]
    model = _load(LatteModel(tiny_config()), info["weights"])
    cond, label = rec[f"{case}.cond"], rec[f"{case}.label"]
    prior = cond[:, None].repeat(1, META["official_kwargs"]["num_frames"], 1, 1, 1)
    noise = [rec[f"{case}.noise.{j}"] for j in range(META["steps"] - 1)]
    scale = info["cfg_scale"] or 1.0
    out = sample_bridge(latte_denoiser(model, schedule, cond, label, scale), prior, schedule,
                        META["steps"], spacing="iddpm", method="sde", noise=noise)
    ref = rec[f"{case}.out"]
    assert out.shape == ref.shape == (1, 4, 4, 8, 8)
    err = (out - ref).abs().max().item()
    assert err < TOL, f"{case}: max abs diff {err:.3g} (output scale {ref.abs().max().item():.3g})"


@torch.no_grad()
def test_neural_prior_sampling_matches_official(rec, schedule):
    case = "nwarp_bridge8_cfg7"
    info = META["sampling_cases"][case]
    nwarp = _load(LatteNeuralPrior(tiny_config(condition_type=None, has_timestep=False)), "weights_nwarp")
    model = _load(LatteModel(tiny_config(in_channels=8)), info["weights"])
    cond, label = rec[f"{case}.cond"], rec[f"{case}.label"]
    coarse = nwarp(cond, label)
    assert (coarse - rec[f"{case}.coarse"]).abs().max().item() < TOL
    noise = [rec[f"{case}.noise.{j}"] for j in range(META["steps"] - 1)]
    denoise = latte_denoiser(model, schedule, cond, label, info["cfg_scale"], coarse=coarse)
    out = sample_bridge(denoise, coarse, schedule, META["steps"], spacing="iddpm", method="sde",
                        noise=noise)
    err = (out - rec[f"{case}.out"]).abs().max().item()
    assert err < TOL, f"{case}: max abs diff {err:.3g}"


@torch.no_grad()
def test_recorded_noise_matters(rec, schedule):
    """Guard against a vacuous parity: other noise gives a clearly different output."""
    case = "bridge4_nocfg"
    model = _load(LatteModel(tiny_config()), "weights_bridge4")
    cond, label = rec[f"{case}.cond"], rec[f"{case}.label"]
    prior = cond[:, None].repeat(1, 4, 1, 1, 1)
    noise = [torch.zeros_like(rec[f"{case}.noise.{j}"]) for j in range(META["steps"] - 1)]
    out = sample_bridge(latte_denoiser(model, schedule, cond, label), prior, schedule,
                        META["steps"], spacing="iddpm", noise=noise)
    assert (out - rec[f"{case}.out"]).abs().max().item() > 0.1
