"""Training code: a smoke run whose loss falls, exact resume, every variant's loss and sampler."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from framebridge_core.training.data.camera_motion import MOTIONS, CameraMotionDataset
from framebridge_core.vp import DiffusionSchedule, sample_ddim
from framebridge_core.errors import ConfigError
from framebridge_core.tiny.format import PRESETS, load_trained, network_config
from framebridge_core.tiny.variants import KINDS, Schedules, generate
from framebridge_core.training.loop import TrainConfig, build_network, train, widen_input
from framebridge_core.training.losses import training_loss


@pytest.fixture(scope="module")
def smoke_data():
    p = PRESETS["smoke"]
    return CameraMotionDataset("train", size=p["size"], frames=p["frames"], seed=0, include=("textures",),
                               num_textures=12)


def _cfg(tmp_path, kind="bridge", **kw):
    base = dict(kind=kind, preset="smoke", out=str(tmp_path / kind), steps=20, batch=4, lr=1e-3, warmup=5,
                precision="fp32", ckpt_every=10, log_every=1000, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _losses(run_dir):
    with open(run_dir / "loss.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_smoke_training_loss_falls(tmp_path, smoke_data):
    out = train(_cfg(tmp_path, steps=120, batch=8, lr=2e-3, warmup=10), dataset=smoke_data)
    losses = _losses(out.parent)
    assert len(losses) == 120
    first, last = sum(losses[:15]) / 15, sum(losses[-15:]) / 15
    assert last < 0.6 * first, (first, last)


def test_resume_continues_the_same_run_exactly(tmp_path, smoke_data):
    straight = train(_cfg(tmp_path / "a", steps=20), dataset=smoke_data)
    train(_cfg(tmp_path / "b", steps=10), dataset=smoke_data)
    resumed = train(_cfg(tmp_path / "b", steps=20), dataset=smoke_data, resume=True)
    assert _losses(straight.parent) == _losses(resumed.parent)
    a, _ = load_trained(str(straight))
    b, _ = load_trained(str(resumed))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_resume_refuses_a_different_configuration(tmp_path, smoke_data):
    train(_cfg(tmp_path, steps=10), dataset=smoke_data)
    with pytest.raises(ConfigError, match="different configuration"):
        train(_cfg(tmp_path, steps=20, lr=5e-4), dataset=smoke_data, resume=True)


class _RunsCode:
    """A pickle payload that would create a marker file when unpickled by an unsafe loader."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_never_runs_code_from_a_state_file(tmp_path, smoke_data):
    import pickle

    train(_cfg(tmp_path, steps=2), dataset=smoke_data)
    state = tmp_path / "bridge" / "state.pt"
    st = torch.load(state, weights_only=True)
    st["log"] = _RunsCode(tmp_path / "ran.txt")
    torch.save(st, state)
    with pytest.raises(pickle.UnpicklingError):
        train(_cfg(tmp_path, steps=4), dataset=smoke_data, resume=True)
    assert not (tmp_path / "ran.txt").exists()


def test_export_metadata_and_fp16_weights(tmp_path, smoke_data):
    path = train(_cfg(tmp_path, steps=2), dataset=smoke_data)
    net, meta = load_trained(str(path))
    for key in ("family", "variant", "latent_space", "config", "classes", "data", "steps", "date", "num_heads"):
        assert f"framebridge.{key}" in meta, key
    assert meta["framebridge.variant"] == "bridge" and meta["framebridge.latent_space"] == "pixel"
    assert json.loads(meta["framebridge.classes"]) == list(MOTIONS)
    assert meta["framebridge.steps"] == "2"
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert f.get_tensor("x_embedder.proj.weight").dtype == torch.float16


def test_tiny_presets_fit_the_10_mb_budget_in_fp16_and_pass_the_patch_through():
    p = PRESETS["tiny"]
    assert p["hidden"] >= p["patch"] ** 2 * 3  # the per-token identity must fit (docs/notes/tiny-model.md)
    for kind, preset in (("bridge", "tiny"), ("bridge-np", "tiny"), ("neural-prior", "tiny-np")):
        net = build_network(kind, network_config(kind, preset, len(MOTIONS), "precond"))
        inner = net.nwarp_model if kind == "neural-prior" else net
        size = sum(v.numel() * 2 for v in inner.state_dict().values())
        assert size <= 10_000_000, (kind, size)


