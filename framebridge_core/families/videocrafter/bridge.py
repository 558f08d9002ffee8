"""FrameBridge-VideoCrafter: the config, the SAF table and the bridge network around the 3-D UNet.

The network sees the SAF-aligned input ``z = (x_t − b_i·y)/√(a_i²+c_i²)`` channel-concatenated with
the image latent (``[z, c_concat]``, noisy first), the float timestep ``t̃_i`` of SD's scaled-linear
schedule, the context ``[77 text tokens, 256 Resampler tokens]`` and the frame stride ``fs``; it
predicts ``eps_psi`` with ``x̂0 = x_t − σ_i·F`` on the raw state, and CFG drops only the text
(official ``ddpm3d.py:865-891``, ``bridge_first_order.py``; docs/math.md §2, §3.4–3.5, §5.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn

from ...bridge.alignment import snr_aligned_timesteps
from ...bridge.schedule import BridgeSchedule
from ...errors import CheckpointError, ConfigError, ShapeError
from ...vp import DEFAULT_CFG, DEFAULT_STEPS, gather, scaled_linear_alphas_cumprod
from ..frames import aligned_state
from .resampler import Resampler, ResamplerConfig
from .unet3d import UNet3D, UNet3DConfig

#: Official sampling defaults (``run_bridge.sh``, docs/math.md §3.7): 50 steps and CFG 7.5 (as SD) on the trailing grid.
DEFAULT_SPACING = "trailing"
TEXT_TOKENS = 77


@dataclass(frozen=True)
class VideoCrafterConfig:
    """The bridge network: UNet + Resampler, on SD's 4-channel latents (docs/math.md §5.2)."""

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

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VideoCrafterConfig":
        r = d.get("resampler")
        return cls(unet=UNet3DConfig.from_dict(d["unet"]), resampler=None if r is None else ResamplerConfig(**r),
                   latent_size=int(d.get("latent_size", 32)))

    def to_dict(self) -> dict[str, Any]:
        return {"unet": self.unet.to_dict(), "resampler": None if self.resampler is None else self.resampler.to_dict(),
                "latent_size": self.latent_size}


def official_config() -> VideoCrafterConfig:
    """The released FrameBridge-VideoCrafter (256 px, 16 frames)."""
    return VideoCrafterConfig()


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


__all__ = [
    "DEFAULT_CFG", "DEFAULT_SPACING", "DEFAULT_STEPS", "TEXT_TOKENS", "VideoCrafterBridge", "VideoCrafterConfig",
    "aligned_state", "check_frames_and_size", "check_schedule_buffers", "official_config", "saf_timesteps",
]
