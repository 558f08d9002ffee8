"""The VP (diffusion) side: ᾱ tables, a v-objective schedule and deterministic DDIM.

The bridge maps onto these tables for SAF (:mod:`.bridge.alignment`); the SD-based video models
(VideoCrafter, ModelScope) and BIVDiff's inversion run on SD's scaled-linear ᾱ; the tiny diffusion
baseline uses the DDPM linear schedule with v = α·ε − σ·x0 (Salimans & Ho 2022) and DDIM (η = 0)
on a trailing grid, to compare FrameBridge with "the same network and budget, standard diffusion".
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from .errors import ConfigError

#: Sampling defaults of the SD-based video models (VideoCrafter's ``run_bridge.sh``, BIVDiff's configs).
DEFAULT_STEPS = 50
DEFAULT_CFG = 7.5

#: ``denoise(x_t, t) -> v`` for a batch of states at the integer diffusion timestep ``t``.
VDenoiser = Callable[[torch.Tensor, int], torch.Tensor]


def gather(table: torch.Tensor, i, like: torch.Tensor) -> torch.Tensor:
    """Table values at index/indices ``i`` (int or [B]), shaped to broadcast over a batch-first ``like``."""
    if isinstance(i, int):
        return table[i].to(like.dtype)
    idx = torch.as_tensor(i).long().reshape(-1).to(table.device)
    return table[idx].to(device=like.device, dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def scaled_linear_alphas_cumprod(
    num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """ᾱ of SD's scaled-linear schedule (LVDM ``make_beta_schedule("linear")``; VideoCrafter-1)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def cogvideox_alphas_cumprod(
    num_steps: int = 1000,
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    snr_shift_scale: float = 3.0,
    zero_terminal_snr: bool = True,
) -> torch.Tensor:
    """ᾱ of CogVideoX-2B's scheduler: scaled-linear, SNR shift 3, zero-terminal-SNR rescale.

    Follows diffusers' ``CogVideoXDDIMScheduler`` (docs/math.md §2.3): shift ᾱ ← ᾱ/(s + (1−s)ᾱ), then
    rescale √ᾱ so that ᾱ_{T−1} = 0 exactly while keeping ᾱ_0.
    """
    ac = scaled_linear_alphas_cumprod(num_steps, beta_start, beta_end)
    ac = ac / (snr_shift_scale + (1.0 - snr_shift_scale) * ac)
    if zero_terminal_snr:
        s = ac.sqrt()
        s0, sT = s[0].clone(), s[-1].clone()
        s = (s - sT) * s0 / (s0 - sT)
        ac = s**2
    return ac


def diffusion_sqrt_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """√ᾱ/√(1−ᾱ): the diffusion √SNR table d_k (decreasing in k)."""
    ac = torch.as_tensor(alphas_cumprod)
    return ac.sqrt() / (1.0 - ac).sqrt()


def linear_alphas_cumprod(beta_start: float = 1e-4, beta_end: float = 0.02, num_steps: int = 1000) -> torch.Tensor:
    """ᾱ_t of the DDPM linear β schedule, in float64."""
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def sigma_of(alpha_cumprod) -> torch.Tensor:
    """VE noise level ``σ = sqrt((1-ᾱ)/ᾱ)`` of a VP level ᾱ."""
    a = torch.as_tensor(alpha_cumprod, dtype=torch.float64)
    return ((1 - a) / a).sqrt()


def ddim_step(z: torch.Tensor, eps: torch.Tensor, alpha_from, alpha_to) -> torch.Tensor:
    """Deterministic DDIM move of ``z`` from level ᾱ_from to ᾱ_to with the predicted ``eps``.

    ``x̂0 = (z - sqrt(1-ᾱ_from) ε) / sqrt(ᾱ_from)``; ``z' = sqrt(ᾱ_to) x̂0 + sqrt(1-ᾱ_to) ε``. Used
    both up (inversion, official ``reverse_step``) and down (sampling, official ``step`` with η=0).
    """
    a0 = float(alpha_from)
    a1 = float(alpha_to)
    x0 = (z - math.sqrt(1 - a0) * eps) / math.sqrt(a0)
    return math.sqrt(a1) * x0 + math.sqrt(1 - a1) * eps


class DiffusionSchedule:
    """Discrete VP schedule with ``alpha = √ᾱ_t`` and ``sigma = √(1−ᾱ_t)`` tables (float64)."""

    def __init__(self, alphas_cumprod: Optional[torch.Tensor] = None):
        ac = linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod.to(torch.float64)
        self.alphas_cumprod = ac
        self.alpha = ac.sqrt()
        self.sigma = (1.0 - ac).sqrt()
        self.num_steps = len(ac)

    def add_noise(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        return gather(self.alpha, t, x0) * x0 + gather(self.sigma, t, x0) * noise

    def v_target(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        return gather(self.alpha, t, x0) * noise - gather(self.sigma, t, x0) * x0

    def x0_from_v(self, x_t: torch.Tensor, t, v: torch.Tensor) -> torch.Tensor:
        return gather(self.alpha, t, x_t) * x_t - gather(self.sigma, t, x_t) * v

    def eps_from_v(self, x_t: torch.Tensor, t, v: torch.Tensor) -> torch.Tensor:
        return gather(self.sigma, t, x_t) * x_t + gather(self.alpha, t, x_t) * v

    def timesteps(self, n: int) -> list[int]:
        """Trailing grid (diffusers ``timestep_spacing="trailing"``): starts at T−1, descending."""
        if not 1 <= n <= self.num_steps:
            raise ConfigError(f"steps must be between 1 and {self.num_steps}, got {n}.")
        ratio = self.num_steps / n
        return [int(round(self.num_steps - k * ratio)) - 1 for k in range(n)]


def sample_ddim(
    denoise: VDenoiser,
    noise: torch.Tensor,
    schedule: DiffusionSchedule,
    steps: int,
    callback: Optional[Callable[[dict], None]] = None,
) -> torch.Tensor:
    """Deterministic DDIM (η = 0) from ``noise`` at t = T−1 down to x̂0, with a v-prediction network.

    Each step costs one ``denoise`` call, so NFE = ``steps`` (CFG, if any, is inside ``denoise``).
    """
    grid = schedule.timesteps(steps)
    x = noise.to(torch.promote_types(noise.dtype, torch.float32))
    x0 = x
    for k, t in enumerate(grid):
        v = denoise(x, t).to(x.dtype)
        x0 = schedule.x0_from_v(x, t, v)
        eps = schedule.eps_from_v(x, t, v)
        if k + 1 < len(grid):
            s = grid[k + 1]
            x = gather(schedule.alpha, s, x) * x0 + gather(schedule.sigma, s, x) * eps
        if callback is not None:
            callback({"step": k, "total": len(grid), "index": t, "x": x if k + 1 < len(grid) else x0, "denoised": x0})
    return x0


__all__ = [
    "DEFAULT_CFG", "DEFAULT_STEPS", "DiffusionSchedule", "cogvideox_alphas_cumprod", "ddim_step", "diffusion_sqrt_snr",
    "gather", "linear_alphas_cumprod", "sample_ddim", "scaled_linear_alphas_cumprod", "sigma_of",
]
