"""VidRD ("Reuse and Diffuse") video UNet: BIVDiff's other video model (``ModelT2V.pth``).

A clean re-implementation of ``models/ReuseAndDiffuse/model/modules/unet.py`` of the official BIVDiff
repository (MCG-NJU/BIVDiff), built as BIVDiff builds it: Stable Diffusion 2.1-base's UNet inflated to
video with ``add_temp_embed=True`` and ``add_temp_conv=True`` (its ``configs/*_vidrd.yaml``), no
``temp_transformer`` after ``conv_in``, temporal attention in every cross-attention block, plain
(not sparse-causal) self-attention. Parameter names and shapes are the official ones (the ``unet.``
part of the Lightning checkpoint), so the weights load with ``strict=True``. The core never
imports ``comfy``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...configs import config_from_dict
from ...errors import ConfigError
from ..layers import AttentionFn, default_attention
from ..video_unet_parts import (GEGLU, Attention, Downsample, FeedForward, TimestepEmbedding,  # noqa: F401
                                Upsample, _Layers, video_unet_inputs, video_unet_levels)

#: diffusers block names of the (only) layout BIVDiff builds (``from_pretrained_2d`` forces it)
CROSS_DOWN, PLAIN_DOWN, CROSS_UP, PLAIN_UP = ("CrossAttnDownBlock3D", "DownBlock3D", "CrossAttnUpBlock3D",
                                              "UpBlock3D")
#: GroupNorm groups of every ``TemporalConvLayer`` (hard-coded 32 in the official code)
TEMP_CONV_GROUPS = 32


@dataclass(frozen=True)
class VidRDUNet3DConfig:
    """Architecture of one VidRD UNet (defaults: ``ModelT2V.pth``, i.e. SD 2.1-base inflated).

    Attributes:
        in_channels, out_channels: latent channels (4: the SD VAE).
        block_out_channels: channels per level (SD 2.1: 320, 640, 1280, 1280).
        layers_per_block: ResNets per down level (up levels have one more).
        cross_attention_dim: width of the text embedding (OpenCLIP-H penultimate layer: 1024).
        head_channels: channels per attention head. SD 2.1's config says ``attention_head_dim=[5, 10,
            20, 20]``, which the official code passes as the number of *heads* per level: 320/5 = 640/10
            = 1280/20 = 64 channels each. Not visible in the weights.
        use_linear_projection: linear (SD 2.x) or 1x1-conv (SD 1.x) ``proj_in`` / ``proj_out``.
        add_temp_conv: a 4-stage temporal conv after every ResNet (``temp_convs``; VidRD: True).
        add_temp_embed: a sinusoidal frame-position embedding added before every temporal attention
            (VidRD: True). Not visible in the weights.
        norm_num_groups, norm_eps: GroupNorm groups and ResNet / output-norm epsilon.
    """

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    cross_attention_dim: int = 1024
    head_channels: int = 64
    use_linear_projection: bool = True
    add_temp_conv: bool = True
    add_temp_embed: bool = True
    norm_num_groups: int = 32
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_out_channels", tuple(int(c) for c in self.block_out_channels))

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"VidRDUNet3DConfig: {msg}")

        need(len(self.block_out_channels) >= 2, f"block_out_channels={self.block_out_channels} needs at least 2 "
                                                f"levels (VidRD uses 4: 320, 640, 1280, 1280).")
        need(self.layers_per_block >= 1, f"layers_per_block={self.layers_per_block} must be >= 1.")
        need(self.in_channels >= 1 and self.out_channels >= 1, "in/out channels must be positive.")
        need(self.head_channels >= 1, f"head_channels={self.head_channels} must be >= 1.")
        for c in self.block_out_channels:
            need(c % self.norm_num_groups == 0,
                 f"every level's channels must be a multiple of norm_num_groups={self.norm_num_groups}; got {c}.")
            need(c % self.head_channels == 0,
                 f"every level's channels must be a multiple of head_channels={self.head_channels}; got {c}.")
            need(c % 2 == 0, f"the frame-position embedding needs an even channel count; got {c}.")
            if self.add_temp_conv:
                need(c % TEMP_CONV_GROUPS == 0, f"every level's channels must be a multiple of the temporal "
                                                f"convs' {TEMP_CONV_GROUPS} norm groups; got {c}.")

    @property
    def num_levels(self) -> int:
        return len(self.block_out_channels)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    def heads(self, channels: int) -> int:
        return channels // self.head_channels

    def to_dict(self) -> dict:
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VidRDUNet3DConfig":
        return config_from_dict(cls, d)

    @classmethod
    def from_official(cls, config: Mapping[str, Any], *, add_temp_conv: bool = True, add_temp_embed: bool = True,
                      add_temp_transformer: bool = False, add_temp_attn_only_on_upblocks: bool = False,
                      prepend_first_frame: bool = False) -> "VidRDUNet3DConfig":
        """From the SD ``unet/config.json`` dict and the VidRD switches of BIVDiff's yaml (its defaults)."""
        boc = tuple(config.get("block_out_channels", (320, 640, 1280, 1280)))
        n = len(boc)
        down = tuple(config.get("down_block_types", (CROSS_DOWN,) * (n - 1) + (PLAIN_DOWN,)))
        up = tuple(config.get("up_block_types", (PLAIN_UP,) + (CROSS_UP,) * (n - 1)))
        if down != (CROSS_DOWN,) * (n - 1) + (PLAIN_DOWN,) or up != (PLAIN_UP,) + (CROSS_UP,) * (n - 1):
            raise ConfigError(f"unsupported block layout down={list(down)} up={list(up)}; VidRD uses cross-attention "
                              f"on every level but the lowest.")
        if add_temp_transformer or add_temp_attn_only_on_upblocks or prepend_first_frame:
            raise ConfigError("add_temp_transformer / add_temp_attn_only_on_upblocks / prepend_first_frame are not "
                              "used by VidRD (BIVDiff's configs leave them False) and are not implemented.")
        for key, ok in (("only_cross_attention", False), ("dual_cross_attention", False), ("class_embed_type", None),
                        ("num_class_embeds", None), ("resnet_time_scale_shift", "default"), ("center_input_sample",
                        False), ("flip_sin_to_cos", True), ("freq_shift", 0), ("mid_block_scale_factor", 1),
                        ("downsample_padding", 1), ("act_fn", "silu")):
            if config.get(key, ok) != ok:
                raise ConfigError(f"{key}={config[key]!r} is not SD 2.1's value ({ok!r}); not implemented.")
        heads = config.get("attention_head_dim", 8)
        heads = (heads,) * n if isinstance(heads, int) else tuple(heads)
        widths = {c // h for c, h in zip(boc, heads)}
        if len(heads) != n or len(widths) != 1 or any(c % h for c, h in zip(boc, heads)):
            raise ConfigError(f"attention_head_dim={list(heads)} (heads per level) does not give one head width for "
                              f"channels {list(boc)}.")
        return cls(in_channels=config.get("in_channels", 4), out_channels=config.get("out_channels", 4),
                   block_out_channels=boc, layers_per_block=config.get("layers_per_block", 2),
                   cross_attention_dim=config.get("cross_attention_dim", 1024), head_channels=widths.pop(),
                   use_linear_projection=bool(config.get("use_linear_projection", False)),
                   add_temp_conv=add_temp_conv, add_temp_embed=add_temp_embed,
                   norm_num_groups=config.get("norm_num_groups", 32), norm_eps=config.get("norm_eps", 1e-5))


def video_norm(norm: nn.Module, x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """A GroupNorm over the frames-as-batch ``[B*F, C, H, W]`` tensor as the official code applies it to
    ``[B, C, F, H, W]``: the group statistics span every frame of the video."""
    bf, c, h, w = x.shape
    v = x.reshape(bf // num_frames, num_frames, c, h, w).permute(0, 2, 1, 3, 4)
    return norm(v).permute(0, 2, 1, 3, 4).reshape(bf, c, h, w)


def frame_position_embedding(dim: int, frames: int) -> torch.Tensor:
    """The official ``get_sin_pos_embedding(dim, frames)``: ``[frames, dim]``, sin on even and cos on odd
    channels (interleaved), frequencies ``10000^(-2i/dim)``, float32."""
    pe = torch.zeros(frames, dim)
    position = torch.arange(0, frames).unsqueeze(1).float()
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float) * -(math.log(10000.0) / dim))
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)
    return pe


