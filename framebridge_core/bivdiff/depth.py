"""Depth maps for BIVDiff's depth-controlled frame-wise stage, checked and brought to the form a depth ControlNet
or T2I-Adapter was trained on.

BIVDiff makes its depth maps with ``controlnet_aux``'s MiDaS detector, frame by frame
(``MCG-NJU/BIVDiff models/ControlNet/infer.py``): inverse relative depth, near = bright, each frame stretched to
the full 0..255 range on its own. Depth maps from any ComfyUI preprocessor (MiDaS, Depth Anything, ZoeDepth, a
depth video made elsewhere) arrive as ``IMAGE`` batches; this module refuses the ones that would silently steer
the image model wrongly (a colour-mapped depth, a wrong frame count or size, NaNs, flat frames) and normalises
the rest the way BIVDiff's maps are normalised.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import ConfigError, ShapeError

#: ``per_frame``: each frame stretched to 0..1 (MiDaS in controlnet_aux, BIVDiff's maps); ``per_clip``: one
#: stretch for the whole clip (keeps the depth comparable across frames); ``none``: values used as they are
#: (they must already be in 0..1)
NORMALIZE_MODES = ("per_frame", "per_clip", "none")
#: how far the colour channels of a grey map may differ (8-bit video compression leaves small differences)
GREY_TOLERANCE = 24 / 255


def _stretch(d: torch.Tensor, dims: tuple[int, ...], what: str) -> torch.Tensor:
    lo = d.amin(dim=dims, keepdim=True)
    hi = d.amax(dim=dims, keepdim=True)
    span = hi - lo
    flat = (span <= 1e-6).reshape(-1)
    if bool(flat.any()):
        i = int(flat.nonzero()[0])
        raise ShapeError(f"depth {what} {i} is flat (every pixel {float(lo.reshape(-1)[i]):.4g}): it holds no depth, "
                         f"so it cannot be stretched to 0..1. Check the preprocessor's output for that frame, or use "
                         f"normalize 'none'.")
    return (d - lo) / span


def normalize_depth_frames(depth: torch.Tensor, normalize: str = "per_frame", invert: bool = False,
                           like: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Depth maps ``[F, H, W, C]`` (``C`` 1, 3 or 4; an ``IMAGE`` batch) -> grey ``[F, H, W, 3]`` in 0..1.

    ``normalize`` is one of :data:`NORMALIZE_MODES`; ``invert`` turns far = bright maps (metric depth, some
    preprocessors) into near = bright, which is what depth ControlNets and T2I-Adapters were trained on.
    ``like``: the frames the maps belong to; their count and size must match. Raises :class:`ShapeError` /
    :class:`ConfigError` naming the value and the fix.
    """
    if normalize not in NORMALIZE_MODES:
        raise ConfigError(f"normalize={normalize!r}; choose one of {', '.join(NORMALIZE_MODES)}.")
    if depth.ndim != 4 or depth.shape[-1] not in (1, 3, 4):
        raise ShapeError(f"depth maps must be an IMAGE batch [frames, height, width, 1|3|4 channels]; got shape "
                         f"{tuple(depth.shape)}.")
    if like is not None:
        if like.ndim != 4:
            raise ShapeError(f"the reference frames must be an IMAGE batch; got shape {tuple(like.shape)}.")
        if depth.shape[0] != like.shape[0]:
            raise ShapeError(f"{depth.shape[0]} depth maps for {like.shape[0]} frames: there must be one per frame. "
                             f"Sub-sample the depth video exactly as the source (same BIVDiff Select Frames "
                             f"stride and frames).")
        if tuple(depth.shape[1:3]) != tuple(like.shape[1:3]):
            raise ShapeError(f"depth maps of {depth.shape[2]}x{depth.shape[1]} for frames of {like.shape[2]}x"
                             f"{like.shape[1]}: scale them to the frames' size (Image Scale), with the same crop.")
    d = depth[..., :3].float()
    if not bool(torch.isfinite(d).all()):
        raise ShapeError("the depth maps hold NaN or infinite values: the preprocessor failed on some frame.")
    if d.shape[-1] == 3:
        spread = float((d.amax(dim=-1) - d.amin(dim=-1)).max())
        if spread > GREY_TOLERANCE:
            raise ShapeError(f"the depth maps are coloured (the R, G, B channels differ by up to {spread:.2f}): a "
                             f"colour-mapped depth (e.g. a preprocessor's 'inferno' view) would steer the image "
                             f"model wrongly. Use the preprocessor's grey output.")
        d = d.mean(dim=-1, keepdim=True)
    if normalize == "per_frame":
        d = _stretch(d, (1, 2, 3), "frame")
    elif normalize == "per_clip":
        d = _stretch(d, (0, 1, 2, 3), "clip").clamp(0, 1)
    else:
        lo, hi = float(d.min()), float(d.max())
        if lo < 0 or hi > 1:
            raise ShapeError(f"depth values span {lo:.4g}..{hi:.4g}, outside 0..1, with normalize 'none': use "
                             f"'per_frame' (as BIVDiff's MiDaS maps) or 'per_clip'.")
    if invert:
        d = 1 - d
    return d.expand(*d.shape[:3], 3).contiguous()


__all__ = ["GREY_TOLERANCE", "NORMALIZE_MODES", "normalize_depth_frames"]
