"""FrameBridge-VideoCrafter checkpoints: the released key layout, family detection and config
inference, splitting a Lightning .ckpt into its parts, and the SAF table check."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from framebridge_core.families import detect_family, load_model
from framebridge_core.errors import CheckpointError, ConfigError, ShapeError
from framebridge_core.families.videocrafter.bridge import (
    VideoCrafterBridge,
    VideoCrafterConfig,
    check_frames_and_size,
    check_schedule_buffers,
    official_config,
    saf_timesteps,
)
from framebridge_core.families.videocrafter.checkpoint import VIDEOCRAFTER, expected_shapes, split_checkpoint
from framebridge_core.families.videocrafter.resampler import ResamplerConfig
from framebridge_core.families.videocrafter.unet3d import UNet3DConfig
from framebridge_core.testing import seeded_random_weights

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "videocrafter"
FULL = json.loads((FIX / "keys_full.json").read_text())

SMALL = VideoCrafterConfig(
    unet=UNet3DConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1,),
                      num_head_channels=16, context_dim=64, temporal_length=4),
    resampler=ResamplerConfig(dim=64, depth=1, dim_head=64, heads=1, num_queries=16, embedding_dim=48,
                              output_dim=64, ff_mult=2, video_length=4),
    latent_size=8)


def lightning_state_dict(cfg: VideoCrafterConfig = SMALL, seed: int = 0, extras: bool = True) -> dict:
    """A small stand-in of the released .ckpt's state_dict: every part under its official prefix."""
    net = VideoCrafterBridge(cfg)
    seeded_random_weights(net, seed)
    sd = {"model.diffusion_model." + k: v for k, v in net.diffusion_model.state_dict().items()}
    sd.update({"image_proj_model." + k: v for k, v in net.image_proj_model.state_dict().items()})
    if extras:
        sd["cond_stage_model.model.token_embedding.weight"] = torch.zeros(10, 8)
        sd["embedder.model.visual.conv1.weight"] = torch.zeros(8, 3, 2, 2)
        sd["first_stage_model.encoder.conv_in.weight"] = torch.zeros(8, 3, 3, 3)
        sd["bridge_aligned_t"] = saf_timesteps().float()
        sd["bridge_sigmas"] = net.schedule.sigma.float()
        sd["betas"] = torch.zeros(1000)
    return sd


def test_full_size_key_table_matches_the_released_layout():
    """Every network key of the released model (official code at full size) with its shape."""
    shapes = expected_shapes(official_config())
    ours = {"model.diffusion_model." + k: v for k, v in shapes["unet"].items()}
    ours.update({"image_proj_model." + k: v for k, v in shapes["image_proj"].items()})
    official = {k: v for k, v in FULL.items() if k.startswith(("model.diffusion_model.", "image_proj_model."))}
    assert len(official) > 1500
    assert ours == official
    assert FULL["model.diffusion_model.input_blocks.0.0.weight"] == [320, 8, 3, 3]  # docs/math.md §5.2
    assert FULL["image_proj_model.latents"] == [1, 256, 1024]
    buffers = sorted(k for k in FULL if "." not in k)
    assert "bridge_aligned_t" in buffers and FULL["bridge_aligned_t"] == [1000]


def test_config_is_read_back_from_the_full_size_keys():
    meta = {k: torch.empty(v, device="meta") for k, v in FULL.items()}
    info = detect_family(meta, {})
    assert info.name == VIDEOCRAFTER and info.detector == "videocrafter"
    assert info.config == official_config()


def test_small_config_round_trip_and_parts():
    sd = lightning_state_dict()
    info = detect_family(sd, {})
    assert info.config.unet == SMALL.unet and info.config.resampler == SMALL.resampler
    parts = split_checkpoint(sd)
    assert parts.unet_prefix == "model.diffusion_model."
    assert set(parts.clip_text) == {"model.token_embedding.weight"}
    assert set(parts.clip_vision) == {"model.visual.conv1.weight"}
    assert set(parts.vae) == {"encoder.conv_in.weight"}
    assert set(parts.buffers) == {"bridge_aligned_t", "bridge_sigmas", "betas"}
    assert parts.ignored == ()


