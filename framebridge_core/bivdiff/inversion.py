"""DDIM inversion and BIVDiff's Mixed Inversion, handing over where its smoothing-stage sampler starts.

Everything here works on VP latents ``z_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε`` in the video layout
``[B, C, F, h, w]`` (already multiplied by the VAE scale 0.18215), with SD's discrete
``scaled_linear`` schedule (β 0.00085 -> 0.012, 1000 steps) kept in float64. Models are callables
``eps_fn(z, t) -> ε`` with an integer timestep ``t``; the text conditioning is bound inside them.
:func:`inversion_ladder` gives the official behaviour and the ``"matched"`` ladder (our default,
docs/bivdiff-math.md §9); :func:`mixed_inversion` gives the mixing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..errors import ConfigError
from ..vp import ddim_step, scaled_linear_alphas_cumprod

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]

NUM_TRAIN_TIMESTEPS = 1000
STEPS_OFFSET = 1
VAE_SCALE = 0.18215
LADDERS = ("matched", "official")


def ddim_timesteps(steps: int, num_train: int = NUM_TRAIN_TIMESTEPS, offset: int = STEPS_OFFSET) -> list[int]:
    """diffusers DDIM ``set_timesteps`` (leading spacing + offset), descending: ``[981, ..., 1]`` for 50.

    As in the official ``models/scheduling_ddim.py``: ``[0, r, 2r, ...]`` reversed, plus
    ``steps_offset=1``, with ``r = 1000 // steps``.
    """
    if not 1 <= int(steps) <= num_train:
        raise ConfigError(f"steps={steps} is outside 1..{num_train}; BIVDiff uses 50.")
    ratio = num_train // steps
    # the offset may not push the last step past the table: with 1000 steps (ratio 1) the steps are 999..0,
    # not 1000..1 (the table has indices 0..999); every other count keeps diffusers' offset
    offset = min(offset, num_train - 1 - (steps - 1) * ratio)
    return [i * ratio + offset for i in reversed(range(steps))]


@dataclass(frozen=True)
class Ladder:
    """The levels one inversion visits: step k evaluates the model at ``timesteps[k]`` on a latent
    at level ``alpha_from[k]`` and moves it to ``alpha_to[k]``. ``sampler_start`` is the timestep
    DDIM sampling starts from (981 for 50 steps): the level the result is handed over at."""

    name: str
    timesteps: tuple[int, ...]
    alpha_from: torch.Tensor
    alpha_to: torch.Tensor
    sampler_start: int

    def __len__(self) -> int:
        return len(self.timesteps)


def inversion_ladder(steps: int = 50, mode: str = "matched", alphas_cumprod: Optional[torch.Tensor] = None) -> Ladder:
    """The inversion ladder for ``steps`` DDIM steps.

    ``"official"``: timesteps ``[1, 21, ..., 981]``, targets ``min(998, t + 20)``, so the run ends
    at t=998 (BIVDiff's ``reverse_step``). ``"matched"``: from ᾱ_0 (where DDIM sampling ends) to
    t=1, 21, ..., 981 (where it starts), evaluating the model at the level the latent is at
    (t = 0, 1, 21, ..., 961); the exact reverse of the sampler's ladder.

    Official behaviour (``models/mixed_inversion.py:885-896``, ``models/scheduling_ddim.py``):

    * inversion visits the :func:`ddim_timesteps` in increasing order; ``reverse_step`` at ``t``
      evaluates ``ε(z, t)``, forms ``x̂0 = (z - sqrt(1-ᾱ_t) ε) / sqrt(ᾱ_t)`` and re-noises to
      ``n = min(998, t + r)``: ``z ← sqrt(ᾱ_n) x̂0 + sqrt(1-ᾱ_n) ε``. The clean latent is treated
      as if at t=1, and the last step lands on t=998 although sampling later starts at t=981;
    * sampling: DDIM η=0 over ``[981, ..., 1]``, ``prev = t - r``, the last step going to ``ᾱ_0``
      (``set_alpha_to_one=False``), no clipping, CFG ``ε_u + s·(ε_c - ε_u)``.

    The ``"matched"`` ladder (docs/bivdiff-math.md §9, our default in the nodes) starts the
    inversion at the level the sampler ends on (ᾱ_0) and ends it at the level the sampler starts
    on (t=981), so inversion and sampling are exact inverses for a model with a constant ε
    (docs/bivdiff-math.md §8.2).
    """
    if mode not in LADDERS:
        raise ConfigError(f"unknown inversion ladder {mode!r}; choose 'matched' (inversion ends where sampling "
                          f"starts) or 'official' (BIVDiff's code: ends at t=998, sampling starts at 981).")
    ac = scaled_linear_alphas_cumprod() if alphas_cumprod is None else torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    n = ac.shape[0]
    up = list(reversed(ddim_timesteps(steps, n)))  # [1, 21, ..., 981]
    ratio = n // steps
    if mode == "official":
        ts = up
        targets = [min(n - 2, t + ratio) for t in up]
        a_from, a_to = ac[ts], ac[targets]
    else:
        ts = [0] + up[:-1]
        a_from, a_to = ac[ts], ac[up]
    return Ladder(mode, tuple(int(t) for t in ts), a_from.clone(), a_to.clone(), sampler_start=up[-1])


def ddim_invert(eps_fn: EpsFn, z0: torch.Tensor, ladder: Ladder,
                callback: Optional[Callable[[int, torch.Tensor], None]] = None) -> torch.Tensor:
    """Run one DDIM inversion of the clean VP latent ``z0`` along ``ladder``; returns z at the top."""
    z = z0
    for k, t in enumerate(ladder.timesteps):
        z = ddim_step(z, eps_fn(z, t), ladder.alpha_from[k], ladder.alpha_to[k])
        if callback is not None:
            callback(k, z)
    return z


def mix_latents(z_image: torch.Tensor, z_video: torch.Tensor, mixing_ratio: float,
                renormalize: bool = False) -> torch.Tensor:
    """``α·z_image + (1-α)·z_video`` (official, no renormalisation).

    ``renormalize=True`` divides by ``sqrt(α² + (1-α)²)``, the std shrink of mixing two
    independent unit-variance latents (not in BIVDiff; an option for decorrelated branches).
    """
    a = check_mixing_ratio(mixing_ratio)
    z = a * z_image + (1 - a) * z_video
    if renormalize:
        z = z / math.sqrt(a * a + (1 - a) * (1 - a))
    return z


def check_mixing_ratio(mixing_ratio: float) -> float:
    a = float(mixing_ratio)
    if not 0.0 <= a <= 1.0 or math.isnan(a):
        raise ConfigError(f"mixing_ratio={mixing_ratio} is outside [0, 1]; it weights the image-model inversion "
                          f"(BIVDiff: 1.0 for ControlNet / T2I-Adapter / InstructPix2Pix, 0.25 for Prompt2Prompt, "
                          f"0.1 for inpainting and outpainting).")
    return a


@dataclass
class MixedInversionResult:
    latent: torch.Tensor
    image_latent: Optional[torch.Tensor]
    video_latent: Optional[torch.Tensor]
    model_calls: int


def mixed_inversion(image_eps: Optional[EpsFn], video_eps: Optional[EpsFn], z0: torch.Tensor, mixing_ratio: float,
                    ladder: Ladder, skip_zero_weight: bool = True, renormalize: bool = False,
                    callback: Optional[Callable[[str, int, torch.Tensor], None]] = None) -> MixedInversionResult:
    """BIVDiff Mixed Inversion: invert ``z0`` with the image and the video model, then mix once.

    With ``skip_zero_weight`` (default) the branch whose weight is 0 is not run: at α=1 only the
    image model and at α=0 only the video model is called, S model calls instead of the official
    2·S, with a bit-identical result (the skipped term is multiplied by 0 in the official mix).

    Official mixing (``models/mixed_inversion.py:885-896``): ``z_T = α·z_T(image) + (1-α)·z_T(video)``,
    once, after both runs; no renormalisation. Both branches always run (2·S model calls), even at
    α = 0 or 1.
    """
    a = check_mixing_ratio(mixing_ratio)
    calls = 0

    def counted(fn: Optional[EpsFn], what: str) -> EpsFn:
        if fn is None:
            raise ConfigError(f"mixing_ratio={a} needs the {what} model, but none was given.")

        def wrapped(z, t):
            nonlocal calls
            calls += 1
            return fn(z, t)

        return wrapped

    run_image = a > 0 or not skip_zero_weight
    run_video = a < 1 or not skip_zero_weight
    z_img = z_vid = None
    if run_image:
        z_img = ddim_invert(counted(image_eps, "image"), z0, ladder,
                            None if callback is None else (lambda k, z: callback("image", k, z)))
    if run_video:
        z_vid = ddim_invert(counted(video_eps, "video"), z0, ladder,
                            None if callback is None else (lambda k, z: callback("video", k, z)))
    if z_img is None:  # α = 0: the official mix is 0·z_img + 1·z_vid = z_vid exactly
        z = z_vid
    elif z_vid is None:  # α = 1
        z = z_img
    else:
        z = mix_latents(z_img, z_vid, a, renormalize)
    return MixedInversionResult(latent=z, image_latent=z_img, video_latent=z_vid, model_calls=calls)


# ---- ComfyUI's LATENT convention -------------------------------------------------------------------


def to_comfy_latent(z: torch.Tensor, alpha_start, scale: float = VAE_SCALE) -> torch.Tensor:
    """A VP latent handed to ComfyUI's sampler at level ᾱ_start (docs/bivdiff-math.md §7): ``z / (sqrt(ᾱ) · scale)``.

    ComfyUI multiplies a LATENT by the VAE scale and, with noise disabled, starts an EPS model at
    ``x = latent`` in VE form, i.e. ``z / sqrt(ᾱ)`` at the first σ of its schedule.
    """
    return z / (math.sqrt(float(alpha_start)) * scale)


def from_comfy_latent(latent: torch.Tensor, alpha_start, scale: float = VAE_SCALE) -> torch.Tensor:
    """Inverse of :func:`to_comfy_latent`."""
    return latent * (math.sqrt(float(alpha_start)) * scale)


__all__ = [
    "LADDERS", "Ladder", "MixedInversionResult", "NUM_TRAIN_TIMESTEPS", "VAE_SCALE", "check_mixing_ratio", "ddim_invert",
    "ddim_timesteps", "from_comfy_latent", "inversion_ladder", "mix_latents", "mixed_inversion", "to_comfy_latent",
]
