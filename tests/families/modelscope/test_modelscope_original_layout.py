"""The original ModelScope text-to-video layout (``UNetSD`` keys of ``text_to_video_ms_1.7b``) loads to the same
network as the diffusers layout: the key map both ways on the full 1.7B key set, forward parity with ModelScope's
own ``UNetSD`` (committed fixture), a file round trip with identical outputs, safe reading, typed errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from framebridge_core.errors import CheckpointError
from framebridge_core.families import detect_family, load_model
from framebridge_core.families.modelscope.checkpoint import MODELSCOPE_UNET3D, modelscope_state_dict
from framebridge_core.families.modelscope.original_layout import (
    diffusers_key_to_original,
    diffusers_to_original,
    layout_of,
    original_key_to_diffusers,
    original_to_diffusers,
)
from framebridge_core.families.modelscope.unet3d import (
    ModelScopeUNet3D,
    ModelScopeUNet3DConfig,
    expected_state_dict_shapes,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "bivdiff"
#: the fixture's UNetSD(in_dim=4, dim=32, context_dim=1024, dim_mult=[1, 2], num_heads=8, head_dim=16,
#: num_res_blocks=1, attn_scales=[1]) in this pack's terms (ModelScope hard-codes GroupNorm(32))
FIXTURE_CONFIG = ModelScopeUNet3DConfig(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=1024,
                                        attention_head_dim=16)
TINY = ModelScopeUNet3DConfig(block_out_channels=(32, 64, 64), layers_per_block=2, cross_attention_dim=24,
                              attention_head_dim=16)


def meta_original(cfg: ModelScopeUNet3DConfig) -> dict[str, torch.Tensor]:
    shapes = expected_state_dict_shapes(cfg)
    return diffusers_to_original({k: torch.empty(v, device="meta") for k, v in shapes.items()}, cfg.layers_per_block)


def test_full_size_original_keys_are_modelscope_unetsd_and_map_back_exactly():
    ref = json.loads((FIXTURES / "modelscope_original_keys.json").read_text())
    original = meta_original(ModelScopeUNet3DConfig())  # the 1.7B / ZeroScope config
    lines = sorted(f"{k}:{list(v.shape)}" for k, v in original.items())
    # the key set and shapes of ModelScope's own UNetSD with the text_to_video_ms_1.7b configuration
    assert len(lines) == ref["num_tensors"] == 1480
    assert sum(v.numel() for v in original.values()) == ref["num_params"]
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == ref["sha256"]
    # original -> diffusers -> original is the identity on names and shapes, and the diffusers side is complete
    diffusers = original_to_diffusers(original)
    assert {k: list(v.shape) for k, v in diffusers.items()} == expected_state_dict_shapes(ModelScopeUNet3DConfig())
    back = diffusers_to_original(diffusers, 2)
    assert {k: list(v.shape) for k, v in back.items()} == {k: list(v.shape) for k, v in original.items()}
    for k in original:
        assert diffusers_key_to_original(original_key_to_diffusers(k, 2), 2) == k


@pytest.mark.parametrize("diffusers_key, original_key", [
    ("time_embedding.linear_2.bias", "time_embed.2.bias"),
    ("transformer_in.proj_in.weight", "input_blocks.0.1.proj_in.weight"),
    ("down_blocks.0.resnets.1.norm1.weight", "input_blocks.2.0.in_layers.0.weight"),
    ("down_blocks.0.temp_convs.1.conv2.3.weight", "input_blocks.2.0.temopral_conv.conv2.3.weight"),
    ("down_blocks.0.downsamplers.0.conv.weight", "input_blocks.3.op.weight"),
    ("down_blocks.1.resnets.0.conv_shortcut.weight", "input_blocks.4.0.skip_connection.weight"),
    ("down_blocks.2.temp_attentions.1.proj_out.weight", "input_blocks.8.2.proj_out.weight"),
    ("down_blocks.3.resnets.1.time_emb_proj.weight", "input_blocks.11.0.emb_layers.1.weight"),
    ("mid_block.resnets.1.conv2.bias", "middle_block.3.out_layers.3.bias"),
    ("mid_block.temp_convs.0.conv1.0.weight", "middle_block.0.temopral_conv.conv1.0.weight"),
    ("mid_block.temp_attentions.0.norm.weight", "middle_block.2.norm.weight"),
    ("up_blocks.0.upsamplers.0.conv.weight", "output_blocks.2.1.conv.weight"),
    ("up_blocks.1.upsamplers.0.conv.bias", "output_blocks.5.3.conv.bias"),
    ("up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k.weight",
     "output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight"),
    ("conv_norm_out.weight", "out.0.weight"),
])
def test_key_names_follow_diffusers_conversion_script(diffusers_key, original_key):
    # diffusers scripts/convert_ms_text_to_video_to_diffusers.py (convert_ldm_unet_checkpoint), 2 ResNets per level
    assert diffusers_key_to_original(diffusers_key, 2) == original_key
    assert original_key_to_diffusers(original_key, 2) == diffusers_key


def _fixture():
    with safe_open(str(FIXTURES / "modelscope_original_forward.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _seeded_original(meta) -> dict[str, torch.Tensor]:
    """The fixture's weights: randn * scale over UNetSD's sorted original keys, one CPU generator."""
    g = torch.Generator().manual_seed(int(meta["seed"]))
    original = meta_original(FIXTURE_CONFIG)
    sd = {k: torch.randn(original[k].shape, generator=g) * float(meta["scale"]) for k in sorted(original)}
    assert sum(float(v.double().abs().sum()) for v in sd.values()) == pytest.approx(float(meta["checksum"]), rel=1e-12)
    return sd


def _modelscope_time_features(t, dim):
    """UNetSD's sinusoidal_embedding: pow(10000, -i/half) in float32 (the pack uses exp(-log(10000) i/half),
    diffusers' form; the two differ by float32 rounding, about 3e-8 at the output of the fp64 run)."""
    half = dim // 2
    args = torch.outer(t.float(), torch.pow(10000, -torch.arange(half).to(t.float()).div(half)))
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def test_original_weights_match_modelscope_unetsd_forward_fp32_and_fp64(monkeypatch):
    t, meta = _fixture()
    original = _seeded_original(meta)
    for dtype, key, tol in ((torch.float32, "out_fp32", 2e-6), (torch.float64, "out_fp64", 1e-12)):
        if dtype == torch.float64:  # same time features as the reference, so only the weights' mapping is compared
            monkeypatch.setattr("framebridge_core.families.video_unet_parts.timestep_embedding",
                                _modelscope_time_features)
        model = ModelScopeUNet3D(FIXTURE_CONFIG).eval().to(dtype)
        model.load_state_dict({k: v.to(dtype) for k, v in original_to_diffusers(original).items()}, strict=True)
        with torch.no_grad():
            out = model(t["x"].to(dtype), t["t"], t["context"].to(dtype))
        assert out.shape == t[key].shape == (2, 4, 3, 8, 6)
        err = float((out - t[key]).abs().max())
        assert err < tol, (key, err)
    assert float(t["out_fp32"].abs().max()) > 0.1