class TransformerBlock(nn.Module):
    """VidRD's ``BasicTransformerBlock`` with ``add_temp_attn``: spatial self-attention, cross-attention on
    the text, then (per pixel, over the frames) the frame-position embedding and a temporal self-attention,
    then the GEGLU feed-forward. Tokens are ``[B*F, h*w, C]``."""

    def __init__(self, L: _Layers, dim: int, heads: int, dim_head: int, context_dim: int, add_temp_embed: bool,
                 attention: AttentionFn):
        super().__init__()
        self.add_temp_embed = add_temp_embed
        self.attn1 = Attention(L, dim, heads, dim_head, None, attention)
        self.temp_norm = L.layer_norm(dim)
        self.temp_attn = Attention(L, dim, heads, dim_head, None, attention)
        self.norm1 = L.layer_norm(dim)
        self.attn2 = Attention(L, dim, heads, dim_head, context_dim, attention)
        self.norm2 = L.layer_norm(dim)
        self.ff = FeedForward(L, dim)
        self.norm3 = L.layer_norm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        bf, d, c = x.shape
        b = bf // num_frames
        v = x.reshape(b, num_frames, d, c)
        if self.add_temp_embed:
            v = v + frame_position_embedding(c, num_frames).to(x)[None, :, None, :]
        if num_frames > 1:
            y = v.permute(0, 2, 1, 3).reshape(b * d, num_frames, c)
            y = self.temp_attn(self.temp_norm(y)) + y
            x = y.reshape(b, d, num_frames, c).permute(0, 2, 1, 3).reshape(bf, d, c)
        else:
            # the official code skips the temporal attention's effect on one frame, but its in-place
            # "+=" has already added the position embedding to the kept tensor: kept here the same
            x = v.reshape(bf, d, c)
        return self.ff(self.norm3(x)) + x


