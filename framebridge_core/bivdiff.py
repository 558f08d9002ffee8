"""BIVDiff helpers: task presets, frame sub-sampling, outpainting / inpainting masks, and the
ModelScope / ZeroScope video-model family for :mod:`framebridge_core.checkpoints`.

Importing this module registers the ``modelscope_unet3d`` family detector, so
``checkpoints.load_model(path)`` recognises a diffusers ``unet/diffusion_pytorch_model.safetensors``
of ModelScope T2V or ZeroScope v2 from its keys (never from its name).
"""

from __future__ import annotations

import re
from typing import Mapping, Optional

import torch

from .checkpoints import FamilyDetector, FamilyInfo, check_state_dict, load_weights_strict, register_family
from .errors import CheckpointError, ConfigError, ShapeError
from .models.modelscope_unet3d import (
    TRANSFORMER_IN_HEADS,
    ModelScopeFrames,
    ModelScopeUNet3D,
    ModelScopeUNet3DConfig,
    expected_state_dict_shapes,
)

#: Official mixing ratios α per image model (``configs/*.yaml`` ``IDM.<name>.mixing_ratio``, spec §2.4).
MIXING_RATIO_PRESETS: dict[str, float] = {
    "ControlNet": 1.0,
    "T2I-Adapter": 1.0,
    "InstructPix2Pix": 1.0,
    "Prompt2Prompt": 0.25,
    "SD Inpainting": 0.1,
    "SD Outpainting": 0.1,
}

#: BIVDiff defaults (spec §0.5): 8 frames, every 4th source frame, 50 steps, CFG 7.5.
DEFAULT_FRAMES, DEFAULT_STRIDE, DEFAULT_STEPS, DEFAULT_CFG = 8, 4, 50, 7.5
FRAME_POLICIES = ("error", "fewer frames")
OUTPAINT_DIRECTIONS = ("horizontal", "vertical")


def stride_indices(num_available: int, stride: int, frames: int, policy: str = "error") -> list[int]:
    """Source frame indices ``range(0, N, stride)[:frames]`` (``models/util.py`` ``read_video``).

    The official code silently returns a shorter clip when ``N < stride*(frames-1)+1`` and then
    fails later on a latent shape check; here ``policy="error"`` stops early with the fix, and
    ``"fewer frames"`` returns the shorter list on purpose.
    """
    if stride < 1 or frames < 1:
        raise ConfigError(f"stride={stride} and frames={frames} must both be >= 1 (BIVDiff: stride 4, 8 frames).")
    if policy not in FRAME_POLICIES:
        raise ConfigError(f"unknown policy {policy!r}; choose one of {', '.join(FRAME_POLICIES)}.")
    idx = list(range(0, int(num_available), int(stride)))[: int(frames)]
    if len(idx) < frames and policy == "error":
        need = stride * (frames - 1) + 1
        raise ShapeError(
            f"the video has {num_available} frames, but {frames} frames at stride {stride} need at least {need}; "
            f"lower frames to {max(len(idx), 1)} or stride to {max((num_available - 1) // max(frames - 1, 1), 1)}, "
            f"or set if_too_short to 'fewer frames'.")
    return idx


def outpainting_mask(height: int, width: int, direction: str = "horizontal") -> torch.Tensor:
    """BIVDiff's synthetic outpainting mask ``[H, W]`` (1 = repaint), ``prepare_outpainting_mask``.

    ``"horizontal"``: rows ``[0, H//4)`` and ``[H//4*3, H)`` (top and bottom bands); ``"vertical"``: the
    same for columns (left and right bands). Half of the pixels when H (W) is a multiple of 4; the
    canvas is not enlarged.
    """
    if direction not in OUTPAINT_DIRECTIONS:
        raise ConfigError(f"unknown outpainting direction {direction!r}; choose 'horizontal' (top and bottom "
                          f"bands) or 'vertical' (left and right bands).")
    if height < 4 or width < 4:
        raise ShapeError(f"an outpainting mask needs at least 4x4 pixels; got {height}x{width}.")
    m = torch.zeros(height, width)
    if direction == "horizontal":  # the official bounds: [0, H//4) and [H//4*3, H)
        m[: height // 4] = 1
        m[height // 4 * 3:] = 1
    else:
        m[:, : width // 4] = 1
        m[:, width // 4 * 3:] = 1
    return m


def binarize_mask(mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Inpainting masks as diffusers uses them: ``mask >= 0.5`` becomes 1 (repaint), else 0."""
    return (mask >= threshold).to(mask.dtype if mask.is_floating_point() else torch.float32)


# ---- the ModelScope / ZeroScope family --------------------------------------------------------------

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
    check_state_dict(expected_state_dict_shapes(cfg), sd,
                     f"inferred ModelScope UNet3D (channels {list(boc)}, {layers} layers per block)")
    notes = (f"{sum(v.numel() for v in sd.values()) / 1e9:.2f}B parameters; norm groups {cfg.norm_num_groups}"
             + ("" if META_NORM_GROUPS in metadata else " (default, not visible in the weights)"),)
    return FamilyInfo(name=MODELSCOPE_UNET3D, config=cfg, detector=MODELSCOPE_UNET3D, notes=notes)


def _build(info: FamilyInfo, *, operations=None, device=None, dtype=None, attention=None):
    return ModelScopeUNet3D(info.config, operations=operations, device=device, dtype=dtype, attention=attention)


def _load(module, sd):
    target = module.net if isinstance(module, ModelScopeFrames) else module
    load_weights_strict(target, sd, "ModelScope UNet3D")


register_family(FamilyDetector(name=MODELSCOPE_UNET3D, looks_for=_MS_KEYS, detect=detect_modelscope, build=_build,
                               load_weights=_load))

__all__ = ["DEFAULT_CFG", "DEFAULT_FRAMES", "DEFAULT_STEPS", "DEFAULT_STRIDE", "FRAME_POLICIES", "MIXING_RATIO_PRESETS",
           "MODELSCOPE_UNET3D", "OUTPAINT_DIRECTIONS", "binarize_mask", "detect_modelscope", "outpainting_mask",
           "stride_indices"]