def test_tiny_model_round_trips_through_an_original_pth_file_with_identical_outputs(tmp_path):
    g = torch.Generator().manual_seed(5)
    ref = ModelScopeUNet3D(TINY).eval()
    ref.load_state_dict({k: torch.randn(v.shape, generator=g) * 0.05 for k, v in ref.state_dict().items()})
    original = diffusers_to_original(ref.state_dict(), TINY.layers_per_block)
    assert original["input_blocks.0.1.proj_in.weight"].shape == (128, 32, 1)  # a kernel-1 Conv1d in the original
    torch.save(original, tmp_path / "text2video_pytorch_model.pth")
    save_file(ref.state_dict(), str(tmp_path / "unet.safetensors"))
    from_pth, info = load_model(tmp_path / "text2video_pytorch_model.pth")
    assert info.name == MODELSCOPE_UNET3D and info.config == TINY
    assert "original ModelScope layout" in " ".join(info.notes)
    from_safetensors, _ = load_model(tmp_path / "unet.safetensors")
    renamed = modelscope_state_dict(torch.load(tmp_path / "text2video_pytorch_model.pth", weights_only=True))
    assert renamed.keys() == ref.state_dict().keys()
    assert all(torch.equal(renamed[k], v) for k, v in ref.state_dict().items())
    x, c = torch.randn(1, 4, 3, 8, 8, generator=g), torch.randn(1, 5, 24, generator=g)
    with torch.no_grad():
        expected = ref(x, 400, c)
        assert torch.equal(from_pth(x, 400, c), expected)
        assert torch.equal(from_safetensors(x, 400, c), expected)


def test_ldm_prefixed_original_keys_are_recognised():
    original = meta_original(FIXTURE_CONFIG)
    info = detect_family({f"model.diffusion_model.{k}": v for k, v in original.items()})
    assert info.name == MODELSCOPE_UNET3D and info.config == FIXTURE_CONFIG


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_code_carrying_pth_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "code-ran.txt"
    sd = {k: torch.zeros(1) for k in ("input_blocks.0.0.weight", "time_embed.0.weight")}
    torch.save({"state_dict": sd, "hook": _Marker(marker)}, tmp_path / "text2video_pytorch_model.pth")
    with pytest.raises(CheckpointError, match=r"Python objects besides tensors.*weights_only=True"):
        load_model(tmp_path / "text2video_pytorch_model.pth")
    assert not marker.exists()


def test_partial_and_mixed_key_sets_are_typed_errors():
    original = meta_original(FIXTURE_CONFIG)
    with pytest.raises(CheckpointError, match=r"mixes the original ModelScope layout with the diffusers layout"):
        detect_family({**original, "down_blocks.0.temp_convs.0.conv1.0.weight": torch.empty(32, device="meta")})
    without_head = {k: v for k, v in original.items() if not k.startswith("out.2.")}
    with pytest.raises(CheckpointError, match=r"without out\.2\.weight: the file is incomplete"):
        detect_family(without_head)
    without_layer = {k: v for k, v in original.items() if not k.startswith("input_blocks.1.2.")}
    with pytest.raises(CheckpointError, match=r"original layout.*missing key\(s\): input_blocks\.1\.2\."):
        detect_family(without_layer)
    extra = {**original, "input_blocks.1.0.in_layers.9.weight": torch.empty(3, device="meta")}
    with pytest.raises(CheckpointError, match=r"unknown ResBlock parameter 'in_layers\.9\.weight'"):
        detect_family(extra)
    bad_proj = dict(original)
    bad_proj["input_blocks.0.1.proj_in.weight"] = torch.empty(128, 32, device="meta")
    with pytest.raises(CheckpointError, match=r"kernel-1 Conv1d \[out, in, 1\]"):
        detect_family(bad_proj)
    assert layout_of(original) == "original" and layout_of(original_to_diffusers(original)) == "diffusers"
    assert layout_of({"pos_embed": torch.zeros(1)}) == ""
