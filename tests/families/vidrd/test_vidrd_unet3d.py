"""VidRD UNet (BIVDiff's ModelT2V.pth): forward parity with the official network (committed fixture made
outside the repository from MCG-NJU/BIVDiff's code, see docs/notes/vidrd.md), full-size key layout,
frames-as-batch adapter, checkpoint detection and key handling, ε / v detection, safe loading and errors."""

from __future__ import annotations

import hashlib
import json
import pickle
import types
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from framebridge_core.checkpoints import load_state_dict
from framebridge_core.errors import CheckpointError, ConfigError, ShapeError
from framebridge_core.families import detect_family, load_model
from framebridge_core.families.modelscope.unet3d import ModelScopeUNet3D, ModelScopeUNet3DConfig
from framebridge_core.families.vidrd.checkpoint import (
    EPSILON,
    META_HEAD_CHANNELS,
    META_NORM_GROUPS,
    META_PREDICTION,
    META_TEMP_EMBED,
    V_PREDICTION,
    VIDRD,
    detect_vidrd,
    prediction_type,
    require_vidrd,
    unet_state_dict,
)
from framebridge_core.families.vidrd.frames import VidRDFrames
from framebridge_core.families.vidrd.unet3d import (
    VidRDUNet3D,
    VidRDUNet3DConfig,
    expected_state_dict_shapes,
    frame_position_embedding,
)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "vidrd"
#: what the tiny fixture's file would say in its metadata (not visible in the weights)
TINY_META = {META_HEAD_CHANNELS: "16", META_NORM_GROUPS: "8"}