class Transformer3D(nn.Module):
    """VidRD's ``Transformer3DModel``: per-frame GroupNorm and projections around one
    :class:`TransformerBlock` (whose temporal attention sees the frames), with a residual."""

    def __init__(self, L: _Layers, cfg: VidRDUNet3DConfig, channels: int, attention: AttentionFn):
        super().__init__()
        self.linear = cfg.use_linear_projection
        self.norm = L.group_norm(cfg.norm_num_groups, channels, 1e-6)
        if self.linear:
            self.proj_in = L.linear(channels, channels)
            self.proj_out = L.linear(channels, channels)
        else:
            self.proj_in = L.conv2d(channels, channels, 1)
            self.proj_out = L.conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(
            L, channels, cfg.heads(channels), cfg.head_channels, cfg.cross_attention_dim, cfg.add_temp_embed,
            attention)])

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        bf, c, h, w = x.shape
        y = self.norm(x)
        if self.linear:
            y = self.proj_in(y.permute(0, 2, 3, 1).reshape(bf, h * w, c))
        else:
            y = self.proj_in(y).permute(0, 2, 3, 1).reshape(bf, h * w, c)
        for block in self.transformer_blocks:
            y = block(y, context, num_frames)
        if self.linear:
            y = self.proj_out(y).reshape(bf, h, w, c).permute(0, 3, 1, 2)
        else:
            y = self.proj_out(y.reshape(bf, h, w, c).permute(0, 3, 1, 2))
        return y + x


