"""FrameBridge-VideoCrafter: family config and detection, checkpoint splitting, SAF table check,
the bridge network wrapper and its frames-as-batch adapter (spec §2, §3.4–3.5, §4.1, §5.2).

The released model is a PyTorch-Lightning ``.ckpt`` whose ``state_dict`` holds the whole
``LatentVisualDiffusion``:

* ``model.diffusion_model.*``  the 3D UNet (:mod:`framebridge_core.models.lvdm_unet3d`),
* ``image_proj_model.*``       the Resampler (:mod:`framebridge_core.models.resampler`),
* ``cond_stage_model.model.*`` OpenCLIP ViT-H text tower, ``embedder.model.visual.*`` its vision
  tower, ``first_stage_model.*`` the SD VAE: hosts load these with their own encoders
  (:func:`split_checkpoint` hands them over, prefix stripped),
* schedule buffers (``betas``, ``alphas_cumprod``, …, ``bridge_sigmas``, ``bridge_aligned_t``).

The parts may also come as separate files: a UNet file (keys with ``model.diffusion_model.``,
``diffusion_model.`` or no prefix) optionally next to ``image_proj_model.*``.

Sampling semantics (official ``ddpm3d.py:865-891``, ``bridge_first_order.py``): the network sees
the SAF-aligned input ``z = (x_t − b_i·y)/√(a_i²+c_i²)`` channel-concatenated with the image
latent (``[z, c_concat]``, noisy first), the float timestep ``t̃_i`` of SD's scaled-linear schedule,
the context ``[77 text tokens, 256 Resampler tokens]`` and the frame stride ``fs``; it predicts
``eps_psi`` with ``x̂0 = x_t − σ_i·F`` on the raw state. CFG drops only the text.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn

from .alignment import scaled_linear_alphas_cumprod, snr_aligned_timesteps
from .bridge import BridgeSchedule, gather
from .checkpoints import (
    FamilyDetector,
    FamilyInfo,
    check_state_dict,
    load_weights_strict,
    register_family,
)
from .errors import CheckpointError, ConfigError, ShapeError
from .frames_adapter import PRIOR_KEY, fold_frames, unfold_frames
from .models.lvdm_unet3d import UNet3D, UNet3DConfig
from .models.resampler import Resampler, ResamplerConfig

VIDEOCRAFTER = "videocrafter_bridge"
UNET_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")
PART_PREFIXES = {
    "image_proj": "image_proj_model.",
    "clip_text": "cond_stage_model.",
    "clip_vision": "embedder.",
    "vae": "first_stage_model.",
}
#: Persistent buffers of the official LatentDiffusion (schedule tables); never network weights.
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "bridge_coef_x0", "bridge_coef_x1", "bridge_sqrt_var", "bridge_alphas", "bridge_alphas_bar",
    "bridge_sigmas", "bridge_sigmas_bar", "bridge_aligned_t", "scale_factor", "logvar", "scale_arr",
)
META_RESAMPLER_HEADS = "framebridge.resampler_heads"
#: Official defaults (``run_bridge.sh``, spec §3.7).
DEFAULT_CFG = 7.5
DEFAULT_FS = 3
DEFAULT_STEPS = 50
DEFAULT_SPACING = "trailing"
TEXT_TOKENS = 77
#: Frame strides seen in training (``fs ~ U{1..6}``, spec §3.5).
TRAINED_FS = (1, 6)


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoCrafterConfig:
    """The bridge network: UNet + Resampler, on SD's 4-channel latents (spec §5.2)."""

    unet: UNet3DConfig = field(default_factory=UNet3DConfig)
    resampler: Optional[ResamplerConfig] = field(default_factory=ResamplerConfig)
    #: latent size the model was trained at (32 = 256 px); other multiples of the UNet's
    #: downsampling run but are outside training.
    latent_size: int = 32

    def __post_init__(self) -> None:
        u, r = self.unet, self.resampler
        if u.in_channels != 2 * u.out_channels:
            raise ConfigError(f"a FrameBridge-VideoCrafter UNet takes [z, image latent]: in_channels={u.in_channels} "
                              f"must be 2 x out_channels={u.out_channels}.")
        if r is not None:
            if r.output_dim != u.context_dim:
                raise ConfigError(f"the Resampler makes {r.output_dim}-d tokens but the UNet context is {u.context_dim}-d.")
            if r.num_queries != u.image_tokens_per_frame or (r.video_length or 1) != u.temporal_length:
                raise ConfigError(
                    f"the Resampler makes {r.num_queries} x {r.video_length} tokens; the UNet takes "
                    f"{u.image_tokens_per_frame} per frame for {u.temporal_length} frames.")

    @property
    def num_frames(self) -> int:
        return self.unet.temporal_length

    @property
    def latent_channels(self) -> int:
        return self.unet.out_channels

    def to_dict(self) -> dict[str, Any]:
        return {"unet": self.unet.to_dict(), "resampler": None if self.resampler is None else self.resampler.to_dict(),
                "latent_size": self.latent_size}