def read_fixture():
    with safe_open(str(FIXTURES / "forward.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def fixture_weights(tensors):
    return {k[len("weight."):]: v.float() for k, v in tensors.items() if k.startswith("weight.")}


def fixture_config(meta) -> VidRDUNet3DConfig:
    return VidRDUNet3DConfig.from_official(json.loads(meta["config"]), **json.loads(meta["switches"]))


def fixture_model(dtype=torch.float32):
    tensors, meta = read_fixture()
    model = VidRDUNet3D(fixture_config(meta)).eval()
    model.load_state_dict(fixture_weights(tensors), strict=True)
    return model.to(dtype), tensors


# ---- forward parity ------------------------------------------------------------------------------


@pytest.mark.parametrize("case,shape", [("a", (2, 4, 5, 7, 6)), ("b", (1, 4, 1, 4, 4))])
def test_forward_matches_the_official_network_fp32_and_fp64(case, shape):
    """Case a: 2 videos of 5 frames at 7x6 (odd: the upsampler takes the skip's size), two timesteps.
    Case b: one frame (the temporal layers' one-frame branch, position embedding kept as the official
    in-place add does)."""
    model, t = fixture_model()
    x, ts, ctx = t[f"{case}.x"], t[f"{case}.t"], t[f"{case}.context"]
    with torch.no_grad():
        out = model(x, ts, ctx)
    ref = t[f"{case}.out_fp32"]
    assert out.shape == ref.shape == shape
    assert float(ref.abs().max()) > 0.3  # a non-trivial output
    err = float((out - ref).abs().max())
    rel = err / float(ref.abs().max())
    assert err < 1e-5 and rel < 1e-5, (err, rel)
    model64, _ = fixture_model(torch.float64)
    with torch.no_grad():
        out64 = model64(x.double(), ts, ctx.double())
    err64 = float((out64 - t[f"{case}.out_fp64"]).abs().max())
    assert err64 < 1e-12, err64


def test_the_fixture_config_is_the_official_tiny_config():
    _, meta = read_fixture()
    cfg = fixture_config(meta)
    assert cfg == VidRDUNet3DConfig(block_out_channels=(32, 32), layers_per_block=1, cross_attention_dim=16,
                                    head_channels=16, norm_num_groups=8)
    assert "ReuseAndDiffuse" in meta["source"]


def test_full_size_keys_and_shapes_match_the_official_vidrd_unet():
    ref = json.loads((FIXTURES / "unet_keys.json").read_text())
    cfg = VidRDUNet3DConfig.from_official(ref["config"], **ref["switches"])
    assert cfg == VidRDUNet3DConfig()  # the defaults are ModelT2V.pth: SD 2.1-base inflated
    shapes = expected_state_dict_shapes(cfg)
    lines = sorted(f"{k}:{v}" for k, v in shapes.items())
    assert len(lines) == ref["num_tensors"] == 1150
    assert sum(torch.Size(v).numel() for v in shapes.values()) == ref["num_params"]
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == ref["sha256"]
    for k, v in ref["sample"].items():
        assert shapes[k] == v


def test_from_official_refuses_what_vidrd_does_not_use():
    base = json.loads((FIXTURES / "unet_keys.json").read_text())["config"]
    with pytest.raises(ConfigError, match="add_temp_transformer"):
        VidRDUNet3DConfig.from_official(base, add_temp_transformer=True)
    with pytest.raises(ConfigError, match="prepend_first_frame"):
        VidRDUNet3DConfig.from_official(base, prepend_first_frame=True)
    with pytest.raises(ConfigError, match="one head width"):
        VidRDUNet3DConfig.from_official(dict(base, attention_head_dim=[5, 5, 20, 20]))
    with pytest.raises(ConfigError, match="block layout"):
        VidRDUNet3DConfig.from_official(dict(base, down_block_types=["DownBlock3D"] * 4))
    with pytest.raises(ConfigError, match="temporal convs"):
        VidRDUNet3DConfig(block_out_channels=(16, 16), norm_num_groups=8, head_channels=8)


def test_frame_position_embedding_is_interleaved_sin_cos():
    pe = frame_position_embedding(6, 3)
    assert pe.shape == (3, 6)
    assert torch.equal(pe[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]))
    assert float(pe[2, 0]) == pytest.approx(float(torch.sin(torch.tensor(2.0))))


# ---- frames-as-batch and hooks -------------------------------------------------------------------


def test_frames_adapter_equals_the_video_layout_and_keeps_batch_copies_apart():
    model, t = fixture_model()
    frames = VidRDFrames(model.config).eval()
    frames.net.load_state_dict(model.state_dict())
    x, ts, ctx = t["a.x"], t["a.t"], t["a.context"]  # [2, 4, 5, 7, 6]
    fb = x.permute(0, 2, 1, 3, 4).reshape(10, 4, 7, 6)
    with torch.no_grad():
        ref = model(x, ts, ctx).permute(0, 2, 1, 3, 4).reshape(10, 4, 7, 6)
        out = frames(fb, ts.repeat_interleave(5), ctx.repeat_interleave(5, dim=0), num_video_frames=5)
    assert torch.allclose(out, ref, atol=1e-6)
    with pytest.raises(ShapeError, match="whole number"):
        frames(fb[:9], ts[:1], ctx[:1], num_video_frames=5)
    with pytest.raises(ShapeError, match="text conditioning"):
        frames(fb, ts, None, num_video_frames=5)
    with pytest.raises(ShapeError, match="OpenCLIP-H"):
        model(x, ts, torch.zeros(2, 3, 768))


def test_operations_device_dtype_and_attention_hooks_reach_every_layer():
    made = []

    def counted(base):
        class Layer(base):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                made.append(base.__name__)
        return Layer

    ops = types.SimpleNamespace(**{n: counted(getattr(nn, n)) for n in ("Linear", "Conv2d", "Conv3d", "GroupNorm",
                                                                        "LayerNorm")})
    calls = []

    def attention(q, k, v):
        calls.append(q.shape)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    _, meta = read_fixture()
    net = VidRDUNet3D(fixture_config(meta), operations=ops, dtype=torch.float64, attention=attention)
    plain = sum(isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d, nn.GroupNorm, nn.LayerNorm)) for m in net.modules())
    assert len(made) == plain > 100
    assert all(p.dtype == torch.float64 for p in net.parameters())
    with torch.no_grad():
        net(torch.zeros(1, 4, 2, 4, 4, dtype=torch.float64), torch.tensor([10]), torch.zeros(1, 3, 16))
    assert len(calls) == 3 * 4  # attn1, attn2, temp_attn in 4 transformers (down 1, mid 1, up 2)


# ---- checkpoints ---------------------------------------------------------------------------------


def tiny_zeroscope_state_dict():
    cfg = ModelScopeUNet3DConfig(block_out_channels=(32, 32), layers_per_block=1, cross_attention_dim=16,
                                 attention_head_dim=8, norm_num_groups=8)
    return ModelScopeUNet3D(cfg).state_dict()