class TemporalConv(nn.Module):
    """``TemporalConvLayer``: four (GroupNorm(32), SiLU, dropout, Conv3d 3x1x1) stages over the frames with a
    residual; keys ``convs.{0,3,4,7,8,11,12,15}`` (the flat ``nn.ModuleList`` of the original). Its norms see
    the whole video. One frame: the residual only (the official ``identity + 0.0 * h``)."""

    def __init__(self, L: _Layers, channels: int):
        super().__init__()
        layers = []
        for _ in range(4):
            layers += [L.group_norm(TEMP_CONV_GROUPS, channels, 1e-5), nn.SiLU(), nn.Identity(),
                       L.conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))]
        self.convs = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        if num_frames <= 1:
            return x
        bf, c, h, w = x.shape
        v = x.reshape(bf // num_frames, num_frames, c, h, w).permute(0, 2, 1, 3, 4)
        y = v
        for layer in self.convs:
            y = layer(y)
        return (y + v).permute(0, 2, 1, 3, 4).reshape(bf, c, h, w)


class ResnetBlock(nn.Module):
    """``ResnetBlock3D``: convs per frame, GroupNorms over the whole video, time embedding after conv1."""

    def __init__(self, L: _Layers, in_ch: int, out_ch: int, temb_ch: int, groups: int, eps: float):
        super().__init__()
        self.norm1 = L.group_norm(groups, in_ch, eps)
        self.conv1 = L.conv2d(in_ch, out_ch, 3, padding=1)
        self.time_emb_proj = L.linear(temb_ch, out_ch)
        self.norm2 = L.group_norm(groups, out_ch, eps)
        self.conv2 = L.conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = L.conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor, num_frames: int) -> torch.Tensor:
        h = self.conv1(F.silu(video_norm(self.norm1, x, num_frames)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(video_norm(self.norm2, h, num_frames)))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class Level(nn.Module):
    """One down or up level: ``resnets``, ``temp_convs`` and (optionally) ``attentions`` ModuleLists plus a
    resampler, named as in the official code. Each layer is ResNet -> temporal conv -> transformer."""

    def __init__(self, L: _Layers, cfg: VidRDUNet3DConfig, in_chs: list[int], out_ch: int, cross: bool,
                 attention: AttentionFn):
        super().__init__()
        g = cfg.norm_num_groups
        self.resnets = nn.ModuleList([ResnetBlock(L, i, out_ch, cfg.time_embed_dim, g, cfg.norm_eps) for i in in_chs])
        if cfg.add_temp_conv:
            self.temp_convs = nn.ModuleList([TemporalConv(L, out_ch) for _ in in_chs])
        if cross:
            self.attentions = nn.ModuleList([Transformer3D(L, cfg, out_ch, attention) for _ in in_chs])

    def layer(self, i: int, x: torch.Tensor, temb, context, num_frames: int) -> torch.Tensor:
        x = self.resnets[i](x, temb, num_frames)
        if hasattr(self, "temp_convs"):
            x = self.temp_convs[i](x, num_frames)
        if hasattr(self, "attentions"):
            x = self.attentions[i](x, context, num_frames)
        return x


class MidBlock(nn.Module):
    """``UNetMidBlock3DCrossAttn``: ResNet, temporal conv, transformer, ResNet, temporal conv."""

    def __init__(self, L: _Layers, cfg: VidRDUNet3DConfig, attention: AttentionFn):
        super().__init__()
        ch, g = cfg.block_out_channels[-1], cfg.norm_num_groups
        self.resnets = nn.ModuleList([ResnetBlock(L, ch, ch, cfg.time_embed_dim, g, cfg.norm_eps) for _ in range(2)])
        if cfg.add_temp_conv:
            self.temp_convs = nn.ModuleList([TemporalConv(L, ch) for _ in range(2)])
        self.attentions = nn.ModuleList([Transformer3D(L, cfg, ch, attention)])

    def _tc(self, i, x, f):
        return self.temp_convs[i](x, f) if hasattr(self, "temp_convs") else x

    def forward(self, x, temb, context, num_frames):
        x = self._tc(0, self.resnets[0](x, temb, num_frames), num_frames)
        x = self.attentions[0](x, context, num_frames)
        return self._tc(1, self.resnets[1](x, temb, num_frames), num_frames)


class VidRDUNet3D(nn.Module):
    """The VidRD video UNet: ``forward(x[B,C,F,H,W], t[B], context[B,L,D]) -> ε``.

    Architecture (official ``model/modules/{unet,unet_blocks,attention,resnet}.py``):

    * time: sinusoidal features of width ``C0`` (cos first, max period 10000, no shift), then
      ``time_embedding.linear_1`` -> SiLU -> ``linear_2`` (width ``4*C0``), shared by all frames.
    * ``conv_in`` per frame, then SD 2.1's down / mid / up blocks where every ResNet is followed by a
      temporal conv (``temp_convs``) and every spatial transformer holds, after its cross-attention,
      a temporal attention (``temp_attn`` with ``temp_norm``) over the frames of each pixel, on tokens
      to which a sinusoidal frame-position embedding was added.
    * Kept on purpose: the ResNets', temporal convs' and output GroupNorms see the 5-D
      ``[B, C, F, H, W]`` tensor, so their statistics span all frames of a video (the spatial
      transformers' GroupNorm is per frame).
    * Dropout layers (p=0.1 in the temporal convs) are identity at inference and are left out.

    Layouts: :meth:`forward` takes ``[B, C, F, H, W]`` (the official layout);
    :class:`~.frames.VidRDFrames` takes frames-as-batch ``[B*F, C, H, W]`` as ComfyUI's SD-VAE
    families do.

    ComfyUI hooks: ``operations=`` provides ``Linear``, ``Conv2d``, ``Conv3d``, ``GroupNorm`` and
    ``LayerNorm`` (default ``torch.nn``); ``device=`` / ``dtype=`` go to every layer;
    ``attention=`` is ``(q, k, v) -> out`` on ``[B, heads, N, d]``.
    """

    def __init__(self, config: VidRDUNet3DConfig | Mapping | None = None, *, operations=None, device=None,
                 dtype=None, attention: Optional[AttentionFn] = None, **fields):
        super().__init__()
        if not isinstance(config, VidRDUNet3DConfig):
            config = VidRDUNet3DConfig.from_dict(dict(config or {}, **fields))
        self.config = cfg = config
        attention = attention or default_attention
        L = _Layers(operations, device, dtype)
        boc = cfg.block_out_channels
        self.conv_in = L.conv2d(cfg.in_channels, boc[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(L, boc[0], cfg.time_embed_dim)

        self.down_blocks = nn.ModuleList()
        skips = [boc[0]]
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
        for i, ch in enumerate(reversed(boc)):
            last = i == len(boc) - 1
            in_chs = []
            for _ in range(cfg.layers_per_block + 1):
                in_chs.append(prev + skips.pop())
                prev = ch
            level = Level(L, cfg, in_chs, ch, cross=i > 0, attention=attention)
            if not last:
                level.upsamplers = nn.ModuleList([Upsample(L, ch)])
            self.up_blocks.append(level)

        self.conv_norm_out = L.group_norm(cfg.norm_num_groups, boc[0], cfg.norm_eps)
        self.conv_out = L.conv2d(boc[0], cfg.out_channels, 3, padding=1)

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    def forward(self, x: torch.Tensor, timesteps, context: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        frames, temb, ctx = video_unet_inputs(self, x, timesteps, context, "VidRD UNet",
                                              "OpenCLIP-H, as Stable Diffusion 2.1, for VidRD")
        b, _, f, h, w = x.shape
        s = video_unet_levels(self, self.conv_in(frames), temb, ctx, f)
        s = self.conv_out(F.silu(video_norm(self.conv_norm_out, s, f)))
        return s.reshape(b, f, cfg.out_channels, h, w).permute(0, 2, 1, 3, 4)


def expected_state_dict_shapes(config: VidRDUNet3DConfig) -> dict[str, list[int]]:
    """Every parameter name and shape of a UNet with ``config`` (built on the meta device)."""
    return {k: list(v.shape) for k, v in VidRDUNet3D(config, device="meta").state_dict().items()}


__all__ = ["TEMP_CONV_GROUPS", "VidRDUNet3D", "VidRDUNet3DConfig", "expected_state_dict_shapes",
           "frame_position_embedding", "video_norm"]