@pytest.mark.parametrize("kind", KINDS)
def test_every_variant_has_a_finite_loss_and_samples_the_right_shape(kind, smoke_data):
    sched = Schedules.default()
    cfg = network_config(kind, "smoke", len(MOTIONS))
    gen = torch.Generator().manual_seed(0)
    net = build_network(kind, cfg, gen)
    prior_net = build_network("neural-prior", network_config("neural-prior", "smoke", len(MOTIONS)), gen) \
        if kind == "bridge-np" else None
    video, labels = smoke_data.sample_batch(2, gen)
    loss = training_loss(kind, net, video, labels, sched, gen, neural_prior=prior_net)
    assert torch.isfinite(loss) and loss.ndim == 0
    out = generate(kind, net, video[:, 0], labels, steps=3, sched=sched, cfg_scale=2.0, generator=gen,
                   neural_prior=prior_net)
    assert out.shape == video.shape and torch.isfinite(out).all()


def test_widened_bridge_computes_the_plain_bridge_until_trained():
    gen = torch.Generator().manual_seed(1)
    plain = build_network("bridge", network_config("bridge", "smoke", 9), gen)
    wide = build_network("bridge-np", network_config("bridge-np", "smoke", 9), gen)
    wide.load_state_dict(widen_input(plain.state_dict(), 6))
    x_t = torch.randn(2, 4, 3, 16, 16, generator=gen)
    cond = torch.randn(2, 3, 16, 16, generator=gen)
    coarse = torch.randn(2, 4, 3, 16, 16, generator=gen)
    t, y = torch.tensor([3, 700]), torch.tensor([1, 9])
    torch.testing.assert_close(wide.eps_psi(x_t, t, y, cond, coarse), plain.eps_psi(x_t, t, y, cond), rtol=0, atol=1e-6)


def test_variant_requirements_are_explained():
    with pytest.raises(ConfigError, match="--init-from"):
        TrainConfig(kind="saf")
    with pytest.raises(ConfigError, match="--neural-prior"):
        TrainConfig(kind="bridge-np")
    with pytest.raises(ConfigError, match="unknown model variant"):
        TrainConfig(kind="flow")


