"""Quality metrics (PSNR, SSIM, Fréchet distance, motion classifier) and the quality benchmark.

The end-to-end test trains ``smoke``-preset models for two steps on procedural textures (no
optional image package needed) and runs ``bench quality`` on them.
"""

import math
import re

import pytest
import torch

from framebridge_core.errors import ShapeError
from framebridge_core.evaluation.metrics import (
    FEATURE_DIM,
    MotionClassifier,
    frechet_distance,
    frechet_distance_from_stats,
    load_classifier,
    psnr,
    save_classifier,
    ssim,
    train_motion_classifier,
)

F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- PSNR / SSIM


def test_psnr_identical_known_and_shapes():
    a = torch.rand(2, 5, 3, 8, 8, generator=_gen()) * 2 - 1
    p = psnr(a, a)
    assert p.shape == (2, 5)
    cap = 10 * math.log10(4.0 / ((2.0 / 255) ** 2 / 12))  # 8-bit quantisation-noise floor
    assert torch.allclose(p, torch.full_like(p, cap), atol=1e-4) and abs(cap - 58.92) < 0.01
    assert torch.isinf(psnr(a, a, min_mse=0)).all()
    b = torch.zeros(4, 3, 6, 6)
    # MSE 0.01 in data range 2: 10 log10(4 / 0.01) = 26.02 dB
    assert torch.allclose(psnr(b, b + 0.1), torch.full((4,), 10 * math.log10(400.0)), atol=1e-4)
    # data range 1 (images in [0, 1]): MSE 0.01 -> 20 dB
    assert torch.allclose(psnr(b, b + 0.1, data_range=1.0), torch.full((4,), 20.0), atol=1e-4)
    with pytest.raises(ShapeError):
        psnr(a, a[:, :4])


def test_ssim_identical_noise_and_symmetry():
    a = torch.rand(2, 4, 3, 32, 32, generator=_gen(1)) * 2 - 1
    s = ssim(a, a)
    assert s.shape == (2, 4)
    assert torch.allclose(s, torch.ones_like(s), atol=1e-5)
    noisy = (a + 0.3 * torch.randn(a.shape, generator=_gen(2))).clamp(-1, 1)
    sn = ssim(a, noisy)
    assert (sn < 0.9).all() and (sn > 0).all()
    assert torch.allclose(sn, ssim(noisy, a), atol=1e-5)
    # a constant offset of mean only: luminance term (2μxμy + c1)/(μx² + μy² + c1) on [0, 1] images
    flat = torch.zeros(1, 3, 16, 16)
    mx, my, c1 = 0.5, 0.75, 0.01**2
    expect = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
    assert abs(float(ssim(flat, flat + 0.5)) - expect) < 1e-3


# ----------------------------------------------------------------------------- Fréchet distance


def _spd(n, seed):
    a = torch.randn(n, n, generator=_gen(seed), dtype=F64)
    return a @ a.T + 0.2 * torch.eye(n, dtype=F64)


def test_frechet_closed_form_non_commuting_2x2():
    # For 2x2 SPD products, tr sqrt(S1 S2) = sqrt(tr(S1 S2) + 2 sqrt(det(S1 S2))) exactly.
    s1, s2 = _spd(2, 3), _spd(2, 4)
    assert not torch.allclose(s1 @ s2, s2 @ s1)
    m1, m2 = torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([-0.5, 0.25], dtype=F64)
    p = s1 @ s2
    expect = ((m1 - m2) ** 2).sum() + s1.trace() + s2.trace() - 2 * torch.sqrt(p.trace() + 2 * torch.sqrt(torch.det(p)))
    got = frechet_distance_from_stats(m1, s1, m2, s2)
    assert abs(got - float(expect)) < 1e-10
    assert abs(got - frechet_distance_from_stats(m2, s2, m1, s1)) < 1e-10