def test_bare_safetensors_with_metadata_is_detected_and_loads(tmp_path):
    tensors, meta = read_fixture()
    sd = fixture_weights(tensors)
    path = tmp_path / "vidrd_unet.safetensors"
    save_file(sd, str(path), metadata=TINY_META)
    model, info = load_model(path)
    assert info.name == VIDRD and info.config.unet == fixture_config(meta)
    assert info.config.prediction_type == EPSILON
    assert any("head width 16" in n for n in info.notes)
    with torch.no_grad():
        out = model(tensors["a.x"], tensors["a.t"], tensors["a.context"])
    assert float((out - tensors["a.out_fp32"]).abs().max()) < 1e-5


#: the smallest config whose hidden values are the official defaults (64-wide heads, 32 norm groups), so a .pth
#: (which carries no metadata) of it loads as ModelT2V.pth does
PTH_TINY = VidRDUNet3DConfig(block_out_channels=(64, 64), layers_per_block=1, cross_attention_dim=16)


def test_official_lightning_pth_layout_loads_with_weights_only(tmp_path):
    """ModelT2V.pth: {"state_dict": {"unet.*", "text_encoder.*", ...}, plain extras}; only unet.* is used."""
    torch.manual_seed(0)
    net = VidRDUNet3D(PTH_TINY).eval()
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    full = {f"unet.{k}": v for k, v in net.state_dict().items()}
    full["text_encoder.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    full["vae.encoder.conv_in.weight"] = torch.zeros(1)
    path = tmp_path / "ModelT2V.pth"
    torch.save({"state_dict": full, "epoch": 3, "global_step": 1000, "pytorch-lightning_version": "1.9.5",
                "hyper_parameters": {"add_temp_embed": True, "add_temp_conv": True, "resolution": 256}}, path)
    sd, meta = load_state_dict(path)
    assert meta["container"] == "state_dict"
    part, notes = unet_state_dict(sd)
    assert set(part) == set(net.state_dict()) and "ignored text_encoder.*, vae.*" in notes[0]
    model, info = load_model(path)
    assert info.name == VIDRD and info.config.unet == PTH_TINY and info.config.prediction_type == EPSILON
    assert any("ignored text_encoder.*, vae.*" in n for n in info.notes)
    assert any("not visible in the weights" in n and "not stated in the file" in n for n in info.notes)
    x, t, ctx = torch.randn(1, 4, 3, 4, 4), torch.tensor([300]), torch.randn(1, 2, 16)
    with torch.no_grad():
        assert torch.equal(model(x, t, ctx), net(x, t, ctx))


def test_tiny_fixture_pth_without_metadata_says_what_it_cannot_infer(tmp_path):
    tensors, _ = read_fixture()
    path = tmp_path / "ModelT2V.pth"
    torch.save({"state_dict": {f"unet.{k}": v for k, v in fixture_weights(tensors).items()}}, path)
    with pytest.raises(CheckpointError, match="impossible configuration.*head_channels=64"):
        load_model(path)  # 32-channel levels cannot have SD 2.1's 64-wide heads: save it with metadata instead


def test_zeroscope_and_vidrd_are_told_apart_by_keys():
    tensors, _ = read_fixture()
    vidrd = fixture_weights(tensors)
    zs = tiny_zeroscope_state_dict()
    assert detect_family(zs, {"framebridge.norm_num_groups": "8"}).name == "modelscope_unet3d"
    assert detect_vidrd(zs, {}) is None
    with pytest.raises(CheckpointError, match="'zeroscope.safetensors' is a ModelScope / ZeroScope video UNet"):
        require_vidrd("zeroscope.safetensors", zs, {})
    assert detect_family(vidrd, TINY_META).name == VIDRD
    assert require_vidrd("ModelT2V.pth", vidrd, TINY_META).name == VIDRD
    with pytest.raises(CheckpointError, match="'x.pt' is not a VidRD UNet: it lacks"):
        require_vidrd("x.pt", {"conv_in.weight": torch.zeros(1)}, {})


def test_prediction_type_comes_from_the_file_and_defaults_to_sd21_base_epsilon():
    assert prediction_type({}) == EPSILON
    assert prediction_type({META_PREDICTION: "v_prediction"}) == V_PREDICTION
    assert prediction_type({"prediction_type": "epsilon"}) == EPSILON
    assert prediction_type({META_PREDICTION: "V"}) == V_PREDICTION
    with pytest.raises(CheckpointError, match="expected 'epsilon' or 'v_prediction'"):
        prediction_type({META_PREDICTION: "sample"})
    tensors, _ = read_fixture()
    info = detect_family(fixture_weights(tensors), dict(TINY_META, **{META_PREDICTION: "v_prediction"}))
    assert info.config.prediction_type == V_PREDICTION
    assert not any("not stated" in n for n in info.notes)


def test_metadata_switches_and_bad_metadata():
    tensors, _ = read_fixture()
    sd = fixture_weights(tensors)
    info = detect_family(sd, dict(TINY_META, **{META_TEMP_EMBED: "false"}))
    assert info.config.unet.add_temp_embed is False
    with pytest.raises(CheckpointError, match="framebridge.add_temp_embed='maybe' is not true or false"):
        detect_family(sd, dict(TINY_META, **{META_TEMP_EMBED: "maybe"}))
    with pytest.raises(CheckpointError, match="impossible configuration.*head_channels"):
        detect_family(sd, dict(TINY_META, **{META_HEAD_CHANNELS: "12"}))


def test_broken_vidrd_files_say_what_is_wrong():
    tensors, _ = read_fixture()
    sd = fixture_weights(tensors)
    missing = dict(sd)
    del missing["up_blocks.1.attentions.0.transformer_blocks.0.temp_norm.weight"]
    with pytest.raises(CheckpointError, match="1 missing key.*temp_norm.weight"):
        detect_family(missing, TINY_META)
    wrong = dict(sd, **{"mid_block.resnets.0.conv1.weight": torch.zeros(32, 32, 1, 1)})
    with pytest.raises(CheckpointError, match="shape mismatch"):
        detect_family(wrong, TINY_META)
    with pytest.raises(CheckpointError, match="temp_transformer"):
        detect_family(dict(sd, **{"temp_transformer.proj_in.weight": torch.zeros(512, 32)}), TINY_META)
    nan = dict(sd, **{"conv_out.bias": torch.full((4,), float("nan"))})
    model = VidRDUNet3D(detect_family(sd, TINY_META).config.unet)
    from framebridge_core.families.vidrd.checkpoint import DETECTOR
    with pytest.raises(CheckpointError, match="NaN"):
        DETECTOR.load_weights(model, nan)


class _Planted:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_code_carrying_pth_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    tensors, _ = read_fixture()
    path = tmp_path / "ModelT2V.pth"
    torch.save({"state_dict": {"unet.conv_in.weight": tensors["weight.conv_in.weight"]}, "trap": _Planted(marker)},
               path)
    with pytest.raises(CheckpointError, match="'ModelT2V.pth' contains Python objects besides tensors"):
        load_state_dict(path)
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        load_model(path)
    assert not marker.exists()
    raw = tmp_path / "ModelT2V_legacy.pth"
    raw.write_bytes(pickle.dumps({"state_dict": {}, "trap": _Planted(marker)}, protocol=2))
    with pytest.raises(CheckpointError, match="ModelT2V_legacy.pth"):
        load_state_dict(raw)
    assert not marker.exists()
    # sanity: the trap is real (plain pickle runs it)
    pickle.loads(raw.read_bytes())
    assert marker.exists()


def test_the_text_encoder_of_modelt2v_is_written_for_load_clip(tmp_path, capsys):
    from framebridge_core.cli import main
    from framebridge_core.families.vidrd.checkpoint import text_encoder_state_dict

    te = {"text_encoder.text_model.encoder.layers.0.mlp.fc1.weight": torch.randn(8, 4),
          "text_encoder.text_model.final_layer_norm.weight": torch.ones(4)}
    path = tmp_path / "ModelT2V.pth"
    torch.save({"state_dict": {"unet.conv_in.weight": torch.zeros(1), **te}}, path)
    out = tmp_path / "vidrd_text_encoder.safetensors"
    assert main(["vidrd-text-encoder", str(path), "--out", str(out)]) == 0
    written, _ = load_state_dict(out)
    assert set(written) == {"text_model.encoder.layers.0.mlp.fc1.weight", "text_model.final_layer_norm.weight"}
    assert torch.equal(written["text_model.final_layer_norm.weight"], torch.ones(4))
    assert "Load CLIP" in capsys.readouterr().out
    with pytest.raises(CheckpointError, match="'x.pth' holds no text_encoder.*2.1-base"):
        text_encoder_state_dict({"unet.conv_in.weight": torch.zeros(1)}, "'x.pth'")
    bare = tmp_path / "unet_only.pth"
    torch.save({"state_dict": {"unet.conv_in.weight": torch.zeros(1)}}, bare)
    assert main(["vidrd-text-encoder", str(bare), "--out", str(tmp_path / "no.safetensors")]) == 2
    assert "holds no text_encoder" in capsys.readouterr().err
