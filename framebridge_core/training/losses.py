"""Training losses of the model variants (:mod:`framebridge_core.tiny.variants`), one batch at a time.

Class labels are dropped to the null class with probability ``class_dropout``, for classifier-free
guidance at sampling time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..bridge import preconditioning
from ..bridge.alignment import training_target
from ..vp import gather
from ..errors import ConfigError
from ..tiny.variants import Schedules, check_kind, net_input, net_timestep, static_prior


def drop_labels(labels: torch.Tensor, null_class: Optional[int], p: float, generator) -> torch.Tensor:
    if null_class is None or p <= 0:
        return labels
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < p
    return torch.where(drop, torch.full_like(labels, null_class), labels)


#: loss weightings of the ``eps_psi`` variants (see :func:`eps_psi_weight`)
LOSS_WEIGHTINGS = ("sigma2-clamped", "uniform")


def eps_psi_weight(sigma: torch.Tensor, weighting: str) -> torch.Tensor:
    """Per-sample weight of the ``eps_psi`` MSE.

    ``uniform`` is the official loss. Since ``x̂0 = x_t − σ·F``, an error ΔF costs σ²·ΔF² in x0,
    and σ reaches 5 near the prior: under the uniform loss those high-σ terms are tiny (their
    target is small) and a short training run leaves them imprecise, so sampling drifts from its
    first steps. ``sigma2-clamped`` weights by max(σ², 1): x0-MSE where σ > 1, the plain
    ``eps_psi`` MSE below (the same fix as min-SNR weighting for diffusion). The network and its
    output are unchanged; only the emphasis of training moves.
    """
    if weighting == "uniform":
        return torch.ones_like(sigma)
    if weighting == "sigma2-clamped":
        return sigma.pow(2).clamp(min=1.0)
    raise ConfigError(f"unknown loss weighting {weighting!r}; choose one of {', '.join(LOSS_WEIGHTINGS)}.")


@dataclass
class Draws:
    """The random numbers one batch of :func:`training_loss` uses, drawn for the whole (global) batch.

    ``drop`` marks the labels replaced by the null class (None: no dropout), ``noise`` and ``t``
    are the bridge/diffusion noise and indices (None for the neural prior). :meth:`shard` gives
    the rows one process computes, so every rank of a distributed run uses the numbers a single
    process would use for the same rows.
    """

    drop: Optional[torch.Tensor]
    noise: Optional[torch.Tensor]
    t: Optional[torch.Tensor]

    def shard(self, lo: int, hi: int) -> "Draws":
        def cut(x):
            return None if x is None else x[lo:hi]

        return Draws(cut(self.drop), cut(self.noise), cut(self.t))

    def to(self, device) -> "Draws":
        def move(x):
            return None if x is None else x.to(device)

        return Draws(move(self.drop), move(self.noise), move(self.t))


def draw_randomness(kind: str, shape: tuple, dtype: torch.dtype, null_class: Optional[int], class_dropout: float,
                    generator: torch.Generator, device=None) -> Draws:
    """Label dropout, noise and indices for a batch of videos of ``shape`` ``[B, F, C, H, W]``, drawn from
    ``generator`` in the order :func:`training_loss` has always drawn them."""
    B = shape[0]
    drop = None
    if null_class is not None and class_dropout > 0:
        drop = torch.rand((B,), generator=generator, device=device) < class_dropout
    if kind == "neural-prior":
        return Draws(drop, None, None)
    noise = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    t = torch.randint(0, 1000, (B,), generator=generator, device=device)
    return Draws(drop, noise, t)


def loss_from_draws(kind: str, model, video: torch.Tensor, labels: torch.Tensor, draws: Draws, sched: Schedules, *,
                    neural_prior: Optional[torch.nn.Module] = None,
                    weighting: str = "sigma2-clamped") -> torch.Tensor:
    """:func:`training_loss` with its random numbers given (``draws`` for exactly these rows)."""
    check_kind(kind)
    Fr = video.shape[1]
    cfg = model.config
    if draws.drop is not None:
        labels = torch.where(draws.drop, torch.full_like(labels, cfg.null_class), labels)
    cond = video[:, :1]
    if kind == "neural-prior":
        return F.mse_loss(model(cond, labels).float(), video.float())
    noise, t = draws.noise, draws.t
    if kind == "diffusion":
        x_t = sched.diffusion.add_noise(video, t, noise).to(video.dtype)
        out = model(model.build_bridge_input(x_t, cond), t, labels, drop_condition_frame=True)
        return F.mse_loss(out.float(), sched.diffusion.v_target(video, t, noise).float())
    coarse = None
    if kind == "bridge-np":
        if neural_prior is None:
            raise ConfigError("the bridge-np variant needs the trained neural prior network")
        with torch.no_grad():
            coarse = neural_prior(cond, labels).to(video.dtype)
        y = coarse
    else:
        y = static_prior(video, Fr)
    x_t = sched.bridge.add_noise(video, y, t, noise).to(video.dtype)
    x_in = model.build_bridge_input(net_input(kind, x_t, y, t, sched), cond, coarse)
    out = model(x_in, net_timestep(kind, t, sched), labels, drop_condition_frame=True)
    if kind in ("bridge", "bridge-np"):
        sigma = gather(sched.bridge.sigma, t, video)
        if cfg.output in preconditioning.CONVERTED_OUTPUTS:
            target = preconditioning.target(video, x_t, y, sigma, cfg.output)
            w = preconditioning.loss_weight(sigma.float(), cfg.output)
            return (w * (out.float() - target.float()).pow(2)).mean()
        target = (x_t - video) / sigma
        w = eps_psi_weight(sigma.float(), weighting)
        return (w * (out.float() - target.float()).pow(2)).mean()
    else:
        target = training_target("v_aligned", video, y, noise, t, sched.bridge)
    return F.mse_loss(out.float(), target.float())


def training_loss(kind: str, model, video: torch.Tensor, labels: torch.Tensor, sched: Schedules,
                  generator: torch.Generator, *, class_dropout: float = 0.1,
                  neural_prior: Optional[torch.nn.Module] = None,
                  weighting: str = "sigma2-clamped") -> torch.Tensor:
    """Mean-squared training loss of one batch of clean videos ``[B, F, C, H, W]`` in [-1, 1].

    ``weighting`` applies to the ``eps_psi`` variants (``bridge``, ``bridge-np``) only."""
    check_kind(kind)
    draws = draw_randomness(kind, tuple(video.shape), video.dtype, model.config.null_class, class_dropout,
                            generator, device=video.device)
    return loss_from_draws(kind, model, video, labels, draws, sched, neural_prior=neural_prior, weighting=weighting)


__all__ = ["Draws", "LOSS_WEIGHTINGS", "draw_randomness", "drop_labels", "eps_psi_weight", "loss_from_draws",
           "training_loss"]
