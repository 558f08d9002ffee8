"""BIVDiff task presets: mixing ratios per image model, defaults, frame sub-sampling, and the
outpainting / inpainting masks of the official tasks."""

from __future__ import annotations

import torch

from ..errors import ConfigError, ShapeError
from ..vp import DEFAULT_CFG, DEFAULT_STEPS

#: Official mixing ratios α per image model (``configs/*.yaml`` ``IDM.<name>.mixing_ratio``, docs/bivdiff-math.md §2.4).
MIXING_RATIO_PRESETS: dict[str, float] = {
    "ControlNet": 1.0,
    "T2I-Adapter": 1.0,
    "InstructPix2Pix": 1.0,
    "Prompt2Prompt": 0.25,
    "SD Inpainting": 0.1,
    "SD Outpainting": 0.1,
}

#: BIVDiff defaults (docs/bivdiff-math.md §0.5): 8 frames, every 4th source frame, 50 steps, CFG 7.5.
DEFAULT_FRAMES, DEFAULT_STRIDE = 8, 4
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


__all__ = ["DEFAULT_CFG", "DEFAULT_FRAMES", "DEFAULT_STEPS", "DEFAULT_STRIDE", "FRAME_POLICIES", "MIXING_RATIO_PRESETS",
           "OUTPAINT_DIRECTIONS", "binarize_mask", "outpainting_mask", "stride_indices"]
