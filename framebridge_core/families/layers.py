"""Layers every family network shares: the default attention and the sinusoidal timestep features.

One copy each, so a host that swaps in its own attention (``attention=``) changes every family alike.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def default_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention with scale ``head_dim**-0.5`` on ``[B, heads, N, d]`` tensors."""
    return F.scaled_dot_product_attention(q, k, v)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features ``cat([cos, sin])`` of ``t`` (``[N] -> [N, dim]``, float32).

    The GLIDE/DiT form, which is also diffusers' ``Timesteps(dim, flip_sin_to_cos=True, 0)``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


__all__ = ["AttentionFn", "default_attention", "timestep_embedding"]
