"""FrameBridge-Latte networks: parity with the official code, key layout, hooks and errors.

Fixtures in tests/fixtures/latte/ were produced by running the official thu-ml/FrameBridge
`framebridge-latte/models/latte.py` on a tiny config (input 8x8, patch 2, hidden 24, depth 4,
2 heads, mlp ratio 2, 4 video frames (+1 prepended), 5 classes + null) with random weights;
the latte_keys_*.json tables come from the official full-size Latte-S/2 / Latte-nwarp-S/2.
"""

import json
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from framebridge_core.errors import ConfigError, ShapeError
from latte_fixture import LAT, TOL, fixture_weights, tiny_config
from framebridge_core.families.latte.network import (
    LatteConfig,
    LatteModel,
    LatteNeuralPrior,
    build_latte,
    latte_s2_bridge,
    latte_s2_neural_prior,
    sincos_pos_embed_2d,
)

FIX = Path(__file__).resolve().parents[2] / "fixtures"


def weights(name):
    return fixture_weights(name)


@pytest.fixture(scope="module")
def fw():
    return load_file(str(LAT / "forward.safetensors"))


@pytest.fixture(scope="module")
def bridge4():
    m = LatteModel(tiny_config()).eval()
    m.load_state_dict(weights("weights_bridge4"), strict=True)
    return m


@pytest.fixture(scope="module")
def bridge8():
    m = LatteModel(tiny_config(in_channels=8)).eval()
    m.load_state_dict(weights("weights_bridge8"), strict=True)
    return m


@pytest.fixture(scope="module")
def nwarp():
    m = LatteNeuralPrior(tiny_config(condition_type=None, has_timestep=False)).eval()
    m.load_state_dict(weights("weights_nwarp"), strict=True)
    return m


# ------------------------------------------------------------------------------ parity


@torch.no_grad()
def test_bridge4_forward_matches_official(bridge4, fw):
    out = bridge4(fw["bridge4.x"], fw["bridge4.t"], fw["bridge4.y"])
    assert out.shape == (2, 5, 4, 8, 8)
    assert (out - fw["bridge4.out"]).abs().max().item() < TOL


@torch.no_grad()
def test_bridge8_forward_matches_official(bridge8, fw):
    out = bridge8(fw["bridge8.x"], fw["bridge8.t"], fw["bridge8.y"])
    assert out.shape == (2, 5, 4, 8, 8)
    assert (out - fw["bridge8.out"]).abs().max().item() < TOL


@torch.no_grad()
def test_neural_prior_forward_matches_official(nwarp, fw):
    x = fw["nwarp.x"]
    ref = fw["nwarp.out"]
    # the raw transformer on the repeated frame, as the official sampler calls it
    assert (nwarp.nwarp_model(x, None, fw["nwarp.y"]) - ref).abs().max().item() < TOL
    # the wrapper repeats the first frame itself: [B, C, H, W] and [B, 1, C, H, W] both work
    assert (nwarp(x[:, 0], fw["nwarp.y"]) - ref).abs().max().item() < TOL
    assert (nwarp(x[:, :1], fw["nwarp.y"]) - ref).abs().max().item() < TOL


@torch.no_grad()
def test_forward_with_cfg_matches_official(bridge4, fw):
    scale = float(fw["bridge4_cfg.scale"])
    out = bridge4.forward_with_cfg(fw["bridge4_cfg.x"], fw["bridge4_cfg.t"], fw["bridge4_cfg.y"], scale)
    assert out.shape == (1, 5, 4, 8, 8)
    assert (out - fw["bridge4_cfg.out"]).abs().max().item() < TOL
    # explicit formula, with the null class = num_classes = 5
    x, t, y = fw["bridge4_cfg.x"], fw["bridge4_cfg.t"], fw["bridge4_cfg.y"]
    cond = bridge4(x, t, y)
    unc = bridge4(x, t, torch.tensor([5]))
    assert torch.allclose(out, unc + scale * (cond - unc), atol=1e-4)
    # scale 1 = conditional prediction
    assert torch.allclose(bridge4.forward_with_cfg(x, t, y, 1.0), cond, atol=1e-5)


