"""The frame-wise Perceiver Resampler that turns CLIP image tokens into cross-attention tokens.

A clean re-implementation of the image projector of DynamiCrafter / FrameBridge-VideoCrafter
(docs/math.md §5.2, official ``lvdm/modules/encoders/resampler.py``). The 257 OpenCLIP ViT-H tokens
(1280-d, last block, before ``ln_post``) are read by ``num_queries × video_length`` learned
queries (16 × 16 = 256), giving 16 tokens per frame in the UNet's context width (1024).
State-dict names match the official ``image_proj_model.*`` keys (:class:`Resampler` lists them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
import torch.nn as nn

from ...errors import ConfigError
from ..layers import AttentionFn, default_attention


@dataclass(frozen=True)
class ResamplerConfig:
    """Official FrameBridge-VideoCrafter values (``configs/inference_256_bridge.yaml``) by default."""

    dim: int = 1024
    depth: int = 4
    dim_head: int = 64
    heads: int = 12
    num_queries: int = 16
    embedding_dim: int = 1280
    output_dim: int = 1024
    ff_mult: int = 4
    video_length: Optional[int] = 16

    def __post_init__(self) -> None:
        for name in ("dim", "depth", "dim_head", "heads", "num_queries", "embedding_dim", "output_dim", "ff_mult"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v > 0):
                raise ConfigError(f"ResamplerConfig: {name}={v!r} must be a positive integer")
        if self.video_length is not None and not (isinstance(self.video_length, int) and self.video_length > 0):
            raise ConfigError(f"ResamplerConfig: video_length={self.video_length!r} must be a positive integer or None")

    @property
    def total_queries(self) -> int:
        return self.num_queries * (self.video_length or 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PerceiverAttention(nn.Module):
    """The queries attend to ``cat([image tokens, queries])``; the official scales q and k by
    ``d^-1/4`` each before the product, which is plain ``d^-1/2`` attention."""

    def __init__(self, dim: int, dim_head: int, heads: int, *, operations, attention: AttentionFn,
                 device=None, dtype=None):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.attention = attention
        self.norm1 = operations.LayerNorm(dim, device=device, dtype=dtype)
        self.norm2 = operations.LayerNorm(dim, device=device, dtype=dtype)
        self.to_q = operations.Linear(dim, inner, bias=False, device=device, dtype=dtype)
        self.to_kv = operations.Linear(dim, inner * 2, bias=False, device=device, dtype=dtype)
        self.to_out = operations.Linear(inner, dim, bias=False, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        latents = self.norm2(latents)
        b, n, _ = latents.shape
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = self.attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class Resampler(nn.Module):
    """``forward(image_tokens [B, N, embedding_dim]) -> [B, num_queries·video_length, output_dim]``.

    State-dict names match the official ``image_proj_model.*`` keys (prefix stripped):
    ``latents [1, Q, D]``, ``proj_in``, ``proj_out``, ``norm_out``,
    ``layers.{i}.0.{norm1, norm2, to_q, to_kv, to_out}`` (attention, :class:`PerceiverAttention`),
    ``layers.{i}.1.{0, 1, 3}`` (LayerNorm, Linear, Linear of the feed-forward; index 2 is the GELU).
    """

    def __init__(self, config: ResamplerConfig = ResamplerConfig(), *, operations=None, device=None, dtype=None,
                 attention: Optional[AttentionFn] = None):
        super().__init__()
        ops = operations if operations is not None else nn
        attention = attention or default_attention
        cfg = config
        self.config = cfg
        # filled from the checkpoint; the official init is randn / sqrt(dim)
        self.latents = nn.Parameter(torch.empty(1, cfg.total_queries, cfg.dim, device=device, dtype=dtype))
        self.proj_in = ops.Linear(cfg.embedding_dim, cfg.dim, device=device, dtype=dtype)
        self.proj_out = ops.Linear(cfg.dim, cfg.output_dim, device=device, dtype=dtype)
        self.norm_out = ops.LayerNorm(cfg.output_dim, device=device, dtype=dtype)
        inner_ff = cfg.dim * cfg.ff_mult
        self.layers = nn.ModuleList([
            nn.ModuleList([
                PerceiverAttention(cfg.dim, cfg.dim_head, cfg.heads, operations=ops, attention=attention,
                                   device=device, dtype=dtype),
                nn.Sequential(
                    ops.LayerNorm(cfg.dim, device=device, dtype=dtype),
                    ops.Linear(cfg.dim, inner_ff, bias=False, device=device, dtype=dtype),
                    nn.GELU(),
                    ops.Linear(inner_ff, cfg.dim, bias=False, device=device, dtype=dtype),
                ),
            ])
            for _ in range(cfg.depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latents = self.latents.to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


__all__ = ["Resampler", "ResamplerConfig", "PerceiverAttention"]
