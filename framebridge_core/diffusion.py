"""The noise-to-video diffusion counterpart of a bridge model: VP schedule, v-objective, DDIM.

Used by the training code and the quality benchmark to compare FrameBridge with "the same
network and budget, standard diffusion" (the paper's baseline), and as the pretrained model
that SNR-Aligned Fine-tuning starts from.

The schedule is the DDPM linear one (β from 1e-4 to 0.02 over 1000 steps, Ho et al. 2020), the
usual choice for pixel-space models; the network predicts v = α·ε − σ·x0 (Salimans & Ho 2022),
and sampling is deterministic DDIM (η = 0) on a trailing grid that starts at t = 999.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .bridge import gather
from .errors import ConfigError

#: ``denoise(x_t, t) -> v`` for a batch of states at the integer diffusion timestep ``t``.
VDenoiser = Callable[[torch.Tensor, int], torch.Tensor]


def linear_alphas_cumprod(beta_start: float = 1e-4, beta_end: float = 0.02, num_steps: int = 1000) -> torch.Tensor:
    """ᾱ_t of the DDPM linear β schedule, in float64."""
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


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
