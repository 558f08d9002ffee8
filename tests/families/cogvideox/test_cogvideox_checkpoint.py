"""FrameBridge-CogVideoX files: the diffusers transformer folder (config.json + shards + index), one
safetensors of the same keys, ComfyUI-native key names, the VAE config read off its weights, and the
typed refusals of other CogVideoX variants, frame counts and sizes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from framebridge_core.checkpoints import load_state_dict
from framebridge_core.errors import CheckpointError, ShapeError
from framebridge_core.families import detect_family, load_model
from framebridge_core.families.cogvideox.bridge import CogVideoXBridge, check_size, latent_frames
from framebridge_core.families.cogvideox.checkpoint import COGVIDEOX, from_native_keys, vae_config_from_weights
from framebridge_core.families.cogvideox.network import CogVideoXConfig, CogVideoXTransformer
from framebridge_core.families.cogvideox.vae import CogVideoXVAE, CogVideoXVAEConfig
from framebridge_core.testing import seeded_random_weights

TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=32, out_channels=16, time_embed_dim=32,
            text_embed_dim=24, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, max_text_seq_length=8)


def _net(**over):
    return seeded_random_weights(CogVideoXTransformer(CogVideoXConfig.from_dict({**TINY, **over})), seed=1)


def _folder(tmp_path, sd, config):
    keys = sorted(sd)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[:20],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[20:]}
    for name, part in shards.items():
        save_file({k: sd[k].contiguous() for k in part}, str(tmp_path / name))
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: n for n, part in shards.items() for k in part}}))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "CogVideoXTransformer3DModel", **config}))
    return tmp_path


def test_the_released_folder_layout_loads_strictly_with_its_config(tmp_path):
    net = _net()
    folder = _folder(tmp_path, net.state_dict(), {**TINY, "sample_frames": 13})
    model, info = load_model(folder)
    assert info.name == COGVIDEOX and isinstance(model, CogVideoXBridge)
    assert info.config.sample_frames == 13  # only config.json knows it
    assert "config from config.json" in info.notes[-1]
    for k, v in net.state_dict().items():
        assert torch.equal(model.transformer.state_dict()[k], v)


def test_a_folder_missing_a_shard_names_it(tmp_path):
    folder = _folder(tmp_path, _net().state_dict(), TINY)
    (folder / "diffusion_pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="lacks 1 shard.*00002-of-00002"):
        load_state_dict(folder)


def test_one_file_and_native_key_names_detect_the_same_config(tmp_path):
    sd = _net().state_dict()
    info = detect_family(sd)
    assert info.config.num_layers == 2 and info.config.text_embed_dim == 24 and info.config.in_channels == 32
    native = {}
    for k, v in sd.items():
        k = k.replace("transformer_blocks.", "blocks.").replace("attn1.to_q.", "q.").replace("attn1.to_k.", "k.")
        k = k.replace("attn1.to_v.", "v.").replace("attn1.norm_q.", "norm_q.").replace("attn1.norm_k.", "norm_k.")
        k = k.replace("attn1.to_out.0.", "attn_out.").replace("ff.net.0.proj.", "ff_proj.").replace("ff.net.2.", "ff_out.")
        k = k.replace("time_embedding.linear_", "time_embedding_linear_")
        native[k] = v
    assert from_native_keys(native).keys() == sd.keys()
    assert detect_family(native).config == info.config


@pytest.mark.parametrize("change, message", [
    (dict(in_channels=16), "plain CogVideoX text-to-video transformer"),
])
def test_other_cogvideox_variants_are_refused_with_what_was_found(change, message):
    with pytest.raises(CheckpointError, match=message):
        detect_family(_net(**change).state_dict())


def test_5b_i2v_and_rope_configs_are_refused(tmp_path):
    sd = dict(_net().state_dict())
    sd["patch_embed.pos_embedding"] = torch.zeros(1, 10, 32)
    with pytest.raises(CheckpointError, match="CogVideoX-5B-I2V"):
        detect_family(sd)
    folder = _folder(tmp_path, _net().state_dict(), {**TINY, "use_rotary_positional_embeddings": True})
    with pytest.raises(CheckpointError, match="rotary position embeddings"):
        load_model(folder)


def test_a_config_json_that_contradicts_the_weights_is_refused(tmp_path):
    folder = _folder(tmp_path, _net().state_dict(), {**TINY, "num_layers": 30})
    with pytest.raises(CheckpointError, match="config.json says num_layers=30 but the weights have 2"):
        load_model(folder)


def test_frame_counts_and_sizes():
    assert [latent_frames(n) for n in (1, 5, 9, 17, 49)] == [1, 2, 3, 5, 13]
    with pytest.raises(ShapeError, match=r"length=16 .* 4k\+1 .* Use 13 or 17"):
        latent_frames(16)
    cfg = CogVideoXConfig()
    assert check_size(cfg, 256, 256) == []
    assert "trained at 256x256" in check_size(cfg, 480, 720)[0]
    with pytest.raises(ShapeError, match="multiples of 16 pixels"):
        check_size(cfg, 250, 256)


def test_vae_config_is_read_off_the_weights_and_other_vaes_are_refused():
    cfg = CogVideoXVAEConfig(block_out_channels=(8, 16, 16, 16), latent_channels=16, layers_per_block=1, norm_num_groups=4)
    sd = CogVideoXVAE(cfg, device="meta").state_dict()
    assert vae_config_from_weights(sd, {"framebridge.norm_num_groups": "4"}) == cfg
    full = CogVideoXVAE(CogVideoXVAEConfig(), device="meta").state_dict()
    assert vae_config_from_weights(full, {}) == CogVideoXVAEConfig()
    with pytest.raises(CheckpointError, match="SD/SDXL 2-D VAE"):
        vae_config_from_weights({"decoder.conv_in.weight": torch.zeros(1)}, {})