def official_config() -> VideoCrafterConfig:
    """The released FrameBridge-VideoCrafter (256 px, 16 frames)."""
    return VideoCrafterConfig()


# ----------------------------------------------------------------------------------------------
# Splitting and detection
# ----------------------------------------------------------------------------------------------


@dataclass
class VideoCrafterParts:
    """A checkpoint split into its parts, each with its prefix stripped (empty dict when absent)."""

    unet: dict
    image_proj: dict
    clip_text: dict
    clip_vision: dict
    vae: dict
    buffers: dict
    unet_prefix: str = ""
    ignored: tuple = ()


def _unet_prefix(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    for p in UNET_PREFIXES:
        if f"{p}input_blocks.0.0.weight" in sd and f"{p}time_embed.0.weight" in sd and \
                any(k.startswith(f"{p}input_blocks.") and ".temopral_conv." in k for k in sd):
            return p
    return None


def split_checkpoint(sd: Mapping[str, torch.Tensor]) -> VideoCrafterParts:
    """Split a full Lightning state dict (or a UNet / UNet+Resampler file) into its parts.

    DynamiCrafter-trained checkpoints name the frame-stride MLP ``framestride_embed``; it is
    renamed to ``fps_embedding`` as the official loader does (``inference.py:41-46``).
    """
    prefix = _unet_prefix(sd)
    if prefix is None:
        raise CheckpointError("no FrameBridge-VideoCrafter UNet in this checkpoint: expected keys like "
                              "'model.diffusion_model.input_blocks.0.0.weight' with temporal layers ('temopral_conv').")
    parts = {name: {} for name in PART_PREFIXES}
    unet, buffers, ignored = {}, {}, []
    for k, v in sd.items():
        for name, p in PART_PREFIXES.items():
            if k.startswith(p):
                parts[name][k[len(p):]] = v
                break
        else:
            if k in SCHEDULE_BUFFERS:
                buffers[k] = v
            elif k.startswith(prefix):
                unet[k[len(prefix):].replace("framestride_embed.", "fps_embedding.")] = v
            else:
                ignored.append(k)
    if "model_ema.decay" in sd or any(k.startswith("model_ema.") for k in ignored):
        ignored = [k for k in ignored if not k.startswith("model_ema.")]
    return VideoCrafterParts(unet=unet, buffers=buffers, unet_prefix=prefix, ignored=tuple(ignored), **parts)


def _count(sd, pattern: str) -> int:
    ids = {int(m.group(1)) for k in sd for m in [re.match(pattern, k)] if m}
    return max(ids) + 1 if ids else 0


def infer_unet_config(sd: Mapping[str, torch.Tensor], temporal_length: int = 16) -> UNet3DConfig:
    """The UNet architecture from key names and shapes (prefix-free UNet state dict)."""
    w_in, w_out = sd["input_blocks.0.0.weight"], sd.get("out.2.weight")
    if w_in.ndim != 4 or w_out is None or w_out.ndim != 4:
        raise CheckpointError(f"unexpected UNet in/out convolutions: input_blocks.0.0.weight {list(w_in.shape)}, "
                              f"out.2.weight {None if w_out is None else list(w_out.shape)}.")
    if any("relative_position" in k for k in sd) or any(k.endswith(".mask") for k in sd):
        raise CheckpointError("this VideoCrafter UNet uses relative-position or causal temporal attention, which the "
                              "released FrameBridge-VideoCrafter does not; it is not supported.")
    mc, in_ch, out_ch = int(w_in.shape[0]), int(w_in.shape[1]), int(w_out.shape[0])
    n_in = _count(sd, r"input_blocks\.(\d+)\.")
    downs = sorted(int(m.group(1)) for k in sd for m in [re.match(r"input_blocks\.(\d+)\.0\.op\.weight$", k)] if m)
    levels = len(downs) + 1
    if (n_in - 1 - len(downs)) % levels:
        raise CheckpointError(f"cannot read the UNet levels: {n_in} input blocks with {len(downs)} downsamplers.")
    nrb = (n_in - 1 - len(downs)) // levels
    mult, attn_res = [], []
    for level in range(levels):
        first = 1 + level * (nrb + 1)
        w = sd.get(f"input_blocks.{first}.0.in_layers.2.weight")
        if w is None:
            raise CheckpointError(f"missing input_blocks.{first}.0.in_layers.2.weight (level {level}).")
        mult.append(int(w.shape[0]) // mc)
        if f"input_blocks.{first}.1.proj_in.weight" in sd:
            attn_res.append(2 ** level)
    init = sd.get("init_attn.0.proj_in.weight")
    heads_add = 8
    if init is not None:
        head_ch = int(init.shape[0]) // heads_add
    else:
        head_ch = 64
    ctx = next((v for k, v in sd.items() if k.endswith("attn2.to_k.weight") and k.startswith("input_blocks.")), None)
    if ctx is None:
        raise CheckpointError("no cross-attention in this UNet (attn2.to_k.weight): not a text-conditioned VideoCrafter UNet.")
    depth = _count({k: v for k, v in sd.items() if k.startswith("input_blocks.1.1.")},
                   r"input_blocks\.1\.1\.transformer_blocks\.(\d+)\.") or 1
    try:
        return UNet3DConfig(
            in_channels=in_ch, out_channels=out_ch, model_channels=mc, channel_mult=tuple(mult), num_res_blocks=nrb,
            attention_resolutions=tuple(attn_res), num_head_channels=head_ch, transformer_depth=depth,
            context_dim=int(ctx.shape[1]), temporal_length=temporal_length, addition_attention=init is not None,
            addition_attention_heads=heads_add,
            image_cross_attention=any(k.endswith("attn2.to_k_ip.weight") for k in sd),
            image_cross_attention_scale_learnable=any(k.endswith("attn2.alpha") for k in sd),
            fs_condition="fps_embedding.0.weight" in sd)
    except ConfigError as e:
        raise CheckpointError(f"VideoCrafter UNet with an impossible configuration: {e}") from e


def infer_resampler_config(sd: Mapping[str, torch.Tensor], metadata: Mapping[str, str], tokens_per_frame: int = 16
                           ) -> tuple[ResamplerConfig, str]:
    lat = sd["latents"]
    dim, total = int(lat.shape[2]), int(lat.shape[1])
    inner = int(sd["layers.0.0.to_q.weight"].shape[0])
    if META_RESAMPLER_HEADS in metadata:
        heads = int(metadata[META_RESAMPLER_HEADS])
        note = f"Resampler heads={heads} from metadata {META_RESAMPLER_HEADS}"
    else:  # the head split is invisible in the weights; the official Resampler uses 64-d heads
        if inner % 64:
            raise CheckpointError(f"cannot infer the Resampler head count (inner width {inner} is not a multiple of 64); "
                                  f"save it as .safetensors with metadata {{'{META_RESAMPLER_HEADS}': '<heads>'}}.")
        heads = inner // 64
        note = f"Resampler heads={heads} from the official 64-d heads"
    if total % tokens_per_frame:
        raise CheckpointError(f"the Resampler has {total} queries, not a multiple of {tokens_per_frame} per frame.")
    try:
        cfg = ResamplerConfig(dim=dim, depth=_count(sd, r"layers\.(\d+)\."), dim_head=inner // heads, heads=heads,
                              num_queries=tokens_per_frame, embedding_dim=int(sd["proj_in.weight"].shape[1]),
                              output_dim=int(sd["proj_out.weight"].shape[0]),
                              ff_mult=int(sd["layers.0.1.1.weight"].shape[0]) // dim,
                              video_length=total // tokens_per_frame)
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"unreadable Resampler (image_proj_model) weights: {e}") from e
    return cfg, note


def expected_shapes(config: VideoCrafterConfig) -> dict[str, dict[str, list]]:
    """Key -> shape of each network part for a config (built on the meta device)."""
    unet = UNet3D(config.unet, device="meta")
    out = {"unet": {k: list(v.shape) for k, v in unet.state_dict().items()}}
    if config.resampler is not None:
        res = Resampler(config.resampler, device="meta")
        out["image_proj"] = {k: list(v.shape) for k, v in res.state_dict().items()}
    return out


def detect_videocrafter(sd: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, str]] = None
                        ) -> Optional[FamilyInfo]:
    """FamilyInfo with a :class:`VideoCrafterConfig`, or None when the keys are not this family."""
    if _unet_prefix(sd) is None:
        return None
    metadata = dict(metadata or {})
    parts = split_checkpoint(sd)
    notes = []
    res_cfg = None
    frames = 16
    if parts.image_proj:
        res_cfg, note = infer_resampler_config(parts.image_proj, metadata)
        notes.append(note)
        frames = res_cfg.video_length or 1
    else:
        notes.append("no image_proj_model.* (Resampler): load it from a separate file or the full checkpoint")
    ucfg = infer_unet_config(parts.unet, temporal_length=frames)
    try:
        cfg = VideoCrafterConfig(unet=ucfg, resampler=res_cfg)
    except ConfigError as e:
        raise CheckpointError(f"FrameBridge-VideoCrafter parts that do not fit together: {e}") from e
    shapes = expected_shapes(cfg)
    check_state_dict(shapes["unet"], parts.unet, f"inferred FrameBridge-VideoCrafter UNet (width {ucfg.model_channels}, "
                                                 f"levels {list(ucfg.channel_mult)})")
    if res_cfg is not None:
        check_state_dict(shapes["image_proj"], parts.image_proj, "inferred Resampler (image_proj_model)")
    present = [n for n in ("clip_text", "clip_vision", "vae") if getattr(parts, n)]
    notes.append(f"also holds: {', '.join(present) or 'no encoders'}; {len(parts.buffers)} schedule buffers")
    return FamilyInfo(name=VIDEOCRAFTER, config=cfg, detector="videocrafter", notes=tuple(notes))