@pytest.mark.parametrize("layout", ["lightning", "unet_plain", "unet_prefixed", "framestride"])
def test_lightning_ckpt_and_separate_files_load(tmp_path, layout):
    sd = lightning_state_dict(extras=(layout == "lightning"))
    if layout == "lightning":
        path = tmp_path / "framebridge_videocrafter.ckpt"
        torch.save({"state_dict": sd, "epoch": 3, "global_step": 20000}, path)
    else:
        if layout == "unet_plain":
            sd = {k.replace("model.diffusion_model.", ""): v for k, v in sd.items()}
        elif layout == "unet_prefixed":
            sd = {k.replace("model.diffusion_model.", "diffusion_model."): v for k, v in sd.items()}
        else:  # DynamiCrafter-trained naming of the frame-stride MLP
            sd = {k.replace("fps_embedding", "framestride_embed"): v for k, v in sd.items()}
        path = tmp_path / "vc.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    model, info = load_model(path)
    assert info.name == VIDEOCRAFTER and isinstance(model, VideoCrafterBridge)
    ref = VideoCrafterBridge(SMALL)
    seeded_random_weights(ref, 0)
    for (k, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k


def test_unet_without_resampler_is_detected_with_a_note():
    sd = {k: v for k, v in lightning_state_dict(extras=False).items() if k.startswith("model.")}
    info = detect_family(sd, {})
    assert info.config.resampler is None and any("Resampler" in n for n in info.notes)


def test_broken_checkpoints_are_named():
    sd = lightning_state_dict(extras=False)
    sd.pop("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k_ip.weight")
    with pytest.raises(CheckpointError, match="missing key"):
        detect_family(sd, {})
    sd = lightning_state_dict(extras=False)
    sd["model.diffusion_model.init_attn.0.transformer_blocks.0.attn1.relative_position_k.embeddings_table"] = torch.zeros(9, 16)
    with pytest.raises(CheckpointError, match="relative-position"):
        detect_family(sd, {})
    sd = lightning_state_dict(extras=False)
    sd["image_proj_model.latents"] = torch.zeros(1, 72, 64)  # 4.5 frames of 16 queries
    with pytest.raises(CheckpointError, match="multiple of 16"):
        detect_family(sd, {})


def test_saf_table_check_against_the_checkpoint_buffer():
    official = load_file(str(FIX / "sampling.safetensors"))["bridge_aligned_t"]
    found = check_schedule_buffers({"bridge_aligned_t": official})
    assert found["bridge_aligned_t"] < 1e-4
    shifted = official.clone()
    shifted[500] += 0.5
    with pytest.raises(CheckpointError, match="index 500"):
        check_schedule_buffers({"bridge_aligned_t": shifted})
    with pytest.raises(CheckpointError, match="bridge_sigmas"):
        check_schedule_buffers({"bridge_sigmas": torch.linspace(0.1, 5.0, 1000)})
    with pytest.raises(CheckpointError, match="1000 bridge indices"):
        check_schedule_buffers({"bridge_aligned_t": official[:500]})


def test_loading_refuses_a_checkpoint_with_another_schedule(tmp_path):
    sd = lightning_state_dict()
    sd["bridge_aligned_t"] = sd["bridge_aligned_t"] * 0.9
    path = tmp_path / "other_schedule.ckpt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError, match="bridge_aligned_t"):
        load_model(path)


def test_saf_table_spec_values():
    t = saf_timesteps()
    for i, v in {0: 0.1913, 1: 0.6253, 19: 10.588, 99: 170.611, 499: 662.914, 979: 999.392, 999: 999.869}.items():
        assert abs(float(t[i]) - v) < 1e-3, i


def test_frame_and_size_errors_name_value_and_fix():
    cfg = official_config()
    check_frames_and_size(cfg, 16, 32, 32)
    check_frames_and_size(cfg, 16, 40, 48)  # multiples of 64 px run (outside training)
    with pytest.raises(ShapeError, match=r"length=14 .* Set length to 16"):
        check_frames_and_size(cfg, 14, 32, 32)
    with pytest.raises(ShapeError, match=r"multiples of 64 pixels"):
        check_frames_and_size(cfg, 16, 30, 32)


def test_config_errors():
    with pytest.raises(ConfigError, match="2 x out_channels"):
        VideoCrafterConfig(unet=UNet3DConfig(in_channels=4))
    with pytest.raises(ConfigError, match="divisible by 32"):
        UNet3DConfig(model_channels=48)
    with pytest.raises(ConfigError, match="per frame"):
        VideoCrafterConfig(unet=UNet3DConfig(temporal_length=8))
