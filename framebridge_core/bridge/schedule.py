"""The Bridge-TTS schedule FrameBridge uses (docs/math.md §1).

Time is discretised to ``num_steps`` indices i = 0..T−1 with t_i = (i+1)/(T+1): neither end point
is on the grid (docs/math.md §1.2). All tables are float64; callers cast when they apply them.
The forward process is given in :class:`BridgeSchedule`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch

from ..errors import ConfigError
from ..vp import gather

SPACINGS = ("trailing", "uniform", "iddpm")


@dataclass(frozen=True)
class BridgeCoefficients:
    """Bridge quantities at one or more times (float64 tensors of equal shape)."""

    t: torch.Tensor
    sigma: torch.Tensor
    sigma_bar: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor


class BridgeSchedule:
    """Discrete Bridge-TTS schedule with linear g² ("gmax" type), α ≡ 1.

    Forward process with f(t) = 0 and g²(t) = β_min + t(β_max − β_min):

        σ_t² = β_min·t + ½(β_max − β_min)·t²        σ_1² = ½(β_min + β_max)
        σ̄_t² = σ_1² − σ_t²
        x_t  = a_t·x0 + b_t·y + c_t·ε,  a_t = σ̄_t²/σ_1²,  b_t = σ_t²/σ_1²,  c_t = σ̄_t·σ_t/σ_1

    Attributes (float64 tensors of length ``num_steps``, indexed by the bridge index i):
    ``t``, ``sigma``, ``sigma_bar``, ``a`` (coefficient of the data), ``b`` (of the prior),
    ``c`` (standard deviation), ``rho`` (bridge √SNR a/c) and ``norm`` (√(a²+c²)).
    """

    def __init__(self, beta_min: float = 0.01, beta_max: float = 50.0, num_steps: int = 1000):
        if not (beta_min > 0 and beta_max > beta_min):
            raise ConfigError(
                f"BridgeSchedule needs 0 < beta_min < beta_max, got beta_min={beta_min}, "
                f"beta_max={beta_max}; the FrameBridge defaults are 0.01 and 50.0."
            )
        if int(num_steps) != num_steps or num_steps < 2:
            raise ConfigError(f"BridgeSchedule needs an integer num_steps >= 2, got {num_steps!r}.")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)
        self.num_steps = int(num_steps)
        self.sigma_1 = math.sqrt(0.5 * (self.beta_min + self.beta_max))

        t = (torch.arange(self.num_steps, dtype=torch.float64) + 1.0) / (self.num_steps + 1)
        coef = self.at(t)
        self.t = coef.t
        self.sigma = coef.sigma
        self.sigma_bar = coef.sigma_bar
        self.a = coef.a
        self.b = coef.b
        self.c = coef.c
        self.rho = self.a / self.c
        self.norm = torch.sqrt(self.a**2 + self.c**2)

    def __repr__(self) -> str:
        return (
            f"BridgeSchedule(beta_min={self.beta_min}, beta_max={self.beta_max}, "
            f"num_steps={self.num_steps})"
        )

    # -- continuous time ---------------------------------------------------------------------

    def sigma_sq(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def at(self, t: Union[float, torch.Tensor]) -> BridgeCoefficients:
        """Evaluate the bridge at continuous time(s) t ∈ [0, 1] (float64)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if torch.any((t < 0) | (t > 1)) or torch.any(torch.isnan(t)):
            raise ConfigError(f"bridge time must lie in [0, 1], got {t.tolist()}.")
        s1_sq = self.sigma_1**2
        sigma_sq = self.sigma_sq(t)
        # clamp: at t = 1 rounding can make σ̄² a tiny negative number
        sigma_bar_sq = (s1_sq - sigma_sq).clamp_min(0.0)
        sigma = torch.sqrt(sigma_sq)
        sigma_bar = torch.sqrt(sigma_bar_sq)
        return BridgeCoefficients(
            t=t,
            sigma=sigma,
            sigma_bar=sigma_bar,
            a=sigma_bar_sq / s1_sq,
            b=sigma_sq / s1_sq,
            c=sigma_bar * sigma / self.sigma_1,
        )

    # -- forward process ---------------------------------------------------------------------

    def check_index(self, i) -> None:
        idx = torch.as_tensor(i)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_steps):
            raise ConfigError(
                f"bridge index {idx.tolist()} is out of range; valid indices are 0..{self.num_steps - 1}."
            )

    def add_noise(self, x0: torch.Tensor, y: torch.Tensor, i, noise: torch.Tensor) -> torch.Tensor:
        """Sample the marginal x_i = a_i·x0 + b_i·y + c_i·ε (docs/math.md §1.3). ``i``: int or [B] tensor."""
        self.check_index(i)
        return (
            gather(self.a, i, x0) * x0
            + gather(self.b, i, x0) * y
            + gather(self.c, i, x0) * noise
        )

    def nearest_index(self, sigma: torch.Tensor) -> torch.Tensor:
        """Bridge index whose σ is nearest to each value (in log space); inverse of ``sigma[i]``.

        Hosts that address time by a σ value (ComfyUI's SIGMAS) use the bridge σ table, which is
        strictly increasing in i, so the map is exact for values taken from it.
        """
        sigma = torch.as_tensor(sigma)
        log_table = self.sigma.log().to(device=sigma.device, dtype=torch.float32)
        dist = (sigma.float().clamp_min(1e-12).log().reshape(-1, 1) - log_table.reshape(1, -1)).abs()
        return dist.argmin(dim=1).reshape(sigma.shape)

    # -- time grids --------------------------------------------------------------------------

    def timesteps(self, n: int, spacing: str = "trailing") -> list[int]:
        """Bridge indices visited by an ``n``-step sampler, in sampling order (descending).

        * ``"trailing"`` (official CogVideoX and VideoCrafter ``uniform_trailing``):
          ``round(arange(T, 0, −T/n)) − 1``; n = 50 gives [999, 979, …, 19].
        * ``"uniform"`` (the VideoCrafter sampler's own default, ``range(0, T, T//n) + 1``): gives
          [981, …, 1] for n = 50, starting far from t ≈ 1. Wrong for the released models (docs/math.md
          §3.1), kept for reproducing it. When T//n does not divide T it yields more than n steps.
        * ``"iddpm"`` (Latte's ``space_timesteps(T, "n")``): evenly strided, includes 0 and T−1.
        """
        T = self.num_steps
        if int(n) != n or not 1 <= n <= T:
            raise ConfigError(f"steps must be an integer in 1..{T}, got {n!r}.")
        n = int(n)
        if spacing == "trailing":
            step = T / n
            # numpy's arange computes start + k·step; round() is half-to-even like np.round
            idx = [round(T + k * -step) - 1 for k in range(n)]
        elif spacing == "uniform":
            stride = T // n
            idx = sorted((k + 1 for k in range(0, T, stride)), reverse=True)
            if idx[0] >= T:
                raise ConfigError(
                    f"'uniform' spacing with steps={n} reaches index {idx[0]}, past the last index "
                    f"{T - 1} (the official VideoCrafter sampler fails the same way). Use 'trailing', "
                    f"or a step count whose stride {stride} does not divide {T - 1}."
                )
        elif spacing == "iddpm":
            idx = sorted(_iddpm_space_timesteps(T, n), reverse=True)
        else:
            raise ConfigError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}.")
        return idx


def _iddpm_space_timesteps(num_timesteps: int, count: int) -> set[int]:
    """IDDPM's ``space_timesteps(num_timesteps, str(count))`` for a single section.

    The stride is accumulated by repeated float addition and rounded with round-half-even, exactly
    as the original, so the index set matches it bit for bit.
    """
    frac_stride = 1.0 if count <= 1 else (num_timesteps - 1) / (count - 1)
    cur, taken = 0.0, []
    for _ in range(count):
        taken.append(round(cur))
        cur += frac_stride
    return set(taken)
