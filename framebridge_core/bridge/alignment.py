"""SNR-Aligned Fine-tuning (SAF, docs/math.md §2) and the network-output parameterisations (docs/math.md §1.5).

SAF feeds a pretrained diffusion network the normalised bridge state
``z = (x_t − b·y)/√(a²+c²) = α_d·x0 + σ_d·ε`` at a float timestep ``t̃`` whose diffusion √SNR
equals the bridge √SNR ``ρ = a/c``. Interpolation is linear in √SNR (not log-SNR).
"""

from __future__ import annotations

from typing import Optional

import torch

from ..errors import ConfigError
from ..vp import diffusion_sqrt_snr, gather
from .schedule import BridgeSchedule

PARAMETERIZATIONS = ("v_aligned", "eps_psi", "eps_psi_new", "x0")
ALIGNMENT_MODES = ("official", "exact")


# -- SNR alignment ---------------------------------------------------------------------------


def snr_aligned_timesteps(
    schedule: BridgeSchedule,
    alphas_cumprod: torch.Tensor,
    mode: str = "official",
    precision: torch.dtype = torch.float64,
    diffusion_precision: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """The SAF timestep t̃_i for every bridge index i (float64 tensor of length T).

    ``mode="official"`` reproduces COG ``bridge_scheduler.py:44-59`` / VC ``ddpm3d.py:191-208``:
    a top region ρ_i > d_1 mapped linearly from [d_1, d_0+ρ_0] onto [1, 0] (the ``d_0 + ρ_0``
    quirk), a cursor walk with piecewise-linear inverse interpolation, and linear extrapolation
    to t̃ = K at ρ = 0 below the table (VideoCrafter: t̃ ∈ (999, 1000) for i ≥ 947).

    ``mode="exact"`` is the clean inverse of piecewise-linear interpolation of d: ρ above d_0
    maps to 0 and ρ below d_{K−1} to K−1, so the network only sees timesteps it was trained on.

    ``precision=torch.float32`` emulates the official float32 buffers (ρ and d in float32, the
    arithmetic in float32), to compare with a checkpoint's stored ``bridge_aligned_t``;
    ``diffusion_precision`` sets d's dtype apart (CogVideoX: float32 ρ against the float64 ᾱ of its
    scheduler, so the comparisons promote to float64).
    """
    if mode not in ALIGNMENT_MODES:
        raise ConfigError(f"unknown alignment mode {mode!r}; choose one of {', '.join(ALIGNMENT_MODES)}.")
    ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    if ac.ndim != 1 or ac.numel() < 2:
        raise ConfigError(f"alphas_cumprod must be a 1-D table of length >= 2, got shape {tuple(ac.shape)}.")
    if torch.any(ac[1:] > ac[:-1]) or torch.any(ac <= -1e-12) or torch.any(ac >= 1):
        raise ConfigError("alphas_cumprod must be non-increasing and lie in [0, 1).")
    rho = (schedule.a.to(precision) / schedule.c.to(precision)) if precision != torch.float64 else schedule.rho
    d_prec = precision if diffusion_precision is None else diffusion_precision
    d = (ac.sqrt().to(d_prec) / (1.0 - ac).sqrt().to(d_prec)) if d_prec != torch.float64 else diffusion_sqrt_snr(ac)
    if mode == "exact":
        return _exact_alignment(rho.double(), d.double())
    return _official_alignment(rho, d).double()


def _official_alignment(rho: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Line-by-line port of the official loop; 0-d tensor arithmetic keeps the dtype semantics."""

    def align(snr, sl, sr, tl, tr):
        return tl + (snr - sl) / (sr - sl) * (tr - tl)

    K = d.numel()
    out = torch.empty(rho.numel(), dtype=torch.float64)
    top_left = d[0] + rho[0]
    cur = 0
    for i in range(rho.numel()):
        r = rho[i]
        if r > d[1]:
            out[i] = float(align(r, top_left, d[1], 0, 1))
        else:
            while cur < K - 1 and r < d[cur + 1]:
                cur += 1
            if r < d[K - 1]:
                out[i] = float(align(r, d[K - 1], 0.0, K - 1, K))
            else:
                out[i] = float(align(r, d[cur], d[cur + 1], cur, cur + 1))
    return out


def _exact_alignment(rho: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    K = d.numel()
    # d is decreasing: count how many table entries lie strictly above each ρ
    above = torch.searchsorted(-d, -rho, right=False)  # number of k with d_k > ρ
    k = (above - 1).clamp(0, K - 2)
    d_left, d_right = d[k], d[k + 1]
    frac = ((rho - d_left) / (d_right - d_left)).clamp(0.0, 1.0)
    return k.double() + frac


# -- aligned input and parameterisations -----------------------------------------------------


def _vp_coords(x_t: torch.Tensor, y: torch.Tensor, i, schedule: BridgeSchedule):
    """``(a, b, c, n, z)`` at index i: the bridge coefficients and the aligned state z."""
    a, b, c, n = (gather(tbl, i, x_t) for tbl in (schedule.a, schedule.b, schedule.c, schedule.norm))
    return a, b, c, n, (x_t - b * y) / n


def aligned_input(x_t: torch.Tensor, y: torch.Tensor, i, schedule: BridgeSchedule) -> torch.Tensor:
    """SAF network input ``z = (x_t − b_i·y)/√(a_i²+c_i²)`` (docs/math.md §2.1)."""
    return (x_t - gather(schedule.b, i, x_t) * y) / gather(schedule.norm, i, x_t)


def _check_param(parameterization: str) -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise ConfigError(
            f"unknown parameterization {parameterization!r}; choose one of {', '.join(PARAMETERIZATIONS)}."
        )


def output_to_x0(
    parameterization: str, output: torch.Tensor, x_t: torch.Tensor, y: torch.Tensor, i, schedule: BridgeSchedule
) -> torch.Tensor:
    """Recover x̂0 from the network output F (docs/math.md §1.5, pitfall §7.10).

    * ``v_aligned`` (CogVideoX): ``x̂0 = α_d·z − σ_d·F`` with the aligned z.
    * ``eps_psi`` (VideoCrafter, Latte): ``x̂0 = x_t − σ_i·F`` with the raw state and bridge σ.
    * ``eps_psi_new``: ``x̂0 = (x_t − b·y − c·F)/a``.
    * ``x0``: ``x̂0 = F``.
    """
    _check_param(parameterization)
    if parameterization == "eps_psi":
        return x_t - gather(schedule.sigma, i, x_t) * output
    if parameterization == "x0":
        return output
    a, b, c, n, z = _vp_coords(x_t, y, i, schedule)
    if parameterization == "eps_psi_new":
        return (x_t - b * y - c * output) / a
    return (a / n) * z - (c / n) * output


def x0_to_output(
    parameterization: str, x0: torch.Tensor, x_t: torch.Tensor, y: torch.Tensor, i, schedule: BridgeSchedule
) -> torch.Tensor:
    """Inverse of :func:`output_to_x0`: the output F that a network would give for this x̂0."""
    _check_param(parameterization)
    if parameterization == "eps_psi":
        return (x_t - x0) / gather(schedule.sigma, i, x_t)
    if parameterization == "x0":
        return x0
    a, b, c, n, z = _vp_coords(x_t, y, i, schedule)
    if parameterization == "eps_psi_new":
        return (x_t - b * y - a * x0) / c
    return ((a / n) * z - x0) / (c / n)


def training_target(
    parameterization: str,
    x0: torch.Tensor,
    y: torch.Tensor,
    noise: torch.Tensor,
    i,
    schedule: BridgeSchedule,
) -> torch.Tensor:
    """Regression target for x_t = a·x0 + b·y + c·ε (losses are plain unweighted MSE, docs/math.md §1.5).

    * ``v_aligned``: ``(a·ε − c·x0)/n`` (COG ``get_v_target``; depends only on x0 and ε).
    * ``eps_psi``: ``(x_t − x0)/σ``.
    * ``eps_psi_new``: ``ε``.
    * ``x0``: ``x0``.
    """
    _check_param(parameterization)
    if parameterization == "x0":
        return x0
    if parameterization == "eps_psi_new":
        return noise
    a, c = gather(schedule.a, i, x0), gather(schedule.c, i, x0)
    if parameterization == "v_aligned":
        return (a * noise - c * x0) / gather(schedule.norm, i, x0)
    x_t = a * x0 + gather(schedule.b, i, x0) * y + c * noise
    return (x_t - x0) / gather(schedule.sigma, i, x0)


def v_to_eps_psi_loss_weight(schedule: BridgeSchedule) -> torch.Tensor:
    """w_i with ‖Δε_ψ‖² = w_i·‖Δv‖²: ``c²/(σ²(a²+c²))`` (COG ``get_training_weights``, unused there)."""
    return schedule.c**2 / (schedule.sigma**2 * schedule.norm**2)


def sqrt_snr_interp(d: torch.Tensor, t_tilde: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of a √SNR table d at float timesteps (for checks)."""
    t_tilde = torch.as_tensor(t_tilde, dtype=torch.float64)
    k = t_tilde.floor().long().clamp(0, d.numel() - 2)
    frac = t_tilde - k.double()
    return d[k] + frac * (d[k + 1] - d[k])


__all__ = [
    "PARAMETERIZATIONS",
    "ALIGNMENT_MODES",
    "snr_aligned_timesteps",
    "aligned_input",
    "output_to_x0",
    "x0_to_output",
    "training_target",
    "v_to_eps_psi_loss_weight",
    "sqrt_snr_interp",
]

