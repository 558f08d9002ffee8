"""BIVDiff helpers: masks (docs/bivdiff-math.md §8.11), frame sub-sampling (§8.12), presets, and the ModelScope
family in the checkpoint registry (detection from keys, strict loading, readable errors)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from framebridge_core.bivdiff import presets as bivdiff
from framebridge_core.families import detect_family, load_model
from framebridge_core.errors import CheckpointError, ConfigError, ShapeError
from framebridge_core.families.modelscope.unet3d import ModelScopeUNet3D, ModelScopeUNet3DConfig


def test_outpainting_masks_cover_half_the_frame():
    h = bivdiff.outpainting_mask(512, 512, "horizontal")
    assert h.shape == (512, 512) and float(h.mean()) == 0.5
    assert bool((h[:128] == 1).all()) and bool((h[384:] == 1).all()) and bool((h[128:384] == 0).all())
    assert torch.equal(bivdiff.outpainting_mask(512, 512, "vertical"), h.T)
    v = bivdiff.outpainting_mask(40, 64, "vertical")
    assert bool((v[:, :16] == 1).all()) and bool((v[:, 48:] == 1).all()) and bool((v[:, 16:48] == 0).all())
    odd = bivdiff.outpainting_mask(30, 8, "horizontal")  # official bounds H//4 and H//4*3: 7 and 21, not 22
    assert odd[:, 0].tolist() == [1.0] * 7 + [0.0] * 14 + [1.0] * 9
    with pytest.raises(ConfigError, match="'diagonal'.*'horizontal' \\(top and bottom bands\\)"):
        bivdiff.outpainting_mask(64, 64, "diagonal")


def test_inpainting_masks_binarize_at_one_half():
    m = torch.tensor([0.0, 0.49, 0.5, 0.51, 1.0])
    assert torch.equal(bivdiff.binarize_mask(m), torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0]))


def test_stride_indices_follow_read_video_and_fail_early():
    assert bivdiff.stride_indices(100, 4, 8) == [0, 4, 8, 12, 16, 20, 24, 28]
    assert bivdiff.stride_indices(29, 4, 8) == [0, 4, 8, 12, 16, 20, 24, 28]  # exactly enough: 4*7+1
    with pytest.raises(ShapeError, match=r"has 28 frames, but 8 frames at stride 4 need at least 29; lower frames to 7"):
        bivdiff.stride_indices(28, 4, 8)
    assert bivdiff.stride_indices(28, 4, 8, "fewer frames") == [0, 4, 8, 12, 16, 20, 24]
    with pytest.raises(ConfigError, match="stride=0"):
        bivdiff.stride_indices(10, 0, 2)


def test_presets_are_the_official_mixing_ratios():
    assert bivdiff.MIXING_RATIO_PRESETS == {"ControlNet": 1.0, "T2I-Adapter": 1.0, "InstructPix2Pix": 1.0,
                                            "Prompt2Prompt": 0.25, "SD Inpainting": 0.1, "SD Outpainting": 0.1}
    assert (bivdiff.DEFAULT_FRAMES, bivdiff.DEFAULT_STRIDE, bivdiff.DEFAULT_STEPS, bivdiff.DEFAULT_CFG) == (8, 4, 50, 7.5)


CFG = ModelScopeUNet3DConfig(block_out_channels=(32, 64), layers_per_block=2, cross_attention_dim=24,
                             attention_head_dim=16, norm_num_groups=32)


def _tiny_state(seed=0):
    m = ModelScopeUNet3D(CFG)
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in m.state_dict().items()}


def test_modelscope_checkpoint_is_detected_from_keys_and_loads_strictly(tmp_path):
    sd = _tiny_state()
    path = tmp_path / "whatever-name.safetensors"
    save_file(sd, str(path))
    info = detect_family(sd)
    assert info.name == "modelscope_unet3d" and info.config == CFG
    assert "not visible in the weights" in info.notes[-1]
    model, info2 = load_model(path)
    assert isinstance(model, ModelScopeUNet3D) and info2.config == CFG and not model.training
    assert torch.equal(model.state_dict()["conv_out.weight"], sd["conv_out.weight"])
    # a wrapper prefix is stripped; metadata can set norm groups that the weights do not show
    meta_path = tmp_path / "grouped.safetensors"
    save_file({"model." + k: v for k, v in sd.items()}, str(meta_path), metadata={"framebridge.norm_num_groups": "16"})
    _, info3 = load_model(meta_path)
    assert info3.config.norm_num_groups == 16 and info3.prefix == "model."


def test_broken_modelscope_checkpoints_say_what_is_wrong():
    sd = _tiny_state()
    del sd["up_blocks.1.temp_attentions.0.proj_out.weight"]
    with pytest.raises(CheckpointError, match=r"inferred ModelScope UNet3D \(channels \[32, 64\].*1 missing key"):
        detect_family(sd)
    sd = _tiny_state()
    sd["transformer_in.proj_in.weight"] = torch.zeros(100, 32)
    with pytest.raises(CheckpointError, match="not a multiple of 8 heads"):
        detect_family(sd)
