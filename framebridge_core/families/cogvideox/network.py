"""The CogVideoX-2B transformer as fine-tuned by FrameBridge-CogVideoX ("CogVideoX-2B-modified").

A clean re-implementation of diffusers' ``CogVideoXTransformer3DModel`` (``cogvideox_transformer_3d.py``
with ``embeddings.py``, ``normalization.py``, ``attention_processor.py``) for the 2B layout only:
3-D sin-cos positions, no RoPE; FrameBridge feeds 32 channels (noisy latent + image-clip latent).
Own code because ComfyUI's native CogVideoX lays the 2B sin-cos table out differently and the pack
must not depend on diffusers. Parameter names and shapes are diffusers', so a diffusers
``transformer/`` folder loads with ``strict=True``; layers come from ``operations`` (ComfyUI passes
``comfy.ops``) and attention from ``attention=``. :class:`CogVideoXTransformer` gives the numerics.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...configs import config_from_dict
from ...errors import ConfigError, ShapeError
from ..layers import AttentionFn, default_attention, timestep_embedding

#: diffusers ``config.json`` keys that do not change the inference network.
IGNORED_CONFIG_KEYS = frozenset({"dropout"})

#: eps of the per-head q/k LayerNorms (hard-coded ``Attention(..., eps=1e-6)`` in diffusers' block).
QK_NORM_EPS = 1e-6

_FIX_2B = "FrameBridge-CogVideoX is built on CogVideoX-2B (sincos); load its transformer/ folder"


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CogVideoXConfig:
    """Architecture of the transformer, in diffusers' ``config.json`` field names.

    Defaults are FrameBridge-CogVideoX: CogVideoX-2B with ``in_channels`` 32 (diffusers' own
    default is 16, the plain 2B text-to-video model, which this class also builds). Fields of the
    5B/1.5 variants exist so their ``config.json`` parses, and are rejected with a clear message.
    """

    num_attention_heads: int = 30
    attention_head_dim: int = 64
    in_channels: int = 32
    out_channels: int = 16
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    time_embed_dim: int = 512
    ofs_embed_dim: Optional[int] = None
    text_embed_dim: int = 4096
    num_layers: int = 30
    attention_bias: bool = True
    sample_width: int = 90
    sample_height: int = 60
    sample_frames: int = 49
    patch_size: int = 2
    patch_size_t: Optional[int] = None
    temporal_compression_ratio: int = 4
    max_text_seq_length: int = 226
    activation_fn: str = "gelu-approximate"
    timestep_activation_fn: str = "silu"
    norm_elementwise_affine: bool = True
    norm_eps: float = 1e-5
    spatial_interpolation_scale: float = 1.875
    temporal_interpolation_scale: float = 1.0
    use_rotary_positional_embeddings: bool = False
    use_learned_positional_embeddings: bool = False
    patch_bias: bool = True

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"CogVideoXConfig: {msg}")

        need(not self.use_rotary_positional_embeddings,
             "use_rotary_positional_embeddings=True is not supported: this checkpoint uses rotary position "
             f"embeddings (CogVideoX-5B / CogVideoX1.5). Only False is allowed; {_FIX_2B}.")
        need(not self.use_learned_positional_embeddings,
             "use_learned_positional_embeddings=True is not supported: this is CogVideoX-5B-I2V (a learned, "
             f"fixed-size patch_embed.pos_embedding). Only False is allowed; {_FIX_2B}.")
        need(self.patch_size_t is None,
             f"patch_size_t={self.patch_size_t!r} is not supported: this is CogVideoX1.5 (patches span "
             f"frames too). Only None is allowed; {_FIX_2B}.")
        need(not self.ofs_embed_dim,
             f"ofs_embed_dim={self.ofs_embed_dim!r} is not supported: this is CogVideoX1.5-I2V (ofs "
             f"embedding). Only None is allowed; {_FIX_2B}.")
        need(self.activation_fn == "gelu-approximate",
             f"activation_fn={self.activation_fn!r} is not supported; CogVideoX-2B uses 'gelu-approximate' "
             "(GELU, tanh approximation). Set activation_fn to 'gelu-approximate'.")
        need(self.timestep_activation_fn == "silu",
             f"timestep_activation_fn={self.timestep_activation_fn!r} is not supported; use 'silu'.")
        need(self.flip_sin_to_cos is True and self.freq_shift == 0,
             f"flip_sin_to_cos={self.flip_sin_to_cos!r}, freq_shift={self.freq_shift!r} are not supported; "
             "CogVideoX uses the cos-first timestep sinusoid: set flip_sin_to_cos=True, freq_shift=0.")
        for name in ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
                     "time_embed_dim", "text_embed_dim", "num_layers", "sample_width", "sample_height",
                     "sample_frames", "patch_size", "temporal_compression_ratio", "max_text_seq_length"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                 f"{name}={value!r} must be a positive integer")
        need(self.inner_dim % 16 == 0,
             f"inner dim num_attention_heads*attention_head_dim = {self.num_attention_heads}*"
             f"{self.attention_head_dim} = {self.inner_dim} must be divisible by 16 (the 3-D sin-cos "
             "table splits it into D/4 temporal and 3D/4 spatial channels, each in [sin, cos] halves); "
             "change attention_head_dim or num_attention_heads.")
        for name in ("norm_eps", "spatial_interpolation_scale", "temporal_interpolation_scale"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and value > 0, f"{name}={value!r} must be a positive number")

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def base_grid(self) -> tuple[int, int, int]:
        """(latent frames, patch rows, patch columns) of diffusers' ``pos_embedding`` buffer."""
        frames = (self.sample_frames - 1) // self.temporal_compression_ratio + 1
        return frames, self.sample_height // self.patch_size, self.sample_width // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CogVideoXConfig":
        """From a dataclass dict or a diffusers ``transformer/config.json`` (``_class_name``,
        ``_diffusers_version`` and the other ``_`` keys, and ``dropout``, are ignored)."""
        kept = {k: v for k, v in data.items() if not k.startswith("_") and k not in IGNORED_CONFIG_KEYS}
        return config_from_dict(cls, kept)


