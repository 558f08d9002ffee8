"""FrameBridge-CogVideoX: the SAF table on CogVideoX-2B's ᾱ and the bridge network around the transformer.

The transformer sees the aligned state ``z = (x_t − b_i·y)/n_i`` channel-concatenated with the VAE
encoding of the static image clip (noisy channels first), the text, and the float timestep ``t̃_i``
whose CogVideoX √SNR equals the bridge's; it predicts v in aligned coordinates, so
``x̂0 = α_d·z − σ_d·v`` (official ``bridge_scheduler.py:90-137``, ``pipeline_cogvideox_image2video.py:868-918``;
docs/math.md §2, §5.1). CFG guides the text only; the image concat and the prior stay in both branches.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ...bridge.alignment import snr_aligned_timesteps
from ...bridge.schedule import BridgeSchedule
from ...errors import ConfigError, ShapeError
from ...vp import cogvideox_alphas_cumprod, gather
from ..frames import aligned_state
from .network import CogVideoXConfig, CogVideoXTransformer

#: Official sampling defaults (``cli_demo.py``, ``sample.sh``): 50 trailing steps, text CFG 6 with an
#: empty negative prompt, 17 frames at 256×256 (5 latent frames of 32×32).
DEFAULT_CFG = 6.0
DEFAULT_STEPS = 50
DEFAULT_SPACING = "trailing"
TRAINED_FRAMES = 17
TRAINED_SIZE = 256
#: the VAE's compression: 4 frames in time (frame 0 alone), 8 pixels in space
TEMPORAL_COMPRESSION, SPATIAL_COMPRESSION = 4, 8


def saf_timesteps(schedule: Optional[BridgeSchedule] = None) -> torch.Tensor:
    """t̃_i for every bridge index on CogVideoX-2B's ᾱ, as the official ``BridgeScheduler`` computes it
    (float32 bridge √SNR against the scheduler's float64 ᾱ; stored as float32)."""
    schedule = schedule or BridgeSchedule()
    table = snr_aligned_timesteps(schedule, cogvideox_alphas_cumprod(schedule.num_steps), mode="official",
                                  precision=torch.float32, diffusion_precision=torch.float64)
    return table.float().double()


def latent_frames(frames: int) -> int:
    """Latent frames of a ``frames``-frame clip; raises for counts the causal VAE cannot take (not 4k+1)."""
    if frames < 1 or (frames - 1) % TEMPORAL_COMPRESSION:
        lower = max(1, (frames - 1) // TEMPORAL_COMPRESSION * TEMPORAL_COMPRESSION + 1)
        raise ShapeError(f"length={frames} is not possible for FrameBridge-CogVideoX: the CogVideoX VAE takes 4k+1 "
                         f"frames (1, 5, 9, 13, 17, ...). Use {lower} or {lower + TEMPORAL_COMPRESSION} "
                         f"(the model was trained on {TRAINED_FRAMES}).")
    return (frames - 1) // TEMPORAL_COMPRESSION + 1


def check_size(config: CogVideoXConfig, height: int, width: int) -> list[str]:
    """Pixel sizes the transformer cannot patchify raise; sizes it was not trained at give a warning line."""
    step = SPATIAL_COMPRESSION * config.patch_size
    if height % step or width % step:
        raise ShapeError(f"a {width}x{height} image cannot be used by FrameBridge-CogVideoX: width and height must be "
                         f"multiples of {step} pixels (VAE /8, patches of {config.patch_size}); the model was trained "
                         f"at {TRAINED_SIZE}x{TRAINED_SIZE}.")
    if (height, width) != (TRAINED_SIZE, TRAINED_SIZE):
        return [f"FrameBridge-CogVideoX was trained at {TRAINED_SIZE}x{TRAINED_SIZE}; {width}x{height} runs but "
                f"is outside training."]
    return []


def x0_from_v(v: torch.Tensor, z: torch.Tensor, i: torch.Tensor, schedule: BridgeSchedule) -> torch.Tensor:
    """``x̂0 = α_d·z − σ_d·v`` with ``α_d = a/n``, ``σ_d = c/n`` (official ``from_v_to_x0``)."""
    idx = i.reshape(-1).long().cpu()
    n = gather(schedule.norm, idx, z)
    return gather(schedule.a, idx, z) / n * z - gather(schedule.c, idx, z) / n * v.to(z.dtype)


class CogVideoXBridge(nn.Module):
    """The transformer with the SAF plumbing of the official pipeline, on ``[B, F, C, H, W]`` latents.

    ``transformer`` holds the diffusers ``transformer/`` weights unchanged.
    """

    def __init__(self, config: CogVideoXConfig, *, operations=None, device=None, dtype=None, attention=None,
                 schedule: Optional[BridgeSchedule] = None):
        super().__init__()
        if config.in_channels != 2 * config.out_channels:
            raise ConfigError(f"a FrameBridge-CogVideoX transformer takes [z, image latent]: in_channels={config.in_channels} "
                              f"must be 2 x out_channels={config.out_channels}.")
        self.config = config
        self.transformer = CogVideoXTransformer(config, operations=operations, device=device, dtype=dtype,
                                                attention=attention)
        self.schedule = schedule or BridgeSchedule()
        self.aligned_t = saf_timesteps(self.schedule)

    def timestep(self, i) -> torch.Tensor:
        """The float t̃ for bridge index/indices ``i``."""
        return self.aligned_t[torch.as_tensor(i).long().reshape(-1).cpu()].float()

    def forward(self, z: torch.Tensor, t_tilde: torch.Tensor, cond_latent: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """v for the aligned input ``z`` and the image-clip latent, both ``[B, F, C, H, W]``."""
        if cond_latent.shape != z.shape:
            raise ShapeError(f"image latent {tuple(cond_latent.shape)} and state {tuple(z.shape)} must match as "
                             f"[B, F, C, H, W] (the prior is the VAE encoding of the same static clip).")
        x = torch.cat([z, cond_latent.to(z.dtype)], dim=2)
        return self.transformer(x, text.to(z.dtype), t_tilde.to(z.device))

    def x0(self, x_t: torch.Tensor, i: int, prior: torch.Tensor, text: torch.Tensor,
           uncond_text: Optional[torch.Tensor] = None, cfg_scale: float = 1.0) -> torch.Tensor:
        """x̂0 at bridge index ``i`` with text-only CFG ``v = v_u + w·(v_c − v_u)`` (image kept in both)."""
        idx = torch.full((x_t.shape[0],), int(i), dtype=torch.long)
        z = aligned_state(x_t, idx, prior, self.schedule)
        dtype = next(self.parameters()).dtype
        t = self.timestep(idx)
        v = self(z.to(dtype), t, prior.to(dtype), text).float()
        if cfg_scale != 1.0:
            if uncond_text is None:
                raise ConfigError("classifier-free guidance needs the unconditional (empty prompt) text embedding.")
            v_u = self(z.to(dtype), t, prior.to(dtype), uncond_text).float()
            v = v_u + cfg_scale * (v - v_u)
        return x0_from_v(v, z, idx, self.schedule)


__all__ = [
    "DEFAULT_CFG", "DEFAULT_SPACING", "DEFAULT_STEPS", "TRAINED_FRAMES", "TRAINED_SIZE", "CogVideoXBridge",
    "aligned_state", "check_size", "latent_frames", "saf_timesteps", "x0_from_v",
]
