"""Recognise a ModelScope T2V / ZeroScope v2 video UNet and infer its config from keys and shapes, never from
the file name. Two layouts load to the same network: diffusers ``UNet3DConditionModel`` keys (ZeroScope's
``unet/diffusion_pytorch_model.safetensors``) and the original ModelScope ``UNetSD`` keys
(``text_to_video_ms_1.7b``'s ``text2video_pytorch_model.pth``), renamed by :mod:`.original_layout`.

GroupNorm group counts are not visible in the weights: they come from the safetensors metadata
(``framebridge.norm_num_groups``, ``framebridge.fixed_norm_groups``) or default to diffusers' 32.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional

import torch

from ...checkpoints import FamilyDetector, FamilyInfo, check_state_dict, load_weights_strict
from ...errors import CheckpointError, ConfigError
from .frames import ModelScopeFrames
from .original_layout import (as_diffusers_layout, diffusers_key_to_original, diffusers_to_original,
                              original_layers_per_block, strip_wrapper)
from .unet3d import TRANSFORMER_IN_HEADS, ModelScopeUNet3D, ModelScopeUNet3DConfig, expected_state_dict_shapes

MODELSCOPE_UNET3D = "modelscope_unet3d"
META_NORM_GROUPS = "framebridge.norm_num_groups"
META_FIXED_GROUPS = "framebridge.fixed_norm_groups"
_MS_KEYS = ("conv_in.weight", "transformer_in.proj_in.weight", "down_blocks.0.temp_convs.0.conv1.2.weight",
            "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight", "conv_out.weight")


def _groups_from_metadata(metadata: Mapping[str, str], key: str, default: Optional[int]) -> Optional[int]:
    if key not in metadata:
        return default
    value = str(metadata[key]).strip().lower()
    if value == "none" and key == META_FIXED_GROUPS:
        return None
    try:
        return int(value)
    except ValueError:
        raise CheckpointError(f"metadata {key}={metadata[key]!r} is not an integer") from None


def detect_modelscope(sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Optional[FamilyInfo]:
    renamed, layout = as_diffusers_layout(sd)
    if layout != "original":
        return _detect(renamed, metadata)
    # an original file: every key it should have, in its own names, before anything is inferred
    absent = [k for k in _MS_KEYS if k not in renamed]
    if absent:
        lpb = original_layers_per_block(strip_wrapper(sd))
        names = sorted(diffusers_key_to_original(k, lpb) for k in absent)
        raise CheckpointError(f"an original-layout ModelScope UNet without {', '.join(names)}: the file is "
                              f"incomplete. Copy text2video_pytorch_model.pth again.")
    info = _detect(renamed, metadata, check=False)
    expected = diffusers_to_original({k: torch.empty(v, device="meta") for k, v in
                                      expected_state_dict_shapes(info.config).items()}, info.config.layers_per_block)
    check_state_dict({k: list(v.shape) for k, v in expected.items()}, strip_wrapper(sd),
                     f"inferred ModelScope UNet3D in the original layout (channels {list(info.config.block_out_channels)}, "
                     f"{info.config.layers_per_block} layers per block)")
    return FamilyInfo(name=info.name, config=info.config, detector=info.detector,
                      notes=info.notes + ("original ModelScope layout (UNetSD keys), renamed to diffusers names",))


def _detect(sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str], check: bool = True) -> Optional[FamilyInfo]:
    if not all(k in sd for k in _MS_KEYS):
        return None
    levels = sorted({int(m.group(1)) for k in sd for m in [re.match(r"down_blocks\.(\d+)\.resnets\.0\.conv1\.weight$", k)] if m})
    if levels != list(range(len(levels))) or len(levels) < 2:
        raise CheckpointError(f"ModelScope UNet3D keys with down_blocks {levels}: the file is incomplete.")
    boc = tuple(int(sd[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) for i in levels)
    layers = len({k.split(".")[3] for k in sd if k.startswith("down_blocks.0.resnets.") and k.endswith("conv1.weight")})
    inner = int(sd["transformer_in.proj_in.weight"].shape[0])
    if inner % TRANSFORMER_IN_HEADS:
        raise CheckpointError(f"transformer_in.proj_in.weight has {inner} outputs, not a multiple of "
                              f"{TRANSFORMER_IN_HEADS} heads: not a ModelScope UNet3D.")
    try:
        cfg = ModelScopeUNet3DConfig(
            in_channels=int(sd["conv_in.weight"].shape[1]), out_channels=int(sd["conv_out.weight"].shape[0]),
            block_out_channels=boc, layers_per_block=layers,
            cross_attention_dim=int(sd["down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape[1]),
            attention_head_dim=inner // TRANSFORMER_IN_HEADS,
            norm_num_groups=_groups_from_metadata(metadata, META_NORM_GROUPS, 32),
            fixed_norm_groups=_groups_from_metadata(metadata, META_FIXED_GROUPS, 32))
    except ConfigError as e:
        raise CheckpointError(f"ModelScope UNet3D checkpoint with an impossible configuration: {e}") from e
    if check:
        check_state_dict(expected_state_dict_shapes(cfg), sd,
                         f"inferred ModelScope UNet3D (channels {list(boc)}, {layers} layers per block)")
    notes = (f"{sum(v.numel() for v in sd.values()) / 1e9:.2f}B parameters; norm groups {cfg.norm_num_groups}"
             + ("" if META_NORM_GROUPS in metadata else " (default, not visible in the weights)"),)
    return FamilyInfo(name=MODELSCOPE_UNET3D, config=cfg, detector=MODELSCOPE_UNET3D, notes=notes)


def _build(info: FamilyInfo, *, operations=None, device=None, dtype=None, attention=None):
    return ModelScopeUNet3D(info.config, operations=operations, device=device, dtype=dtype, attention=attention)


def modelscope_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights in the network's (diffusers) names, whichever of the two layouts the file has."""
    return as_diffusers_layout(sd)[0]


def _load(module, sd):
    target = module.net if isinstance(module, ModelScopeFrames) else module
    load_weights_strict(target, modelscope_state_dict(sd), "ModelScope UNet3D")


DETECTOR = FamilyDetector(name=MODELSCOPE_UNET3D, looks_for=_MS_KEYS, detect=detect_modelscope, build=_build,
                          load_weights=_load)

__all__ = ["DETECTOR", "META_FIXED_GROUPS", "META_NORM_GROUPS", "MODELSCOPE_UNET3D", "detect_modelscope",
           "modelscope_state_dict"]