# ----------------------------------------------------------------------------------------------
# SAF table and checkpoint buffers
# ----------------------------------------------------------------------------------------------


def saf_timesteps(schedule: Optional[BridgeSchedule] = None) -> torch.Tensor:
    """t̃_i for every bridge index (float64 values of the official float32 computation)."""
    schedule = schedule or BridgeSchedule()
    return snr_aligned_timesteps(schedule, scaled_linear_alphas_cumprod(schedule.num_steps), mode="official",
                                 precision=torch.float32)


def check_schedule_buffers(buffers: Mapping[str, torch.Tensor], schedule: Optional[BridgeSchedule] = None,
                           table: Optional[torch.Tensor] = None, atol_t: float = 1e-3) -> dict[str, float]:
    """Compare our SAF table and bridge/diffusion schedules with the checkpoint's buffers.

    Returns the maximum absolute differences found; raises :class:`CheckpointError` when the
    checkpoint was trained with another schedule (t̃ off by more than ``atol_t``, σ or ᾱ off by
    more than 1e-5 relative). Buffers the checkpoint lacks are skipped.
    """
    schedule = schedule or BridgeSchedule()
    table = saf_timesteps(schedule) if table is None else table
    found: dict[str, float] = {}
    checks = (("bridge_aligned_t", table, atol_t, False),
              ("bridge_sigmas", schedule.sigma, 1e-5, True),
              ("alphas_cumprod", scaled_linear_alphas_cumprod(schedule.num_steps), 1e-5, True))
    for name, ours, tol, relative in checks:
        theirs = buffers.get(name)
        if theirs is None:
            continue
        theirs = theirs.double().reshape(-1)
        if theirs.numel() != ours.numel():
            raise CheckpointError(f"the checkpoint's {name} has {theirs.numel()} entries; FrameBridge uses {ours.numel()} "
                                  f"bridge indices. It was trained with another schedule, which is not supported.")
        diff = (theirs - ours).abs()
        if relative:
            diff = diff / ours.abs().clamp_min(1e-12)
        worst = float(diff.max())
        found[name] = worst
        if worst > tol:
            i = int(diff.argmax())
            raise CheckpointError(
                f"the checkpoint's {name} differs from FrameBridge's (beta_min=0.01, beta_max=50, SD scaled-linear "
                f"0.00085..0.012) at index {i}: {float(theirs[i]):.6g} vs {float(ours[i]):.6g}. The model was trained "
                f"with another bridge or diffusion schedule, which is not supported.")
    return found


