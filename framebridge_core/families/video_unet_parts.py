"""Layers of diffusers' 3-D video UNet that ModelScope / ZeroScope and VidRD share unchanged
(:mod:`.modelscope.unet3d`, :mod:`.vidrd.unet3d`): key names and shapes as diffusers', built from an
``operations`` namespace (ComfyUI's ``comfy.ops`` or ``torch.nn``)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ShapeError
from .layers import AttentionFn, default_attention, timestep_embedding


class _Layers:
    """Layer constructors from an ``operations`` namespace with device/dtype bound."""

    def __init__(self, operations=None, device=None, dtype=None):
        self.ops = operations if operations is not None else nn
        self.kw = {"device": device, "dtype": dtype}

    def linear(self, i, o, bias=True):
        return self.ops.Linear(i, o, bias=bias, **self.kw)

    def conv2d(self, i, o, k, stride=1, padding=0):
        return self.ops.Conv2d(i, o, k, stride=stride, padding=padding, **self.kw)

    def conv3d(self, i, o, k, padding=0):
        return self.ops.Conv3d(i, o, k, padding=padding, **self.kw)

    def group_norm(self, groups, ch, eps):
        return self.ops.GroupNorm(groups, ch, eps=eps, affine=True, **self.kw)

    def layer_norm(self, dim, eps=1e-5):
        return self.ops.LayerNorm(dim, eps=eps, elementwise_affine=True, **self.kw)


class Attention(nn.Module):
    """Multi-head attention; keys ``to_q/to_k/to_v`` (no bias) and ``to_out.0``."""

    def __init__(self, L: _Layers, query_dim: int, heads: int, dim_head: int, context_dim: Optional[int] = None,
                 attention: AttentionFn = default_attention):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.attention = attention
        self.to_q = L.linear(query_dim, inner, bias=False)
        self.to_k = L.linear(context_dim or query_dim, inner, bias=False)
        self.to_v = L.linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.ModuleList([L.linear(inner, query_dim)])

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        context = x if context is None else context
        b, h = x.shape[0], self.heads
        q, k, v = (t.reshape(b, t.shape[1], h, -1).transpose(1, 2)
                   for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = self.attention(q, k, v).transpose(1, 2).reshape(b, x.shape[1], -1)
        return self.to_out[0](out)


class GEGLU(nn.Module):
    def __init__(self, L: _Layers, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = L.linear(dim_in, dim_out * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU MLP with keys ``net.0.proj`` and ``net.2`` (``net.1`` is a parameter-free dropout)."""

    def __init__(self, L: _Layers, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(L, dim, dim * mult), nn.Identity(), L.linear(dim * mult, dim)])

    def forward(self, x):
        for layer in self.net:
            x = layer(x)
        return x


class Downsample(nn.Module):
    def __init__(self, L: _Layers, ch: int):
        super().__init__()
        self.conv = L.conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class TimestepEmbedding(nn.Module):
    def __init__(self, L: _Layers, dim_in: int, dim: int):
        super().__init__()
        self.linear_1 = L.linear(dim_in, dim)
        self.linear_2 = L.linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class Upsample(nn.Module):
    def __init__(self, L: _Layers, ch: int):
        super().__init__()
        self.conv = L.conv2d(ch, ch, 3, padding=1)

    def forward(self, x, size):
        # nearest x2, or to the skip's size when the input size is not a multiple of 2^levels (official)
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


def video_unet_inputs(net: nn.Module, x: torch.Tensor, timesteps, context: torch.Tensor, name: str,
                      text_encoder: str):
    """The checks and embeddings both 3-D UNets start with.

    ``x [B, C, F, h, w]``, ``context [B, L, D]`` -> ``(frames [B*F, C, h, w], temb [B*F, E], ctx [B*F, L, D])``
    in the network's dtype, every frame of a video with its video's timestep and text. ``name`` and
    ``text_encoder`` (the encoder the model was trained with) go into the error messages."""
    cfg = net.config
    if x.ndim != 5 or x.shape[1] != cfg.in_channels:
        raise ShapeError(f"{name} input must be [batch, {cfg.in_channels}, frames, h, w]; "
                         f"got shape {tuple(x.shape)}.")
    b, _, f, h, w = x.shape
    if context.ndim != 3 or context.shape[-1] != cfg.cross_attention_dim:
        raise ShapeError(
            f"text context has shape {tuple(context.shape)}, but this video model cross-attends to "
            f"{cfg.cross_attention_dim}-wide embeddings [batch, tokens, {cfg.cross_attention_dim}]: use the "
            f"video model's own text encoder ({text_encoder}).")
    if context.shape[0] != b:
        raise ShapeError(f"text context batch {context.shape[0]} does not match the video batch {b}.")
    t = torch.as_tensor(timesteps, device=x.device)
    t = t.reshape(-1).expand(b) if t.numel() == 1 else t.reshape(b)

    dtype = net.dtype
    temb = net.time_embedding(timestep_embedding(t, cfg.block_out_channels[0]).to(dtype))
    frames = x.permute(0, 2, 1, 3, 4).reshape(b * f, cfg.in_channels, h, w).to(dtype)
    return frames, temb.repeat_interleave(f, dim=0), context.to(dtype).repeat_interleave(f, dim=0)


def video_unet_levels(net: nn.Module, s: torch.Tensor, temb: torch.Tensor, ctx: torch.Tensor,
                      num_frames: int) -> torch.Tensor:
    """Down levels, middle block and up levels (skips joined by concatenation), as in diffusers'
    ``UNet3DConditionModel``; ``s`` is the input convolution's output, ``[B*F, C, h, w]``."""
    skips = [s]
    for level in net.down_blocks:
        for i in range(len(level.resnets)):
            s = level.layer(i, s, temb, ctx, num_frames)
            skips.append(s)
        if hasattr(level, "downsamplers"):
            s = level.downsamplers[0](s)
            skips.append(s)
    s = net.mid_block(s, temb, ctx, num_frames)
    for level in net.up_blocks:
        for i in range(len(level.resnets)):
            s = level.layer(i, torch.cat([s, skips.pop()], dim=1), temb, ctx, num_frames)
        if hasattr(level, "upsamplers"):
            s = level.upsamplers[0](s, skips[-1].shape[-2:])
    return s


class VideoUNetFrames(nn.Module):
    """The UNet on frames-as-batch tensors, for hosts that keep SD-VAE videos as ``[B*F, C, H, W]``.

    ``network`` (set by each family's subclass) is the video UNet class, ``[B, C, F, H, W]`` in and out.

    ``forward(x[B*F,C,H,W], timesteps[B*F], context[B*F,L,D], num_video_frames=F)``: rows
    ``b*F .. b*F+F-1`` are the frames of video ``b``; each video takes the timestep and context of
    its first row. When a host concatenates conditional and unconditional copies along the batch,
    every copy is a whole video, so the copies are denoised independently (no mixing across them).
    """

    network: type = None  # the family's UNet class

    def __init__(self, config=None, *, operations=None, device=None, dtype=None, attention=None, **fields):
        super().__init__()
        self.net = self.network(config, operations=operations, device=device, dtype=dtype, attention=attention,
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
