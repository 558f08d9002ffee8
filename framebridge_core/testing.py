"""Helpers for tests, stand-in weights and benchmarks; runtime code never imports this module."""

from __future__ import annotations

import math
import zlib
from typing import Callable, Optional

import torch
import torch.nn as nn

from .bivdiff.inversion import EpsFn, Ladder, ddim_invert, ddim_timesteps
from .families.frames import fold_frames, unfold_frames
from .vp import scaled_linear_alphas_cumprod


def seeded_random_weights(module: nn.Module, seed: int = 0, prefix: str = "") -> nn.Module:
    """Fill every parameter with values drawn from a generator seeded by ``seed`` and the
    parameter's *name* (so two implementations with the same key layout get identical weights,
    in any construction order). Norm weights ~ 1 + 0.1·N, biases 0.1·N, the image gate ``alpha``
    0.5·N, Resampler queries N, other weights N·0.9/√fan_in."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            full = prefix + name
            g = torch.Generator().manual_seed((zlib.crc32(full.encode()) + 7919 * seed) % (2 ** 63))
            v = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if full.endswith("alpha"):
                v = v * 0.5
            elif p.ndim == 1 and full.endswith("weight"):
                v = 1.0 + 0.1 * v
            elif full.endswith("bias"):
                v = 0.1 * v
            elif full.endswith("latents"):
                pass
            else:
                v = v * (0.9 / math.sqrt(p[0].numel()))
            p.copy_(v.to(p.dtype))
    return module


def frames_to_video(x: torch.Tensor, num_frames: Optional[int] = None) -> torch.Tensor:
    """``[B*F, C, h, w]`` (frames as batch) -> ``[B, C, F, h, w]`` (diffusers' video layout)."""
    return fold_frames(x, int(num_frames or x.shape[0])).transpose(1, 2)


def video_to_frames(v: torch.Tensor) -> torch.Tensor:
    """``[B, C, F, h, w]`` -> ``[B*F, C, h, w]``."""
    return unfold_frames(v.transpose(1, 2))


def ddim_sample(eps_fn: EpsFn, z_T: torch.Tensor, steps: int = 50, alphas_cumprod: Optional[torch.Tensor] = None,
                callback: Optional[Callable[[int, torch.Tensor], None]] = None,
                set_alpha_to_one: bool = False) -> torch.Tensor:
    """BIVDiff's smoothing loop, DDIM η=0 from ``z_T`` at t = ``ddim_timesteps(steps)[0]`` down to ᾱ_0: the
    inversion loop run down a descending ladder (the reference the host sampler is checked against).

    ``set_alpha_to_one=True`` ends the last step at ᾱ=1 (the clean x̂0) instead of ᾱ_0, which is
    what ComfyUI's samplers do (their last σ is 0); BIVDiff's SD-1.5 scheduler config has it False.
    """
    ac = scaled_linear_alphas_cumprod() if alphas_cumprod is None else torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    ts = ddim_timesteps(steps, ac.shape[0])
    ratio = ac.shape[0] // steps
    final = torch.tensor(1.0, dtype=torch.float64) if set_alpha_to_one else ac[0]
    alpha_to = torch.stack([ac[t - ratio] if t - ratio >= 0 else final for t in ts])
    down = Ladder("sampling", tuple(ts), ac[ts], alpha_to, sampler_start=ts[0])
    return ddim_invert(eps_fn, z_T, down, callback)


__all__ = ["ddim_sample", "frames_to_video", "seeded_random_weights", "video_to_frames"]
