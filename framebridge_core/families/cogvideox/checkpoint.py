"""Recognise a FrameBridge-CogVideoX transformer (diffusers ``transformer/`` keys, or ComfyUI-native key
names) and read its config from ``config.json`` where the folder has one, else from the weights.

The weights show the widths, the patch size and the channel counts; the positional-embedding base size,
text length and interpolation scales are not visible in them and default to CogVideoX-2B's. Other
CogVideoX variants (plain 2B text-to-video, 5B, 5B-I2V, 1.5) are refused with what was found.
"""

from __future__ import annotations

import json
import re
from typing import Mapping, Optional

import torch
import torch.nn as nn

from ...checkpoints import FamilyDetector, FamilyInfo, check_state_dict, load_weights_strict
from ...errors import CheckpointError, ConfigError
from .bridge import CogVideoXBridge
from .network import CogVideoXConfig, CogVideoXTransformer
from .vae import CogVideoXVAE, CogVideoXVAEConfig

COGVIDEOX = "cogvideox_bridge"
_KEYS = ("patch_embed.proj.weight", "patch_embed.text_proj.weight", "time_embedding.linear_1.weight", "proj_out.weight")
#: ComfyUI-native CogVideoX names -> diffusers names (the layout this family keeps)
NATIVE_TO_DIFFUSERS = (
    (r"^blocks\.(\d+)\.", r"transformer_blocks.\1."), (r"\.q\.", ".attn1.to_q."), (r"\.k\.", ".attn1.to_k."),
    (r"\.v\.", ".attn1.to_v."), (r"\.norm_q\.", ".attn1.norm_q."), (r"\.norm_k\.", ".attn1.norm_k."),
    (r"\.attn_out\.", ".attn1.to_out.0."), (r"\.ff_proj\.", ".ff.net.0.proj."), (r"\.ff_out\.", ".ff.net.2."),
    (r"^time_embedding_linear_(\d)\.", r"time_embedding.linear_\1."),
)


def from_native_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict in ComfyUI-native CogVideoX key names, renamed to diffusers' (others pass through)."""
    if "blocks.0.norm1.linear.weight" not in sd:
        return dict(sd)
    out = {}
    for k, v in sd.items():
        for pat, rep in NATIVE_TO_DIFFUSERS:
            k = re.sub(pat, rep, k)
        out[k] = v
    return out


def _refuse_other_variants(sd: Mapping[str, torch.Tensor], cfg: dict) -> None:
    proj = sd["patch_embed.proj.weight"]
    found = f"{proj.shape[0]}-wide, {proj.shape[1] if proj.ndim > 1 else '?'} input channels"
    if proj.ndim != 4 or cfg.get("patch_size_t"):
        raise CheckpointError(f"this is a CogVideoX 1.5 transformer (patches over time, {found}); FrameBridge-CogVideoX "
                              f"is CogVideoX-2B with 32 input channels. Load the released FrameBridge transformer folder.")
    if "patch_embed.pos_embedding" in sd or cfg.get("use_learned_positional_embeddings"):
        raise CheckpointError(f"this is CogVideoX-5B-I2V (learned positional embeddings, {found}); FrameBridge-CogVideoX "
                              f"is built on CogVideoX-2B (sincos positions, 1920 wide, 32 input channels).")
    if any(k.startswith("ofs_embedding") for k in sd) or cfg.get("use_rotary_positional_embeddings"):
        raise CheckpointError(f"this CogVideoX transformer uses rotary position embeddings (CogVideoX-5B / 1.5, {found}); "
                              f"FrameBridge-CogVideoX is built on CogVideoX-2B (sincos positions, 1920 wide).")
    if proj.shape[1] == _out_channels(sd, int(proj.shape[2])):
        raise CheckpointError(f"this is a plain CogVideoX text-to-video transformer ({found}); FrameBridge-CogVideoX "
                              f"takes 32 input channels (the noisy latent and the image-clip latent). Load the released "
                              f"FrameBridge-CogVideoX transformer folder.")


def _out_channels(sd: Mapping[str, torch.Tensor], patch: int) -> int:
    return int(sd["proj_out.weight"].shape[0]) // (patch * patch)


