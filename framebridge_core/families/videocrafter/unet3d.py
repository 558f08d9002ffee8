"""The FrameBridge-VideoCrafter 3D UNet (DynamiCrafter-256 layout, LVDM ``openaimodel3d``).

A clean re-implementation of the network of docs/math.md §5.2: a 2-D SD-style UNet run on frames
folded into the batch (``(b t) c h w``), with temporal layers and image cross-attention added.
Parameter names and shapes equal the official ``model.diffusion_model.*`` keys (prefix stripped),
so the released weights load with ``strict=True``. :class:`UNet3D` describes the architecture, the
layout, the numerics and the ComfyUI hooks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...configs import config_from_dict
from ...errors import ConfigError, ShapeError
from ..layers import AttentionFn, default_attention, timestep_embedding


@dataclass(frozen=True)
class UNet3DConfig:
    """Architecture of the UNet; defaults are the released FrameBridge-VideoCrafter model
    (``configs/inference_256_bridge.yaml``, ``unet_config.params``)."""

    in_channels: int = 8
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple = (4, 2, 1)
    num_head_channels: int = 64
    transformer_depth: int = 1
    context_dim: int = 1024
    temporal_length: int = 16
    addition_attention: bool = True
    addition_attention_heads: int = 8  # hard-coded n_heads=8 of init_attn in the official code
    image_cross_attention: bool = True
    image_cross_attention_scale_learnable: bool = True
    fs_condition: bool = True
    default_fs: int = 3
    text_context_len: int = 77
    image_tokens_per_frame: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(sorted({int(a) for a in self.attention_resolutions}, reverse=True)))

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"UNet3DConfig: {msg}")

        for name in ("in_channels", "out_channels", "model_channels", "num_res_blocks", "num_head_channels",
                     "transformer_depth", "context_dim", "temporal_length", "addition_attention_heads",
                     "text_context_len", "image_tokens_per_frame"):
            v = getattr(self, name)
            need(isinstance(v, int) and v > 0, f"{name}={v!r} must be a positive integer")
        need(len(self.channel_mult) > 0 and all(m > 0 for m in self.channel_mult),
             f"channel_mult={self.channel_mult} must be a non-empty list of positive integers")
        for ch in self.block_channels:
            need(ch % 32 == 0, f"every block width must be divisible by 32 (GroupNorm(32)); got {ch}")
            need(ch % self.num_head_channels == 0,
                 f"block width {ch} is not divisible by num_head_channels={self.num_head_channels}")

    @property
    def block_channels(self) -> tuple:
        return tuple(self.model_channels * m for m in self.channel_mult)

    @property
    def time_embed_dim(self) -> int:
        return self.model_channels * 4

    @property
    def downsample_factor(self) -> int:
        """Latent height/width must be divisible by this (one halving per level but the last)."""
        return 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_resolutions"] = list(self.attention_resolutions)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "UNet3DConfig":
        return config_from_dict(cls, data)


def _gn32(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """GroupNorm in float32 (official ``GroupNormSpecific``; also keeps fp16/bf16 runs stable)."""
    return norm(x.to(torch.promote_types(x.dtype, torch.float32))).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# Attention blocks
# ----------------------------------------------------------------------------------------------


class CrossAttention(nn.Module):
    """Multi-head attention; with ``image_cross_attention`` the context is split into text
    (first ``text_len`` tokens) and image tokens, each with its own key/value projection."""

    def __init__(self, query_dim: int, context_dim: Optional[int], heads: int, dim_head: int, *, operations,
                 attention: AttentionFn, image_cross_attention: bool = False, scale_learnable: bool = False,
                 text_len: int = 77, device=None, dtype=None):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.attention = attention
        self.text_len = text_len
        self.to_q = operations.Linear(query_dim, inner, bias=False, device=device, dtype=dtype)
        self.to_k = operations.Linear(context_dim, inner, bias=False, device=device, dtype=dtype)
        self.to_v = operations.Linear(context_dim, inner, bias=False, device=device, dtype=dtype)
        self.to_out = nn.Sequential(operations.Linear(inner, query_dim, device=device, dtype=dtype))
        self.image_cross_attention = image_cross_attention
        self.scale_learnable = scale_learnable
        if image_cross_attention:
            self.to_k_ip = operations.Linear(context_dim, inner, bias=False, device=device, dtype=dtype)
            self.to_v_ip = operations.Linear(context_dim, inner, bias=False, device=device, dtype=dtype)
            if scale_learnable:
                self.alpha = nn.Parameter(torch.zeros((), device=device, dtype=dtype))

    def _split(self, t: torch.Tensor, rows: int) -> torch.Tensor:
        """``[R, N, h·d] -> [rows, h, N, d]``, broadcasting R = rows / frames context rows."""
        r, n, _ = t.shape
        t = t.reshape(r, n, self.heads, -1).transpose(1, 2)
        if r != rows:  # one context row per video, shared by its frames (no per-frame copy of k/v)
            t = t.unsqueeze(1).expand(r, rows // r, *t.shape[1:]).reshape(rows, *t.shape[1:])
        return t

    def _attend(self, q, k, v):
        return self.attention(q, k, v)

    def forward(self, x: torch.Tensor, text: Optional[torch.Tensor] = None,
                image: Optional[torch.Tensor] = None) -> torch.Tensor:
        rows, n, _ = x.shape
        q = self._split(self.to_q(x), rows)
        ctx = x if text is None else text
        out = self._attend(q, self._split(self.to_k(ctx), rows), self._split(self.to_v(ctx), rows))
        if self.image_cross_attention and text is not None:
            if image is None or image.shape[1] == 0:
                raise ShapeError("this FrameBridge-VideoCrafter network needs CLIP image tokens in its context "
                                 "(image cross-attention); attach the CLIP vision output to the conditioning.")
            out_ip = self._attend(q, self._split(self.to_k_ip(image), rows), self._split(self.to_v_ip(image), rows))
            gate = (torch.tanh(self.alpha) + 1).to(out.dtype) if self.scale_learnable else 1.0
            out = out + out_ip * gate
        return self.to_out(out.transpose(1, 2).reshape(rows, n, -1))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, *, operations, device=None, dtype=None):
        super().__init__()
        self.proj = operations.Linear(dim_in, dim_out * 2, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4, *, operations, device=None, dtype=None):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner, operations=operations, device=device, dtype=dtype),
                                 nn.Identity(),  # dropout slot (keeps the official key index 2)
                                 operations.Linear(inner, dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm ``attn1`` (self) → ``attn2`` (cross, or self when no context) → GEGLU FFN."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: Optional[int], *, operations,
                 attention: AttentionFn, image_cross_attention=False, scale_learnable=False, text_len=77,
                 device=None, dtype=None):
        super().__init__()
        kw = dict(operations=operations, attention=attention, device=device, dtype=dtype)
        self.attn1 = CrossAttention(dim, None, heads, dim_head, **kw)
        self.ff = FeedForward(dim, operations=operations, device=device, dtype=dtype)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, image_cross_attention=image_cross_attention,
                                    scale_learnable=scale_learnable, text_len=text_len, **kw)
        self.norm1 = operations.LayerNorm(dim, device=device, dtype=dtype)
        self.norm2 = operations.LayerNorm(dim, device=device, dtype=dtype)
        self.norm3 = operations.LayerNorm(dim, device=device, dtype=dtype)

    def forward(self, x, text=None, image=None):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), text, image) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Per-frame transformer over the h·w tokens (``use_linear`` projections)."""

    def __init__(self, channels: int, heads: int, dim_head: int, cfg: UNet3DConfig, *, operations,
                 attention: AttentionFn, device=None, dtype=None):
        super().__init__()
        inner = heads * dim_head
        self.norm = operations.GroupNorm(32, channels, eps=1e-6, affine=True, device=device, dtype=dtype)
        self.proj_in = operations.Linear(channels, inner, device=device, dtype=dtype)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner, heads, dim_head, cfg.context_dim, operations=operations, attention=attention,
                                  image_cross_attention=cfg.image_cross_attention,
                                  scale_learnable=cfg.image_cross_attention_scale_learnable,
                                  text_len=cfg.text_context_len, device=device, dtype=dtype)
            for _ in range(cfg.transformer_depth)])
        self.proj_out = operations.Linear(inner, channels, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, text: torch.Tensor, image: Optional[torch.Tensor]) -> torch.Tensor:
        bt, c, h, w = x.shape
        y = _gn32(self.norm, x).flatten(2).transpose(1, 2)
        y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, text, image)
        y = self.proj_out(y)
        return y.transpose(1, 2).reshape(bt, c, h, w) + x


