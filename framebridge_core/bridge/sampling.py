"""First-order bridge samplers over a denoiser callable (docs/math.md §3).

A denoiser is ``denoise(x_t, i, prior) -> x̂0`` with ``i`` a python int bridge index. Sampling
starts at ``x = prior`` with no noise at the first grid index and returns ``x̂0`` at the last
(docs/math.md §7.2-7.3). Every step is a member of one family indexed by η (:func:`bridge_step`):
η = 1 is the official SDE step and η = 0 a first-order ODE, both mapping bridge marginals onto
bridge marginals for an exact x̂0, so the methods differ only in the noise they inject.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch

from .schedule import BridgeSchedule
from ..errors import ConfigError, ShapeError

Denoiser = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]
NoiseSource = Union[Sequence[torch.Tensor], Callable[[int, torch.Tensor], torch.Tensor]]

METHODS = ("sde", "ode", "mixed")


def step_eta(method: str, step: int, eta: float) -> float:
    """η used by step number ``step`` (0-based) of a sampler of the given method.

    The first step of "ode" and "mixed" is the SDE step: started at the prior without noise, a
    deterministic first step would make every sample of an image identical (and the official
    Latte ODE loop does the same, ``gaussian_diffusion.py:1022-1025``).
    """
    if method == "sde" or step == 0:
        return 1.0
    if method == "ode":
        return 0.0
    return float(eta)


def bridge_step(
    x_s: torch.Tensor,
    x0_hat: torch.Tensor,
    s: int,
    t: int,
    schedule: BridgeSchedule,
    prior: Optional[torch.Tensor] = None,
    eta: float = 1.0,
    noise: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """One first-order step from bridge index ``s`` to index ``t < s``.

    The step belongs to the family

        x_t = a_t·x̂0 + b_t·y + √(c_t² − η²·v_st)·ε̂_s + η·√v_st·ε,
        ε̂_s = (x_s − a_s·x̂0 − b_s·y)/c_s,     v_st = σ_t²(1 − σ_t²/σ_s²)

    which, for an exact x̂0, maps the bridge marginal at s onto the one at t for every η ∈ [0, 1]
    (the deterministic part carries variance c_t² − η²v_st ≥ 0 because c_t² − v_st = σ_t⁴c_s²/σ_s⁴).

    * η = 1 is the official posterior step q(x_t | x0 = x̂0, x_s) (docs/math.md §3.2):
      ``x_t = (σ_t²/σ_s²)·x_s + (1 − σ_t²/σ_s²)·x̂0 + σ_t√(1 − σ_t²/σ_s²)·ε``; computed in that form.
    * η = 0 is the first-order bridge ODE of docs/math.md §3.3, derived from the formula: it keeps
      the noise coordinate, ``x_t − a_t x̂0 − b_t y = (c_t/c_s)(x_s − a_s x̂0 − b_s y)``.
    * 0 < η < 1 ("mixed") interpolates the injected noise, like DDIM's η.

    Coefficients are computed in float64 and applied in the state's dtype. ``prior`` is needed
    for η < 1; ``noise`` (standard normal, shape of ``x_s``) for η > 0.
    """
    if not 0 <= t < s < schedule.num_steps:
        raise ConfigError(f"a bridge step needs 0 <= t < s < {schedule.num_steps}, got s={s}, t={t}.")
    if not 0.0 <= eta <= 1.0:
        raise ConfigError(f"eta must lie in [0, 1], got {eta}.")
    sig_s, sig_t = float(schedule.sigma[s]), float(schedule.sigma[t])
    ratio = sig_t**2 / sig_s**2
    post_var = sig_t**2 * (1.0 - ratio)  # v_st: variance of the posterior step
    if eta > 0 and noise is None:
        raise ConfigError("a stochastic bridge step (eta > 0) needs a noise tensor.")
    if eta == 1.0:
        return ratio * x_s + (1.0 - ratio) * x0_hat + math.sqrt(post_var) * noise
    if prior is None:
        raise ConfigError("a bridge step with eta < 1 needs the prior y.")
    a_s, b_s, c_s = (float(v[s]) for v in (schedule.a, schedule.b, schedule.c))
    a_t, b_t, c_t = (float(v[t]) for v in (schedule.a, schedule.b, schedule.c))
    keep = math.sqrt(max(c_t**2 - eta**2 * post_var, 0.0)) / c_s
    out = (a_t - keep * a_s) * x0_hat + (b_t - keep * b_s) * prior + keep * x_s
    if eta > 0:
        out = out + eta * math.sqrt(post_var) * noise
    return out


def resolve_grid(schedule: BridgeSchedule, steps, spacing: str) -> list[int]:
    """The descending list of bridge indices for an int step count or an explicit index list."""
    if isinstance(steps, int):
        return schedule.timesteps(steps, spacing)
    grid = [int(v) for v in steps]
    if not grid:
        raise ConfigError("the time grid is empty; give at least one bridge index.")
    if any(b >= a for a, b in zip(grid, grid[1:])):
        raise ConfigError(f"bridge indices must be strictly descending, got {grid}.")
    schedule.check_index(grid)
    return grid


def _noise_for(step: int, like: torch.Tensor, noise: Optional[NoiseSource], generator) -> torch.Tensor:
    if noise is not None:
        eps = noise(step, like) if callable(noise) else noise[step]
        if tuple(eps.shape) != tuple(like.shape):
            raise ShapeError(f"noise for step {step} has shape {tuple(eps.shape)}, expected {tuple(like.shape)}.")
        return eps.to(device=like.device, dtype=like.dtype)
    if generator is None:  # never the global RNG: a run without a generator is the seed-0 run
        generator = torch.Generator().manual_seed(0)
        generator.manual_seed(step)  # one stream per step, so the step order does not matter
    # draw on the generator's device in float32, so a seed gives the same noise on any device
    eps = torch.randn(like.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return eps.to(device=like.device, dtype=like.dtype)


def sample_bridge(
    denoise: Denoiser,
    prior: torch.Tensor,
    schedule: BridgeSchedule,
    steps: Union[int, Sequence[int]],
    spacing: str = "trailing",
    method: str = "sde",
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callable[[dict], None]] = None,
    *,
    eta: float = 0.5,
    noise: Optional[NoiseSource] = None,
) -> torch.Tensor:
    """Sample from the bridge starting at ``prior`` (docs/math.md §3).

    Args:
        denoise: ``denoise(x_t, i, prior) -> x̂0`` (see :func:`cfg_denoiser` for guidance).
        prior: the data prior y; the state starts here, with no noise.
        schedule: the bridge schedule.
        steps: number of steps (the grid comes from ``spacing``) or an explicit descending list
            of bridge indices.
        spacing: ``"trailing"``, ``"uniform"`` or ``"iddpm"`` (see ``BridgeSchedule.timesteps``).
        method: ``"sde"`` (official), ``"ode"`` (η = 0 after an SDE first step) or ``"mixed"``.
        generator: source of the step noise; ``None`` gives fixed noise (seed = step number), never
            torch's global generator, so sampling neither depends on nor changes global state.
        callback: called after every denoiser evaluation with a dict ``step``, ``total``,
            ``index``, ``x`` (the state after the step; x̂0 on the last) and ``denoised``.
            Raising from it (e.g. on Cancel) stops sampling.
        eta: noise fraction for ``"mixed"``, in [0, 1].
        noise: optional pre-drawn noise: a sequence indexed by step number, or a callable
            ``noise(step, like)``; used only by stochastic steps.

    Returns:
        x̂0 of the last grid index, in float32 or wider (the state is never kept in half precision).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown bridge sampling method {method!r}; choose one of {', '.join(METHODS)}.")
    if method == "mixed" and not 0.0 <= eta <= 1.0:
        raise ConfigError(f"eta must lie in [0, 1], got {eta}.")
    grid = resolve_grid(schedule, steps, spacing)
    state_dtype = torch.promote_types(prior.dtype, torch.float32)
    y = prior.to(state_dtype)
    x = y.clone()
    total = len(grid)
    for k, s in enumerate(grid):
        x0_hat = denoise(x, s, y).to(state_dtype)
        if k == total - 1:
            x = x0_hat
        else:
            e = step_eta(method, k, eta)
            eps = _noise_for(k, x, noise, generator) if e > 0 else None
            x = bridge_step(x, x0_hat, s, grid[k + 1], schedule, prior=y, eta=e, noise=eps)
        if callback is not None:
            callback({"step": k, "total": total, "index": s, "x": x, "denoised": x0_hat})
    return x


# -- classifier-free guidance ----------------------------------------------------------------


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + scale·(cond − uncond)`` (docs/math.md §3.4).

    x̂0 is affine in the network output with the same state, so guiding the raw output (v or ε_ψ)
    and guiding x̂0 give identical results. ``scale == 1`` returns ``cond`` itself.
    """
    if scale == 1.0:
        return cond
    return uncond + scale * (cond - uncond)


def cfg_denoiser(denoise_cond: Denoiser, denoise_uncond: Denoiser, scale: float) -> Denoiser:
    """A guided denoiser; with ``scale == 1`` the unconditional branch is skipped."""

    def guided(x_t: torch.Tensor, i: int, prior: torch.Tensor) -> torch.Tensor:
        cond = denoise_cond(x_t, i, prior)
        if scale == 1.0:
            return cond
        return cfg_combine(cond, denoise_uncond(x_t, i, prior), scale)

    return guided


__all__ = [
    "METHODS",
    "Denoiser",
    "bridge_step",
    "step_eta",
    "resolve_grid",
    "sample_bridge",
    "cfg_combine",
    "cfg_denoiser",
]
