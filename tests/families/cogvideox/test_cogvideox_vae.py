"""CogVideoX VAE parity with diffusers 0.42.1 ``AutoencoderKLCogVideoX`` (fixtures in tests/fixtures/cogvideox/vae_*).

The fixtures were made by diffusers at a tiny config (block_out_channels (8, 16, 16, 16), 4 latent channels,
one ResNet per block, GroupNorm(4), temporal ratio 4, sample 96×80, so tiles are 48×40 pixels / 6×5 latents),
with weights from :func:`seeded_random_weights` and inputs re-made here from their seeds (both checked against
stored fingerprints), so no weights or large inputs are stored. Encode compares ``latent_dist.mode()``;
"tiled" means diffusers after ``enable_tiling()``. The 56×48 / 7×6 cases tile in both directions; the
16×16 / 2×2 cases are below the tile minimum. One tiled decode stores only frames 9 and 16 (size).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from framebridge_core.errors import ConfigError, ShapeError
from framebridge_core.families.cogvideox.vae import CogVideoXVAE, CogVideoXVAEConfig, frame_chunks
from framebridge_core.testing import seeded_random_weights

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "cogvideox"
META = json.loads((FIX / "vae_meta.json").read_text())
CASES = META["cases"]
TOL = 1e-5  # max |ours − diffusers| / max |diffusers|


def make_input(case: dict) -> torch.Tensor:
    """The generator's inputs: pixels uniform in [-1, 1], a static clip (one frame repeated), N(0, 1) latents."""
    g = torch.Generator().manual_seed(case["seed"])
    shape = tuple(case["shape"])
    if case["kind"] == "latent":
        return torch.randn(shape, generator=g)
    if case["kind"] == "static":
        b, c, _, h, w = shape
        return (torch.rand((b, c, 1, h, w), generator=g) * 2 - 1).expand(shape).contiguous()
    return torch.rand(shape, generator=g) * 2 - 1


def fingerprint(t: torch.Tensor) -> list[float]:
    t = t.double()
    w = torch.arange(t.numel(), dtype=torch.float64).reshape(t.shape) % 97
    return [float(t.sum()), float((t * t).sum()), float((t * w).sum())]


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).abs().max() / ref.abs().max())


@pytest.fixture(scope="module")
def vae() -> CogVideoXVAE:
    model = CogVideoXVAE(CogVideoXVAEConfig.from_dict(META["config"])).eval().requires_grad_(False)
    seeded_random_weights(model, seed=META["weight_seed"])
    got = float(sum(p.double().abs().sum() for p in model.parameters()))
    assert got == pytest.approx(META["weight_abs_sum"], rel=1e-9), "the seeded weights drifted from the fixture's"
    return model


@pytest.fixture(scope="module")
def ref() -> dict:
    return load_file(str(FIX / "vae_cases.safetensors"))


def _run(vae: CogVideoXVAE, name: str, tiled: bool) -> torch.Tensor:
    case = CASES[name]
    x = make_input(case)
    assert fingerprint(x) == pytest.approx(case["input_fingerprint"], rel=1e-9), "the seeded inputs drifted"
    out = vae.decode(x, tiled=tiled) if case["kind"] == "latent" else vae.encode(x, tiled=tiled)
    assert list(out.shape) == case["out_shape"]
    return out if case.get("frames") is None else out[:, :, case["frames"]]


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_diffusers(vae, ref, name):
    """Every case, with our ``tiled`` flag equal to diffusers' tiling; small cases also with the other flag
    (below the tile minimum both are the same path)."""
    case = CASES[name]
    out = _run(vae, name, case["tiled"])
    assert ref[name].abs().max() > 0.1, "a near-zero reference would make the comparison meaningless"
    err = rel_err(out, ref[name])
    assert err < TOL, f"{name}: relative error {err:.2e}"
    if "big" not in name:
        assert rel_err(_run(vae, name, True), ref[name]) < TOL


@pytest.mark.parametrize("name", ["enc_big_t1", "enc_big_t9", "enc_big_t17", "enc_big_t17_static"])
def test_tiled_encode_differs_from_untiled(vae, ref, name):
    """The tiling cases can fail: diffusers' tiled and untiled latents differ, and so do ours."""
    tiled, untiled = ref[f"{name}_tiled"], ref[f"{name}_untiled"]
    assert (tiled - untiled).abs().max() > 0.05
    x = make_input(CASES[f"{name}_tiled"])
    assert (vae.encode(x, tiled=True) - vae.encode(x, tiled=False)).abs().max() > 0.05


def test_tiled_decode_differs_from_untiled(vae, ref):
    case = CASES["dec_big_t3_tiled"]
    assert case["max_abs_diff_vs_untiled"] > 0.05  # diffusers' own tiled vs untiled decode
    z = make_input(case)
    untiled = vae.decode(z, tiled=False)
    assert (untiled - ref["dec_big_t3_tiled"]).abs().max() > 0.05
    assert rel_err(vae.decode(z, tiled=True), ref["dec_big_t3_tiled"]) < TOL


def test_keys_equal_diffusers(vae):
    ours = {k: list(v.shape) for k, v in vae.state_dict().items()}
    assert ours == META["tiny_keys"]


