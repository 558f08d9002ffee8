"""BIVDiff Mixed Inversion and smoothing: parity with the official loops (committed fixture made
with MCG-NJU/BIVDiff's scheduler and diffusers 0.23 UNet3D), and the weight-free properties of
docs/bivdiff-math.md §8 (VP/VE identity, ladder round trips, Gaussian exact model, α endpoints, mix variance,
schedules, determinism, layouts, CFG)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from framebridge_core.errors import ConfigError, ShapeError
from framebridge_core.bivdiff.inversion import (
    ddim_invert,
    ddim_timesteps,
    from_comfy_latent,
    inversion_ladder,
    mix_latents,
    mixed_inversion,
    to_comfy_latent,
)
from framebridge_core.bridge.sampling import cfg_combine
from framebridge_core.testing import ddim_sample, frames_to_video, video_to_frames
from framebridge_core.vp import ddim_step, scaled_linear_alphas_cumprod as sd_alphas_cumprod, sigma_of
from framebridge_core.families.modelscope.unet3d import ModelScopeUNet3D, ModelScopeUNet3DConfig

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bivdiff"
AC = sd_alphas_cumprod()


def ve_euler_step(x, eps, sigma_from, sigma_to):
    """The DDIM move in VE form (``x = z / sqrt(ᾱ)``): ``x' = x + (σ_to - σ_from)·ε`` (docs/bivdiff-math.md §2.3)."""
    return x + (float(sigma_to) - float(sigma_from)) * eps


