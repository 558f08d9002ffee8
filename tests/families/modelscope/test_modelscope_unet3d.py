"""ModelScope / ZeroScope UNet3D (BIVDiff's video model): key layout, parity with the official
diffusers UNet3DConditionModel (committed fixture; live when diffusers imports), ComfyUI hooks,
frames-as-batch adapter and errors."""

from __future__ import annotations

import hashlib
import json
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open

from framebridge_core.errors import ConfigError, ShapeError
from framebridge_core.families.layers import timestep_embedding
from framebridge_core.families.modelscope.frames import ModelScopeFrames
from framebridge_core.families.modelscope.unet3d import (
    ModelScopeUNet3D,
    ModelScopeUNet3DConfig,
    expected_state_dict_shapes,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "bivdiff"


def read_fixture(name):
    with safe_open(str(FIXTURES / name), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def seeded_state_dict(model, seed, scale, dtype=torch.float32):
    """The fixture's weights: randn * scale over the sorted keys, one CPU generator."""
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=g) * scale).to(dtype) for k, v in sorted(model.state_dict().items())}


def fixture_model(dtype=torch.float32):
    tensors, meta = read_fixture("modelscope_forward.safetensors")
    cfg = ModelScopeUNet3DConfig.from_diffusers(json.loads(meta["config"]))
    model = ModelScopeUNet3D(cfg).eval().to(dtype)
    sd = seeded_state_dict(model, int(meta["seed"]), float(meta["scale"]))
    checksum = sum(float(v.double().abs().sum()) for v in sd.values())
    assert checksum == pytest.approx(float(meta["checksum"]), rel=1e-12), "the seeded weights drifted from the fixture's"
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True)
    return model, tensors, meta


def test_full_size_zeroscope_keys_and_shapes_match_the_official_unet():
    ref = json.loads((FIXTURES / "zeroscope_unet_keys.json").read_text())
    cfg = ModelScopeUNet3DConfig.from_diffusers(ref["config"])
    assert cfg == ModelScopeUNet3DConfig()  # the defaults are ZeroScope / ModelScope
    shapes = expected_state_dict_shapes(cfg)
    lines = sorted(f"{k}:{v}" for k, v in shapes.items())
    assert len(lines) == ref["num_tensors"] == 1480
    assert sum(torch.Size(v).numel() for v in shapes.values()) == ref["num_params"] == 1_411_233_860
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == ref["sha256"]
    # the quirks that decide the shapes
    assert shapes["transformer_in.proj_in.weight"] == [512, 320]  # 8 heads x 64, not 320
    assert shapes["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"] == [320, 1024]
    assert shapes["down_blocks.0.temp_convs.0.conv2.3.weight"] == [320, 320, 3, 1, 1]
    assert shapes["up_blocks.1.resnets.0.conv1.weight"] == [1280, 2560, 3, 3]


def test_forward_matches_the_official_unet_fixture_fp32_and_fp64():
    model, t, _ = fixture_model()
    with torch.no_grad():
        out = model(t["x"], t["t"], t["context"])
    assert out.shape == t["out_fp32"].shape == (2, 4, 5, 12, 10)  # odd sizes: upsample to the skip's size
    err32 = float((out - t["out_fp32"]).abs().max())
    assert err32 < 2e-6, err32
    assert float(t["out_fp32"].abs().max()) > 0.1  # a non-trivial output
    model64, t64, _ = fixture_model(torch.float64)
    with torch.no_grad():
        out64 = model64(t["x"].double(), t["t"], t["context"].double())
    err64 = float((out64 - t["out_fp64"]).abs().max())
    assert err64 < 1e-12, err64


def test_forward_matches_installed_diffusers_live():
    diffusers = pytest.importorskip("diffusers", reason="diffusers not installed: the committed fixture covers parity")
    _, meta = read_fixture("modelscope_forward.safetensors")
    cfg_d = json.loads(meta["config"])
    ref = diffusers.UNet3DConditionModel(**cfg_d).eval()
    # current diffusers uses the config's norm groups where BIVDiff's diffusers 0.23 hard-codes 32
    cfg = ModelScopeUNet3DConfig.from_diffusers(dict(ref.config))
    ours = ModelScopeUNet3D(ModelScopeUNet3DConfig.from_dict({**cfg.to_dict(), "fixed_norm_groups": None})).eval()
    sd = seeded_state_dict(ref, 3, 0.05)
    ref.load_state_dict(sd)
    ours.load_state_dict(sd, strict=True)
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(1, 4, 3, 8, 8, generator=g), torch.randn(1, 5, 24, generator=g)
    with torch.no_grad():
        assert float((ref(x, 500, c).sample - ours(x, 500, c)).abs().max()) < 2e-6