def infer_config(sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[CogVideoXConfig, str]:
    """The config from ``config.json`` (metadata ``config``) checked against the weights, or from the weights."""
    stored = json.loads(metadata["config"]) if "config" in metadata else {}
    _refuse_other_variants(sd, stored)
    proj = sd["patch_embed.proj.weight"]
    inner, patch = int(proj.shape[0]), int(proj.shape[2])
    head_dim = int(sd["transformer_blocks.0.attn1.norm_q.weight"].shape[0])
    layers = 1 + max(int(m.group(1)) for k in sd for m in [re.match(r"transformer_blocks\.(\d+)\.", k)] if m)
    seen = dict(num_attention_heads=inner // head_dim, attention_head_dim=head_dim, in_channels=int(proj.shape[1]),
                out_channels=_out_channels(sd, patch), patch_size=patch, num_layers=layers,
                text_embed_dim=int(sd["patch_embed.text_proj.weight"].shape[1]),
                time_embed_dim=int(sd["time_embedding.linear_1.weight"].shape[0]))
    for k, v in seen.items():
        if k in stored and stored[k] != v:
            raise CheckpointError(f"config.json says {k}={stored[k]} but the weights have {v}: the folder mixes files "
                                  f"of different models.")
    try:
        cfg = CogVideoXConfig.from_dict({**stored, **seen})
    except ConfigError as e:
        raise CheckpointError(f"CogVideoX transformer with a configuration this pack does not run: {e}") from e
    where = "config.json" if stored else "the weights (CogVideoX-2B defaults for what they do not show)"
    return cfg, f"config from {where}"


def detect_cogvideox(sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Optional[FamilyInfo]:
    sd = from_native_keys(sd)
    if not all(k in sd for k in _KEYS):
        return None
    cfg, note = infer_config(sd, metadata)
    if cfg.in_channels != 2 * cfg.out_channels:
        raise CheckpointError(f"a FrameBridge-CogVideoX transformer takes 2 x {cfg.out_channels} input channels (noisy "
                              f"latent + image latent); this one takes {cfg.in_channels}.")
    expected = {k: list(v.shape) for k, v in CogVideoXTransformer(cfg, device="meta").state_dict().items()}
    check_state_dict(expected, sd, f"inferred CogVideoX transformer ({cfg.num_layers} layers, "
                                   f"{cfg.num_attention_heads}x{cfg.attention_head_dim})")
    return FamilyInfo(name=COGVIDEOX, config=cfg, detector="cogvideox", notes=(note,))


def build_cogvideox(info: FamilyInfo, *, operations=None, device=None, dtype=None, attention=None) -> nn.Module:
    return CogVideoXBridge(info.config, operations=operations, device=device, dtype=dtype, attention=attention)


def load_cogvideox_weights(module: CogVideoXBridge, sd: Mapping[str, torch.Tensor]) -> None:
    load_weights_strict(module.transformer, from_native_keys(sd), "FrameBridge-CogVideoX transformer")


#: Safetensors metadata key for the VAE's GroupNorm groups (not visible in the weights; diffusers' 32 by default)
META_VAE_GROUPS = "framebridge.norm_num_groups"
_VAE_KEYS = ("encoder.conv_in.conv.weight", "decoder.conv_in.conv.weight", "decoder.mid_block.resnets.0.norm1.norm_layer.weight")


def vae_config_from_weights(sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> CogVideoXVAEConfig:
    """The CogVideoX VAE config from its ``config.json`` (a folder) or its weights; refuses other VAEs."""
    missing = [k for k in _VAE_KEYS if k not in sd]
    if missing:
        kind = "an SD/SDXL 2-D VAE" if "decoder.conv_in.weight" in sd else "not a CogVideoX VAE"
        raise CheckpointError(f"this VAE is {kind} (no {missing[0]}); FrameBridge-CogVideoX needs the 3-D causal "
                              f"VAE of CogVideoX-2b (its vae/diffusion_pytorch_model.safetensors).")
    stored = json.loads(metadata["config"]) if "config" in metadata else {}
    levels = 1 + max(int(m.group(1)) for k in sd for m in [re.match(r"encoder\.down_blocks\.(\d+)\.", k)] if m)
    layers = 1 + max(int(m.group(1)) for k in sd for m in [re.match(r"encoder\.down_blocks\.0\.resnets\.(\d+)\.", k)] if m)
    seen = dict(
        in_channels=int(sd["encoder.conv_in.conv.weight"].shape[1]),
        out_channels=int(sd["decoder.conv_out.conv.weight"].shape[0]),
        block_out_channels=tuple(int(sd[f"encoder.down_blocks.{i}.resnets.0.conv1.conv.weight"].shape[0])
                                 for i in range(levels)),
        latent_channels=int(sd["decoder.conv_in.conv.weight"].shape[1]), layers_per_block=layers)
    groups = metadata.get(META_VAE_GROUPS)
    extra = {"norm_num_groups": int(groups)} if groups is not None else {}
    try:
        cfg = CogVideoXVAEConfig.from_dict({**stored, **seen, **extra})
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"CogVideoX VAE with a configuration this pack does not run: {e}") from e
    expected = {k: list(v.shape) for k, v in CogVideoXVAE(cfg, device="meta").state_dict().items()}
    check_state_dict(expected, sd, f"inferred CogVideoX VAE (channels {list(cfg.block_out_channels)})")
    return cfg


DETECTOR = FamilyDetector(name="cogvideox", looks_for=_KEYS, detect=detect_cogvideox, build=build_cogvideox,
                          load_weights=load_cogvideox_weights)

__all__ = ["COGVIDEOX", "DETECTOR", "META_VAE_GROUPS", "NATIVE_TO_DIFFUSERS", "detect_cogvideox", "from_native_keys",
           "infer_config", "vae_config_from_weights"]