def read_fixture(name):
    with safe_open(str(FIXTURES / name), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


# ---- schedule (docs/bivdiff-math.md §1.1 table, §8.6) -----------------------------------------------


def test_schedule_values_match_the_spec_table():
    for t, a, s in ((0, 0.99915, 0.0292), (1, 0.998296, 0.0413), (21, 0.980381, 0.1415), (961, 0.007282, 11.676),
                    (981, 0.005776, 13.120), (998, 0.004717, 14.526), (999, 0.004660, 14.615)):
        assert float(AC[t]) == pytest.approx(a, rel=2e-4)
        assert float(sigma_of(AC[t])) == pytest.approx(s, rel=2e-3)
    assert AC.dtype == torch.float64


def test_timesteps_and_ladders():
    ts = ddim_timesteps(50)
    assert ts[:3] == [981, 961, 941] and ts[-1] == 1 and len(ts) == 50
    off = inversion_ladder(50, "official")
    assert off.timesteps == tuple(reversed(ts)) and off.sampler_start == 981
    targets = [int((AC - a).abs().argmin()) for a in off.alpha_to]
    assert targets[:2] == [21, 41] and targets[-2:] == [981, 998]  # the overshoot: ends at 998
    matched = inversion_ladder(50, "matched")
    assert matched.timesteps[:3] == (0, 1, 21) and matched.timesteps[-1] == 961 and len(matched) == 50
    assert torch.equal(matched.alpha_to, AC[list(reversed(ts))]) and float(matched.alpha_from[0]) == float(AC[0])
    assert ddim_timesteps(10)[:2] == [901, 801]
    with pytest.raises(ConfigError, match="steps=0 is outside 1..1000"):
        ddim_timesteps(0)
    with pytest.raises(ConfigError, match="'matched'.*'official'"):
        inversion_ladder(50, "exact")


# ---- parity with the official code ---------------------------------------------------------------


def image_eps_standin(z, t, ctx):
    """The frame-wise image-model stand-in the fixture used (same formula)."""
    return torch.tanh(0.8 * z + 0.3 * math.cos(float(t) / 300.0)) + 0.05 * ctx.mean()


@pytest.fixture(scope="module")
def official():
    tensors, meta = read_fixture("mixed_inversion.safetensors")
    fwd, fmeta = read_fixture("modelscope_forward.safetensors")
    unet = ModelScopeUNet3D(ModelScopeUNet3DConfig.from_diffusers(json.loads(fmeta["config"]))).eval()
    g = torch.Generator().manual_seed(int(fmeta["seed"]))
    unet.load_state_dict({k: torch.randn(v.shape, generator=g) * float(fmeta["scale"])
                          for k, v in sorted(unet.state_dict().items())})
    return tensors, meta, unet


def test_mixed_inversion_and_smoothing_match_the_official_pipeline(official):
    t, meta, unet = official
    steps, alpha, scale = int(meta["steps"]), float(meta["mixing_ratio"]), float(meta["guidance_scale"])

    def video_eps(z, step):
        with torch.no_grad():
            return unet(z, step, t["c_neg"])  # the official inversion conditions on prompt_embeds[0]: the negative row

    res = mixed_inversion(lambda z, s: image_eps_standin(z, s, t["c_img"]), video_eps, t["z0"], alpha,
                          inversion_ladder(steps, "official"))
    err_img = float((res.image_latent - t["z_image"]).abs().max())
    err_vid = float((res.video_latent - t["z_video"]).abs().max())
    err_mix = float((res.latent - t["z_mixed"]).abs().max())
    assert err_img < 1e-5 and err_vid < 1e-5 and err_mix < 1e-5, (err_img, err_vid, err_mix)
    official_calls = json.loads(meta["official_inversion_calls"])
    assert official_calls == {"image": 50, "video": 50} and res.model_calls == 100

    ctx = torch.cat([t["c_neg"], t["c_pos"]])

    def guided(z, step):
        with torch.no_grad():
            u, c = unet(torch.cat([z, z]), step, ctx).chunk(2)
        return cfg_combine(c, u, scale)

    out = ddim_sample(guided, res.latent, steps)
    err = float((out - t["smoothed"]).abs().max())
    assert err < 5e-5, err  # measured 7e-6 on outputs of magnitude 5.7


def test_skipping_the_zero_weight_branch_is_bit_identical_and_halves_the_calls(official):
    t, _, unet = official
    ladder = inversion_ladder(10, "official")
    img = lambda z, s: image_eps_standin(z, s, t["c_img"])

    def vid(z, s):
        with torch.no_grad():
            return unet(z, s, t["c_neg"])

    for alpha in (0.0, 1.0):
        fast = mixed_inversion(img, vid, t["z0"], alpha, ladder)
        full = mixed_inversion(img, vid, t["z0"], alpha, ladder, skip_zero_weight=False)
        assert torch.equal(fast.latent, full.latent)  # docs/bivdiff-math.md §8.4: bypass changes nothing
        assert (fast.model_calls, full.model_calls) == (10, 20)
        assert torch.equal(fast.latent, full.image_latent if alpha == 1 else full.video_latent)
    assert mixed_inversion(img, None, t["z0"], 1.0, ladder).model_calls == 10  # no video model needed at α=1
    with pytest.raises(ConfigError, match="needs the video model"):
        mixed_inversion(img, None, t["z0"], 0.5, ladder)


# ---- docs/bivdiff-math.md §8 properties with analytic models ----------------------------------------


def test_vp_step_equals_ve_euler_step():
    """docs/bivdiff-math.md §8.1: the official reverse_step equals Euler in σ-space on z / sqrt(ᾱ)."""
    g = torch.Generator().manual_seed(0)
    z, eps = torch.randn(3, 4, 2, 5, 5, generator=g, dtype=torch.float64), torch.randn(3, 4, 2, 5, 5, generator=g, dtype=torch.float64)
    a0, a1 = AC[401], AC[421]
    vp = ddim_step(z, eps, a0, a1) / a1.sqrt()
    ve = ve_euler_step(z / a0.sqrt(), eps, sigma_of(a0), sigma_of(a1))
    assert float((vp - ve).abs().max()) < 1e-13


def test_round_trip_with_a_frozen_eps_matched_exact_official_not():
    """docs/bivdiff-math.md §8.2: constant ε: matched ladder + DDIM sampling is the identity; the official 998/981 mismatch is not."""
    g = torch.Generator().manual_seed(1)
    z0, eps = torch.randn(1, 4, 3, 6, 6, generator=g, dtype=torch.float64), torch.randn(1, 4, 3, 6, 6, generator=g, dtype=torch.float64)
    frozen = lambda z, t: eps
    rel = lambda a: float((a - z0).norm() / z0.norm())
    matched = rel(ddim_sample(frozen, ddim_invert(frozen, z0, inversion_ladder(50, "matched")), 50))
    official = rel(ddim_sample(frozen, ddim_invert(frozen, z0, inversion_ladder(50, "official")), 50))
    assert matched < 1e-12
    assert 0.05 < official < 0.15  # docs/bivdiff-math.md §8.2: 9.6 %


def gaussian_eps(s):
    """Exact ε for x0 ~ N(0, s²I) (docs/bivdiff-math.md §8.3)."""
    def eps(z, t):
        a = float(AC[t])
        return math.sqrt(1 - a) * z / (a * s * s + 1 - a)
    return eps


@pytest.mark.parametrize("mode", ["matched", "official"])
def test_gaussian_exact_model_round_trip_error_falls_with_steps(mode):
    g = torch.Generator().manual_seed(2)
    s = 0.7
    n = torch.randn(1, 4, 4, 32, 32, generator=g, dtype=torch.float64)
    z0 = s * n / n.std()  # sample std exactly s
    stds, errs = [], []
    for steps in (10, 50, 250):
        zt = ddim_invert(gaussian_eps(s), z0, inversion_ladder(steps, mode))
        stds.append(float(zt.std()))
        back = ddim_sample(gaussian_eps(s), zt, steps)
        errs.append(float((back - z0).norm() / z0.norm()))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.03, errs
    assert stds[0] < stds[1] < stds[2] < 1.01 and stds[2] > 0.98, stds
    if mode == "matched":  # docs/bivdiff-math.md §8.3: 0.850 / 0.966 / 0.993 and 27.5 % / 6.7 % / 1.4 %
        assert stds == pytest.approx([0.850, 0.966, 0.993], abs=0.01)
        assert errs == pytest.approx([0.275, 0.067, 0.014], abs=0.01)


def test_mix_variance_is_not_renormalised():
    """docs/bivdiff-math.md §8.5: independent unit-variance inputs -> std sqrt(α²+(1-α)²) unless renormalize=True."""
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(400_000, generator=g, dtype=torch.float64), torch.randn(400_000, generator=g, dtype=torch.float64)
    for alpha, want in ((0.5, 0.7071), (0.1, 0.9055)):
        assert float(mix_latents(a, b, alpha).std()) == pytest.approx(want, abs=4e-3)
        assert float(mix_latents(a, b, alpha, renormalize=True).std()) == pytest.approx(1.0, abs=4e-3)
    assert torch.equal(mix_latents(a, b, 1.0), a) and torch.equal(mix_latents(a, b, 0.0), b)
    with pytest.raises(ConfigError, match=r"mixing_ratio=1.5 is outside \[0, 1\].*0.25 for Prompt2Prompt"):
        mix_latents(a, b, 1.5)


def test_inversion_and_sampling_use_no_randomness():
    """docs/bivdiff-math.md §8.7: η=0 everywhere: the global RNG state is untouched and two runs are bit-identical."""
    g = torch.Generator().manual_seed(4)
    z0 = torch.randn(1, 4, 2, 4, 4, generator=g)
    eps = lambda z, t: torch.sin(z) * 0.5 + t / 2000.0
    before = torch.get_rng_state()
    runs = [ddim_sample(eps, mixed_inversion(eps, eps, z0, 0.3, inversion_ladder(8)).latent, 8) for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), before) and torch.equal(runs[0], runs[1])


