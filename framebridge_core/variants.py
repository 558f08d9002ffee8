"""Training objectives and samplers of the model variants the project trains and compares.

One place defines, for every variant, how a training loss is formed from a clean video and how a
video is generated from a first frame, so that the training loop, the benchmark and the
``generate`` command cannot drift apart.

Variants (all share the Latte network and the ``concat_pre`` first-frame condition):

* ``bridge``: FrameBridge from scratch (spec §1.3, §1.5B): ``x_t = a·x0 + b·y + c·ε`` with the
  prior ``y`` = first frame repeated, target ``ε_ψ = (x_t − x0)/σ_t``, bridge index as timestep.
* ``bridge-np``: the same with the neural-prior video as prior and as extra input channels
  (spec §4.2, ``nwarp_condition_type: prior``).
* ``diffusion``: the noise-to-video counterpart: VP linear schedule, v-prediction, DDIM.
* ``neural-prior``: the one-pass regression network (spec §4.2), MSE to the clean video.
* ``saf``: a trained ``diffusion`` network fine-tuned into a bridge with SNR alignment (spec §2):
  input ``z = (x_t − b·y)/n`` at the aligned diffusion timestep t̃_i, target ``v_aligned``.
* ``plain-finetune``: the same fine-tuning without alignment: raw ``x_t`` and the bridge index as
  timestep, same ``v_aligned`` target, so only the alignment differs from ``saf``.

Class labels are dropped to the null class with probability ``class_dropout`` in training, for
classifier-free guidance at sampling time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import preconditioning
from .alignment import aligned_input, output_to_x0, snr_aligned_timesteps, training_target
from .bridge import BridgeSchedule, gather
from .diffusion import DiffusionSchedule, sample_ddim
from .errors import ConfigError
from .sampling import sample_bridge

KINDS = ("bridge", "bridge-np", "diffusion", "neural-prior", "saf", "plain-finetune")
#: variants whose network is a bridge (sampling starts at the prior)
BRIDGE_KINDS = ("bridge", "bridge-np", "saf", "plain-finetune")


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ConfigError(f"unknown model variant {kind!r}; choose one of {', '.join(KINDS)}.")
    return kind


@dataclass
class Schedules:
    """The tables every variant may need (built once; cheap)."""

    bridge: BridgeSchedule
    diffusion: DiffusionSchedule
    t_tilde: torch.Tensor  # SAF timestep of each bridge index, in diffusion-timestep units

    @classmethod
    def default(cls) -> "Schedules":
        bridge = BridgeSchedule()
        diffusion = DiffusionSchedule()
        return cls(bridge, diffusion, snr_aligned_timesteps(bridge, diffusion.alphas_cumprod, mode="exact"))


def drop_labels(labels: torch.Tensor, null_class: Optional[int], p: float, generator) -> torch.Tensor:
    if null_class is None or p <= 0:
        return labels
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < p
    return torch.where(drop, torch.full_like(labels, null_class), labels)


def static_prior(video_or_frame: torch.Tensor, frames: int) -> torch.Tensor:
    """The FrameBridge data prior: frame 0 repeated ``frames`` times, ``[B, F, C, H, W]``."""
    first = video_or_frame[:, :1] if video_or_frame.ndim == 5 else video_or_frame[:, None]
    return first.expand(-1, frames, -1, -1, -1).contiguous()


def _net_timestep(kind: str, i: torch.Tensor, sched: Schedules) -> torch.Tensor:
    """What the network's timestep embedder sees for bridge index i."""
    if kind == "saf":
        return sched.t_tilde.to(i.device)[i].float()
    return i


def _net_input(kind: str, x_t: torch.Tensor, y: torch.Tensor, i, sched: Schedules) -> torch.Tensor:
    if kind == "saf":
        return aligned_input(x_t, y, i, sched.bridge).to(x_t.dtype)
    return x_t


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