def test_frechet_diagonal_closed_form_and_samples():
    # Diagonal covariances: FD = |m1 - m2|² + Σ (sqrt(v1) - sqrt(v2))².
    v1, v2 = torch.tensor([1.0, 4.0, 0.25], dtype=F64), torch.tensor([2.0, 1.0, 0.25], dtype=F64)
    m1, m2 = torch.tensor([0.0, 1.0, -1.0], dtype=F64), torch.tensor([0.5, 1.0, 0.0], dtype=F64)
    expect = float(((m1 - m2) ** 2).sum() + ((v1.sqrt() - v2.sqrt()) ** 2).sum())
    assert abs(frechet_distance_from_stats(m1, torch.diag(v1), m2, torch.diag(v2)) - expect) < 1e-12
    # from samples of the two Gaussians (rotated, so the covariances are not diagonal in the data axes)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=_gen(5), dtype=F64))
    n = 40000
    xa = (torch.randn(n, 3, generator=_gen(6), dtype=F64) * v1.sqrt() + m1) @ q.T
    xb = (torch.randn(n, 3, generator=_gen(7), dtype=F64) * v2.sqrt() + m2) @ q.T
    got = frechet_distance(xa.float(), xb.float())
    assert abs(got - expect) < 0.03 * expect


def test_frechet_self_zero_symmetric_rank_deficient():
    x = torch.randn(200, 16, generator=_gen(8))
    y = torch.randn(200, 16, generator=_gen(9)) + 0.5
    assert frechet_distance(x, x) < 1e-8
    assert abs(frechet_distance(x, y) - frechet_distance(y, x)) < 1e-8
    assert frechet_distance(x, y) > 16 * 0.25 * 0.8  # the mean shift alone gives 4
    few = torch.randn(10, FEATURE_DIM, generator=_gen(10))  # fewer samples than dimensions
    more = torch.randn(12, FEATURE_DIM, generator=_gen(11))
    d = frechet_distance(few, more)
    assert math.isfinite(d) and d > 0 and frechet_distance(few, few) < 1e-8


# ----------------------------------------------------------------------------- classifier


def test_classifier_shapes_params_and_roundtrip(tmp_path):
    net = MotionClassifier().eval()
    params = sum(p.numel() for p in net.parameters())
    assert 100_000 <= params <= 300_000
    with torch.no_grad():
        for frames, size in ((4, 16), (8, 32), (16, 64), (5, 32)):
            v = torch.rand(2, frames, 3, size, size, generator=_gen()) * 2 - 1
            assert net(v).shape == (2, 9)
            assert net.features(v).shape == (2, FEATURE_DIM)
    with pytest.raises(ShapeError):
        net(torch.zeros(1, 3, 3, 16, 16))
    save_classifier(net, tmp_path / "c.safetensors", {"size": 16})
    back, meta = load_classifier(tmp_path / "c.safetensors")
    v = torch.rand(2, 4, 3, 16, 16, generator=_gen(1))
    with torch.no_grad():
        assert torch.equal(back(v), net(v))
    assert meta["size"] == "16"


def test_classifier_training_is_deterministic():
    from framebridge_core.training.data import CameraMotionDataset

    ds = CameraMotionDataset("train", size=16, frames=4, include=("textures",))
    a = train_motion_classifier(ds, steps=2, batch=4, generator=_gen(3))
    b = train_motion_classifier(ds, steps=2, batch=4, generator=_gen(3))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


# ----------------------------------------------------------------------------- benchmark end to end