def test_layout_and_comfy_latent_round_trips():
    """docs/bivdiff-math.md §8.8: frames <-> video layout keeps frame order; the VAE scale is applied once per direction."""
    x = torch.arange(2 * 3 * 4 * 2 * 2, dtype=torch.float32).reshape(6, 4, 2, 2)  # 2 videos x 3 frames
    v = frames_to_video(x, 3)
    assert v.shape == (2, 4, 3, 2, 2) and torch.equal(v[1, :, 2], x[5]) and torch.equal(video_to_frames(v), x)
    z = torch.randn(1, 4, 3, 2, 2, dtype=torch.float64)
    lat = to_comfy_latent(z, AC[981])
    assert torch.allclose(lat, z / (AC[981].sqrt() * 0.18215)) and torch.allclose(from_comfy_latent(lat, AC[981]), z)
    # ComfyUI's sampler starts at x = 0.18215 * LATENT = z / sqrt(ᾱ): the VE form of z at t=981
    assert torch.allclose(lat * 0.18215 / (1 + sigma_of(AC[981]) ** 2).sqrt(), z)
    with pytest.raises(ShapeError, match="not a whole number of 4-frame videos"):
        frames_to_video(torch.zeros(6, 4, 2, 2), 4)


def test_cfg_with_identical_branches_is_the_conditional_eps():
    """docs/bivdiff-math.md §8.10."""
    g = torch.Generator().manual_seed(0)
    e = torch.randn(2, 4, 3, 2, 2, generator=g)
    for s in (0.0, 1.0, 7.5, 20.0):
        assert torch.allclose(cfg_combine(e, e, s), e)
    # distinct branches pin the formula: uncond + s·(cond − uncond), argument order (cond, uncond)
    cond, uncond = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    assert torch.allclose(cfg_combine(cond, uncond, 1.0), cond)
    assert torch.allclose(cfg_combine(cond, uncond, 0.0), uncond)
    assert torch.allclose(cfg_combine(cond, uncond, 7.5), uncond + 7.5 * (cond - uncond))
    assert torch.allclose(cfg_combine(torch.ones(1), torch.zeros(1), 7.5), torch.tensor([7.5]))