def training_loss(kind: str, model, video: torch.Tensor, labels: torch.Tensor, sched: Schedules,
                  generator: torch.Generator, *, class_dropout: float = 0.1,
                  neural_prior: Optional[torch.nn.Module] = None,
                  weighting: str = "sigma2-clamped") -> torch.Tensor:
    """Mean-squared training loss of one batch of clean videos ``[B, F, C, H, W]`` in [-1, 1].

    ``weighting`` applies to the ``eps_psi`` variants (``bridge``, ``bridge-np``) only."""
    check_kind(kind)
    B, Fr = video.shape[:2]
    cfg = model.config
    labels = drop_labels(labels, cfg.null_class, class_dropout, generator)
    cond = video[:, :1]
    if kind == "neural-prior":
        return F.mse_loss(model(cond, labels).float(), video.float())
    noise = torch.randn(video.shape, generator=generator, dtype=video.dtype, device=video.device)
    t = torch.randint(0, 1000, (B,), generator=generator, device=video.device)
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
    x_in = model.build_bridge_input(_net_input(kind, x_t, y, t, sched), cond, coarse)
    out = model(x_in, _net_timestep(kind, t, sched), labels, drop_condition_frame=True)
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


def _guided(model, x_in: torch.Tensor, t, labels: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Network output for the video frames with class CFG (one batched pass when guided)."""
    if cfg_scale == 1.0:
        return model(x_in, t, labels, drop_condition_frame=True)
    return model.forward_with_cfg(x_in, t, labels, cfg_scale, drop_condition_frame=True)


@torch.no_grad()
def generate(kind: str, model, first_frame: torch.Tensor, labels: torch.Tensor, *, steps: int,
             sched: Schedules, cfg_scale: float = 1.0, generator: Optional[torch.Generator] = None,
             neural_prior: Optional[torch.nn.Module] = None, method: str = "sde",
             callback: Optional[Callable[[dict], None]] = None) -> torch.Tensor:
    """Generate ``[B, F, C, H, W]`` videos from first frames ``[B, C, H, W]`` (NFE = ``steps``).

    Bridge variants start exactly at the prior and take ``steps`` bridge-SDE steps on the
    trailing grid; ``diffusion`` starts from Gaussian noise and takes ``steps`` DDIM steps;
    ``neural-prior`` is one forward pass (``steps`` is ignored).
    """
    check_kind(kind)
    cfg = model.config
    Fr = cfg.num_frames
    dtype = next(model.parameters()).dtype
    cond = first_frame[:, None].to(dtype)
    if kind == "neural-prior":
        return model(cond, labels).float()
    if kind == "diffusion":
        shape = (first_frame.shape[0], Fr) + tuple(first_frame.shape[1:])
        noise = torch.randn(shape, generator=generator, dtype=torch.float32, device=first_frame.device)

        def denoise_v(x, t):
            x_in = model.build_bridge_input(x.to(dtype), cond)
            return _guided(model, x_in, torch.full((x.shape[0],), t, device=x.device), labels, cfg_scale)

        return sample_ddim(denoise_v, noise, sched.diffusion, steps, callback=callback)
    coarse = None
    if kind == "bridge-np":
        if neural_prior is None:
            raise ConfigError("the bridge-np variant needs the neural prior network to build its prior")
        coarse = neural_prior(cond, labels).to(dtype)
        prior = coarse.float()
    else:
        prior = static_prior(first_frame, Fr).float()

    def denoise_x0(x, i, y):
        ti = torch.full((x.shape[0],), int(i), device=x.device)
        x_in = model.build_bridge_input(_net_input(kind, x, y, ti, sched).to(dtype), cond, coarse)
        out = _guided(model, x_in, _net_timestep(kind, ti, sched), labels, cfg_scale).to(x.dtype)
        if kind in ("bridge", "bridge-np"):
            if cfg.output in preconditioning.CONVERTED_OUTPUTS:
                return preconditioning.x0_from_output(out, x, y, sched.bridge.sigma[int(i)], cfg.output)
            return output_to_x0("eps_psi", out, x, y, int(i), sched.bridge)
        return output_to_x0("v_aligned", out, x, y, int(i), sched.bridge)

    return sample_bridge(denoise_x0, prior, sched.bridge, steps, "trailing", method, generator, callback)


__all__ = ["KINDS", "BRIDGE_KINDS", "Schedules", "training_loss", "generate", "static_prior",
           "drop_labels", "check_kind"]
