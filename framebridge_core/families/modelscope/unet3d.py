"""ModelScope text-to-video UNet3D (ModelScope T2V, ZeroScope v2): BIVDiff's video model.

A clean re-implementation of the network diffusers calls ``UNet3DConditionModel``, the video model
of BIVDiff's ZeroScope setting (its ``inference.py`` reads the pipeline's ``unet`` folder).
Parameter names and shapes are exactly diffusers', so a local diffusers
``unet/diffusion_pytorch_model.safetensors`` loads with ``strict=True``; nothing is downloaded.
The architecture, the layouts and the ComfyUI hooks are described in :class:`ModelScopeUNet3D`
(the core never imports ``comfy``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...configs import config_from_dict
from ...errors import ConfigError
from ..layers import AttentionFn, default_attention
from ..video_unet_parts import (GEGLU, Attention, Downsample, FeedForward, TimestepEmbedding,  # noqa: F401
                                Upsample, _Layers, video_unet_inputs, video_unet_levels)

#: diffusers block names of the (only) layout ModelScope / ZeroScope checkpoints use.
CROSS_DOWN, PLAIN_DOWN, CROSS_UP, PLAIN_UP = ("CrossAttnDownBlock3D", "DownBlock3D", "CrossAttnUpBlock3D",
                                              "UpBlock3D")
#: heads of ``transformer_in`` (hard-coded in diffusers' UNet3DConditionModel).
TRANSFORMER_IN_HEADS = 8


@dataclass(frozen=True)
class ModelScopeUNet3DConfig:
    """Architecture of one ModelScope UNet3D.

    Attributes:
        in_channels, out_channels: latent channels (4 for the SD VAE).
        block_out_channels: channels per resolution level (ModelScope: 320, 640, 1280, 1280).
        layers_per_block: ResNets per down level (up levels have one more).
        cross_attention_dim: width of the text embedding (OpenCLIP-H: 1024).
        attention_head_dim: channels per attention head in every transformer (diffusers config
            value; 64 for ModelScope and ZeroScope). A level with C channels has C/64 heads.
        norm_num_groups, norm_eps: GroupNorm groups and ResNet / output-norm epsilon.
        fixed_norm_groups: GroupNorm groups of ``transformer_in`` and of every temporal conv. The
            diffusers 0.23 code BIVDiff vendors hard-codes 32 there whatever ``norm_num_groups``
            is; newer diffusers uses ``norm_num_groups`` (``None`` here). The two agree for every
            released ModelScope / ZeroScope checkpoint (32); only small test configs differ.
    """

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    cross_attention_dim: int = 1024
    attention_head_dim: int = 64
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    fixed_norm_groups: Optional[int] = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"ModelScopeUNet3DConfig: {msg}")

        need(len(self.block_out_channels) >= 2, f"block_out_channels={self.block_out_channels} needs at least 2 "
                                                f"levels (ModelScope uses 4: 320, 640, 1280, 1280).")
        need(self.layers_per_block >= 1, f"layers_per_block={self.layers_per_block} must be >= 1.")
        for c in self.block_out_channels:
            need(c % self.norm_num_groups == 0,
                 f"every level's channels must be a multiple of norm_num_groups={self.norm_num_groups}; got {c}.")
            need(c % self.attention_head_dim == 0,
                 f"every level's channels must be a multiple of attention_head_dim={self.attention_head_dim}; got {c}.")
        for c in self.block_out_channels:
            need(c % self.fixed_groups == 0, f"every level's channels must be a multiple of the temporal-conv "
                                             f"norm groups {self.fixed_groups}; got {c}.")
        need(self.in_channels >= 1 and self.out_channels >= 1, "in/out channels must be positive.")

    @property
    def fixed_groups(self) -> int:
        return self.norm_num_groups if self.fixed_norm_groups is None else self.fixed_norm_groups

    @property
    def num_levels(self) -> int:
        return len(self.block_out_channels)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelScopeUNet3DConfig":
        return config_from_dict(cls, d)

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> "ModelScopeUNet3DConfig":
        """From a diffusers ``UNet3DConditionModel`` ``config.json`` dict (checks the block layout)."""
        boc = tuple(config.get("block_out_channels", (320, 640, 1280, 1280)))
        n = len(boc)
        down = tuple(config.get("down_block_types", (CROSS_DOWN,) * (n - 1) + (PLAIN_DOWN,)))
        up = tuple(config.get("up_block_types", (PLAIN_UP,) + (CROSS_UP,) * (n - 1)))
        if down != (CROSS_DOWN,) * (n - 1) + (PLAIN_DOWN,) or up != (PLAIN_UP,) + (CROSS_UP,) * (n - 1):
            raise ConfigError(
                f"unsupported UNet3D block layout down={list(down)} up={list(up)}; only the ModelScope layout "
                f"(cross-attention on every level but the lowest) is implemented.")
        if config.get("num_attention_heads") is not None or config.get("time_cond_proj_dim") is not None:
            raise ConfigError("num_attention_heads / time_cond_proj_dim are not used by ModelScope UNet3D configs.")
        head = config.get("attention_head_dim", 64)
        if not isinstance(head, int):
            raise ConfigError(f"attention_head_dim={head!r}: per-level values are not supported; use one int.")
        return cls(in_channels=config.get("in_channels", 4), out_channels=config.get("out_channels", 4),
                   block_out_channels=boc, layers_per_block=config.get("layers_per_block", 2),
                   cross_attention_dim=config.get("cross_attention_dim", 1024), attention_head_dim=head,
                   norm_num_groups=config.get("norm_num_groups", 32), norm_eps=config.get("norm_eps", 1e-5))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: self-attention, second attention (cross, or self again), GEGLU FF."""

    def __init__(self, L: _Layers, dim: int, heads: int, dim_head: int, context_dim: Optional[int],
                 attention: AttentionFn):
        super().__init__()
        self.norm1 = L.layer_norm(dim)
        self.attn1 = Attention(L, dim, heads, dim_head, None, attention)
        self.norm2 = L.layer_norm(dim)
        self.attn2 = Attention(L, dim, heads, dim_head, context_dim, attention)
        self.norm3 = L.layer_norm(dim)
        self.ff = FeedForward(L, dim)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Per-frame transformer over the h*w tokens with cross-attention on the text (Transformer2DModel)."""

    def __init__(self, L: _Layers, channels: int, head_dim: int, context_dim: int, groups: int,
                 attention: AttentionFn):
        super().__init__()
        self.norm = L.group_norm(groups, channels, 1e-6)
        self.proj_in = L.linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [TransformerBlock(L, channels, channels // head_dim, head_dim, context_dim, attention)])
        self.proj_out = L.linear(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        bf, c, h, w = x.shape
        y = self.norm(x).permute(0, 2, 3, 1).reshape(bf, h * w, c)
        y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, context)
        y = self.proj_out(y).reshape(bf, h, w, c).permute(0, 3, 1, 2)
        return y + x


class TemporalTransformer(nn.Module):
    """Transformer over the frames of each pixel (TransformerTemporalModel; both attentions are self)."""

    def __init__(self, L: _Layers, channels: int, heads: int, head_dim: int, groups: int, attention: AttentionFn):
        super().__init__()
        inner = heads * head_dim
        self.norm = L.group_norm(groups, channels, 1e-6)
        self.proj_in = L.linear(channels, inner)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(L, inner, heads, head_dim, None, attention)])
        self.proj_out = L.linear(inner, channels)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        bf, c, h, w = x.shape
        b = bf // num_frames
        # the norm sees [B, C, F, H, W]: group statistics over all frames (diffusers / ModelScope)
        y = self.norm(x.reshape(b, num_frames, c, h, w).permute(0, 2, 1, 3, 4))
        y = y.permute(0, 3, 4, 2, 1).reshape(b * h * w, num_frames, c)
        y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y)
        y = self.proj_out(y).reshape(b, h, w, num_frames, c).permute(0, 3, 4, 1, 2).reshape(bf, c, h, w)
        return y + x


class TemporalConv(nn.Module):
    """Four (GroupNorm, SiLU, Conv3d 3x1x1) stages with a residual; keys ``conv{1..4}.{0,2|3}``."""

    def __init__(self, L: _Layers, channels: int, groups: int):
        super().__init__()

        def stage(conv_index: int):
            # index of the conv in the original nn.Sequential: 2 in conv1, 3 (after a dropout) in conv2-4
            layers = [L.group_norm(groups, channels, 1e-5), nn.SiLU()] + [nn.Identity()] * (conv_index - 2)
            return nn.Sequential(*layers, L.conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)))

        self.conv1, self.conv2, self.conv3, self.conv4 = stage(2), stage(3), stage(3), stage(3)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        bf, c, h, w = x.shape
        v = x.reshape(bf // num_frames, num_frames, c, h, w).permute(0, 2, 1, 3, 4)
        y = self.conv4(self.conv3(self.conv2(self.conv1(v)))) + v
        return y.permute(0, 2, 1, 3, 4).reshape(bf, c, h, w)


class ResnetBlock(nn.Module):
    """Per-frame ResNet block with the time embedding added after the first conv (ResnetBlock2D)."""

    def __init__(self, L: _Layers, in_ch: int, out_ch: int, temb_ch: int, groups: int, eps: float):
        super().__init__()
        self.norm1 = L.group_norm(groups, in_ch, eps)
        self.conv1 = L.conv2d(in_ch, out_ch, 3, padding=1)
        self.time_emb_proj = L.linear(temb_ch, out_ch)
        self.norm2 = L.group_norm(groups, out_ch, eps)
        self.conv2 = L.conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = L.conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class Level(nn.Module):
    """One down or up level: ``resnets``, ``temp_convs`` and (optionally) ``attentions`` /
    ``temp_attentions`` ModuleLists plus a resampler, named as in diffusers."""

    def __init__(self, L: _Layers, cfg: ModelScopeUNet3DConfig, in_chs: list[int], out_ch: int, cross: bool,
                 attention: AttentionFn):
        super().__init__()
        g, head = cfg.norm_num_groups, cfg.attention_head_dim
        self.resnets = nn.ModuleList([ResnetBlock(L, i, out_ch, cfg.time_embed_dim, g, cfg.norm_eps) for i in in_chs])
        self.temp_convs = nn.ModuleList([TemporalConv(L, out_ch, cfg.fixed_groups) for _ in in_chs])
        self.has_attention = cross
        if cross:
            self.attentions = nn.ModuleList(
                [SpatialTransformer(L, out_ch, head, cfg.cross_attention_dim, g, attention) for _ in in_chs])
            self.temp_attentions = nn.ModuleList(
                [TemporalTransformer(L, out_ch, out_ch // head, head, g, attention) for _ in in_chs])

    def layer(self, i: int, x: torch.Tensor, temb, context, num_frames: int) -> torch.Tensor:
        x = self.temp_convs[i](self.resnets[i](x, temb), num_frames)
        if self.has_attention:
            x = self.temp_attentions[i](self.attentions[i](x, context), num_frames)
        return x


class MidBlock(nn.Module):
    def __init__(self, L: _Layers, cfg: ModelScopeUNet3DConfig, attention: AttentionFn):
        super().__init__()
        ch, g, head = cfg.block_out_channels[-1], cfg.norm_num_groups, cfg.attention_head_dim
        self.resnets = nn.ModuleList([ResnetBlock(L, ch, ch, cfg.time_embed_dim, g, cfg.norm_eps) for _ in range(2)])
        self.temp_convs = nn.ModuleList([TemporalConv(L, ch, cfg.fixed_groups) for _ in range(2)])
        self.attentions = nn.ModuleList([SpatialTransformer(L, ch, head, cfg.cross_attention_dim, g, attention)])
        self.temp_attentions = nn.ModuleList([TemporalTransformer(L, ch, ch // head, head, g, attention)])

    def forward(self, x, temb, context, num_frames):
        x = self.temp_convs[0](self.resnets[0](x, temb), num_frames)
        x = self.temp_attentions[0](self.attentions[0](x, context), num_frames)
        return self.temp_convs[1](self.resnets[1](x, temb), num_frames)


class ModelScopeUNet3D(nn.Module):
    """The ModelScope / ZeroScope video UNet: ``forward(x[B,C,F,H,W], t[B], context[B,L,D]) -> ε``.

    Architecture (diffusers ``unets/unet_3d_condition.py``, ``unet_3d_blocks.py``):

    * time: sinusoidal features of width ``C0`` (cos first, max period 10000, no shift), then
      ``time_embedding.linear_1`` -> SiLU -> ``linear_2`` (width ``4*C0``), shared by all frames.
    * ``conv_in`` (per frame) -> ``transformer_in`` (a temporal transformer with 8 heads of
      ``attention_head_dim`` channels, so its inner width ``8*64=512`` differs from ``C0=320``).
    * down blocks: ``CrossAttnDownBlock3D`` for every level but the last (``DownBlock3D``). Each
      layer is ResNet -> temporal conv -> spatial transformer (self + cross attention on the text)
      -> temporal transformer (self attention twice, over frames). The mid block is ResNet,
      temporal conv, then one (spatial, temporal, ResNet, temporal conv) group. Up blocks mirror
      the down blocks with ``layers_per_block + 1`` layers and skip concatenation.
    * spatial and temporal transformers have ``C // attention_head_dim`` heads of
      ``attention_head_dim`` channels (diffusers' swapped argument order makes the config value
      ``attention_head_dim=64`` a head *width* here), linear in/out projections, GEGLU feed-forward.
    * Quirk kept on purpose: the temporal transformer's and the temporal conv's GroupNorms see the
      5-D ``[B, C, F, H, W]`` tensor, so their statistics span all frames of the video, not one frame.
    * Dropout layers of the original (p=0.1 in the temporal convs) are identity at inference and
      are left out; this module is inference-only.

    Layouts: :meth:`forward` takes ``[B, C, F, H, W]`` (diffusers' layout);
    :class:`~.frames.ModelScopeFrames` takes frames-as-batch ``[B*F, C, H, W]`` as ComfyUI's SD-VAE
    families do.

    ComfyUI hooks: ``operations=`` provides ``Linear``, ``Conv2d``, ``Conv3d``, ``GroupNorm`` and
    ``LayerNorm`` (default ``torch.nn``); ``device=`` / ``dtype=`` go to every layer;
    ``attention=`` is ``(q, k, v) -> out`` on ``[B, heads, N, d]``.
    """

    def __init__(self, config: ModelScopeUNet3DConfig | Mapping | None = None, *, operations=None, device=None,
                 dtype=None, attention: Optional[AttentionFn] = None, **fields):
        super().__init__()
        if not isinstance(config, ModelScopeUNet3DConfig):
            config = ModelScopeUNet3DConfig.from_dict(dict(config or {}, **fields))
        self.config = cfg = config
        attention = attention or default_attention
        L = _Layers(operations, device, dtype)
        boc, g = cfg.block_out_channels, cfg.norm_num_groups
        self.conv_in = L.conv2d(cfg.in_channels, boc[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(L, boc[0], cfg.time_embed_dim)
        self.transformer_in = TemporalTransformer(L, boc[0], TRANSFORMER_IN_HEADS, cfg.attention_head_dim,
                                                  cfg.fixed_groups, attention)

        self.down_blocks = nn.ModuleList()
        skips = [boc[0]]  # channels of every skip tensor, in push order
        prev = boc[0]
        for i, ch in enumerate(boc):
            last = i == len(boc) - 1
            level = Level(L, cfg, [prev] + [ch] * (cfg.layers_per_block - 1), ch, cross=not last, attention=attention)
            skips += [ch] * cfg.layers_per_block
            if not last:
                level.downsamplers = nn.ModuleList([Downsample(L, ch)])
                skips.append(ch)
            self.down_blocks.append(level)
            prev = ch

        self.mid_block = MidBlock(L, cfg, attention)

        self.up_blocks = nn.ModuleList()
        rev = list(reversed(boc))
        for i, ch in enumerate(rev):
            last = i == len(rev) - 1
            in_chs = []
            for _ in range(cfg.layers_per_block + 1):
                in_chs.append(prev + skips.pop())
                prev = ch
            level = Level(L, cfg, in_chs, ch, cross=i > 0, attention=attention)
            if not last:
                level.upsamplers = nn.ModuleList([Upsample(L, ch)])
            self.up_blocks.append(level)

        self.conv_norm_out = L.group_norm(g, boc[0], cfg.norm_eps)
        self.conv_out = L.conv2d(boc[0], cfg.out_channels, 3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def forward(self, x: torch.Tensor, timesteps, context: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        frames, temb, ctx = video_unet_inputs(self, x, timesteps, context, "ModelScope UNet3D",
                                              "OpenCLIP-H for ModelScope / ZeroScope")
        b, _, f, h, w = x.shape
        s = video_unet_levels(self, self.transformer_in(self.conv_in(frames), f), temb, ctx, f)
        s = self.conv_out(F.silu(self.conv_norm_out(s)))
        return s.reshape(b, f, cfg.out_channels, h, w).permute(0, 2, 1, 3, 4)


def expected_state_dict_shapes(config: ModelScopeUNet3DConfig) -> dict[str, list[int]]:
    """Every parameter name and shape of a UNet with ``config`` (built on the meta device)."""
    return {k: list(v.shape) for k, v in ModelScopeUNet3D(config, device="meta").state_dict().items()}


__all__ = ["ModelScopeUNet3D", "ModelScopeUNet3DConfig",
           "expected_state_dict_shapes"]