# ----------------------------------------------------------------------------------------------
# 3-D sin-cos positions (diffusers ``get_3d_sincos_pos_embed``)
# ----------------------------------------------------------------------------------------------


def _sincos_1d(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """``[M] -> [M, embed_dim]`` float64: ``cat([sin(pos*w), cos(pos*w)])``, ``w_k = 1e4^(-k/(D/2))``."""
    omega = torch.arange(embed_dim // 2, dtype=torch.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000 ** omega
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_pos_embed_3d(embed_dim: int, frames: int, height: int, width: int,
                        spatial_interpolation_scale: float = 1.875,
                        temporal_interpolation_scale: float = 1.0) -> torch.Tensor:
    """``[frames*height*width, embed_dim]`` float64 table; rows frame-major, then patch row, column.

    Channels: ``D/4`` encode the frame index, then ``3D/4`` the position in the frame, whose first
    half encodes the *column* (w) and second half the row (h). Positions are ``arange / scale``
    rounded to float32 (as diffusers builds its grids), the frequencies and sin/cos are float64.
    """
    if embed_dim % 16:
        raise ConfigError(f"sin-cos table width {embed_dim} must be divisible by 16")
    d_t, d_s = embed_dim // 4, 3 * embed_dim // 4
    t = torch.arange(frames, dtype=torch.float32) / temporal_interpolation_scale
    h = torch.arange(height, dtype=torch.float32) / spatial_interpolation_scale
    w = torch.arange(width, dtype=torch.float32) / spatial_interpolation_scale
    emb_w = _sincos_1d(d_s // 2, w)[None, :, :].expand(height, width, d_s // 2)
    emb_h = _sincos_1d(d_s // 2, h)[:, None, :].expand(height, width, d_s // 2)
    spatial = torch.cat([emb_w, emb_h], dim=-1).reshape(1, height * width, d_s)
    temporal = _sincos_1d(d_t, t)[:, None, :]
    table = torch.cat([temporal.expand(frames, height * width, d_t),
                       spatial.expand(frames, height * width, d_s)], dim=-1)
    return table.reshape(frames * height * width, embed_dim)


# ----------------------------------------------------------------------------------------------
# Layers (diffusers module names, so the state-dict keys match)
# ----------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """``CogVideoXPatchEmbed`` (2B branch): per-frame Conv2d patchify and the text projection."""

    def __init__(self, cfg: CogVideoXConfig, *, operations, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        p = cfg.patch_size
        self.proj = operations.Conv2d(cfg.in_channels, cfg.inner_dim, kernel_size=(p, p), stride=p,
                                      bias=cfg.patch_bias, **kw)
        self.text_proj = operations.Linear(cfg.text_embed_dim, cfg.inner_dim, **kw)

    def forward(self, text: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, L, E]``, ``[B, F, C, H, W]`` -> ``[B, L, D]``, ``[B, F*(H/p)*(W/p), D]``."""
        B, Fr, C, H, W = video.shape
        v = self.proj(video.reshape(B * Fr, C, H, W))                   # [(B F), D, h, w]
        v = v.view(B, Fr, *v.shape[1:]).flatten(3).transpose(2, 3)      # [B, F, h*w, D]
        return self.text_proj(text), v.flatten(1, 2)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, *, operations, device=None, dtype=None):
        super().__init__()
        self.linear_1 = operations.Linear(in_dim, out_dim, device=device, dtype=dtype)
        self.linear_2 = operations.Linear(out_dim, out_dim, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class LayerNormZero(nn.Module):
    """``CogVideoXLayerNormZero``: one LayerNorm, separate ("expert") modulation per stream."""

    def __init__(self, cfg: CogVideoXConfig, *, operations, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.linear = operations.Linear(cfg.time_embed_dim, 6 * cfg.inner_dim, **kw)
        self.norm = operations.LayerNorm(cfg.inner_dim, eps=cfg.norm_eps,
                                         elementwise_affine=cfg.norm_elementwise_affine, **kw)

    def forward(self, x: torch.Tensor, enc: torch.Tensor, temb: torch.Tensor):
        shift, scale, gate, e_shift, e_scale, e_gate = self.linear(F.silu(temb)).chunk(6, dim=1)
        x = self.norm(x) * (1 + scale)[:, None, :] + shift[:, None, :]
        enc = self.norm(enc) * (1 + e_scale)[:, None, :] + e_shift[:, None, :]
        return x, enc, gate[:, None, :], e_gate[:, None, :]


class JointAttention(nn.Module):
    """Self-attention over ``[text; video]`` with per-head LayerNorm on q and k
    (``Attention`` + ``CogVideoXAttnProcessor2_0``, without RoPE)."""

    def __init__(self, cfg: CogVideoXConfig, *, operations, attention: AttentionFn, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        D, d = cfg.inner_dim, cfg.attention_head_dim
        self.heads = cfg.num_attention_heads
        self.attention = attention
        # registration order as diffusers' Attention (norms first), so the key order matches too
        self.norm_q = operations.LayerNorm(d, eps=QK_NORM_EPS, elementwise_affine=True, **kw)
        self.norm_k = operations.LayerNorm(d, eps=QK_NORM_EPS, elementwise_affine=True, **kw)
        self.to_q = operations.Linear(D, D, bias=cfg.attention_bias, **kw)
        self.to_k = operations.Linear(D, D, bias=cfg.attention_bias, **kw)
        self.to_v = operations.Linear(D, D, bias=cfg.attention_bias, **kw)
        self.to_out = nn.ModuleList([operations.Linear(D, D, bias=True, **kw)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        h = self.heads
        q = self.norm_q(self.to_q(x).view(B, N, h, D // h).transpose(1, 2))
        k = self.norm_k(self.to_k(x).view(B, N, h, D // h).transpose(1, 2))
        v = self.to_v(x).view(B, N, h, D // h).transpose(1, 2)
        out = self.attention(q, k, v)                                   # [B, h, N, d]
        return self.to_out[0](out.transpose(1, 2).reshape(B, N, D))


class _GeluTanh(nn.Module):
    """diffusers ``GELU(approximate="tanh")``: a projection then the activation."""

    def __init__(self, dim_in: int, dim_out: int, *, operations, device=None, dtype=None):
        super().__init__()
        self.proj = operations.Linear(dim_in, dim_out, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """``FeedForward`` (inner 4·D): ``net.0`` projection + GELU-tanh, ``net.1`` dropout slot, ``net.2``."""

    def __init__(self, dim: int, *, operations, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.net = nn.ModuleList([_GeluTanh(dim, 4 * dim, operations=operations, **kw), nn.Identity(),
                                  operations.Linear(4 * dim, dim, **kw)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class CogVideoXBlock(nn.Module):
    def __init__(self, cfg: CogVideoXConfig, *, operations, attention: AttentionFn, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.norm1 = LayerNormZero(cfg, operations=operations, **kw)
        self.attn1 = JointAttention(cfg, operations=operations, attention=attention, **kw)
        self.norm2 = LayerNormZero(cfg, operations=operations, **kw)
        self.ff = FeedForward(cfg.inner_dim, operations=operations, **kw)

    def forward(self, x: torch.Tensor, enc: torch.Tensor, temb: torch.Tensor):
        L = enc.shape[1]
        nx, nenc, gate, e_gate = self.norm1(x, enc, temb)
        att = self.attn1(torch.cat([nenc, nx], dim=1))
        x = x + gate * att[:, L:]
        enc = enc + e_gate * att[:, :L]
        nx, nenc, gate, e_gate = self.norm2(x, enc, temb)
        ff = self.ff(torch.cat([nenc, nx], dim=1))
        x = x + gate * ff[:, L:]
        enc = enc + e_gate * ff[:, :L]
        return x, enc


class AdaLayerNorm(nn.Module):
    """diffusers ``AdaLayerNorm(chunk_dim=1)``: ``linear(SiLU(temb))`` -> (shift, scale), in that order."""

    def __init__(self, cfg: CogVideoXConfig, *, operations, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.linear = operations.Linear(cfg.time_embed_dim, 2 * cfg.inner_dim, **kw)
        self.norm = operations.LayerNorm(cfg.inner_dim, eps=cfg.norm_eps,
                                         elementwise_affine=cfg.norm_elementwise_affine, **kw)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(F.silu(temb)).chunk(2, dim=1)
        return self.norm(x) * (1 + scale[:, None, :]) + shift[:, None, :]


# ----------------------------------------------------------------------------------------------
# The transformer
# ----------------------------------------------------------------------------------------------


class CogVideoXTransformer(nn.Module):
    """diffusers ``CogVideoXTransformer3DModel`` (2B layout) with the same parameters and numerics.

    ``forward(hidden_states [B, F, C_in, H, W], encoder_hidden_states [B, L, text_embed_dim],
    timestep [B] (float, fractional allowed; a scalar is broadcast)) -> [B, F, C_out, H, W]``:

    1. time: cos-first sinusoid of width ``inner_dim`` (float32), cast to the input dtype, then
       ``time_embedding`` (linear_1, SiLU, linear_2);
    2. tokens: ``text_proj(text)`` and the per-frame Conv2d patches (frame-major, then row, column);
       the video tokens get the 3-D sin-cos table (text positions get zeros in diffusers, i.e.
       nothing). diffusers keeps a non-persistent ``pos_embedding`` buffer for the ``sample_*``
       size and recomputes the table for any other size; both are the same function of
       (F, H/p, W/p), so here the float64 table is built on first use of a size and cached cast
       to the run's device and dtype (never in the state dict);
    3. blocks: LayerNormZero (shift, scale, gate for video and for text), joint attention over
       ``[text; video]`` with per-head LayerNorm q/k (eps 1e-6), gated residuals; the same for
       the GELU-tanh feed-forward;
    4. ``norm_final`` on the video tokens, ``norm_out`` (shift, scale), ``proj_out`` to
       ``(C_out, p, p)`` per patch, unpatchify.

    The text length must equal ``max_text_seq_length`` (diffusers' table covers exactly that many
    text positions; the model was trained on 226 T5 tokens). Hooks for hosts: ``operations`` gives
    the Linear/Conv2d/LayerNorm classes (``torch.nn`` by default; ComfyUI passes ``comfy.ops``),
    ``attention(q, k, v)`` works on ``[B, heads, N, head_dim]``.
    """

    _POS_CACHE_SIZE = 4

    def __init__(self, config: CogVideoXConfig, *, operations=None, device=None, dtype=None,
                 attention: Optional[AttentionFn] = None):
        super().__init__()
        if not isinstance(config, CogVideoXConfig):
            raise ConfigError(f"CogVideoXTransformer needs a CogVideoXConfig, got {type(config).__name__}")
        ops = nn if operations is None else operations
        attention = default_attention if attention is None else attention
        kw = dict(device=device, dtype=dtype)
        D = config.inner_dim
        self.config = config
        self.patch_embed = PatchEmbed(config, operations=ops, **kw)
        self.time_embedding = TimestepEmbedding(D, config.time_embed_dim, operations=ops, **kw)
        self.transformer_blocks = nn.ModuleList([
            CogVideoXBlock(config, operations=ops, attention=attention, **kw) for _ in range(config.num_layers)])
        self.norm_final = ops.LayerNorm(D, eps=config.norm_eps,
                                        elementwise_affine=config.norm_elementwise_affine, **kw)
        self.norm_out = AdaLayerNorm(config, operations=ops, **kw)
        self.proj_out = ops.Linear(D, config.patch_size ** 2 * config.out_channels, **kw)
        self._pos_cache: OrderedDict = OrderedDict()

    # Positions --------------------------------------------------------------------------------
    def pos_embedding(self, frames: int, height: int, width: int, device=None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[1, frames*height*width, inner_dim]`` sin-cos table for a grid of patches, cached."""
        key = (frames, height, width, torch.device(device) if device is not None else torch.device("cpu"), dtype)
        table = self._pos_cache.get(key)
        if table is None:
            cfg = self.config
            with torch.inference_mode(False), torch.no_grad():
                table = sincos_pos_embed_3d(cfg.inner_dim, frames, height, width,
                                            cfg.spatial_interpolation_scale, cfg.temporal_interpolation_scale)
                table = table.to(device=key[3], dtype=dtype)[None]
            self._pos_cache[key] = table
            while len(self._pos_cache) > self._POS_CACHE_SIZE:
                self._pos_cache.popitem(last=False)
        else:
            self._pos_cache.move_to_end(key)
        return table

    # Forward ----------------------------------------------------------------------------------
    def _check_inputs(self, x: torch.Tensor, text: torch.Tensor) -> None:
        cfg = self.config
        p = cfg.patch_size
        if x.ndim != 5 or x.shape[2] != cfg.in_channels:
            raise ShapeError(
                f"CogVideoX hidden_states has shape {tuple(x.shape)}; expected [B, F, {cfg.in_channels}, H, W] "
                f"(frames before channels; {cfg.in_channels} channels"
                + (" = 16 noisy latent + 16 image-clip latent channels" if cfg.in_channels == 32 else "") + ").")
        H, W = x.shape[-2:]
        if H % p or W % p:
            raise ShapeError(f"CogVideoX latent size {H}x{W} (HxW) is not divisible by patch_size={p}; "
                             f"use a latent size that is a multiple of {p} (pixels: a multiple of {8 * p}).")
        if text.ndim != 3 or text.shape[-1] != cfg.text_embed_dim:
            raise ShapeError(f"encoder_hidden_states has shape {tuple(text.shape)}; expected "
                             f"[B, {cfg.max_text_seq_length}, {cfg.text_embed_dim}] (T5 embeddings).")
        if text.shape[1] != cfg.max_text_seq_length:
            raise ShapeError(
                f"encoder_hidden_states has {text.shape[1]} tokens; CogVideoX-2B needs exactly "
                f"{cfg.max_text_seq_length} text tokens (T5 padded/truncated to max_text_seq_length="
                f"{cfg.max_text_seq_length}); pad or truncate the prompt embedding.")
        if text.shape[0] != x.shape[0]:
            raise ShapeError(f"batch mismatch: hidden_states has batch {x.shape[0]}, "
                             f"encoder_hidden_states has batch {text.shape[0]}; pass one text per sample.")

    @staticmethod
    def _timesteps(timestep, batch: int, device) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=device)
        if t.numel() == 1:
            return t.reshape(1).expand(batch)
        if t.shape != (batch,):
            raise ShapeError(f"timestep has shape {tuple(t.shape)}; expected [{batch}] (one per sample) or a scalar.")
        return t

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, timestep) -> torch.Tensor:
        self._check_inputs(hidden_states, encoder_hidden_states)
        cfg = self.config
        B, Fr, _, H, W = hidden_states.shape
        p = cfg.patch_size
        dtype = hidden_states.dtype
        t = self._timesteps(timestep, B, hidden_states.device)
        temb = self.time_embedding(timestep_embedding(t, cfg.inner_dim).to(dtype))

        text, video = self.patch_embed(encoder_hidden_states, hidden_states)
        video = video + self.pos_embedding(Fr, H // p, W // p, video.device, video.dtype)
        for block in self.transformer_blocks:
            video, text = block(video, text, temb)
        video = self.norm_final(video)
        video = self.norm_out(video, temb)
        return self.unpatchify(self.proj_out(video), Fr, H, W)

    def unpatchify(self, tokens: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
        """``[B, F*h*w, C*p*p] -> [B, F, C, H, W]`` (per-patch channel order ``(c, row, column)``)."""
        p = self.config.patch_size
        B = tokens.shape[0]
        out = tokens.reshape(B, frames, height // p, width // p, -1, p, p)
        return out.permute(0, 1, 4, 2, 5, 3, 6).reshape(B, frames, -1, height, width)


__all__ = [
    "CogVideoXConfig", "CogVideoXTransformer", "IGNORED_CONFIG_KEYS", "QK_NORM_EPS", "sincos_pos_embed_3d",
]