def test_full_2b_config_on_meta_device():
    """CogVideoX-2B's defaults build diffusers' 436 keys / 215.6M parameters (checked by name and shape)."""
    model = CogVideoXVAE(CogVideoXVAEConfig(), device="meta")
    sd = model.state_dict()
    full = META["full_2b"]
    assert len(sd) == full["num_keys"] == 436
    n = sum(p.numel() for p in model.parameters())
    assert n == full["num_params"] and round(n / 1e6, 1) == 215.6
    keys = json.loads((FIX / "vae_keys_2b.json").read_text())
    assert {k: list(v.shape) for k, v in sd.items()} == keys
    text = "\n".join(f"{k}:{list(v.shape)}" for k, v in sorted(sd.items()))
    assert hashlib.sha256(text.encode()).hexdigest() == full["keys_sha256"]
    assert all(p.device.type == "meta" for p in model.parameters())


def test_layers_come_from_operations():
    """A host's ``operations`` (ComfyUI's comfy.ops) builds every Conv2d/Conv3d/GroupNorm."""
    made = []

    def track(base):
        class Tracked(base):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                made.append(self)
        return Tracked

    ops = SimpleNamespace(Conv2d=track(nn.Conv2d), Conv3d=track(nn.Conv3d), GroupNorm=track(nn.GroupNorm),
                          Linear=track(nn.Linear))
    model = CogVideoXVAE(CogVideoXVAEConfig.from_dict(META["config"]), operations=ops, device="meta")
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.GroupNorm, nn.Linear))]
    assert layers and {id(m) for m in layers} == {id(m) for m in made}


def test_tile_geometry_of_the_real_config():
    """At 256×256 with the 2B config both encode and decode tile (tiles 240×360, overlaps 1/6, 1/5)."""
    model = CogVideoXVAE(CogVideoXVAEConfig(), device="meta")
    enc, dec = model.tile_geometry(latent_side=False), model.tile_geometry(latent_side=True)
    assert enc == {"min": (240, 360), "stride": (200, 288), "extent": (5, 9), "keep": (25, 36)}
    assert dec == {"min": (30, 45), "stride": (25, 36), "extent": (40, 72), "keep": (200, 288)}


def test_frame_chunks():
    assert frame_chunks(17, 8) == [(0, 9), (9, 17)]
    assert frame_chunks(1, 8) == [(0, 1)] and frame_chunks(9, 8) == [(0, 9)]
    assert frame_chunks(49, 8) == [(0, 9)] + [(9 + 8 * i, 17 + 8 * i) for i in range(5)]
    assert frame_chunks(5, 2) == [(0, 3), (3, 5)] and frame_chunks(13, 2)[0] == (0, 3)


@pytest.mark.parametrize("frames", [2, 4, 16, 18])
def test_wrong_frame_count_raises(vae, frames):
    with pytest.raises(ShapeError, match=rf"cannot encode {frames} frames.*4k\+1.*17 frames"):
        vae.encode(torch.zeros(1, 3, frames, 16, 16))


def test_wrong_sizes_raise(vae):
    with pytest.raises(ShapeError, match="multiples of 8"):
        vae.encode(torch.zeros(1, 3, 1, 20, 16))
    with pytest.raises(ShapeError, match=r"\[B, 3, T, H, W\]"):
        vae.encode(torch.zeros(1, 4, 1, 16, 16))
    with pytest.raises(ShapeError, match=r"\[B, 4, T, H, W\]"):
        vae.decode(torch.zeros(1, 16, 1, 2, 2))


def test_config_from_diffusers_json_and_errors():
    data = {"_class_name": "AutoencoderKLCogVideoX", "_diffusers_version": "0.30.0", **CogVideoXVAEConfig().to_dict()}
    assert CogVideoXVAEConfig.from_dict(data) == CogVideoXVAEConfig()
    assert CogVideoXVAEConfig.from_dict({**data, "sample_size": 256}) == CogVideoXVAEConfig()
    with pytest.raises(ConfigError, match="sample_size"):
        CogVideoXVAEConfig.from_dict({**data, "sample_size": 256}, strict=True)
    with pytest.raises(ConfigError, match="use_quant_conv"):
        CogVideoXVAEConfig(use_quant_conv=True)
    with pytest.raises(ConfigError, match="norm_num_groups"):
        CogVideoXVAEConfig(block_out_channels=(128, 256, 256, 500))
    with pytest.raises(ConfigError, match="temporal_compression_ratio"):
        CogVideoXVAEConfig(temporal_compression_ratio=3)


def test_runs_in_bfloat16(vae, ref):
    """The host may run the VAE in half precision (GroupNorm in the input dtype, as diffusers)."""
    half = CogVideoXVAE(vae.config, dtype=torch.bfloat16).eval()
    half.load_state_dict(vae.state_dict())
    x = make_input(CASES["enc_big_t17_tiled"]).bfloat16()
    out = half.encode(x).float()
    assert out.dtype == torch.float32 and rel_err(out, ref["enc_big_t17_tiled"]) < 0.1


def test_timing_of_one_encode_and_decode(vae, capsys):
    x, z = make_input(CASES["enc_big_t17_tiled"]), make_input(CASES["dec_big_t5_tiled"])
    t0 = time.perf_counter()
    vae.encode(x)
    t1 = time.perf_counter()
    vae.decode(z)
    t2 = time.perf_counter()
    with capsys.disabled():
        print(f"\n[tiny VAE, tiled 17×56×48] encode {t1 - t0:.3f}s, decode {t2 - t1:.3f}s")