@torch.no_grad()
def test_eps_psi_builds_concat_pre_input_and_drops_frame_zero(bridge4, bridge8):
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(2, 4, 8, 8, generator=g)
    x_t = torch.randn(2, 4, 4, 8, 8, generator=g)
    coarse = torch.randn(2, 4, 4, 8, 8, generator=g)
    t = torch.tensor([999, 12])
    y = torch.tensor([1, 2])
    full = bridge4(torch.cat([cond[:, None], x_t], 1), t, y)
    eps = bridge4.eps_psi(x_t, t, y, cond)
    assert eps.shape == (2, 4, 4, 8, 8)
    assert torch.equal(eps, full[:, 1:])
    assert torch.equal(bridge4(torch.cat([cond[:, None], x_t], 1), t, y, drop_condition_frame=True), full[:, 1:])
    # the prior video is accepted as cond (frame 0 is used)
    assert torch.equal(bridge4.eps_psi(x_t, t, y, cond[:, None].repeat(1, 4, 1, 1, 1)), eps)
    # 8-channel bridge: cat over channels of [cond; x_t] and [cond; coarse]
    x_in = torch.cat([torch.cat([cond[:, None], x_t], 1), torch.cat([cond[:, None], coarse], 1)], 2)
    assert torch.equal(bridge8.eps_psi(x_t, t, y, cond, coarse), bridge8(x_in, t, y)[:, 1:])
    with pytest.raises(ConfigError, match="coarse video"):
        bridge8.eps_psi(x_t, t, y, cond)
    with pytest.raises(ConfigError, match="no neural-prior input"):
        bridge4.eps_psi(x_t, t, y, cond, coarse)


def test_fixed_embeddings_equal_official_sincos_tables():
    w = weights("weights_bridge4")
    m = LatteModel(tiny_config())
    assert torch.allclose(m.pos_embed, w["pos_embed"], atol=1e-7, rtol=0)
    assert torch.allclose(m.temp_embed, w["temp_embed"], atol=1e-7, rtol=0)
    assert not m.pos_embed.requires_grad and not m.temp_embed.requires_grad
    assert "pos_embed" in m.state_dict() and "temp_embed" in m.state_dict()
    # first half encodes the column, second half the row (official meshgrid(w, h) order)
    tab = sincos_pos_embed_2d(8, 2)
    assert torch.equal(tab[1, 4:], tab[0, 4:])  # patch (row 0, col 1): same row code as (0, 0)
    assert torch.equal(tab[2, :4], tab[0, :4])  # patch (row 1, col 0): same column code as (0, 0)


# ------------------------------------------------------------------------------ full-size layout


def _table(module: nn.Module) -> dict:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name,build", [
    ("bridge4", lambda: LatteModel(latte_s2_bridge(4), device="meta")),
    ("bridge8", lambda: LatteModel(latte_s2_bridge(8), device="meta")),
    ("nwarp", lambda: LatteNeuralPrior(latte_s2_neural_prior(), device="meta")),
])
def test_full_size_key_table_matches_official(name, build):
    official = json.loads((FIX / f"latte_keys_{name}.json").read_text())
    ours = _table(build())
    assert sorted(set(official) - set(ours)) == []
    assert sorted(set(ours) - set(official)) == []
    assert ours == official
    n = sum(torch.Size(s).numel() for s in ours.values())
    assert 32_000_000 < n < 33_000_000  # ~130 MB fp32


@pytest.mark.parametrize("in_channels", [4, 8])
def test_full_size_shapes_on_meta(in_channels):
    """docs/math.md §8.15: [B,17,4|8,32,32] in, frame 0 dropped -> [B,16,4,32,32]."""
    m = LatteModel(latte_s2_bridge(in_channels), device="meta")
    x = torch.empty(2, 16, 4, 32, 32, device="meta")
    cond = torch.empty(2, 4, 32, 32, device="meta")
    coarse = x if in_channels == 8 else None
    t = torch.tensor([999, 0], device="meta")
    y = torch.tensor([3, 101], device="meta")
    assert m.build_bridge_input(x, cond, coarse).shape == (2, 17, in_channels, 32, 32)
    assert m(m.build_bridge_input(x, cond, coarse), t, y).shape == (2, 17, 4, 32, 32)
    assert m.eps_psi(x, t, y, cond, coarse).shape == (2, 16, 4, 32, 32)
    prior = LatteNeuralPrior(latte_s2_neural_prior(), device="meta")
    assert prior(cond, y).shape == (2, 16, 4, 32, 32)


def test_official_presets():
    b = latte_s2_bridge(8)
    assert (b.seq_frames, b.num_patches, b.num_embeddings, b.null_class) == (17, 256, 102, 101)
    assert b.prior_concat and b.latent_channels == 4
    p = latte_s2_neural_prior()
    assert (p.seq_frames, p.has_timestep, p.condition_type) == (16, False, None)
    assert isinstance(build_latte(p, device="meta"), LatteNeuralPrior)
    assert isinstance(build_latte(b, device="meta"), LatteModel)
    assert LatteConfig.from_dict(b.to_dict()) == b


# ------------------------------------------------------------------------------ hooks