# ----------------------------------------------------------------------------------------------
# The bridge network
# ----------------------------------------------------------------------------------------------


class VideoCrafterBridge(nn.Module):
    """UNet + Resampler with the SAF plumbing of the official ``apply_model``.

    Attribute names give the official state-dict layout: ``diffusion_model.*`` (load the
    ``model.diffusion_model.*`` keys there) and ``image_proj_model.*``.
    """

    def __init__(self, config: VideoCrafterConfig, *, operations=None, device=None, dtype=None, attention=None,
                 schedule: Optional[BridgeSchedule] = None):
        super().__init__()
        self.config = config
        self.diffusion_model = UNet3D(config.unet, operations=operations, device=device, dtype=dtype,
                                      attention=attention)
        if config.resampler is not None:
            self.image_proj_model = Resampler(config.resampler, operations=operations, device=device, dtype=dtype,
                                              attention=attention)
        self.schedule = schedule or BridgeSchedule()
        self.aligned_t = saf_timesteps(self.schedule)

    # -- pieces ----------------------------------------------------------------------------------
    def image_context(self, clip_tokens: torch.Tensor) -> torch.Tensor:
        """CLIP ViT-H tokens ``[B, 257, 1280]`` -> ``[B, 16·T, context_dim]``."""
        if not hasattr(self, "image_proj_model"):
            raise ConfigError("this FrameBridge-VideoCrafter model has no Resampler (image_proj_model) weights.")
        cfg = self.config.resampler
        if clip_tokens.ndim != 3 or clip_tokens.shape[-1] != cfg.embedding_dim:
            raise ShapeError(f"CLIP vision tokens have shape {tuple(clip_tokens.shape)}; this model needs "
                             f"[batch, tokens, {cfg.embedding_dim}] (all tokens of OpenCLIP ViT-H-14, before ln_post).")
        return self.image_proj_model(clip_tokens)

    def context(self, text: torch.Tensor, clip_tokens: torch.Tensor) -> torch.Tensor:
        text = text[:, :TEXT_TOKENS]
        if text.shape[1] != TEXT_TOKENS:
            raise ShapeError(f"the text embedding has {text.shape[1]} tokens; FrameBridge-VideoCrafter needs 77 "
                             f"(OpenCLIP ViT-H, penultimate layer).")
        img = self.image_context(clip_tokens).to(text.dtype)
        if img.shape[0] != text.shape[0]:
            img = img.expand(text.shape[0], -1, -1) if img.shape[0] == 1 else img
        return torch.cat([text, img], dim=1)

    def timestep(self, i) -> torch.Tensor:
        """The float t̃ for bridge index/indices ``i``."""
        idx = torch.as_tensor(i).long().reshape(-1).cpu()
        return self.aligned_t[idx].float()

    def forward(self, z: torch.Tensor, t_tilde: torch.Tensor, cond_latent: torch.Tensor, context: torch.Tensor,
                fs=None) -> torch.Tensor:
        """``eps_psi`` for the aligned input ``z`` and the image latent, both ``[B, C, T, H, W]``."""
        if cond_latent.shape != z.shape:
            raise ShapeError(f"image latent {tuple(cond_latent.shape)} and state {tuple(z.shape)} must match as "
                             f"[B, C, T, H, W].")
        return self.diffusion_model(torch.cat([z, cond_latent.to(z.dtype)], dim=1), t_tilde.to(z.device), context, fs)

    def eps_psi(self, x_t: torch.Tensor, i: int, prior: torch.Tensor, context: torch.Tensor, fs=None,
                cond_latent: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Official ``apply_model``: aligned input, aligned float timestep, raw network output."""
        y = prior.to(x_t.dtype)
        z = (x_t - gather(self.schedule.b, i, x_t) * y) / gather(self.schedule.norm, i, x_t)
        t_tilde = self.timestep(i).expand(x_t.shape[0])
        return self(z, t_tilde, y if cond_latent is None else cond_latent, context, fs)

    def x0(self, x_t, i: int, prior, context, uncond_context=None, cfg_scale: float = 1.0, fs=None) -> torch.Tensor:
        """x̂0 = x_t − σ_i·F with text-only CFG ``F = F_u + w(F_c − F_u)`` (image tokens kept in F_u)."""
        out = self.eps_psi(x_t, i, prior, context, fs)
        if cfg_scale != 1.0:
            if uncond_context is None:
                raise ConfigError("classifier-free guidance needs the unconditional (empty prompt) context.")
            unc = self.eps_psi(x_t, i, prior, uncond_context, fs)
            out = unc + cfg_scale * (out - unc)
        return x_t - gather(self.schedule.sigma, i, x_t) * out


def build_videocrafter(info: FamilyInfo, *, operations=None, device=None, dtype=None, attention=None) -> nn.Module:
    return VideoCrafterBridge(info.config, operations=operations, device=device, dtype=dtype, attention=attention)


def load_videocrafter_weights(module: VideoCrafterBridge, sd: Mapping[str, torch.Tensor]) -> None:
    parts = split_checkpoint(sd)
    load_weights_strict(module.diffusion_model, parts.unet, "FrameBridge-VideoCrafter UNet")
    if hasattr(module, "image_proj_model"):
        load_weights_strict(module.image_proj_model, parts.image_proj, "Resampler (image_proj_model)")
    if parts.buffers:
        check_schedule_buffers(parts.buffers, module.schedule, module.aligned_t)


register_family(FamilyDetector(
    name="videocrafter",
    looks_for=("model.diffusion_model.input_blocks.0.0.weight", "...temopral_conv...", "image_proj_model.latents"),
    detect=detect_videocrafter, build=build_videocrafter, load_weights=load_videocrafter_weights))


# ----------------------------------------------------------------------------------------------
# Frames-as-batch adapter (hosts keep a video as [B·T, C, H, W], like SVD)
# ----------------------------------------------------------------------------------------------


def _first_rows(v: torch.Tensor, rows: int, frames: int, what: str) -> torch.Tensor:
    """One row per video from a per-frame-row tensor (hosts repeat conds to the batch size)."""
    if v.shape[0] != rows:
        if rows % v.shape[0]:
            raise ShapeError(f"{what} has {v.shape[0]} rows; cannot broadcast to a batch of {rows}.")
        v = v.repeat(rows // v.shape[0], *([1] * (v.ndim - 1)))
    return v.reshape(rows // frames, frames, *v.shape[1:])[:, 0]


class VideoCrafterBridgeFrames(nn.Module):
    """The bridge network on frames-as-batch tensors, fed the *aligned* input.

    ``forward(z, t, context, fb_cond_frame, fb_clip_vision, fb_fs)``:

    * ``z``: the SAF-aligned state ``(x_t − b_i·y)/n_i`` as ``[B·T, C, H, W]`` (the host aligns it
      in full precision, see :func:`aligned_state`), ``t``: ``[B·T]`` bridge indices;
    * ``context``: text embedding rows ``[B·T or B, ≥77, D]`` (the first 77 tokens are used);
    * ``fb_cond_frame``: the image latent per frame row ``[B·T, C, H, W]``;
    * ``fb_clip_vision``: CLIP ViT-H tokens per row ``[B·T or B, 257, 1280]``;
    * ``fb_fs``: frame stride per row (default: the model's, 3).

    Returns ``eps_psi`` as ``[B·T, C, H, W]``.
    """

    def __init__(self, config=None, *, operations=None, device=None, dtype=None, attention=None, **fields):
        super().__init__()
        if not isinstance(config, VideoCrafterConfig):
            config = config_from_dict(dict(config or {}, **fields))
        self.config = config
        self.net = VideoCrafterBridge(config, operations=operations, device=device, dtype=dtype, attention=attention)
        self.dtype = dtype if dtype is not None else torch.float32

    def forward(self, z, t, context=None, control=None, transformer_options=None, fb_cond_frame=None,
                fb_clip_vision=None, fb_fs=None, **_unused):
        cfg = self.config
        T = cfg.num_frames
        rows = z.shape[0]
        zv = fold_frames(z, T, "the bridge state")  # [B, T, C, H, W]
        if fb_cond_frame is None:
            raise ConfigError("the conditioning has no FrameBridge image latent: route positive and negative through "
                              "'Bridge Prior from Image' before the sampler.")
        if fb_clip_vision is None:
            raise ConfigError("the conditioning has no CLIP vision tokens: connect 'CLIP Vision Encode' (crop: center, "
                              "with the model's CLIP_VISION) to 'Bridge Prior from Image' (clip_vision_output).")
        if context is None:
            raise ConfigError("FrameBridge-VideoCrafter needs text conditioning: encode the prompt (and an empty "
                              "negative prompt) with 'CLIP Text Encode' and the model's CLIP.")
        cond = fold_frames(_repeat_to(fb_cond_frame, rows, "the image latent"), T, "the image latent")
        text = _first_rows(context, rows, T, "the text conditioning")
        tokens = _first_rows(fb_clip_vision, rows, T, "the CLIP vision tokens")
        ctx = self.net.context(text, tokens)
        fs = None
        if fb_fs is not None:
            fs = _first_rows(torch.as_tensor(fb_fs, device=z.device).reshape(-1), rows, T, "the frame stride").long()
        tt = self.net.timestep(_first_rows(t.reshape(-1), rows, T, "the timestep")).to(z.device)
        out = self.net(zv.transpose(1, 2), tt, cond.transpose(1, 2), ctx, fs)
        return unfold_frames(out.transpose(1, 2))


def _repeat_to(v: torch.Tensor, rows: int, what: str) -> torch.Tensor:
    if v.shape[0] == rows:
        return v
    if rows % v.shape[0]:
        raise ShapeError(f"{what} has {v.shape[0]} rows; cannot broadcast to a batch of {rows}.")
    return v.repeat(rows // v.shape[0], *([1] * (v.ndim - 1)))


def aligned_state(x: torch.Tensor, i: torch.Tensor, prior: torch.Tensor, schedule: BridgeSchedule) -> torch.Tensor:
    """``(x_t − b_i·y)/n_i`` per row, in float32 or wider (the state is never aligned in half precision)."""
    dt = torch.promote_types(x.dtype, torch.float32)
    x, y = x.to(dt), _repeat_to(prior, x.shape[0], "the prior").to(device=x.device, dtype=dt)
    idx = i.reshape(-1).long().cpu()
    b = schedule.b[idx].to(device=x.device, dtype=dt).view(-1, *([1] * (x.ndim - 1)))
    n = schedule.norm[idx].to(device=x.device, dtype=dt).view(-1, *([1] * (x.ndim - 1)))
    return (x - b * y) / n


def config_from_dict(d: Mapping[str, Any]) -> VideoCrafterConfig:
    r = d.get("resampler")
    return VideoCrafterConfig(unet=UNet3DConfig.from_dict(d["unet"]),
                              resampler=None if r is None else ResamplerConfig(**r),
                              latent_size=int(d.get("latent_size", 32)))


def check_frames_and_size(config: VideoCrafterConfig, frames: int, height: int, width: int) -> None:
    """Clear errors for frame counts and latent sizes the network cannot take."""
    T = config.num_frames
    if frames != T:
        raise ShapeError(f"length={frames} is not possible for FrameBridge-VideoCrafter: its Resampler makes image tokens "
                         f"for exactly {T} frames (16 per frame). Set length to {T}.")
    f = config.unet.downsample_factor
    if height % f or width % f:
        raise ShapeError(f"a {width * 8}x{height * 8} image gives a {width}x{height} latent, which this UNet cannot "
                         f"halve {len(config.unet.channel_mult) - 1} times; use sides that are multiples of {8 * f} pixels "
                         f"(the model was trained at {config.latent_size * 8}x{config.latent_size * 8}).")


# ----------------------------------------------------------------------------------------------
# Deterministic random weights (tests, stand-ins, benchmarks)
# ----------------------------------------------------------------------------------------------


def seeded_random_weights(module: nn.Module, seed: int = 0, prefix: str = "") -> nn.Module:
    """Fill every parameter with values drawn from a generator seeded by ``seed`` and the
    parameter's *name* (so two implementations with the same key layout get identical weights,
    in any construction order). Norm weights ~ 1 + 0.1·N, biases 0.1·N, the image gate ``alpha``
    0.5·N, Resampler queries N, other weights N·0.9/√fan_in."""
    import zlib

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


__all__ = [
    "DEFAULT_CFG", "DEFAULT_FS", "DEFAULT_SPACING", "DEFAULT_STEPS", "PRIOR_KEY", "VIDEOCRAFTER", "VideoCrafterBridge",
    "VideoCrafterBridgeFrames", "VideoCrafterConfig", "VideoCrafterParts", "aligned_state", "check_frames_and_size",
    "check_schedule_buffers", "config_from_dict", "detect_videocrafter", "expected_shapes", "infer_resampler_config",
    "infer_unet_config", "official_config", "saf_timesteps", "seeded_random_weights", "split_checkpoint",
]