class TemporalTransformer(nn.Module):
    """Self-attention along frames at every pixel. ``use_linear=False`` (``init_attn``) stores the
    projections as 1x1 Conv1d, as the official module does."""

    def __init__(self, channels: int, heads: int, dim_head: int, cfg: UNet3DConfig, *, use_linear: bool,
                 operations, attention: AttentionFn, device=None, dtype=None):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = operations.GroupNorm(32, channels, eps=1e-6, affine=True, device=device, dtype=dtype)
        if use_linear:
            self.proj_in = operations.Linear(channels, inner, device=device, dtype=dtype)
            self.proj_out = operations.Linear(inner, channels, device=device, dtype=dtype)
        else:
            self.proj_in = operations.Conv1d(channels, inner, 1, device=device, dtype=dtype)
            self.proj_out = operations.Conv1d(inner, channels, 1, device=device, dtype=dtype)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner, heads, dim_head, None, operations=operations, attention=attention,
                                  device=device, dtype=dtype)
            for _ in range(cfg.transformer_depth)])

    def _proj(self, layer, y: torch.Tensor) -> torch.Tensor:
        if self.use_linear:
            return layer(y)
        return layer(y.transpose(1, 2)).transpose(1, 2)  # Conv1d over [(b h w), C, t]

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        bt, c, h, w = x.shape
        b = bt // frames
        x5 = x.reshape(b, frames, c, h, w).transpose(1, 2)  # b c t h w: the norm sees all frames
        y = _gn32(self.norm, x5)
        y = y.permute(0, 3, 4, 2, 1).reshape(b * h * w, frames, c)
        y = self._proj(self.proj_in, y)
        for block in self.transformer_blocks:
            y = block(y)
        y = self._proj(self.proj_out, y)
        y = y.reshape(b, h, w, frames, c).permute(0, 3, 4, 1, 2).reshape(bt, c, h, w)
        return y + x


