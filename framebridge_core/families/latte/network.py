"""FrameBridge-Latte networks: the bridge transformer and the neural prior ("nwarp") network.

A clean re-implementation of the Latte video transformer as used by the FrameBridge UCF-101
models (docs/math.md §4.2, §5.3). Parameter names and shapes are exactly those of the official
checkpoints, so an official ``{"ema": state_dict}`` loads with ``strict=True``; the project's tiny
models are the same networks at a smaller size. :class:`LatteModel` describes the parameters, the
layout, the bridge input and the ComfyUI hooks (the core never imports ``comfy``);
:class:`LatteNeuralPrior` the neural prior.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...configs import config_from_dict
from ...errors import ConfigError, ShapeError
from ..layers import AttentionFn, default_attention, timestep_embedding

#: meanings of the bridge network output (LatteConfig.output)
OUTPUTS = ("eps_psi", "precond", "x0")

#: Head counts of the official Latte presets, keyed by hidden size (``models/latte.py``
#: ``Latte_{XL,L,B,S}_*``). The head count is not visible in a state dict; checkpoints.py uses
#: this table to infer it.
OFFICIAL_NUM_HEADS: dict[int, int] = {1152: 16, 1024: 16, 768: 12, 384: 6}

#: Official preset depths by hidden size (for documentation and sanity checks only).
OFFICIAL_DEPTH: dict[int, int] = {1152: 28, 1024: 24, 768: 12, 384: 12}

CONDITION_TYPES = (None, "concat_pre")


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatteConfig:
    """Architecture of one Latte network.

    Attributes:
        input_size: spatial size S of the (square) input, in latent pixels (32 for 256px + SD-VAE).
        patch_size: patch size p; ``input_size`` must be divisible by it.
        in_channels: channels the patch embedding sees: the latent channels, doubled when the
            neural-prior coarse video is channel-concatenated (FrameBridge "nwarp" bridge: 8).
        out_channels: channels of the output (the latent channels; doubled with ``learn_sigma``).
        hidden_size, depth, num_heads, mlp_ratio: transformer size. ``depth`` counts blocks;
            blocks alternate spatial (even index) / temporal (odd index), so it must be even.
        num_frames: frames of the generated video (16 for UCF-101). The network sees
            ``seq_frames`` frames: one more with ``condition_type="concat_pre"``.
        num_classes: number of real classes; 0 means no class conditioning (no ``y_embedder``).
        class_dropout: the class table has an extra last row, the null class used for CFG
            (official ``class_dropout_prob > 0``; always true for released models).
        condition_type: ``"concat_pre"`` (the bridge model: condition frame prepended along frames)
            or ``None`` (the neural prior).
        has_timestep: False for the neural prior (no ``t_embedder``; one deterministic pass).
        learn_sigma: the output carries extra variance channels (unused by FrameBridge).
        frequency_embedding_size: width of the sinusoidal timestep features (256).
        output: what the bridge network's raw output means: ``"eps_psi"`` (official) or
            ``"precond"`` (a preconditioned x0 prediction) or ``"x0"`` (x0 as a change from the
            prior), the project's tiny models, see :mod:`framebridge_core.preconditioning`. The
            layers are the same; callers convert.
        head_width: 0 (official): the final linear layer's patches are the output. ``> 0``: a
            convolutional head after unpatchify (the project's tiny models): the final layer also
            emits ``head_features`` feature channels per pixel, and three 3×3 convolutions of width
            ``head_width`` over [output, features, network input] add a residual to the output.
            Neighbouring patches then see each other at pixel level, which removes the patch grid
            that a linear unpatchify leaves (docs/notes/tiny-model.md measures it).
        head_features: feature channels the final layer adds for the conv head.
        head_overlap: an overlap-add unpatchify next to the linear one (the project's tiny models):
            a transposed convolution (kernel 2p, stride p, no bias, ``final_layer.overlap``) lets
            every token also paint the 2p × 2p window around its patch, added to the linear
            unpatchify before the conv head. It starts at zero, so a file without it warm-starts
            exactly; it removes the patch seams the conv head leaves (docs/notes/tiny-model.md).
        keep_first_frame: the samplers replace the x̂0 of video frame 0 by the condition frame at
            every step, so frame 0 of the result is the input image (the project's tiny models).
    """

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    out_channels: int = 4
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_frames: int = 16
    num_classes: int = 101
    class_dropout: bool = True
    condition_type: Optional[str] = "concat_pre"
    has_timestep: bool = True
    learn_sigma: bool = False
    frequency_embedding_size: int = 256
    output: str = "eps_psi"
    head_width: int = 0
    head_features: int = 0
    head_overlap: bool = False
    keep_first_frame: bool = False

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"LatteConfig: {msg}")

        for name in ("input_size", "patch_size", "in_channels", "out_channels", "hidden_size",
                     "depth", "num_heads", "num_frames", "frequency_embedding_size"):
            value = getattr(self, name)
            need(isinstance(value, int) and value > 0, f"{name}={value!r} must be a positive integer")
        need(self.input_size % self.patch_size == 0,
             f"input_size={self.input_size} is not divisible by patch_size={self.patch_size}")
        need(self.depth % 2 == 0,
             f"depth={self.depth} must be even (blocks alternate spatial/temporal)")
        need(self.hidden_size % self.num_heads == 0,
             f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        need(self.hidden_size % 4 == 0,
             f"hidden_size={self.hidden_size} must be divisible by 4 (2-D sin-cos position table)")
        need(self.mlp_ratio > 0, f"mlp_ratio={self.mlp_ratio!r} must be positive")
        need(isinstance(self.num_classes, int) and self.num_classes >= 0,
             f"num_classes={self.num_classes!r} must be an integer >= 0")
        need(self.condition_type in CONDITION_TYPES,
             f"condition_type={self.condition_type!r} is not supported; use one of {CONDITION_TYPES}")
        need(self.output in OUTPUTS, f"output={self.output!r} is not supported; use one of {OUTPUTS}")
        for name in ("head_width", "head_features"):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 0, f"{name}={value!r} must be an integer >= 0")
        need(self.head_width > 0 or self.head_features == 0,
             f"head_features={self.head_features} needs a conv head (head_width > 0)")
        need(isinstance(self.head_overlap, bool), f"head_overlap={self.head_overlap!r} must be True or False")
        need(not self.head_overlap or self.patch_size % 2 == 0,
             f"head_overlap=True needs an even patch_size (the 2p window is centred), got {self.patch_size}")
        need(not self.learn_sigma or self.out_channels % 2 == 0,
             f"learn_sigma=True needs an even out_channels, got {self.out_channels}")

    # Derived sizes ---------------------------------------------------------------------------
    @property
    def seq_frames(self) -> int:
        """Frames the network sees (length of ``temp_embed``)."""
        return self.num_frames + (1 if self.condition_type == "concat_pre" else 0)

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    @property
    def latent_channels(self) -> int:
        """Channels of the latent video (the eps_psi prediction)."""
        return self.out_channels // 2 if self.learn_sigma else self.out_channels

    @property
    def prior_concat(self) -> bool:
        """True when the coarse video (neural prior) is channel-concatenated to the input."""
        return self.in_channels == 2 * self.latent_channels

    @property
    def final_channels(self) -> int:
        """Channels per pixel the final linear layer emits (output, plus the conv head's features)."""
        return self.out_channels + self.head_features

    @property
    def null_class(self) -> Optional[int]:
        """Label id of the unconditional (CFG) class, or None (101 for UCF-101)."""
        return self.num_classes if (self.num_classes > 0 and self.class_dropout) else None

    @property
    def num_embeddings(self) -> int:
        return self.num_classes + (1 if self.class_dropout else 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LatteConfig":
        return config_from_dict(cls, data)


def latte_s2_bridge(in_channels: int = 4, **overrides: Any) -> LatteConfig:
    """Official FrameBridge-Latte bridge model (UCF-101): Latte-S/2, concat_pre, 16(+1) frames.

    ``in_channels=8`` is the variant trained with the neural prior (coarse video concat).
    """
    if in_channels not in (4, 8):
        raise ConfigError(f"in_channels={in_channels} is not a FrameBridge-Latte bridge; use 4 or 8")
    cfg = dict(input_size=32, patch_size=2, in_channels=in_channels, out_channels=4,
               hidden_size=384, depth=12, num_heads=6, mlp_ratio=4.0, num_frames=16,
               num_classes=101, class_dropout=True, condition_type="concat_pre",
               has_timestep=True, learn_sigma=False)
    cfg.update(overrides)
    return LatteConfig(**cfg)


def latte_s2_neural_prior(**overrides: Any) -> LatteConfig:
    """Official FrameBridge-Latte neural prior ("Latte-nwarp-S/2"): no timestep, 16 frames."""
    cfg = dict(input_size=32, patch_size=2, in_channels=4, out_channels=4, hidden_size=384,
               depth=12, num_heads=6, mlp_ratio=4.0, num_frames=16, num_classes=101,
               class_dropout=True, condition_type=None, has_timestep=False, learn_sigma=False)
    cfg.update(overrides)
    return LatteConfig(**cfg)


# ----------------------------------------------------------------------------------------------
# Fixed sin-cos embeddings (MAE / DiT convention, computed in float64)
# ----------------------------------------------------------------------------------------------


def _sincos_1d(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """``[M] -> [M, embed_dim]``: ``cat([sin(pos*w), cos(pos*w)])``, ``w_k = 10000^(-k/(D/2))``."""
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / (10000.0 ** omega)
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> torch.Tensor:
    """``[grid_size**2, embed_dim]`` float64 table, row-major over (row, column) patches.

    As in the official code, the first half encodes the *column* coordinate and the second half
    the row coordinate (``np.meshgrid(grid_w, grid_h)`` puts w first).
    """
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    return torch.cat([_sincos_1d(embed_dim // 2, cols), _sincos_1d(embed_dim // 2, rows)], dim=1)


def sincos_temp_embed_1d(embed_dim: int, length: int) -> torch.Tensor:
    """``[length, embed_dim]`` float64 table for frame positions ``0..length-1``."""
    return _sincos_1d(embed_dim, torch.arange(length, dtype=torch.float64))


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Conv2d patchify: ``[N, C, S, S] -> [N, (S/p)^2, D]`` (timm ``PatchEmbed`` layout)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int, *, operations,
                 device=None, dtype=None):
        super().__init__()
        self.proj = operations.Conv2d(in_channels, hidden_size, kernel_size=patch_size,
                                      stride=patch_size, bias=True, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256, *, operations,
                 device=None, dtype=None):
        super().__init__()
        self.mlp = nn.Sequential(
            operations.Linear(frequency_embedding_size, hidden_size, bias=True, device=device, dtype=dtype),
            nn.SiLU(),
            operations.Linear(hidden_size, hidden_size, bias=True, device=device, dtype=dtype),
        )
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_embedding_size).to(dtype))


class LabelEmbedder(nn.Module):
    """Class table; in eval there is no label dropout (pass the null class id explicitly)."""

    def __init__(self, num_embeddings: int, hidden_size: int, *, operations, device=None, dtype=None):
        super().__init__()
        self.embedding_table = operations.Embedding(num_embeddings, hidden_size, device=device, dtype=dtype)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, *, operations, attention: AttentionFn,
                 device=None, dtype=None):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = operations.Linear(dim, dim * 3, bias=True, device=device, dtype=dtype)
        self.proj = operations.Linear(dim, dim, bias=True, device=device, dtype=dtype)
        self.attention = attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., L, D]; all leading dims are batch.
        *lead, L, D = x.shape
        h = self.num_heads
        qkv = self.qkv(x).reshape(-1, L, 3, h, D // h).permute(2, 0, 3, 1, 4)
        out = self.attention(qkv[0], qkv[1], qkv[2])  # [N, h, L, d]
        out = out.transpose(1, 2).reshape(*lead, L, D)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, *, operations, device=None, dtype=None):
        super().__init__()
        self.fc1 = operations.Linear(dim, hidden, bias=True, device=device, dtype=dtype)
        self.fc2 = operations.Linear(hidden, dim, bias=True, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class TransformerBlock(nn.Module):
    """adaLN-Zero block. ``x``: ``[B, G, L, D]`` (attention over L); ``c``: ``[B, D]``."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, *, operations,
                 attention: AttentionFn, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.norm1 = operations.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, **kw)
        self.attn = Attention(hidden_size, num_heads, operations=operations, attention=attention, **kw)
        self.norm2 = operations.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, **kw)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), operations=operations, **kw)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), operations.Linear(hidden_size, 6 * hidden_size, bias=True, **kw))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        mods = self.adaLN_modulation(c)[:, None, None, :].chunk(6, dim=-1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        x = x + gate_msa * self.attn(_modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp * self.mlp(_modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, *, operations,
                 device=None, dtype=None, overlap: bool = False):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.norm_final = operations.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6, **kw)
        self.linear = operations.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True, **kw)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), operations.Linear(hidden_size, 2 * hidden_size, bias=True, **kw))
        # overlap-add unpatchify: token (i, j) paints pixels [i*p - p/2, i*p + 3p/2) (kernel 2p, stride p)
        conv_t = getattr(operations, "ConvTranspose2d", nn.ConvTranspose2d)
        self.overlap = (conv_t(hidden_size, out_channels, 2 * patch_size, stride=patch_size,
                                           padding=patch_size // 2, bias=False, **kw) if overlap else None)

    def modulated(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c)[:, None, None, :].chunk(2, dim=-1)
        return _modulate(self.norm_final(x), shift, scale)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.linear(self.modulated(x, c))

    def paint(self, m: torch.Tensor, grid: int) -> torch.Tensor:
        """The overlap-add part: modulated tokens ``[B, F, N, D]`` -> ``[B, F, C, S, S]``."""
        B, Fr, N, D = m.shape
        img = m.reshape(B * Fr, grid, grid, D).permute(0, 3, 1, 2)
        out = self.overlap(img.to(self.overlap.weight.dtype))
        return out.reshape(B, Fr, *out.shape[1:]).to(m.dtype)


class ConvHead(nn.Module):
    """Three 3×3 convolutions per frame whose result is added to the unpatchified output.

    Input: the unpatchified final-layer channels and the network input, ``[N, C_final + C_in, S, S]``;
    output ``[N, C_out, S, S]``. The last convolution starts at zero, so a new head leaves the
    network's function unchanged (a linear-head checkpoint warm-starts it exactly).
    """

    def __init__(self, in_channels: int, width: int, out_channels: int, *, operations, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.layers = nn.Sequential(
            operations.Conv2d(in_channels, width, 3, padding=1, **kw), nn.SiLU(),
            operations.Conv2d(width, width, 3, padding=1, **kw), nn.SiLU(),
            operations.Conv2d(width, out_channels, 3, padding=1, **kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


# ----------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------


def _as_label_tensor(y, batch: int, device) -> torch.Tensor:
    y = torch.as_tensor(y, device=device)
    if y.ndim == 0:
        y = y.expand(batch)
    return y.long()


class LatteModel(nn.Module):
    """The Latte video transformer (official ``Latte``), bridge or neural-prior flavour.

    Call as ``model(x, t, y)``:

    * ``x``: ``[B, F, C, H, W]`` with ``F == config.seq_frames`` (17 for the bridge model: the
      condition frame at index 0, then the 16 video frames), ``C == config.in_channels`` and
      ``H == W == config.input_size``.
    * ``t``: ``[B]`` bridge indices (int or float; an int/float scalar is broadcast). Must be
      ``None`` for networks without a timestep embedder (neural prior) and given otherwise.
    * ``y``: ``[B]`` class labels (or a scalar); ``config.null_class`` is the unconditional label.
      ``None`` means the null class (if the table has one). Ignored for ``num_classes == 0``.
    * ``drop_condition_frame``: return ``out[:, 1:]`` (``concat_pre`` only).

    Returns ``[B, F, out_channels, H, W]`` (``F - 1`` frames with ``drop_condition_frame``).

    Layout: tensors are ``[B, F, C, H, W]`` (frames before channels), as in the official code.

    Bridge model input (``condition_type="concat_pre"``): the condition latent frame is
    *prepended* along frames, so a 16-frame video is fed as 17 frames ``cat([cond, x_t], dim=1)``.
    With the neural prior (``in_channels`` = 2 x latent channels) the input is additionally
    channel-concatenated with ``cat([cond, coarse], dim=1)``:
    ``cat([[cond; x_t], [cond; coarse]], dim=2)``. The network output has 17 frames; frame 0 (the
    prepended condition slot) is meaningless and dropped: by the caller (``out[:, 1:]``), with
    ``forward(..., drop_condition_frame=True)``, or by :meth:`eps_psi` which builds the input and
    drops the frame in one call.

    The timestep fed to the bridge network is the integer bridge index ``i`` in ``0..999`` (not
    ``t_i``, not a sigma); the output is the Bridge-TTS ``eps_psi`` prediction,
    ``x0_hat = x_t - sigma_i * eps``.

    Parameters (names and shapes of the official checkpoints):

    * ``x_embedder.proj.{weight,bias}``          Conv2d patch embedding ``[D, C_in, p, p]``
    * ``t_embedder.mlp.{0,2}.{weight,bias}``     timestep MLP (absent in the neural prior)
    * ``y_embedder.embedding_table.weight``      class table ``[num_classes + 1, D]`` (last row = null class)
    * ``pos_embed`` ``[1, (S/p)^2, D]``, ``temp_embed`` ``[1, F_seq, D]``: fixed sin-cos tables. The
      official code stores them as ``nn.Parameter(requires_grad=False)``, so they *are* in the state
      dict; they are here too.
    * ``blocks.{i}.{attn.qkv, attn.proj, mlp.fc1, mlp.fc2, adaLN_modulation.1}.{weight,bias}``;
      even ``i`` = spatial block, odd ``i`` = temporal block (adaLN-Zero, LayerNorms without affine).
    * ``final_layer.{linear, adaLN_modulation.1}.{weight,bias}``.

    ComfyUI integration hooks:

    * ``operations=``: a namespace providing ``Linear``, ``Conv2d``, ``LayerNorm`` and ``Embedding``
      (default ``torch.nn``); pass ``comfy.ops.manual_cast`` / ``disable_weight_init``.
    * ``device=`` / ``dtype=``: forwarded to every layer constructor and the fixed embeddings.
    * ``attention=``: a callable ``(q, k, v) -> out`` on ``[B, heads, N, head_dim]`` tensors
      (default :func:`torch.nn.functional.scaled_dot_product_attention`).
    """

    def __init__(self, config: LatteConfig, *, operations=None, device=None, dtype=None,
                 attention: Optional[AttentionFn] = None):
        super().__init__()
        if not isinstance(config, LatteConfig):
            raise ConfigError(f"LatteModel needs a LatteConfig, got {type(config).__name__}")
        ops = nn if operations is None else operations
        attention = default_attention if attention is None else attention
        self.config = config
        kw = dict(device=device, dtype=dtype)
        D = config.hidden_size

        self.x_embedder = PatchEmbed(config.patch_size, config.in_channels, D, operations=ops, **kw)
        if config.has_timestep:
            self.t_embedder = TimestepEmbedder(D, config.frequency_embedding_size, operations=ops, **kw)
        else:
            self.t_embedder = None
        if config.num_classes > 0:
            self.y_embedder = LabelEmbedder(config.num_embeddings, D, operations=ops, **kw)
        else:
            self.y_embedder = None
        # Fixed sin-cos tables, stored as frozen Parameters exactly like the official code
        # (they are part of the state dict).
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_patches, D, **kw), requires_grad=False)
        self.temp_embed = nn.Parameter(torch.zeros(1, config.seq_frames, D, **kw), requires_grad=False)
        self.blocks = nn.ModuleList([
            TransformerBlock(D, config.num_heads, config.mlp_ratio, operations=ops,
                             attention=attention, **kw)
            for _ in range(config.depth)
        ])
        self.final_layer = FinalLayer(D, config.patch_size, config.final_channels, operations=ops, **kw,
                                      overlap=config.head_overlap)
        self.head = None
        if config.head_width:
            self.head = ConvHead(config.final_channels + config.in_channels, config.head_width,
                                 config.out_channels, operations=ops, **kw)
        self.reset_fixed_embeddings()

    # Weights ----------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_fixed_embeddings(self) -> None:
        """(Re)fill ``pos_embed`` and ``temp_embed`` with their sin-cos values (no-op on meta)."""
        if self.pos_embed.device.type == "meta":
            return
        cfg = self.config
        pos = sincos_pos_embed_2d(cfg.hidden_size, cfg.grid_size)
        temp = sincos_temp_embed_1d(cfg.hidden_size, cfg.seq_frames)
        self.pos_embed.copy_(pos.float().unsqueeze(0))
        self.temp_embed.copy_(temp.float().unsqueeze(0))

    @torch.no_grad()
    def initialize_weights(self, generator: Optional[torch.Generator] = None) -> None:
        """Official training initialisation (xavier-uniform linears, adaLN-Zero, zero head).

        Only needed to train from scratch; checkpoints overwrite everything.
        """
        def xavier_(w: torch.Tensor) -> None:
            fan_out, fan_in = w.shape[0], w[0].numel()
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            w.copy_(torch.rand(w.shape, generator=generator, dtype=torch.float32) * 2 * bound - bound)

        for module in self.modules():
            if isinstance(module, nn.Linear):
                xavier_(module.weight)
                if module.bias is not None:
                    module.bias.zero_()
        self.reset_fixed_embeddings()
        xavier_(self.x_embedder.proj.weight)
        self.x_embedder.proj.bias.zero_()
        if self.y_embedder is not None:
            w = self.y_embedder.embedding_table.weight
            w.copy_(torch.randn(w.shape, generator=generator) * 0.02)
        if self.t_embedder is not None:
            for idx in (0, 2):
                w = self.t_embedder.mlp[idx].weight
                w.copy_(torch.randn(w.shape, generator=generator) * 0.02)
        for block in self.blocks:
            block.adaLN_modulation[-1].weight.zero_()
            block.adaLN_modulation[-1].bias.zero_()
        self.final_layer.adaLN_modulation[-1].weight.zero_()
        self.final_layer.adaLN_modulation[-1].bias.zero_()
        self.final_layer.linear.weight.zero_()
        self.final_layer.linear.bias.zero_()
        if self.final_layer.overlap is not None:
            self.final_layer.overlap.weight.zero_()
        if self.head is not None:  # PyTorch's default init for the convolutions, the last one at zero
            for conv in self.head.layers[:-1]:
                if isinstance(conv, nn.Conv2d):
                    bound = 1.0 / math.sqrt(conv.weight[0].numel())
                    conv.weight.copy_(torch.rand(conv.weight.shape, generator=generator) * 2 * bound - bound)
                    conv.bias.zero_()
            self.head.layers[-1].weight.zero_()
            self.head.layers[-1].bias.zero_()

    # Forward ----------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.config
        want = (cfg.seq_frames, cfg.in_channels, cfg.input_size, cfg.input_size)
        if x.ndim != 5 or tuple(x.shape[1:]) != want:
            extra = ""
            if cfg.condition_type == "concat_pre":
                extra = (f" ({cfg.num_frames} video frames + 1 prepended condition frame; "
                         f"use build_bridge_input/eps_psi to assemble it)")
            raise ShapeError(
                f"Latte input has shape {tuple(x.shape)}; this network expects "
                f"[B, {want[0]}, {want[1]}, {want[2]}, {want[3]}] as [B, F, C, H, W]{extra}.")

    def conditioning(self, t, y, batch: int, device, dtype) -> Optional[torch.Tensor]:
        """The adaLN conditioning vector ``[B, D]`` (timestep embedding + class embedding)."""
        cfg = self.config
        c = None
        if self.t_embedder is not None:
            if t is None:
                raise ConfigError("this Latte network has a timestep embedder: pass t (bridge index)")
            t = torch.as_tensor(t, device=device)
            if t.ndim == 0:
                t = t.expand(batch)
            if t.shape != (batch,):
                raise ShapeError(f"t has shape {tuple(t.shape)}; expected [{batch}] (one index per sample)")
            c = self.t_embedder(t, dtype)
        elif t is not None:
            raise ConfigError("this Latte network (neural prior) has no timestep embedder: pass t=None")
        if self.y_embedder is not None:
            if y is None:
                if cfg.null_class is None:
                    raise ConfigError("this Latte network is class-conditional: pass y (class labels)")
                y = cfg.null_class
            y = _as_label_tensor(y, batch, device)
            if y.shape != (batch,):
                raise ShapeError(f"y has shape {tuple(y.shape)}; expected [{batch}] (one label per sample)")
            if y.device.type != "meta" and bool(((y < 0) | (y >= cfg.num_embeddings)).any()):
                raise ConfigError(
                    f"class label(s) {y.tolist()} out of range: use 0..{cfg.num_classes - 1}"
                    + (f", or {cfg.null_class} for the unconditional (null) class" if cfg.null_class is not None else ""))
            ye = self.y_embedder(y).to(dtype)
            c = ye if c is None else c + ye
        return c

    def forward(self, x: torch.Tensor, t=None, y=None, *, drop_condition_frame: bool = False) -> torch.Tensor:
        self._check_input(x)
        cfg = self.config
        B, Fr, C, H, W = x.shape
        dtype = x.dtype
        c = self.conditioning(t, y, B, x.device, dtype)
        if c is None:  # unconditional network without timestep: adaLN sees zeros
            c = torch.zeros(B, cfg.hidden_size, device=x.device, dtype=dtype)

        h = self.x_embedder(x.reshape(B * Fr, C, H, W))                      # [(B F), N, D]
        h = h + self.pos_embed.to(dtype)
        h = h.reshape(B, Fr, cfg.num_patches, cfg.hidden_size)               # [B, F, N, D]
        for i in range(0, len(self.blocks), 2):
            h = self.blocks[i](h, c)                                        # spatial: over N
            h = h.transpose(1, 2)                                           # [B, N, F, D]
            if i == 0:
                h = h + self.temp_embed.to(dtype)
            h = self.blocks[i + 1](h, c)                                    # temporal: over F
            h = h.transpose(1, 2)                                           # [B, F, N, D]
        fl = self.final_layer
        m = fl.modulated(h, c)
        out = self.unpatchify(fl.linear(m))                                 # [B, F, C, S, S]
        if fl.overlap is not None:
            out = out + fl.paint(m, cfg.grid_size)
        if self.head is not None:
            feats = torch.cat([out, x.to(out.dtype)], dim=2).reshape(B * Fr, -1, H, W)
            out = out[:, :, : cfg.out_channels] + self.head(feats).reshape(B, Fr, cfg.out_channels, H, W)
        if drop_condition_frame:
            if cfg.condition_type != "concat_pre":
                raise ConfigError("drop_condition_frame=True needs condition_type='concat_pre'")
            out = out[:, 1:]
        return out

    def unpatchify(self, h: torch.Tensor) -> torch.Tensor:
        """``[B, F, N, p*p*C] -> [B, F, C, S, S]`` (patch layout ``(p, q, c)`` as timm/DiT)."""
        cfg = self.config
        B, Fr = h.shape[:2]
        g, p, c = cfg.grid_size, cfg.patch_size, cfg.final_channels
        h = h.reshape(B, Fr, g, g, p, p, c).permute(0, 1, 6, 2, 4, 3, 5)
        return h.reshape(B, Fr, c, g * p, g * p)

    def forward_with_cfg(self, x: torch.Tensor, t, y, cfg_scale: float, *,
                         null_class: Optional[int] = None,
                         drop_condition_frame: bool = False) -> torch.Tensor:
        """Class classifier-free guidance in one batched pass.

        Returns ``uncond + cfg_scale * (cond - uncond)`` on the first ``latent_channels`` output
        channels (all of them unless ``learn_sigma``; the official ``forward_with_cfg`` guides
        channels ``[:4]`` = the latent channels and keeps the rest), for the batch of ``x``.
        The unconditional branch only swaps the label for the null class; condition frame and
        coarse video are kept.
        """
        cfg = self.config
        null = cfg.null_class if null_class is None else null_class
        if null is None:
            raise ConfigError("classifier-free guidance needs a class table with a null class")
        B = x.shape[0]
        y = _as_label_tensor(y, B, x.device)
        t2 = None
        if t is not None:
            t = torch.as_tensor(t, device=x.device)
            t2 = torch.cat([t.expand(B), t.expand(B)]) if t.ndim == 0 else torch.cat([t, t])
        out = self(torch.cat([x, x]), t2, torch.cat([y, torch.full_like(y, null)]),
                   drop_condition_frame=drop_condition_frame)
        cond, uncond = out[:B], out[B:]
        k = cfg.latent_channels
        guided = uncond[:, :, :k] + cfg_scale * (cond[:, :, :k] - uncond[:, :, :k])
        if k == out.shape[2]:
            return guided
        return torch.cat([guided, cond[:, :, k:]], dim=2)

    # Bridge helpers ---------------------------------------------------------------------------
    def build_bridge_input(self, x_t: torch.Tensor, cond_frame: torch.Tensor,
                           coarse: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Assemble the ``concat_pre`` input of the bridge network.

        ``x_t``: ``[B, F, C, H, W]`` bridge state; ``cond_frame``: the condition latent as
        ``[B, C, H, W]``, ``[B, 1, C, H, W]`` or a whole prior video ``[B, F', C, H, W]`` (its
        frame 0 is used, as in the official ``construct_conditioned_input``); ``coarse``: the
        neural-prior video ``[B, F, C, H, W]``, required iff ``config.prior_concat``.
        Returns ``cat([cond, x_t], 1)`` or ``cat([cat([cond, x_t], 1), cat([cond, coarse], 1)], 2)``.
        """
        cfg = self.config
        if cfg.condition_type != "concat_pre":
            raise ConfigError("build_bridge_input is for the concat_pre bridge network")
        if cond_frame.ndim == 4:
            cond = cond_frame[:, None]
        elif cond_frame.ndim == 5:
            cond = cond_frame[:, :1]
        else:
            raise ShapeError(f"cond_frame has shape {tuple(cond_frame.shape)}; expected [B, C, H, W] "
                             f"or [B, F, C, H, W]")
        if x_t.ndim != 5 or x_t.shape[0] != cond.shape[0] or x_t.shape[2:] != cond.shape[2:]:
            raise ShapeError(f"x_t {tuple(x_t.shape)} and condition frame {tuple(cond.shape)} do not "
                             f"match as [B, F, C, H, W]")
        x_in = torch.cat([cond.to(x_t.dtype), x_t], dim=1)
        if cfg.prior_concat:
            if coarse is None:
                raise ConfigError("this bridge network was trained with the neural prior "
                                  f"(in_channels={cfg.in_channels}): pass the coarse video")
            if coarse.shape != x_t.shape:
                raise ShapeError(f"coarse video has shape {tuple(coarse.shape)}; expected {tuple(x_t.shape)}")
            x_in = torch.cat([x_in, torch.cat([cond.to(x_t.dtype), coarse.to(x_t.dtype)], dim=1)], dim=2)
        elif coarse is not None:
            raise ConfigError("this bridge network has no neural-prior input "
                              f"(in_channels={cfg.in_channels}); do not pass a coarse video")
        return x_in

    def eps_psi(self, x_t: torch.Tensor, t, y, cond_frame: torch.Tensor,
                coarse: Optional[torch.Tensor] = None, cfg_scale: float = 1.0) -> torch.Tensor:
        """Bridge network prediction ``eps_psi`` for the video frames (frame 0 dropped).

        ``x0_hat = x_t - sigma_t * eps_psi``. ``cfg_scale != 1`` runs class CFG (null class).
        """
        x_in = self.build_bridge_input(x_t, cond_frame, coarse)
        if cfg_scale == 1.0:
            return self(x_in, t, y, drop_condition_frame=True)[:, :, : self.config.latent_channels]
        return self.forward_with_cfg(x_in, t, y, cfg_scale, drop_condition_frame=True)[
            :, :, : self.config.latent_channels]


class LatteNeuralPrior(nn.Module):
    """The neural prior network (official ``Latte_nwarp``, "regression" supervision).

    Holds the transformer as ``self.nwarp_model`` so that state-dict keys carry the official
    ``nwarp_model.`` prefix. ``forward(first_frame, y)`` takes the condition latent as
    ``[B, C, H, W]``, ``[B, 1, C, H, W]`` or already repeated ``[B, F, C, H, W]``, repeats
    frame 0 to ``num_frames`` frames (the official input is ``frame_cond.repeat(1, 16, ...)``)
    and returns the coarse video ``[B, F, C, H, W]`` in a single pass (no timestep, no CFG).
    """

    def __init__(self, config: LatteConfig, *, operations=None, device=None, dtype=None,
                 attention: Optional[AttentionFn] = None):
        super().__init__()
        if config.has_timestep or config.condition_type is not None:
            raise ConfigError("the neural prior network has no timestep embedder and no prepended "
                              "condition frame: use has_timestep=False, condition_type=None")
        self.nwarp_model = LatteModel(config, operations=operations, device=device, dtype=dtype,
                                      attention=attention)

    @property
    def config(self) -> LatteConfig:
        return self.nwarp_model.config

    def forward(self, first_frame: torch.Tensor, y=None) -> torch.Tensor:
        if first_frame.ndim == 4:
            first_frame = first_frame[:, None]
        if first_frame.ndim != 5:
            raise ShapeError(f"neural prior input has shape {tuple(first_frame.shape)}; expected "
                             f"[B, C, H, W] or [B, F, C, H, W]")
        x = first_frame[:, :1].expand(-1, self.config.num_frames, -1, -1, -1)
        out = self.nwarp_model(x.contiguous(), None, y)
        if self.config.keep_first_frame:  # frame 0 of the coarse video is the known image
            out = torch.cat([first_frame[:, :1].to(out.dtype), out[:, 1:]], dim=1)
        return out


def build_latte(config: LatteConfig, **kwargs: Any) -> nn.Module:
    """:class:`LatteNeuralPrior` for a neural-prior config, :class:`LatteModel` otherwise."""
    if not config.has_timestep and config.condition_type is None:
        return LatteNeuralPrior(config, **kwargs)
    return LatteModel(config, **kwargs)


__all__ = [
    "AttentionFn", "LatteConfig", "LatteModel", "LatteNeuralPrior", "OFFICIAL_NUM_HEADS",
    "OFFICIAL_DEPTH", "build_latte", "latte_s2_bridge",
    "latte_s2_neural_prior", "sincos_pos_embed_2d", "sincos_temp_embed_1d",
]