def test_ddim_with_the_exact_v_of_a_point_mass_returns_it():
    sched = DiffusionSchedule()
    x0 = torch.full((1, 2, 3), 0.37, dtype=torch.float64)

    def oracle(x, t):  # the exact v for data concentrated at x0
        eps = (x - sched.alpha[t] * x0) / sched.sigma[t]
        return sched.alpha[t] * eps - sched.sigma[t] * x0

    noise = torch.randn(1, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for steps in (1, 5, 25):
        torch.testing.assert_close(sample_ddim(oracle, noise, sched, steps), x0, rtol=0, atol=1e-9)


def test_diffusion_trailing_grid_matches_the_diffusers_formula():
    sched = DiffusionSchedule()
    assert sched.timesteps(5) == [999, 799, 599, 399, 199]
    assert sched.timesteps(25)[:3] == [999, 959, 919] and sched.timesteps(25)[-1] == 39
    with pytest.raises(ConfigError):
        sched.timesteps(0)


def test_saf_network_input_is_the_aligned_state_at_the_aligned_timestep():
    from framebridge_core.bridge.alignment import aligned_input
    from framebridge_core.tiny.variants import net_input as _net_input, net_timestep as _net_timestep

    sched = Schedules.default()
    i = torch.tensor([10, 500, 990])
    x = torch.randn(3, 2, 3, 4, 4)
    y = torch.randn(3, 2, 3, 4, 4)
    torch.testing.assert_close(_net_input("saf", x, y, i, sched), aligned_input(x, y, i, sched.bridge))
    assert torch.equal(_net_input("plain-finetune", x, y, i, sched), x)
    torch.testing.assert_close(_net_timestep("saf", i, sched), sched.t_tilde[i].float())
    assert torch.equal(_net_timestep("plain-finetune", i, sched), i)
    # the aligned input has the diffusion SNR of its timestep: ρ_i = √SNR(t̃_i) on the interior
    d = (sched.diffusion.alphas_cumprod / (1 - sched.diffusion.alphas_cumprod)).sqrt()
    t = sched.t_tilde[500]
    lo = int(t.floor())
    d_interp = d[lo] + (t - lo) * (d[lo + 1] - d[lo])
    assert abs(float(d_interp / sched.bridge.rho[500]) - 1) < 1e-9


def test_eps_psi_loss_weighting_is_x0_mse_above_sigma_1_and_official_below():
    from framebridge_core.training.losses import eps_psi_weight

    sched = Schedules.default()
    sigma = sched.bridge.sigma[[10, 199, 500, 999]].float()
    w = eps_psi_weight(sigma, "sigma2-clamped")
    assert w[0] == 1 and w[1] == 1
    torch.testing.assert_close(w[2:], sigma[2:] ** 2)
    assert torch.equal(eps_psi_weight(sigma, "uniform"), torch.ones(4))
    with pytest.raises(ConfigError, match="unknown loss weighting"):
        eps_psi_weight(sigma, "snr")


def test_precond_output_round_trips_and_converts_to_the_eps_psi_it_stands_for():
    from framebridge_core.bridge import preconditioning as pc

    g = torch.Generator().manual_seed(3)
    x0, y, x_t = (torch.randn(2, 4, 3, 8, 8, generator=g) for _ in range(3))
    sigma = torch.tensor([0.05, 5.0]).view(2, 1, 1, 1, 1)
    target = pc.target(x0, x_t, y, sigma)
    torch.testing.assert_close(pc.x0_from_output(target, x_t, y, sigma), x0)
    torch.testing.assert_close(x_t - sigma * pc.to_eps_psi(target, x_t, y, sigma), x0)
    s, c = pc.coefficients(sigma.flatten())
    assert float(s[0]) > 0.99 and float(s[1]) < 0.04       # skip from x_t at small σ, from y at large σ
    assert float(c[1]) < 1 and abs(float(c[0]) / 0.05 - 1) < 0.01


def test_x0_output_is_the_change_from_the_prior_and_its_loss_weight_is_capped():
    from framebridge_core.bridge import preconditioning as pc

    g = torch.Generator().manual_seed(5)
    x0, y, x_t = (torch.randn(2, 4, 3, 8, 8, generator=g) for _ in range(3))
    sigma = torch.tensor([0.05, 5.0]).view(2, 1, 1, 1, 1)
    target = pc.target(x0, x_t, y, sigma, "x0")
    torch.testing.assert_close(target, x0 - y)
    torch.testing.assert_close(pc.x0_from_output(target, x_t, y, sigma, "x0"), x0)
    torch.testing.assert_close(x_t - sigma * pc.to_eps_psi(target, x_t, y, sigma, "x0"), x0)
    w = pc.loss_weight(torch.tensor([0.01, 0.25, 1.0, 5.0]), "x0")
    torch.testing.assert_close(w, torch.tensor([17.0, 17.0, 2.0, 1.04]))
    assert torch.equal(pc.loss_weight(torch.tensor([0.1, 3.0])), torch.ones(2))     # precond: EDM weighting
    with pytest.raises(ConfigError, match="'eps_psi' has no conversion"):
        pc.target(x0, x_t, y, sigma, "eps_psi")


def test_label_table_starts_at_the_requested_scale():
    cfg = network_config("bridge", "smoke", 9)
    g = torch.Generator().manual_seed(0)
    table = build_network("bridge", cfg, g, label_init_std=1.0).y_embedder.embedding_table.weight.detach()
    assert 0.8 < float(table.std()) < 1.2
    official = build_network("neural-prior", network_config("neural-prior", "smoke", 9), g)
    assert float(official.nwarp_model.y_embedder.embedding_table.weight.detach().std()) < 0.03


@pytest.mark.parametrize("output", ["precond", "x0"])
def test_frames_adapter_gives_comfyui_the_eps_psi_of_a_converted_network(output):
    """The ComfyUI adapter (frames as batch) and the core sampler agree on a precond / x0 network."""
    from framebridge_core.bridge import preconditioning as pc
    from framebridge_core.families.latte.frames import LatteBridgeFrames

    cfg = network_config("bridge", "smoke", 9, output=output, keep_first_frame=False)  # conversion only
    g = torch.Generator().manual_seed(4)
    core = build_network("bridge", cfg, g)
    adapter = LatteBridgeFrames(cfg)
    adapter.net.load_state_dict(core.state_dict())
    T = cfg.num_frames
    x = torch.randn(2, T, 3, 16, 16, generator=g)
    cond = torch.randn(2, 3, 16, 16, generator=g)
    i = torch.tensor([900, 40])
    labels = torch.tensor([2, 9])
    sigma = Schedules.default().bridge.sigma[i].float().view(2, 1, 1, 1, 1)
    want = pc.to_eps_psi(core(core.build_bridge_input(x, cond), i, labels, drop_condition_frame=True),
                         x, cond[:, None].expand_as(x), sigma, output)
    got = adapter(x.reshape(2 * T, 3, 16, 16), i.repeat_interleave(T),
                  fb_cond_frame=cond.repeat_interleave(T, 0), fb_class=labels.repeat_interleave(T))
    torch.testing.assert_close(got.reshape(2, T, 3, 16, 16), want, rtol=1e-5, atol=1e-5)