# ----------------------------------------------------------------------------------------------
# Convolutional blocks
# ----------------------------------------------------------------------------------------------


class TemporalConvBlock(nn.Module):
    """Four GroupNorm-SiLU-Conv3d(3,1,1) layers along time with a residual (ModelScope style)."""

    def __init__(self, channels: int, *, operations, device=None, dtype=None):
        super().__init__()

        def layer(with_dropout: bool):
            mods = [operations.GroupNorm(32, channels, device=device, dtype=dtype), nn.SiLU()]
            if with_dropout:
                mods.append(nn.Identity())
            mods.append(operations.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0), device=device, dtype=dtype))
            return nn.Sequential(*mods)

        self.conv1 = layer(False)
        self.conv2 = layer(True)
        self.conv3 = layer(True)
        self.conv4 = layer(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for seq in (self.conv1, self.conv2, self.conv3, self.conv4):
            h = seq[-1](F.silu(_gn32(seq[0], h)))
        return x + h


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int, *, temporal_conv: bool, operations,
                 device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.in_layers = nn.Sequential(operations.GroupNorm(32, channels, **kw), nn.SiLU(),
                                       operations.Conv2d(channels, out_channels, 3, padding=1, **kw))
        self.emb_layers = nn.Sequential(nn.SiLU(), operations.Linear(emb_channels, out_channels, **kw))
        self.out_layers = nn.Sequential(operations.GroupNorm(32, out_channels, **kw), nn.SiLU(), nn.Identity(),
                                        operations.Conv2d(out_channels, out_channels, 3, padding=1, **kw))
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = operations.Conv2d(channels, out_channels, 1, **kw)
        self.temporal_conv = temporal_conv
        if temporal_conv:
            # the official attribute name is misspelt; keep it so the keys match
            self.temopral_conv = TemporalConvBlock(out_channels, operations=operations, **kw)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, frames: int) -> torch.Tensor:
        h = self.in_layers[2](F.silu(_gn32(self.in_layers[0], x)))
        e = self.emb_layers(emb).to(h.dtype)  # [B, C]: one row per video, shared by its frames
        h = (h.unflatten(0, (e.shape[0], frames)) + e[:, None, :, None, None]).flatten(0, 1)
        h = self.out_layers[3](F.silu(_gn32(self.out_layers[0], h)))
        h = self.skip_connection(x) + h
        if self.temporal_conv:
            bt, c, hh, ww = h.shape
            h5 = h.reshape(bt // frames, frames, c, hh, ww).transpose(1, 2)
            h = self.temopral_conv(h5).transpose(1, 2).reshape(bt, c, hh, ww)
        return h


class Downsample(nn.Module):
    def __init__(self, channels: int, *, operations, device=None, dtype=None):
        super().__init__()
        self.op = operations.Conv2d(channels, channels, 3, stride=2, padding=1, device=device, dtype=dtype)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int, *, operations, device=None, dtype=None):
        super().__init__()
        self.conv = operations.Conv2d(channels, channels, 3, padding=1, device=device, dtype=dtype)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Block(nn.Sequential):
    """One UNet stage (official ``TimestepEmbedSequential``): dispatches by layer kind."""

    def forward(self, x, emb, text, image, frames):  # noqa: D401
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, frames)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, text, image)
            elif isinstance(layer, TemporalTransformer):
                x = layer(x, frames)
            else:
                x = layer(x)
        return x


