"""The CogVideoX 3-D causal VAE (diffusers ``AutoencoderKLCogVideoX``), re-implemented natively.

FrameBridge-CogVideoX was trained and is run on latents from diffusers' orchestration of this VAE:
8-frame encode / 2-latent decode chunks that carry causal-conv caches, and ``enable_tiling()`` tiles
(active at 256²). GroupNorm statistics are per chunk and per tile, so both change the numbers; other
ports chunk differently and do not tile. Names and shapes equal diffusers' (``autoencoder_kl_cogvideox.py``,
``downsampling.py`` ``CogVideoXDownsample3D``, ``upsampling.py`` ``CogVideoXUpsample3D``), so a
``vae/diffusion_pytorch_model.safetensors`` loads with ``strict=True``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import ConfigError, ShapeError

_DOWN, _UP = "CogVideoXDownBlock3D", "CogVideoXUpBlock3D"
#: a causal conv's cache: the last k−1 (padded) input frames of every kernel-3 conv, per chunk pass
ConvCache = dict

# diffusers' ``CogVideoXSafeConv3d`` splits inputs over 2 GiB (counted at 2 bytes an element) along time
_SAFE_CONV_GIB = 2


@dataclass(frozen=True)
class CogVideoXVAEConfig:
    """diffusers ``AutoencoderKLCogVideoX`` config; defaults are CogVideoX-2B's ``vae/config.json``."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: tuple = (_DOWN,) * 4
    up_block_types: tuple = (_UP,) * 4
    block_out_channels: tuple = (128, 256, 256, 512)
    latent_channels: int = 16
    layers_per_block: int = 3
    act_fn: str = "silu"
    norm_eps: float = 1e-6
    norm_num_groups: int = 32
    temporal_compression_ratio: int = 4
    sample_height: int = 480
    sample_width: int = 720
    scaling_factor: float = 1.15258426
    shift_factor: Optional[float] = None
    latents_mean: Optional[tuple] = None
    latents_std: Optional[tuple] = None
    force_upcast: bool = True
    use_quant_conv: bool = False
    use_post_quant_conv: bool = False
    invert_scale_latents: bool = False

    def __post_init__(self) -> None:
        for name in ("down_block_types", "up_block_types", "block_out_channels", "latents_mean", "latents_std"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, tuple(v))
        ratio = self.temporal_compression_ratio
        if isinstance(ratio, float) and ratio.is_integer():
            object.__setattr__(self, "temporal_compression_ratio", int(ratio))
        self._validate()

    def _validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"CogVideoXVAEConfig: {msg}")

        for name in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups",
                     "sample_height", "sample_width"):
            v = getattr(self, name)
            need(isinstance(v, int) and v > 0, f"{name}={v!r} must be a positive integer")
        n = len(self.block_out_channels)
        need(n > 0 and all(isinstance(c, int) and c > 0 for c in self.block_out_channels),
             f"block_out_channels={self.block_out_channels} must be a non-empty list of positive integers")
        need(self.down_block_types == (_DOWN,) * n and self.up_block_types == (_UP,) * n,
             f"only {_DOWN}/{_UP} blocks exist in this VAE, one per block_out_channels entry; got "
             f"{list(self.down_block_types)} / {list(self.up_block_types)}")
        for ch in self.block_out_channels:
            need(ch % self.norm_num_groups == 0,
                 f"block width {ch} is not divisible by norm_num_groups={self.norm_num_groups}")
        need(self.act_fn in ("silu", "swish"), f"act_fn={self.act_fn!r} is not supported (only 'silu')")
        ratio = self.temporal_compression_ratio
        need(isinstance(ratio, int) and ratio > 0 and ratio & (ratio - 1) == 0 and ratio <= 2 ** (n - 1),
             f"temporal_compression_ratio={ratio!r} must be a power of two ≤ {2 ** (n - 1)} (one halving per "
             f"downsampling block)")
        need(not self.use_quant_conv and not self.use_post_quant_conv,
             "use_quant_conv/use_post_quant_conv=True are not supported (no released CogVideoX VAE has them, and "
             "diffusers sizes them from out_channels instead of latent_channels)")

    @property
    def time_levels(self) -> int:
        """How many leading down (and up) blocks halve (double) time: log2(temporal_compression_ratio)."""
        return int(math.log2(self.temporal_compression_ratio))

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent along height and width (one halving per block but the last)."""
        return 2 ** (len(self.block_out_channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, strict: bool = False) -> "CogVideoXVAEConfig":
        """From a diffusers ``vae/config.json`` dict: ``_``-keys (class name, version) are dropped, and other
        keys this VAE does not read are ignored as diffusers does (``strict=True`` raises for them)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in data if k not in known and not k.startswith("_"))
        if strict and unknown:
            raise ConfigError(f"CogVideoXVAEConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: v for k, v in data.items() if k in known})


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------


def _safe_conv3d(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``, split along time (with k−1 frames of overlap) when ``x`` is over 2 GiB at 2 bytes an
    element, as diffusers' ``CogVideoXSafeConv3d`` does for cuDNN."""
    gib = x.numel() * 2 / 1024 ** 3
    if gib <= _SAFE_CONV_GIB:
        return conv(x)
    k = conv.kernel_size[0]
    parts = torch.chunk(x, int(gib / _SAFE_CONV_GIB) + 1, dim=2)
    outs = [conv(parts[0])]
    for prev, part in zip(parts[:-1], parts[1:]):
        outs.append(conv(torch.cat((prev[:, :, -k + 1:], part), dim=2) if k > 1 else part))
    return torch.cat(outs, dim=2)


class CausalConv3d(nn.Module):
    """diffusers ``CogVideoXCausalConv3d`` (pad mode "first"): the time axis is padded in front with k−1
    copies of the first frame, or with the cached last k−1 input frames of the previous chunk; height and
    width are zero-padded by the conv itself."""

    def __init__(self, cin: int, cout: int, kernel: int, *, operations, device=None, dtype=None):
        super().__init__()
        self.time_kernel = kernel
        pad = (kernel - 1) // 2
        self.conv = operations.Conv3d(cin, cout, kernel, padding=(0, pad, pad), device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        k = self.time_kernel
        if k > 1:
            prev = cache.get(self)
            x = torch.cat(([prev] if prev is not None else [x[:, :, :1]] * (k - 1)) + [x], dim=2)
            cache[self] = x[:, :, -k + 1:].clone()  # a copy, so the padded chunk is not kept alive
        return _safe_conv3d(self.conv, x)


def _nearest_affine(h: torch.Tensor, y: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``h·up(y) + up(b)`` in place, ``up`` = nearest resize of ``[B, C, t, hh, ww]`` to ``h``'s size; for
    power-of-two factors by broadcasting (no full-size copies), else through ``F.interpolate``."""
    size = h.shape[2:]
    factors = [s // z if s % z == 0 else 0 for s, z in zip(size, y.shape[2:])]
    if all(f > 0 and f & (f - 1) == 0 for f in factors):
        (ft, fh, fw), (t, hh, ww) = factors, y.shape[2:]
        v = h.view(*h.shape[:2], t, ft, hh, fh, ww, fw)
        v.mul_(y[:, :, :, None, :, None, :, None]).add_(b[:, :, :, None, :, None, :, None])
        return h
    return h.mul_(F.interpolate(y, size=size)).add_(F.interpolate(b, size=size))


class SpatialNorm3D(nn.Module):
    """diffusers ``CogVideoXSpatialNorm3D``: ``GroupNorm(f)·conv_y(zq) + conv_b(zq)``, zq = the latent chunk
    resized (nearest) to ``f``, its first frame separately when ``f`` has an odd frame count > 1. The 1×1×1
    convs run on the small latent before the resize (they commute with a nearest resize)."""

    def __init__(self, f_channels: int, zq_channels: int, groups: int, *, operations, device=None, dtype=None):
        super().__init__()
        kw = dict(operations=operations, device=device, dtype=dtype)
        self.norm_layer = operations.GroupNorm(groups, f_channels, eps=1e-6, affine=True, device=device, dtype=dtype)
        self.conv_y = CausalConv3d(zq_channels, f_channels, 1, **kw)
        self.conv_b = CausalConv3d(zq_channels, f_channels, 1, **kw)

    def forward(self, f: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        y, b = self.conv_y(zq, {}), self.conv_b(zq, {})
        h = self.norm_layer(f).contiguous()  # a no-op for GroupNorm; _nearest_affine views it
        if f.shape[2] > 1 and f.shape[2] % 2 == 1:
            _nearest_affine(h[:, :, :1], y[:, :, :1], b[:, :, :1])
            _nearest_affine(h[:, :, 1:], y[:, :, 1:], b[:, :, 1:])
            return h
        return _nearest_affine(h, y, b)


class ResnetBlock3D(nn.Module):
    """diffusers ``CogVideoXResnetBlock3D`` without the time embedding (``temb_channels=0`` in the VAE):
    norm, SiLU, causal conv 3³, twice, plus a 1×1×1 shortcut conv when the width changes. ``zq`` selects
    the decoder's spatial norm."""

    def __init__(self, cin: int, cout: int, *, groups: int, eps: float, spatial_norm_dim: Optional[int],
                 operations, device=None, dtype=None):
        super().__init__()
        kw = dict(operations=operations, device=device, dtype=dtype)
        if spatial_norm_dim is None:
            self.norm1 = operations.GroupNorm(groups, cin, eps=eps, device=device, dtype=dtype)
            self.norm2 = operations.GroupNorm(groups, cout, eps=eps, device=device, dtype=dtype)
        else:
            self.norm1 = SpatialNorm3D(cin, spatial_norm_dim, groups, **kw)
            self.norm2 = SpatialNorm3D(cout, spatial_norm_dim, groups, **kw)
        self.conv1 = CausalConv3d(cin, cout, 3, **kw)
        self.conv2 = CausalConv3d(cout, cout, 3, **kw)
        if cin != cout:
            self.conv_shortcut = operations.Conv3d(cin, cout, 1, device=device, dtype=dtype)

    def _norm(self, norm: nn.Module, x: torch.Tensor, zq: Optional[torch.Tensor]) -> torch.Tensor:
        return F.silu(norm(x) if zq is None else norm(x, zq), inplace=True)

    def forward(self, x: torch.Tensor, cache: ConvCache, zq: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.conv1(self._norm(self.norm1, x, zq), cache)
        h = self.conv2(self._norm(self.norm2, h, zq), cache)
        if hasattr(self, "conv_shortcut"):
            x = _safe_conv3d(self.conv_shortcut, x)
        return h.add_(x)


def _frames_as_batch(x: torch.Tensor, conv: nn.Module, b: int) -> torch.Tensor:
    """Run a Conv2d on ``[B·T, C, H, W]`` frames and return ``[B, C', T, H', W']`` (a view)."""
    y = conv(x)
    return y.view(b, -1, *y.shape[1:]).transpose(1, 2)


class Downsample3D(nn.Module):
    """diffusers ``CogVideoXDownsample3D``: optional time halving by averaging frame pairs (an odd first
    frame kept alone), then zero padding of one row/column at the bottom/right and a 3×3 stride-2 Conv2d
    on every frame."""

    def __init__(self, channels: int, compress_time: bool, *, operations, device=None, dtype=None):
        super().__init__()
        self.compress_time = compress_time
        self.conv = operations.Conv2d(channels, channels, 3, stride=2, padding=0, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        pool = self.compress_time and t > 1
        single = t % 2 if pool else t  # leading frames taken as they are
        frames = x.new_zeros(b, single + (t - single) // 2, c, h + 1, w + 1)  # frames as batch, (0, 1, 0, 1) pad
        frames[:, :single, :, :h, :w] = x[:, :, :single].transpose(1, 2)
        if pool:  # avg_pool1d(kernel 2, stride 2) on the frames after the odd first one
            frames[:, single:, :, :h, :w] = ((x[:, :, single::2] + x[:, :, single + 1::2]) / 2).transpose(1, 2)
        return _frames_as_batch(frames.view(-1, c, h + 1, w + 1), self.conv, b)


class Upsample3D(nn.Module):
    """diffusers ``CogVideoXUpsample3D``: nearest ×2 in height and width, and with ``compress_time`` ×2 in
    time for more than one frame (an odd first frame stays single), then a 3×3 Conv2d on every frame."""

    def __init__(self, channels: int, compress_time: bool, *, operations, device=None, dtype=None):
        super().__init__()
        self.compress_time = compress_time
        self.conv = operations.Conv2d(channels, channels, 3, stride=1, padding=1, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2)
        if self.compress_time and t > 1:  # nearest ×2 in time = every frame twice
            odd = t % 2
            index = torch.arange(odd, t, device=x.device).repeat_interleave(2)
            index = torch.cat((index.new_zeros(odd), index))
            frames = frames.index_select(1, index)
        frames = frames.reshape(-1, c, h, w)
        return _frames_as_batch(F.interpolate(frames, scale_factor=2.0), self.conv, b)


class _Block(nn.Module):
    """A down or up block: ``resnets`` then one ``downsamplers``/``upsamplers`` entry (all but the last)."""

    def __init__(self, resnets: list, sampler: Optional[nn.Module], sampler_name: str):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        if sampler is not None:
            setattr(self, sampler_name, nn.ModuleList([sampler]))
        self._sampler_name = sampler_name

    def forward(self, x: torch.Tensor, cache: ConvCache, zq: Optional[torch.Tensor] = None) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache, zq)
        sampler = getattr(self, self._sampler_name, None)
        return x if sampler is None else sampler[0](x)


class _MidBlock(nn.Module):
    def __init__(self, resnets: list):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)

    def forward(self, x: torch.Tensor, cache: ConvCache, zq: Optional[torch.Tensor] = None) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache, zq)
        return x


class Encoder3D(nn.Module):
    """diffusers ``CogVideoXEncoder3D``: conv_in, down blocks (time halved in the first log2(ratio)), a
    2-ResNet mid block without attention, GroupNorm, SiLU, conv_out to mean and log-variance."""

    def __init__(self, cfg: CogVideoXVAEConfig, *, operations, device=None, dtype=None):
        super().__init__()
        kw = dict(operations=operations, device=device, dtype=dtype)
        res = dict(groups=cfg.norm_num_groups, eps=cfg.norm_eps, spatial_norm_dim=None, **kw)
        ch, n, levels = cfg.block_out_channels, len(cfg.block_out_channels), cfg.time_levels
        self.conv_in = CausalConv3d(cfg.in_channels, ch[0], 3, **kw)
        self.down_blocks = nn.ModuleList()
        for i, cout in enumerate(ch):
            cin = ch[max(i - 1, 0)]
            resnets = [ResnetBlock3D(cin if j == 0 else cout, cout, **res) for j in range(cfg.layers_per_block)]
            down = Downsample3D(cout, i < levels, **kw) if i < n - 1 else None
            self.down_blocks.append(_Block(resnets, down, "downsamplers"))
        self.mid_block = _MidBlock([ResnetBlock3D(ch[-1], ch[-1], **res) for _ in range(2)])
        self.norm_out = operations.GroupNorm(cfg.norm_num_groups, ch[-1], eps=1e-6, device=device, dtype=dtype)
        self.conv_out = CausalConv3d(ch[-1], 2 * cfg.latent_channels, 3, **kw)

    def forward(self, x: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        h = self.conv_in(x, cache)
        for block in self.down_blocks:
            h = block(h, cache)
        h = self.mid_block(h, cache)
        return self.conv_out(F.silu(self.norm_out(h), inplace=True), cache)


class Decoder3D(nn.Module):
    """diffusers ``CogVideoXDecoder3D``: conv_in, a 2-ResNet mid block and up blocks of layers_per_block+1
    ResNets with spatial norms conditioned on the latent chunk (time doubled in the first log2(ratio)),
    spatial norm, SiLU, conv_out."""

    def __init__(self, cfg: CogVideoXVAEConfig, *, operations, device=None, dtype=None):
        super().__init__()
        kw = dict(operations=operations, device=device, dtype=dtype)
        zc = cfg.latent_channels
        res = dict(groups=cfg.norm_num_groups, eps=cfg.norm_eps, spatial_norm_dim=zc, **kw)
        ch, n, levels = cfg.block_out_channels[::-1], len(cfg.block_out_channels), cfg.time_levels
        self.conv_in = CausalConv3d(zc, ch[0], 3, **kw)
        self.mid_block = _MidBlock([ResnetBlock3D(ch[0], ch[0], **res) for _ in range(2)])
        self.up_blocks = nn.ModuleList()
        for i, cout in enumerate(ch):
            cin = ch[max(i - 1, 0)]
            resnets = [ResnetBlock3D(cin if j == 0 else cout, cout, **res) for j in range(cfg.layers_per_block + 1)]
            up = Upsample3D(cout, i < levels, **kw) if i < n - 1 else None
            self.up_blocks.append(_Block(resnets, up, "upsamplers"))
        self.norm_out = SpatialNorm3D(ch[-1], zc, cfg.norm_num_groups, **kw)
        self.conv_out = CausalConv3d(ch[-1], cfg.out_channels, 3, **kw)

    def forward(self, z: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        h = self.conv_in(z, cache)
        h = self.mid_block(h, cache, z)
        for block in self.up_blocks:
            h = block(h, cache, z)
        return self.conv_out(F.silu(self.norm_out(h, z), inplace=True), cache)


# ----------------------------------------------------------------------------------------------
# Orchestration: frame chunks and tiles
# ----------------------------------------------------------------------------------------------


def frame_chunks(frames: int, per_chunk: int) -> list[tuple[int, int]]:
    """diffusers' frame batching: ``max(frames // per_chunk, 1)`` chunks of ``per_chunk``, the remainder
    ``frames % per_chunk`` joined to the first (17 frames by 8 → [0:9], [9:17]; 5 latents by 2 → [0:3], [3:5])."""
    rem = frames % per_chunk
    return [(per_chunk * i + (rem if i else 0), min(per_chunk * (i + 1) + rem, frames))
            for i in range(max(frames // per_chunk, 1))]


def _blend(a: torch.Tensor, b: torch.Tensor, extent: int, dim: int) -> None:
    """diffusers ``blend_v``/``blend_h``, in place on ``b``: its first rows (``dim`` 3) or columns (4) fade
    linearly from ``a``'s last ones, row by row with the same float weights."""
    extent = min(a.shape[dim], b.shape[dim], extent)
    for y in range(extent):
        b.select(dim, y).copy_(a.select(dim, y - extent) * (1 - y / extent) + b.select(dim, y) * (y / extent))


def _tiled(x: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor], tile: tuple, stride: tuple,
           extent: tuple, keep: tuple) -> torch.Tensor:
    """diffusers ``tiled_encode``/``tiled_decode``: ``run`` on overlapping ``tile``-sized windows every
    ``stride``; each result blends the one above and the one to its left (already blended) over ``extent``
    and keeps its first ``keep`` rows/columns. Holds one row of tiles at a time."""
    height, width = x.shape[-2:]
    if min(stride) < 1:
        raise ConfigError(f"CogVideoX VAE tiling: tiles of {tile[0]}x{tile[1]} give a tile stride of {stride}; "
                          f"use larger tiles or smaller overlap factors.")
    above, rows = None, []
    for i in range(0, height, stride[0]):
        row = []
        for j in range(0, width, stride[1]):
            t = run(x[..., i:i + tile[0], j:j + tile[1]])
            if above is not None:
                _blend(above[len(row)], t, extent[0], 3)
            if row:
                _blend(row[-1], t, extent[1], 4)
            row.append(t)
        rows.append(torch.cat([t[..., :keep[0], :keep[1]] for t in row], dim=4))
        above = row
    return torch.cat(rows, dim=3)


class CogVideoXVAE(nn.Module):
    """The CogVideoX VAE: :meth:`encode` pixels ``[B, 3, T, H, W]`` in [-1, 1] to the unscaled posterior
    mean ``[B, 16, (T−1)/4+1, H/8, W/8]``, :meth:`decode` back; both with diffusers' frame chunks and,
    with ``tiled=True``, its ``enable_tiling()`` tiles. Inference only (runs under ``torch.no_grad``); any
    dtype the weights have (GroupNorm runs in it, as in diffusers).

    Tiling attributes (diffusers' ``enable_tiling`` arguments) may be changed on the instance:
    ``tile_sample_min_height/width`` (default sample_height//2, sample_width//2) and
    ``tile_overlap_factor_height/width`` (1/6, 1/5).
    """

    #: frames per encoder chunk and latent frames per decoder chunk (diffusers'
    #: ``num_sample_frames_batch_size``/``num_latent_frames_batch_size``)
    sample_frames_per_chunk = 8
    latent_frames_per_chunk = 2

    def __init__(self, config: Optional[CogVideoXVAEConfig] = None, *, operations=None, device=None, dtype=None):
        super().__init__()
        self.config = config = config or CogVideoXVAEConfig()
        operations = operations or nn
        self.encoder = Encoder3D(config, operations=operations, device=device, dtype=dtype)
        self.decoder = Decoder3D(config, operations=operations, device=device, dtype=dtype)
        self.tile_sample_min_height = config.sample_height // 2
        self.tile_sample_min_width = config.sample_width // 2
        self.tile_overlap_factor_height = 1 / 6
        self.tile_overlap_factor_width = 1 / 5

    # -- geometry ------------------------------------------------------------------------------

    def tile_geometry(self, latent_side: bool) -> dict[str, tuple[int, int]]:
        """diffusers' tile numbers for decode (``latent_side=True``: windows on the latent, blends in pixels)
        or encode (windows in pixels, blends on the latent): min (the tiling threshold and window), stride,
        blend extent and kept rows/columns, each (height, width). Same float expressions as diffusers."""
        f = self.config.spatial_compression
        sample = (self.tile_sample_min_height, self.tile_sample_min_width)
        latent = (int(sample[0] / f), int(sample[1] / f))
        factors = (self.tile_overlap_factor_height, self.tile_overlap_factor_width)
        src, dst = (latent, sample) if latent_side else (sample, latent)
        extent = tuple(int(d * o) for d, o in zip(dst, factors))
        stride = tuple(int(s * (1 - o)) for s, o in zip(src, factors))
        return {"min": src, "stride": stride, "extent": extent, "keep": tuple(d - e for d, e in zip(dst, extent))}

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a ``frames``-frame clip; raises ShapeError for counts the causal VAE cannot take."""
        r = self.config.temporal_compression_ratio
        if frames < 1 or (frames - 1) % r:
            lower = max(1, (frames - 1) // r * r + 1)
            allowed = ", ".join(str(1 + i * r) for i in range(5))
            raise ShapeError(f"the CogVideoX VAE cannot encode {frames} frames: it takes 1 or {r}k+1 frames "
                             f"({allowed}, ...). Use {lower} or {lower + r} frames (e.g. {1 + 4 * r} frames = "
                             f"{r}·4+1).")
        return (frames - 1) // r + 1

    def _check(self, x: torch.Tensor, channels: int, what: str) -> None:
        if x.ndim != 5 or x.shape[1] != channels or 0 in x.shape:
            raise ShapeError(f"the CogVideoX VAE {what} takes [B, {channels}, T, H, W] tensors; got shape "
                             f"{list(x.shape)}")

    # -- encode / decode ----------------------------------------------------------------------

    def _encode_tile(self, x: torch.Tensor) -> torch.Tensor:
        cache: ConvCache = {}
        lat = self.config.latent_channels
        return torch.cat([self.encoder(x[:, :, s:e], cache)[:, :lat]
                          for s, e in frame_chunks(x.shape[2], self.sample_frames_per_chunk)], dim=2)

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        cache: ConvCache = {}
        return torch.cat([self.decoder(z[:, :, s:e], cache)
                          for s, e in frame_chunks(z.shape[2], self.latent_frames_per_chunk)], dim=2)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, tiled: bool = True) -> torch.Tensor:
        """Pixels ``[B, C, T, H, W]`` in [-1, 1] → posterior mean ``[B, latent, T', H/8, W/8]`` (diffusers
        ``encode(x).latent_dist.mode()``, not multiplied by ``scaling_factor``). T must be 1 or 4k+1, H and
        W multiples of 8. ``tiled``: diffusers with ``enable_tiling()`` (tiles only above the tile minimum)."""
        self._check(x, self.config.in_channels, "encoder")
        self.latent_frames(x.shape[2])
        f = self.config.spatial_compression
        height, width = x.shape[-2:]
        if height % f or width % f:
            raise ShapeError(f"the CogVideoX VAE cannot encode {width}x{height} frames: width and height must be "
                             f"multiples of {f} pixels; resize or crop to {width // f * f}x{height // f * f}.")
        g = self.tile_geometry(latent_side=False)
        if tiled and (height > g["min"][0] or width > g["min"][1]):
            return _tiled(x, self._encode_tile, g["min"], g["stride"], g["extent"], g["keep"])
        return self._encode_tile(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, tiled: bool = True) -> torch.Tensor:
        """Unscaled latents ``[B, latent, T', h, w]`` → pixels ``[B, C, T, 8h, 8w]`` (about [-1, 1], not
        clamped; 4T'−3 frames when T' is odd, as diffusers' 2-latent chunks give). ``tiled`` as in encode."""
        self._check(z, self.config.latent_channels, "decoder")
        g = self.tile_geometry(latent_side=True)
        height, width = z.shape[-2:]
        if tiled and (height > g["min"][0] or width > g["min"][1]):
            return _tiled(z, self._decode_tile, g["min"], g["stride"], g["extent"], g["keep"])
        return self._decode_tile(z)


__all__ = ["CogVideoXVAE", "CogVideoXVAEConfig", "frame_chunks"]
