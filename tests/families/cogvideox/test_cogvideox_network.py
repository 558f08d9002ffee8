"""CogVideoX-2B transformer (FrameBridge-CogVideoX): parity with diffusers, key layout, hooks, errors.

Fixtures in tests/fixtures/cogvideox/transformer_* were made by diffusers 0.42.1
``CogVideoXTransformer3DModel`` (float32, CPU) at a tiny config (2 heads x 16, in 32 / out 16,
time_embed_dim 32, text 24 x 8 tokens, 2 layers, sample 8x8x9, patch 2) with every parameter
randomised, norm weights included. Weights and inputs are float16-representable values stored as
float16 (lossless; the reference ran in float32) to keep the files small; outputs are float32.
Cases: B=2 F=3 8x8 (diffusers' buffer path, t = 965.716 / 2.863 per sample), B=1 F=5 16x16 and
B=1 F=2 8x12 (table recomputed). Measured on CPU, torch 2.13: max abs error 0.0 and relative
error 0.0 in all three cases (bit-identical); the tolerance is relative 1e-5. A float64 build of
ours is 1.2e-6 max abs / 2.9e-7 relative from the float32 reference (float32 rounding only).
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from framebridge_core.errors import ConfigError, ShapeError
from framebridge_core.families.cogvideox.network import (
    CogVideoXConfig,
    CogVideoXTransformer,
    sincos_pos_embed_3d,
)

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "cogvideox"
META = json.loads((FIX / "transformer_meta.json").read_text())
REL_TOL = 1e-5
CASES = ("buffer", "recompute", "nonsquare")


def tiny_config(**kw) -> CogVideoXConfig:
    return CogVideoXConfig.from_dict({**META["diffusers_config"], **kw})


def fixture_weights() -> dict:
    return {k: v.float() for k, v in load_file(str(FIX / "transformer_weights.safetensors")).items()}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


@pytest.fixture(scope="module")
def cases():
    return load_file(str(FIX / "transformer_cases.safetensors"))


@pytest.fixture(scope="module")
def model():
    m = CogVideoXTransformer(tiny_config()).eval()
    m.load_state_dict(fixture_weights(), strict=True)
    return m


def inputs(cases, name, dtype=torch.float32):
    return (cases[f"{name}.hidden_states"].to(dtype), cases[f"{name}.encoder_hidden_states"].to(dtype),
            cases[f"{name}.timestep"])


# ------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("name", CASES)
@torch.no_grad()
def test_forward_matches_diffusers(model, cases, name):
    x, text, t = inputs(cases, name)
    c = META["cases"][name]
    assert tuple(x.shape) == (c["batch"], c["frames"], 32, c["height"], c["width"])
    out = model(x, text, t)
    ref = cases[f"{name}.out"]
    assert out.shape == ref.shape == (c["batch"], c["frames"], 16, c["height"], c["width"])
    assert rel_err(out, ref) <= REL_TOL


@torch.no_grad()
def test_float64_build_and_scalar_timestep(cases):
    m = CogVideoXTransformer(tiny_config(), dtype=torch.float64).eval()
    assert all(p.dtype == torch.float64 for p in m.parameters())
    m.load_state_dict(fixture_weights(), strict=True)
    x, text, t = inputs(cases, "recompute", torch.float64)
    out = m(x, text, t)
    assert out.dtype == torch.float64
    assert rel_err(out.float(), cases["recompute.out"]) <= REL_TOL
    # a scalar timestep is broadcast over the batch
    x, text, t = inputs(cases, "buffer", torch.float64)
    both = m(x, text, torch.tensor([t[0].item(), t[0].item()]))
    assert torch.equal(m(x, text, t[0].item()), both)


def test_sincos_table_is_diffusers_layout(cases):
    ref = cases["sincos.d32_f2_h3_w5"]  # diffusers get_3d_sincos_pos_embed(32, (5, 3), 2, 1.875, 1.0)
    tab = sincos_pos_embed_3d(32, frames=2, height=3, width=5)
    assert tab.dtype == torch.float64 and tab.shape == (30, 32)
    # float64 sin/cos may differ by one ulp from diffusers' numpy on some CPUs (the vectorised libm
    # path differs: measured 1.1e-16 on 16 of 960 entries on one machine, 0 on another)
    assert (tab - ref).abs().max().item() <= 2.3e-16
    # D/4 = 8 temporal channels, then 12 for the column (w) and 12 for the row (h)
    def tok(f, r, c):  # row of (frame, patch row, patch column) in a 2x3x5 grid
        return (f * 3 + r) * 5 + c

    assert torch.equal(tab[tok(0, 1, 2), :8], tab[tok(0, 0, 0), :8])
    assert torch.equal(tab[tok(1, 2, 3), 8:], tab[tok(0, 2, 3), 8:])
    assert torch.equal(tab[tok(0, 2, 3), 8:20], tab[tok(0, 0, 3), 8:20])
    assert torch.equal(tab[tok(0, 2, 3), 20:], tab[tok(0, 2, 0), 20:])
    # each block is [sin, cos]: position 0 gives sin = 0, cos = 1
    assert torch.equal(tab[0, :4], torch.zeros(4)) and torch.equal(tab[0, 4:8], torch.ones(4))


def test_pos_table_cached_per_size_and_not_in_state_dict(model):
    f, h, w = model.config.base_grid
    assert (f, h, w) == (3, 4, 4)
    a = model.pos_embedding(f, h, w)
    assert a.shape == (1, 48, 32) and a.dtype == torch.float32
    assert model.pos_embedding(f, h, w) is a
    assert model.pos_embedding(5, 8, 8).shape == (1, 320, 32)
    assert list(model.buffers()) == []
    assert not any("pos_embedding" in k for k in model.state_dict())
    assert META["buffers"] == {"patch_embed.pos_embedding": ["torch.float64", [1, 56, 32]]}


# ------------------------------------------------------------------------------ keys and config


def test_state_dict_keys_equal_diffusers(model):
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == META["keys"]


def test_full_2b_layout_on_meta():
    full = META["full_2b"]
    cfg = CogVideoXConfig.from_dict(full["config"])
    assert cfg == CogVideoXConfig()  # the defaults are FrameBridge-CogVideoX (2B, in_channels 32)
    m = CogVideoXTransformer(cfg, device="meta")
    sd = m.state_dict()
    assert len(sd) == full["num_keys"] == 736
    assert sum(v.numel() for v in sd.values()) == full["num_params"] == 1_693_906_752
    want = dict(full["outer_keys"])
    for i in range(30):
        want.update({f"transformer_blocks.{i}.{k}": s for k, s in full["block_keys"].items()})
    assert {k: list(v.shape) for k, v in sd.items()} == want


def test_config_from_diffusers_json_and_round_trip():
    cfg = tiny_config()
    assert cfg.inner_dim == 32 and cfg.max_text_seq_length == 8
    assert CogVideoXConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown field"):
        CogVideoXConfig.from_dict({"num_attention_heads": 2, "mystery": 1})


def test_norm_without_affine_drops_only_those_weights():
    keys = set(CogVideoXTransformer(tiny_config(norm_elementwise_affine=False)).state_dict())
    assert "transformer_blocks.0.norm1.norm.weight" not in keys and "norm_final.weight" not in keys
    assert "norm_out.norm.bias" not in keys
    assert "transformer_blocks.0.attn1.norm_q.weight" in keys  # q/k norms are always affine


@pytest.mark.parametrize("override,pattern", [
    (dict(use_rotary_positional_embeddings=True),
     r"uses rotary position embeddings.*FrameBridge-CogVideoX is built on CogVideoX-2B \(sincos\)"),
    (dict(use_learned_positional_embeddings=True), r"5B-I2V.*learned.*Only False is allowed"),
    (dict(patch_size_t=2), r"patch_size_t=2 .*CogVideoX1\.5.*Only None is allowed"),
    (dict(ofs_embed_dim=512), r"ofs_embed_dim=512 .*Only None is allowed"),
    (dict(activation_fn="gelu"), r"activation_fn='gelu' is not supported.*'gelu-approximate'"),
    (dict(timestep_activation_fn="relu"), r"timestep_activation_fn='relu'"),
    (dict(flip_sin_to_cos=False), r"flip_sin_to_cos=False.*set flip_sin_to_cos=True"),
    (dict(attention_head_dim=12), r"= 24 must be divisible by 16"),
    (dict(num_layers=0), r"num_layers=0 must be a positive integer"),
])
def test_unsupported_configs_raise(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        tiny_config(**override)


# ------------------------------------------------------------------------------ input errors


def test_shape_errors(model):
    x = torch.zeros(1, 2, 32, 8, 8)
    text = torch.zeros(1, 8, 24)
    with pytest.raises(ShapeError, match="needs exactly 8 text tokens"):
        model(x, torch.zeros(1, 7, 24), 1.0)
    with pytest.raises(ShapeError, match="needs exactly 226 text tokens"):
        CogVideoXTransformer(CogVideoXConfig(), device="meta")(
            torch.zeros(1, 1, 32, 4, 4, device="meta"), torch.zeros(1, 77, 4096, device="meta"), 1.0)
    with pytest.raises(ShapeError, match=r"9x8 \(HxW\) is not divisible by patch_size=2"):
        model(torch.zeros(1, 2, 32, 9, 8), text, 1.0)
    with pytest.raises(ShapeError, match=r"expected \[B, F, 32, H, W\]"):
        model(torch.zeros(1, 2, 16, 8, 8), text, 1.0)
    with pytest.raises(ShapeError, match=r"expected \[B, F, 32, H, W\]"):
        model(torch.zeros(2, 32, 8, 8), text, 1.0)
    with pytest.raises(ShapeError, match="T5 embeddings"):
        model(x, torch.zeros(1, 8, 16), 1.0)
    with pytest.raises(ShapeError, match="batch mismatch"):
        model(x, torch.zeros(2, 8, 24), 1.0)
    with pytest.raises(ShapeError, match="timestep has shape"):
        model(x, text, torch.tensor([1.0, 2.0, 3.0]))


# ------------------------------------------------------------------------------ host hooks


@torch.no_grad()
def test_custom_attention_is_used(cases):
    calls = []

    def attention(q, k, v):
        calls.append(tuple(q.shape))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    m = CogVideoXTransformer(tiny_config(), attention=attention).eval()
    m.load_state_dict(fixture_weights(), strict=True)
    x, text, t = inputs(cases, "buffer")
    out = m(x, text, t)
    assert calls == [(2, 2, 8 + 3 * 16, 16)] * 2  # [B, heads, text + video tokens, head_dim], per layer
    assert rel_err(out, cases["buffer.out"]) <= REL_TOL


def test_operations_classes_are_used():
    made = []

    def counting(base):
        class Op(base):
            def __init__(self, *args, **kwargs):
                assert "device" in kwargs and "dtype" in kwargs
                super().__init__(*args, **kwargs)
                made.append(base.__name__)
        return Op

    ops = SimpleNamespace(Linear=counting(nn.Linear), Conv2d=counting(nn.Conv2d), LayerNorm=counting(nn.LayerNorm))
    m = CogVideoXTransformer(tiny_config(), operations=ops)
    for mod in m.modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d, nn.LayerNorm)):
            assert isinstance(mod, (ops.Linear, ops.Conv2d, ops.LayerNorm)), type(mod)
    # per block: 2 modulations, q/k/v/out, 2 feed-forward (8 Linear); 4 LayerNorms (2 zero-norms, q, k)
    assert made.count("Linear") == 2 * 8 + 5  # + text_proj, linear_1, linear_2, norm_out.linear, proj_out
    assert made.count("LayerNorm") == 2 * 4 + 2  # + norm_final, norm_out.norm
    assert made.count("Conv2d") == 1
