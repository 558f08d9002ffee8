"""The VidRD UNet on the frames-as-batch layout hosts use (:mod:`..frames`)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ...errors import ShapeError
from .unet3d import VidRDUNet3D


class VidRDFrames(nn.Module):
    """The UNet on frames-as-batch tensors, for hosts that keep SD-VAE videos as ``[B*F, C, H, W]``.

    ``forward(x[B*F,C,H,W], timesteps[B*F], context[B*F,L,D], num_video_frames=F)``: rows
    ``b*F .. b*F+F-1`` are the frames of video ``b``; each video takes the timestep and context of
    its first row. When a host concatenates conditional and unconditional copies along the batch,
    every copy is a whole video, so the copies are denoised independently (no mixing across them).
    """

    def __init__(self, config=None, *, operations=None, device=None, dtype=None, attention=None, **fields):
        super().__init__()
        self.net = VidRDUNet3D(config, operations=operations, device=device, dtype=dtype, attention=attention,
                               **fields)

    @property
    def dtype(self) -> torch.dtype:
        return self.net.dtype

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: Optional[torch.Tensor] = None,
                num_video_frames: Optional[int] = None, **kwargs) -> torch.Tensor:
        if x.ndim != 4:
            raise ShapeError(f"frames-as-batch input must be [frames, C, h, w]; got shape {tuple(x.shape)}.")
        f = int(num_video_frames or x.shape[0])
        if f < 1 or x.shape[0] % f:
            raise ShapeError(f"a batch of {x.shape[0]} frames is not a whole number of {f}-frame videos.")
        if context is None:
            raise ShapeError("the video model needs text conditioning (positive/negative from its own text encoder).")
        b = x.shape[0] // f
        video = x.reshape(b, f, *x.shape[1:]).permute(0, 2, 1, 3, 4)
        t = torch.as_tensor(timesteps, device=x.device).reshape(-1)
        t = t.expand(x.shape[0]) if t.numel() == 1 else t
        ctx = context if context.shape[0] == b else context[::f] if context.shape[0] == x.shape[0] else None
        if ctx is None:
            raise ShapeError(f"text context batch {context.shape[0]} fits neither {b} videos nor {x.shape[0]} frames.")
        out = self.net(video, t[::f], ctx)
        return out.permute(0, 2, 1, 3, 4).reshape(x.shape[0], *out.shape[1:2], *x.shape[2:])


__all__ = ["VidRDFrames"]