def test_bench_quality_end_to_end(tmp_path, capsys):
    from framebridge_core.evaluation.quality import main
    from framebridge_core.training.loop import TrainConfig, train

    runs = tmp_path / "runs"
    common = dict(preset="smoke", steps=2, batch=2, warmup=1, sources=("textures",), ckpt_every=1000, log_every=1000)
    for kind, extra in (("bridge", {}), ("diffusion", {}), ("neural-prior", {}),
                        ("bridge-np", {"init_from": str(runs / "bridge/model.safetensors"),
                                       "neural_prior": str(runs / "neural-prior/model.safetensors")}),
                        ("saf", {"init_from": str(runs / "diffusion/model.safetensors")})):
        train(TrainConfig(kind=kind, out=str(runs / kind), **common, **extra))
    out = tmp_path / "RESULTS.md"
    rc = main(["--runs", str(runs), "--nfe", "2,25", "--clips", "9", "--classifier-steps", "2",
               "--classifier-batch", "4", "--out", str(out), "--threads", "1"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"bridge/diffusion FD ratio at 25 NFE: \d+(\.\d+)?(e[+-]\d+)?", lines[-1]), lines[-1]
    assert any("missing: plain-finetune" in line for line in lines)
    text = out.read_text()
    assert "| variant | NFE | PSNR" in text and "| copy first frame | 0 |" in text
    assert "| FrameBridge | 25 |" in text and "| diffusion (DDIM) | 25 |" in text
    assert "| neural prior alone | 1 |" in text and "FrameBridge + neural prior" in text
    assert "ground truth (real-vs-real floor)" in text and "python -m framebridge_core train --kind saf" in text
    assert (runs / "motion-classifier.safetensors").is_file()

    # no model at all: baselines only, the cached classifier is reused, the ratio is n/a
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(["--runs", str(empty), "--preset", "smoke", "--sources", "textures", "--nfe", "25", "--clips", "9",
               "--classifier", str(runs / "motion-classifier.safetensors"), "--out", str(tmp_path / "R2.md")])
    assert rc == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "bridge/diffusion FD ratio at 25 NFE: n/a"
    assert "loaded from the cache" in (tmp_path / "R2.md").read_text()


def test_blockiness_is_one_on_smooth_video_and_grows_with_a_patch_grid():
    from framebridge_core.evaluation.metrics import blockiness

    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(-1, 1, 32).expand(2, 3, 3, 32, 32)           # [B, F, C, H, W], smooth
    assert torch.allclose(blockiness(ramp, 8), torch.ones(3), atol=1e-5)
    blocks = torch.rand(2, 3, 3, 4, 4, generator=g).repeat_interleave(8, -1).repeat_interleave(8, -2)
    noisy = blocks + 0.01 * torch.randn(blocks.shape, generator=g)
    ratio = blockiness(noisy, 8)
    assert ratio.shape == (3,) and bool((ratio > 5).all())
    assert blockiness(noisy[0], 8).shape == (3,)                       # [F, C, H, W] works too
    with pytest.raises(Exception, match="multiple of the patch"):
        blockiness(ramp[..., :30], 8)


def test_high_frequency_energy_is_zero_for_flat_frames_and_falls_with_blur():
    import torch.nn.functional as F

    from framebridge_core.evaluation.metrics import high_frequency_energy

    g = torch.Generator().manual_seed(0)
    assert torch.equal(high_frequency_energy(torch.zeros(1, 2, 3, 8, 8)), torch.zeros(2))
    sharp = torch.rand(1, 2, 3, 16, 16, generator=g)
    blurred = F.avg_pool2d(sharp.reshape(-1, 1, 16, 16), 3, 1, 1, count_include_pad=False).reshape(sharp.shape)
    assert bool((high_frequency_energy(blurred) < 0.3 * high_frequency_energy(sharp)).all())


def test_bench_quality_aggregates_training_seeds(tmp_path, capsys):
    """seed<S>/ folders are training seeds: every metric is mean ± std over them, and the ratio
    line gives the mean of the per-seed bridge/diffusion ratios with their spread."""
    import json

    from framebridge_core.evaluation.quality import main
    from framebridge_core.training.loop import TrainConfig, train

    runs = tmp_path / "runs"
    common = dict(preset="smoke", steps=2, batch=2, warmup=1, sources=("textures",), ckpt_every=1000, log_every=1000)
    for seed in (0, 1):
        for kind in ("bridge", "diffusion"):
            train(TrainConfig(kind=kind, seed=seed, out=str(runs / f"seed{seed}" / kind), **common))
    rc = main(["--runs", str(runs), "--nfe", "25", "--clips", "9", "--classifier-steps", "2",
               "--classifier-batch", "4", "--out", str(tmp_path / "R.md"), "--json", str(tmp_path / "R.json"),
               "--threads", "1"])
    assert rc == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    data = json.loads((tmp_path / "R.json").read_text())
    per_seed = [s["rows"] for s in data["training_seeds"]]
    ratios = [next(r["fd"] for r in rows if r["variant"] == "bridge") / next(r["fd"] for r in rows if r["variant"] == "diffusion")
              for rows in per_seed]
    assert data["ratios"] == pytest.approx(ratios)
    mean = sum(ratios) / 2
    std = abs(ratios[0] - ratios[1]) / math.sqrt(2)          # sample std of two values
    assert data["ratio"] == pytest.approx(mean) and data["ratio_std"] == pytest.approx(std)
    assert last.startswith(f"bridge/diffusion FD ratio at 25 NFE: {mean:.3g} ± {std:.2g} (mean ± std over 2 training seeds: ")
    row = next(r for r in data["rows"] if r["variant"] == "bridge")
    fds = [next(r["fd"] for r in rows if r["variant"] == "bridge") for rows in per_seed]
    assert row["seeds"] == 2 and row["fd"] == pytest.approx(sum(fds) / 2)
    assert row["fd_std"] == pytest.approx(abs(fds[0] - fds[1]) / math.sqrt(2))
    text = (tmp_path / "R.md").read_text()
    assert "blockiness (worst frame)" in text and "HF / truth" in text
    assert f"| FrameBridge | 25 | " in text and " ± " in text
    assert "seed0/bridge/model.safetensors" in text and "seed1/diffusion/model.safetensors" in text
    real = next(r for r in data["rows"] if r["variant"] == "real")
    assert real["hf_ratio"] == pytest.approx(1.0) and real["fd_std"] is None


def test_motion_bench_row_reports_fd_blockiness_and_sharpness():
    """`bench motion`'s row: FD against the reference features, the worst frame's blockiness and
    the high-frequency ratio, computed on the same clips as the accuracy."""
    from types import SimpleNamespace

    from framebridge_core.evaluation.metrics import blockiness, extract_features, frechet_distance
    from framebridge_core.evaluation.motion import _score_row, classifier_view

    g = _gen(5)
    truth = torch.rand(6, 16, 3, 64, 64, generator=g) * 2 - 1
    blocky = truth.reshape(6, 16, 3, 8, 8, 8, 8).mean(dim=(4, 6), keepdim=True).expand(6, 16, 3, 8, 8, 8, 8)
    blocky = blocky.reshape(truth.shape).contiguous()
    clf = MotionClassifier().eval()
    ref_feats = extract_features(clf, classifier_view(truth.flip(0)))
    scoring = SimpleNamespace(clf=clf, ref_feats=ref_feats, patch=8)
    labels, moving = torch.arange(6) % 9, torch.ones(6, dtype=torch.bool)
    line, _ = _score_row("blocky", blocky, 0.5, truth, truth, labels, moving, scoring, 9)
    cells = [c.strip() for c in line.strip("|").split("|")]
    fd = frechet_distance(extract_features(clf, classifier_view(blocky)), ref_feats)
    assert cells[6] == f"{fd:.4g}"
    assert cells[7] == f"{float(blockiness(blocky, 8).max()):.3f}" and float(cells[7]) > 2
    assert float(cells[8]) < 0.5        # block averages remove most of the noise's high frequencies
    line, _ = _score_row("truth", truth, 0.0, truth, truth, labels, moving, scoring, 9)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[8] == "1.000" and abs(float(cells[7]) - 1) < 0.1
