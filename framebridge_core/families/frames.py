"""The frames-as-batch layout hosts use for video: ``[B·T, C, H, W]``, row ``b·T + f`` is frame
``f`` of video ``b``.

ComfyUI's SD-VAE video families (SVD) keep a video as a batch of frames so VAE Decode, ControlNet
and upscalers work on it unchanged; each family's ``frames.py`` adapter folds it back into videos
for its network. When a host concatenates conditional and unconditional copies along the batch,
each copy is a whole number of videos, so folding by ``T`` stays correct.
"""

from __future__ import annotations

import torch

from ..bridge.schedule import BridgeSchedule
from ..errors import ShapeError
from ..vp import gather

#: transformer_options key carrying the bridge prior y from the sampler to the network
PRIOR_KEY = "framebridge_prior"


def fold_frames(x: torch.Tensor, num_frames: int, what: str = "latent") -> torch.Tensor:
    """``[B·T, C, H, W] -> [B, T, C, H, W]`` with a clear error when the batch is not whole videos."""
    if x.ndim != 4:
        raise ShapeError(f"{what} must be frames-as-batch [B·T, C, H, W], got shape {tuple(x.shape)}.")
    if x.shape[0] % num_frames != 0:
        raise ShapeError(
            f"{what} has {x.shape[0]} frames, which is not a whole number of {num_frames}-frame videos; "
            f"this model makes {num_frames}-frame videos, so build the prior with length={num_frames}."
        )
    return x.reshape(x.shape[0] // num_frames, num_frames, *x.shape[1:])


def unfold_frames(x: torch.Tensor) -> torch.Tensor:
    """``[B, T, C, H, W] -> [B·T, C, H, W]``."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def repeat_rows(v: torch.Tensor, rows: int, what: str) -> torch.Tensor:
    """``v`` tiled along dim 0 to ``rows`` rows (hosts may pass one row per video or per batch copy)."""
    if v.shape[0] == rows:
        return v
    if rows % v.shape[0] != 0:
        raise ShapeError(f"{what} has {v.shape[0]} rows; cannot broadcast to a batch of {rows}.")
    return v.repeat(rows // v.shape[0], *([1] * (v.ndim - 1)))


def first_of_each_video(v: torch.Tensor, num_frames: int) -> torch.Tensor:
    """One row per video from a per-frame-row tensor: ``[B·T, ...] -> [B, ...]``."""
    return v.reshape(v.shape[0] // num_frames, num_frames, *v.shape[1:])[:, 0]


def video_rows(v: torch.Tensor, rows: int, num_frames: int, what: str) -> torch.Tensor:
    """Per-video values from a conditioning tensor a host repeated to some number of rows."""
    return first_of_each_video(repeat_rows(v, rows, what), num_frames)


def aligned_state(x: torch.Tensor, i: torch.Tensor, prior: torch.Tensor, schedule: BridgeSchedule) -> torch.Tensor:
    """The SAF input ``(x_t − b_i·y)/n_i`` per batch row (docs/math.md §2.1), in float32 or wider: near the
    prior ``x_t − b·y`` cancels most of ``x_t``, so the state is never aligned in half precision."""
    dt = torch.promote_types(x.dtype, torch.float32)
    x, y = x.to(dt), repeat_rows(prior, x.shape[0], "the prior").to(device=x.device, dtype=dt)
    idx = i.reshape(-1).long().cpu()
    return (x - gather(schedule.b, idx, x) * y) / gather(schedule.norm, idx, x)


__all__ = ["PRIOR_KEY", "aligned_state", "first_of_each_video", "fold_frames", "repeat_rows", "unfold_frames",
           "video_rows"]