def test_toy_smoothing_frame_differences_fall_as_alpha_grows():
    """docs/bivdiff-math.md §8.13: VDM = exact ε of temporally correlated Gaussian video, IDM = same marginals, independent
    frames; smoothing with the VDM from the mixed inversion of a flickering clip."""
    f, rho, s = 4, 0.95, 0.8
    idx = torch.arange(f, dtype=torch.float64)
    cov_t = s * s * rho ** (idx[:, None] - idx[None, :]).abs()  # frame covariance of the video prior

    def exact_eps(cov):
        def eps(z, t):
            a = float(AC[t])
            m = a * cov + (1 - a) * torch.eye(f, dtype=torch.float64)  # Cov(z_t) over frames
            return math.sqrt(1 - a) * torch.einsum("ij,bcjhw->bcihw", torch.linalg.inv(m), z)
        return eps

    video_eps, image_eps = exact_eps(cov_t), exact_eps(s * s * torch.eye(f, dtype=torch.float64))
    g = torch.Generator().manual_seed(5)
    z0 = s * torch.randn(1, 4, f, 8, 8, generator=g, dtype=torch.float64)  # independent frames: flicker
    ladder = inversion_ladder(25, "matched")
    energy = []
    for alpha in (0.0, 0.25, 0.5, 0.75, 1.0):
        out = ddim_sample(video_eps, mixed_inversion(image_eps, video_eps, z0, alpha, ladder).latent, 25)
        energy.append(float((out[:, :, 1:] - out[:, :, :-1]).pow(2).mean()))
    assert all(a > b for a, b in zip(energy, energy[1:])), energy
    assert energy[-1] < 0.5 * energy[0]