def test_timestep_features_are_cos_then_sin():
    e = timestep_embedding(torch.tensor([0.0, 10.0]), 8)
    assert torch.equal(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    assert torch.allclose(e[1], torch.cat([torch.cos(10 * freqs), torch.sin(10 * freqs)]))


TINY = dict(block_out_channels=(32, 32), layers_per_block=1, cross_attention_dim=16, attention_head_dim=8,
            norm_num_groups=8, fixed_norm_groups=None)


def tiny(seed=0, **kw):
    m = ModelScopeUNet3D(ModelScopeUNet3DConfig(**{**TINY, **kw})).eval()
    m.load_state_dict(seeded_state_dict(m, seed, 0.1))
    return m


def test_every_layer_comes_from_the_operations_namespace():
    made = []

    def sub(base):
        return type("Op" + base.__name__, (base,), {"__init__": lambda self, *a, **k: (made.append(base.__name__),
                                                                                      base.__init__(self, *a, **k))[1]})

    ops = types.SimpleNamespace(**{n: sub(getattr(nn, n)) for n in ("Linear", "Conv2d", "Conv3d", "GroupNorm", "LayerNorm")})
    m = ModelScopeUNet3D(ModelScopeUNet3DConfig(**TINY), operations=ops)
    plain = [n for n, mod in m.named_modules() if type(mod) in (nn.Linear, nn.Conv2d, nn.Conv3d, nn.GroupNorm, nn.LayerNorm)]
    assert plain == []
    assert {"Linear", "Conv2d", "Conv3d", "GroupNorm", "LayerNorm"} == set(made)
    assert len(made) == sum(1 for mod in m.modules() if isinstance(mod, tuple(vars(ops).values())))
    m16 = ModelScopeUNet3D(ModelScopeUNet3DConfig(**TINY), dtype=torch.float16, device="meta")
    assert {p.dtype for p in m16.parameters()} == {torch.float16} and m16.dtype == torch.float16


def test_custom_attention_callable_is_used():
    seen = []

    def attn(q, k, v):
        seen.append(q.shape)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    m = ModelScopeUNet3D(ModelScopeUNet3DConfig(**TINY), attention=attn).eval()
    m.load_state_dict(tiny().state_dict())
    x, c = torch.randn(1, 4, 3, 8, 8), torch.randn(1, 5, 16)
    with torch.no_grad():
        assert torch.equal(m(x, 10, c), tiny()(x, 10, c))
    assert (1 * 64, 8, 3, 8) in seen  # transformer_in: 8x8 pixels x 8 heads over 3 frames, head width 8


def test_frames_as_batch_keeps_cond_and_uncond_videos_apart():
    """docs/bivdiff-math.md §8.9: a [2F] cond+uncond batch is two independent F-frame videos."""
    net = tiny(1)
    frames = ModelScopeFrames(ModelScopeUNet3DConfig(**TINY)).eval()
    frames.net.load_state_dict(net.state_dict())
    g = torch.Generator().manual_seed(2)
    f = 3
    x = torch.randn(2 * f, 4, 8, 8, generator=g)
    ctx = torch.cat([torch.randn(1, 5, 16, generator=g).expand(f, -1, -1), torch.randn(1, 5, 16, generator=g).expand(f, -1, -1)])
    t = torch.full((2 * f,), 400)
    with torch.no_grad():
        out = frames(x, t, ctx, num_video_frames=f)
        v0 = net(x[:f].permute(1, 0, 2, 3)[None], 400, ctx[:1])[0].permute(1, 0, 2, 3)
        v1 = net(x[f:].permute(1, 0, 2, 3)[None], 400, ctx[f:f + 1])[0].permute(1, 0, 2, 3)
        assert torch.allclose(out[:f], v0, atol=1e-6) and torch.allclose(out[f:], v1, atol=1e-6)
        # changing the second video leaves the first untouched; changing one frame moves its neighbours
        x2 = x.clone()
        x2[f:] += 1.0
        out2 = frames(x2, t, ctx, num_video_frames=f)
        assert torch.equal(out2[:f], out[:f])
        x3 = x.clone()
        x3[0] += 1.0
        out3 = frames(x3, t, ctx, num_video_frames=f)
        assert float((out3[1] - out[1]).abs().max()) > 1e-4, "temporal layers must mix frames of one video"


def test_errors_name_the_value_and_the_fix():
    net = tiny()
    with pytest.raises(ShapeError, match=r"768.*16-wide.*OpenCLIP"):
        net(torch.zeros(1, 4, 2, 8, 8), 1, torch.zeros(1, 77, 768))
    with pytest.raises(ShapeError, match=r"\[batch, 4, frames, h, w\]"):
        net(torch.zeros(4, 8, 8), 1, torch.zeros(1, 77, 16))
    with pytest.raises(ShapeError, match="not a whole number of 4-frame videos"):
        ModelScopeFrames(ModelScopeUNet3DConfig(**TINY))(torch.zeros(6, 4, 8, 8), torch.zeros(6), torch.zeros(6, 5, 16), 4)
    with pytest.raises(ConfigError, match="multiple of attention_head_dim=64; got 96"):
        ModelScopeUNet3DConfig(block_out_channels=(96, 128))
    with pytest.raises(ConfigError, match="only the ModelScope layout"):
        ModelScopeUNet3DConfig.from_diffusers({"block_out_channels": [32, 32], "down_block_types": ["DownBlock3D"] * 2,
                                               "up_block_types": ["UpBlock3D"] * 2})
