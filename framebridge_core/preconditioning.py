"""A preconditioned output for small bridge networks (the project's tiny models).

The official FrameBridge networks predict ``eps_psi`` and ``x̂0 = x_t − σ·F``. Next to the prior
σ reaches 5, so any error in F is amplified five times in x̂0, and the uniform loss barely trains
those terms (their target is small): a small network trained briefly drifts from the first
sampling steps (measured on the 64×64 tiny model, ``docs/notes/tiny-model.md``).

``precond`` uses skip connections in the spirit of EDM (Karras et al. 2022) adapted to the bridge:

    x̂0 = s·x_t + (1 − s)·y + c·G,   s = 1/(1 + σ²),   c = σ/√(1 + σ²)

At small σ, x̂0 ≈ x_t + σ·G (details and noise flow through the skip, like ``eps_psi``); at large
σ, x̂0 ≈ y + G (the network predicts the change from the prior, bounded error, like the neural
prior). The training target is ``G* = (x0 − s·x_t − (1 − s)·y)/c``. For samplers and ComfyUI the
output is converted back to the ``eps_psi`` it stands for, ``F = (x_t − x̂0)/σ``, so everything
downstream is unchanged.
"""

from __future__ import annotations

import torch


def coefficients(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = 1.0 / (1.0 + sigma * sigma)
    c = sigma / torch.sqrt(1.0 + sigma * sigma)
    return s, c


def x0_from_output(out: torch.Tensor, x_t: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s, c = coefficients(sigma)
    return s * x_t + (1 - s) * y + c * out


def target(x0: torch.Tensor, x_t: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s, c = coefficients(sigma)
    return (x0 - s * x_t - (1 - s) * y) / c


def to_eps_psi(out: torch.Tensor, x_t: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The ``eps_psi`` that gives the same x̂0 under ``x̂0 = x_t − σ·F``."""
    return (x_t - x0_from_output(out, x_t, y, sigma)) / sigma