def test_operations_namespace_creates_every_layer():
    made = []

    def recorder(base):
        class Rec(base):
            def __init__(self, *a, **k):
                made.append((base.__name__, k.get("dtype"), k.get("device")))
                super().__init__(*a, **k)
        Rec.__name__ = base.__name__
        return Rec

    ops = types.SimpleNamespace(Linear=recorder(nn.Linear), Conv2d=recorder(nn.Conv2d),
                                LayerNorm=recorder(nn.LayerNorm), Embedding=recorder(nn.Embedding))
    m = LatteModel(tiny_config(), operations=ops, dtype=torch.float64, device="cpu")
    layer_types = (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.Embedding)
    n_layers = sum(isinstance(mod, layer_types) for mod in m.modules())
    assert len(made) == n_layers
    assert all(type(mod).__name__ in {"Linear", "Conv2d", "LayerNorm", "Embedding"}
               and type(mod).__module__ == __name__ for mod in m.modules() if isinstance(mod, layer_types))
    assert {d for _, d, _ in made} == {torch.float64}
    assert {p.dtype for p in m.parameters()} == {torch.float64}


@torch.no_grad()
def test_injected_attention_is_used_and_math_matches(bridge4, fw):
    calls = []

    def math_attention(q, k, v):
        calls.append(tuple(q.shape))
        w = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        return w.softmax(-1) @ v

    m = LatteModel(tiny_config(), attention=math_attention).eval()
    m.load_state_dict(bridge4.state_dict())
    out = m(fw["bridge4.x"], fw["bridge4.t"], fw["bridge4.y"])
    assert (out - fw["bridge4.out"]).abs().max().item() < TOL
    # spatial: (B*F, heads, N, d) = (10, 2, 16, 12); temporal: (B*N, heads, F, d) = (32, 2, 5, 12)
    assert calls[:2] == [(10, 2, 16, 12), (32, 2, 5, 12)]
    assert len(calls) == 4


@torch.no_grad()
def test_low_precision_forward_runs(bridge4, fw):
    m = LatteModel(tiny_config(), dtype=torch.bfloat16).eval()
    m.load_state_dict(bridge4.state_dict())
    out = m(fw["bridge4.x"].bfloat16(), fw["bridge4.t"], fw["bridge4.y"])
    assert out.dtype == torch.bfloat16
    assert (out.float() - fw["bridge4.out"]).abs().max().item() < 0.2


@torch.no_grad()
def test_initialize_weights_is_adaln_zero():
    m = LatteModel(tiny_config())
    m.initialize_weights(torch.Generator().manual_seed(0))
    x = torch.randn(1, 5, 4, 8, 8)
    assert torch.count_nonzero(m(x, 3, 1)) == 0  # zero head, as the official init
    assert m.blocks[0].attn.qkv.weight.abs().max() > 0


# ------------------------------------------------------------------------------ errors


def test_wrong_input_shapes_raise_shape_error(bridge4):
    with pytest.raises(ShapeError, match=r"\[B, 5, 4, 8, 8\].*1 prepended condition frame"):
        bridge4(torch.zeros(1, 4, 4, 8, 8), 1, 1)
    with pytest.raises(ShapeError, match="expects"):
        bridge4(torch.zeros(1, 5, 4, 16, 16), 1, 1)
    with pytest.raises(ShapeError, match=r"t has shape \(3,\)"):
        bridge4(torch.zeros(2, 5, 4, 8, 8), torch.tensor([1, 2, 3]), 1)


def test_label_and_timestep_errors(bridge4, nwarp):
    x = torch.zeros(1, 5, 4, 8, 8)
    with pytest.raises(ConfigError, match=r"out of range: use 0\.\.4, or 5"):
        bridge4(x, 1, 6)
    with pytest.raises(ConfigError, match="pass t"):
        bridge4(x, None, 1)
    with pytest.raises(ConfigError, match="no timestep embedder"):
        nwarp.nwarp_model(torch.zeros(1, 4, 4, 8, 8), 3, 1)
    # y=None means the null class
    assert torch.equal(bridge4(x, 1, None), bridge4(x, 1, 5))


def test_config_validation_messages():
    with pytest.raises(ConfigError, match="not divisible by patch_size"):
        tiny_config(input_size=9)
    with pytest.raises(ConfigError, match="must be even"):
        tiny_config(depth=3)
    with pytest.raises(ConfigError, match="num_heads"):
        tiny_config(num_heads=5)
    with pytest.raises(ConfigError, match="condition_type='cross_attention' is not supported"):
        tiny_config(condition_type="cross_attention")
    with pytest.raises(ConfigError, match="unknown field"):
        LatteConfig.from_dict({"hidden": 3})
    with pytest.raises(ConfigError, match="neural prior"):
        LatteNeuralPrior(tiny_config())


def test_pixel_space_config_works():
    cfg = LatteConfig(input_size=64, patch_size=8, in_channels=3, out_channels=3, hidden_size=32,
                      depth=2, num_heads=2, num_frames=16, num_classes=0)
    m = LatteModel(cfg)
    assert m.y_embedder is None and cfg.null_class is None
    out = m.eps_psi(torch.zeros(1, 16, 3, 64, 64), 5, None, torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 16, 3, 64, 64)
