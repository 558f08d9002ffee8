"""Output parameterisations for small bridge networks (the project's tiny models).

The official FrameBridge networks predict ``eps_psi`` and ``x̂0 = x_t − σ·F``. Next to the prior
σ reaches 5, so any error in F is amplified five times in x̂0, and the uniform loss barely trains
those terms (their target is small): a small network trained briefly drifts from the first
sampling steps (measured on the 64×64 tiny model, ``docs/notes/tiny-model.md``). The two
alternatives here, ``precond`` and ``x0`` (:func:`x0_from_output`), keep the layers and change only
the meaning of the output; samplers and ComfyUI get the ``eps_psi`` it stands for (:func:`to_eps_psi`).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

#: the outputs this module converts (the official ``eps_psi`` needs no conversion)
CONVERTED_OUTPUTS = ("precond", "x0")
#: below this σ the ``x0`` loss weight stops growing
X0_WEIGHT_SIGMA_FLOOR = 0.25


def coefficients(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, c)`` of the ``precond`` output, ``s = 1/(1 + σ²)`` and ``c = σ/√(1 + σ²)``."""
    s = 1.0 / (1.0 + sigma * sigma)
    c = sigma / torch.sqrt(1.0 + sigma * sigma)
    return s, c


def _check(output: str) -> str:
    if output not in CONVERTED_OUTPUTS:
        raise ConfigError(f"bridge output {output!r} has no conversion here; use one of "
                          f"{', '.join(CONVERTED_OUTPUTS)}.")
    return output


def x0_from_output(out: torch.Tensor, x_t: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor,
                   output: str = "precond") -> torch.Tensor:
    """x̂0 from the raw network output of a ``precond`` or ``x0`` network.

    ``precond``: skip connections in the spirit of EDM (Karras et al. 2022) adapted to the bridge::

        x̂0 = s·x_t + (1 − s)·y + c·G,   s = 1/(1 + σ²),   c = σ/√(1 + σ²)

    At small σ, x̂0 ≈ x_t + σ·G (details and noise flow through the skip, like ``eps_psi``); at
    large σ, x̂0 ≈ y + G (bounded error, like the neural prior).

    ``x0``: the clean video as a change from the prior, ``x̂0 = y + G``. With 8×8 pixel patches a
    token carries 192 numbers; predicting the noise (``eps_psi``, or ``precond`` at small σ) asks
    the network to pass full-rank noise through that bottleneck, and what it misses stays in the
    video as noise. The clean video lies near a low-dimensional set, so an x0 output fails as blur
    instead of noise (the argument of Li & He 2025, "Back to Basics: Let Denoising Generative
    Models Denoise").
    """
    if _check(output) == "x0":
        return y + out
    s, c = coefficients(sigma)
    return s * x_t + (1 - s) * y + c * out


def target(x0: torch.Tensor, x_t: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor,
           output: str = "precond") -> torch.Tensor:
    """The training target of the raw output: ``G* = (x0 − s·x_t − (1 − s)·y)/c`` (``precond``),
    ``x0 − y`` (``x0``)."""
    if _check(output) == "x0":
        return x0 - y
    s, c = coefficients(sigma)
    return (x0 - s * x_t - (1 - s) * y) / c


def loss_weight(sigma: torch.Tensor, output: str = "precond") -> torch.Tensor:
    """Per-sample weight of the MSE on the raw output (1 for ``precond``: EDM's weighting).

    ``x0`` is trained with x0-MSE weighted by ``1 + 1/max(σ, 0.25)²`` (the precond weighting in x0
    units, capped so the nearly clean steps do not dominate).
    """
    if _check(output) == "x0":
        return 1.0 + 1.0 / sigma.clamp(min=X0_WEIGHT_SIGMA_FLOOR).pow(2)
    return torch.ones_like(sigma)


def to_eps_psi(out: torch.Tensor, x_t: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor,
               output: str = "precond") -> torch.Tensor:
    """The ``eps_psi`` that gives the same x̂0 under ``x̂0 = x_t − σ·F``.

    Samplers and ComfyUI get every output converted back this way, ``F = (x_t − x̂0)/σ``, so
    everything downstream is unchanged.
    """
    return (x_t - x0_from_output(out, x_t, y, sigma, output)) / sigma