# ----------------------------------------------------------------------------------------------
# The UNet
# ----------------------------------------------------------------------------------------------


class UNet3D(nn.Module):
    """The FrameBridge-VideoCrafter UNet: a 2-D SD-style UNet on ``(b t) c h w`` frames, with

    * a temporal convolution block (four ``(3,1,1)`` Conv3d) at the end of every ResBlock,
    * a temporal transformer (self-attention along frames) after every spatial transformer,
    * the extra temporal transformer ``init_attn`` after the input convolution (8 heads, 1x1 Conv1d
      projections: DynamiCrafter's ``addition_attention``),
    * image cross-attention in every spatial transformer: the context is ``[77 text tokens, 16 image
      tokens per frame]``; text and image tokens get separate key/value projections
      (``to_k``/``to_v`` and ``to_k_ip``/``to_v_ip``) and the image branch is added with the gate
      ``tanh(alpha) + 1`` (``alpha`` learnable, 0 at init),
    * the frame-stride embedding ``fps_embedding`` (sinusoidal → MLP) added to the time embedding.

    Layout: ``forward(x [B, C_in, T, H, W], timesteps [B] (float), context [B, L, D], fs [B])``
    returns ``[B, C_out, T, H, W]``. ``L = 77 + 16·T`` gives per-frame image tokens (the official
    hard-coded test); any other ``L`` shares ``context[:, 77:]`` with every frame, as the official code.

    Numerics follow the official code: GroupNorms run in float32 (``GroupNormSpecific``), attention
    is plain softmax attention with scale ``d^-1/2``. ComfyUI hooks: every layer comes from
    ``operations`` (``Linear``, ``Conv1d``, ``Conv2d``, ``Conv3d``, ``GroupNorm``, ``LayerNorm``),
    and ``attention(q, k, v)`` on ``[B, heads, N, d]`` is injectable (default
    ``torch.nn.functional.scaled_dot_product_attention``).
    """

    def __init__(self, config: UNet3DConfig = UNet3DConfig(), *, operations=None, device=None, dtype=None,
                 attention: Optional[AttentionFn] = None):
        super().__init__()
        ops = operations if operations is not None else nn
        attention = attention or default_attention
        cfg = config
        self.config = cfg
        kw = dict(operations=ops, device=device, dtype=dtype)
        akw = dict(kw, attention=attention)
        mc, ted, hc = cfg.model_channels, cfg.time_embed_dim, cfg.num_head_channels

        self.time_embed = nn.Sequential(ops.Linear(mc, ted, device=device, dtype=dtype), nn.SiLU(),
                                        ops.Linear(ted, ted, device=device, dtype=dtype))
        if cfg.fs_condition:
            self.fps_embedding = nn.Sequential(ops.Linear(mc, ted, device=device, dtype=dtype), nn.SiLU(),
                                               ops.Linear(ted, ted, device=device, dtype=dtype))
        self.input_blocks = nn.ModuleList([Block(ops.Conv2d(cfg.in_channels, mc, 3, padding=1, device=device,
                                                            dtype=dtype))])
        if cfg.addition_attention:
            self.init_attn = Block(TemporalTransformer(mc, cfg.addition_attention_heads, hc, cfg, use_linear=False,
                                                       **akw))

        def attn_layers(ch):
            return [SpatialTransformer(ch, ch // hc, hc, cfg, **akw),
                    TemporalTransformer(ch, ch // hc, hc, cfg, use_linear=True, **akw)]

        chans = [mc]
        ch, ds = mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [ResBlock(ch, ted, mult * mc, temporal_conv=True, **kw)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers += attn_layers(ch)
                self.input_blocks.append(Block(*layers))
                chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(Block(Downsample(ch, **kw)))
                chans.append(ch)
                ds *= 2

        self.middle_block = Block(ResBlock(ch, ted, ch, temporal_conv=True, **kw), *attn_layers(ch),
                                  ResBlock(ch, ted, ch, temporal_conv=True, **kw))

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + chans.pop(), ted, mc * mult, temporal_conv=True, **kw)]
                ch = mc * mult
                if ds in cfg.attention_resolutions:
                    layers += attn_layers(ch)
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch, **kw))
                    ds //= 2
                self.output_blocks.append(Block(*layers))

        self.out = nn.Sequential(ops.GroupNorm(32, ch, device=device, dtype=dtype), nn.SiLU(),
                                 ops.Conv2d(mc, cfg.out_channels, 3, padding=1, device=device, dtype=dtype))

    # ------------------------------------------------------------------------------------------
    def split_context(self, context: torch.Tensor, frames: int):
        """``(text [B, 77, D], image [B·T, 16, D] or [B, L−77, D])`` as the official forward splits it."""
        cfg = self.config
        n_text = cfg.text_context_len
        if context.ndim != 3 or context.shape[-1] != cfg.context_dim:
            raise ShapeError(f"context has shape {tuple(context.shape)}; this network needs [batch, tokens, "
                             f"{cfg.context_dim}] (77 text tokens then the image tokens).")
        text, image = context[:, :n_text], context[:, n_text:]
        per_frame = cfg.image_tokens_per_frame
        if context.shape[1] == n_text + frames * per_frame:
            image = image.reshape(context.shape[0] * frames, per_frame, -1)
        return text, image

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                fs: Optional[torch.Tensor] = None) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.in_channels:
            raise ShapeError(f"the UNet input has shape {tuple(x.shape)}; expected [B, {cfg.in_channels}, T, H, W].")
        b, _, t, h, w = x.shape
        f = cfg.downsample_factor
        if h % f or w % f:
            raise ShapeError(f"latent size {h}x{w} is not divisible by {f}: this UNet halves the size "
                             f"{len(cfg.channel_mult) - 1} times; use images whose sides are multiples of {8 * f} pixels.")
        text, image = self.split_context(context, t)
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(b)
        dtype = x.dtype  # the host casts the input to the compute dtype
        emb = self.time_embed(timestep_embedding(timesteps, cfg.model_channels).to(dtype))
        if cfg.fs_condition:
            if fs is None:
                fs = torch.full((b,), cfg.default_fs, dtype=torch.long, device=x.device)
            fs = torch.as_tensor(fs, device=x.device).reshape(-1).expand(b)
            emb = emb + self.fps_embedding(timestep_embedding(fs, cfg.model_channels).to(dtype))

        hcur = x.transpose(1, 2).reshape(b * t, -1, h, w).to(dtype)
        text, image = text.to(dtype), image.to(dtype)
        hs = []
        for idx, block in enumerate(self.input_blocks):
            hcur = block(hcur, emb, text, image, t)
            if idx == 0 and cfg.addition_attention:
                hcur = self.init_attn(hcur, emb, text, image, t)
            hs.append(hcur)
        hcur = self.middle_block(hcur, emb, text, image, t)
        for block in self.output_blocks:
            hcur = block(torch.cat([hcur, hs.pop()], dim=1), emb, text, image, t)
        out = self.out[2](F.silu(_gn32(self.out[0], hcur)))
        return out.reshape(b, t, -1, h, w).transpose(1, 2).to(x.dtype)


__all__ = ["UNet3D", "UNet3DConfig"]
