"""The model variants the project trains and compares, and how each one generates a video.

Every variant shares the Latte network and the ``concat_pre`` first-frame condition:
``bridge`` (FrameBridge from scratch, docs/math.md §1.3, §1.5), ``bridge-np`` (the bridge from the
neural prior's coarse video, §4.2), ``diffusion`` (the noise-to-video counterpart: VP linear schedule,
v-prediction, DDIM), ``neural-prior`` (one-pass regression), ``saf`` (a diffusion network fine-tuned
into a bridge with SNR alignment, §2) and ``plain-finetune`` (the same without alignment). The
training losses of the same variants are in :mod:`framebridge_core.training.losses`, so both sides
read one definition of the network input and timestep (:func:`net_input`, :func:`net_timestep`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..bridge import preconditioning
from ..bridge.alignment import aligned_input, output_to_x0, snr_aligned_timesteps
from ..bridge.schedule import BridgeSchedule
from ..vp import DiffusionSchedule, sample_ddim
from ..errors import ConfigError
from ..bridge.sampling import sample_bridge

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


def static_prior(video_or_frame: torch.Tensor, frames: int) -> torch.Tensor:
    """The FrameBridge data prior: frame 0 repeated ``frames`` times, ``[B, F, C, H, W]``."""
    first = video_or_frame[:, :1] if video_or_frame.ndim == 5 else video_or_frame[:, None]
    return first.expand(-1, frames, -1, -1, -1).contiguous()


def keep_frame0(x0: torch.Tensor, first_frame: torch.Tensor) -> torch.Tensor:
    """``x0 [B, F, C, H, W]`` with frame 0 replaced by the known ``first_frame [B, C, H, W]``."""
    return torch.cat([first_frame[:, None].to(x0.dtype), x0[:, 1:]], dim=1)


def net_timestep(kind: str, i: torch.Tensor, sched: Schedules) -> torch.Tensor:
    """What the network's timestep embedder sees for bridge index i."""
    if kind == "saf":
        return sched.t_tilde.to(i.device)[i].float()
    return i


def net_input(kind: str, x_t: torch.Tensor, y: torch.Tensor, i, sched: Schedules) -> torch.Tensor:
    if kind == "saf":
        return aligned_input(x_t, y, i, sched.bridge).to(x_t.dtype)
    return x_t


def _guided(model, x_in: torch.Tensor, t, labels: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Network output for the video frames with class CFG (one batched pass when guided)."""
    if cfg_scale == 1.0:
        return model(x_in, t, labels, drop_condition_frame=True)
    return model.forward_with_cfg(x_in, t, labels, cfg_scale, drop_condition_frame=True)


@torch.no_grad()
def generate(kind: str, model, first_frame: torch.Tensor, labels: torch.Tensor, *, steps: int,
             sched: Schedules, cfg_scale: float = 1.0, generator: Optional[torch.Generator] = None,
             neural_prior: Optional[torch.nn.Module] = None, method: str = "sde",
             callback: Optional[Callable[[dict], None]] = None,
             keep_first_frame: Optional[bool] = None) -> torch.Tensor:
    """Generate ``[B, F, C, H, W]`` videos from first frames ``[B, C, H, W]`` (NFE = ``steps``).

    Bridge variants start exactly at the prior and take ``steps`` bridge-SDE steps on the
    trailing grid; ``diffusion`` starts from Gaussian noise and takes ``steps`` DDIM steps;
    ``neural-prior`` is one forward pass (``steps`` is ignored).

    ``keep_first_frame`` (default: the network's ``config.keep_first_frame``) replaces frame 0 of
    every x̂0 by the input frame, as inpainting samplers do with known pixels: the last step returns
    x̂0, so frame 0 of the clip is the input exactly.
    """
    check_kind(kind)
    cfg = model.config
    Fr = cfg.num_frames
    dtype = next(model.parameters()).dtype
    cond = first_frame[:, None].to(dtype)
    keep = keep_first_frame if keep_first_frame is not None else cfg.keep_first_frame
    if kind == "neural-prior":
        coarse = model(cond, labels).float()
        return keep_frame0(coarse, first_frame.float()) if keep else coarse
    if kind == "diffusion":
        shape = (first_frame.shape[0], Fr) + tuple(first_frame.shape[1:])
        noise = torch.randn(shape, generator=generator, dtype=torch.float32, device=first_frame.device)
        diff = sched.diffusion

        def denoise_v(x, t):
            x_in = model.build_bridge_input(x.to(dtype), cond)
            v = _guided(model, x_in, torch.full((x.shape[0],), t, device=x.device), labels, cfg_scale)
            if not keep:
                return v
            # the v whose x̂0 = alpha·x − sigma·v has the condition frame as frame 0
            a, s = float(diff.alpha[t]), float(diff.sigma[t])
            x0 = keep_frame0(a * x - s * v.to(x.dtype), first_frame)
            return ((a * x - x0) / s).to(v.dtype)

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
        x_in = model.build_bridge_input(net_input(kind, x, y, ti, sched).to(dtype), cond, coarse)
        out = _guided(model, x_in, net_timestep(kind, ti, sched), labels, cfg_scale).to(x.dtype)
        if kind in ("bridge", "bridge-np"):
            if cfg.output in preconditioning.CONVERTED_OUTPUTS:
                x0 = preconditioning.x0_from_output(out, x, y, sched.bridge.sigma[int(i)], cfg.output)
            else:
                x0 = output_to_x0("eps_psi", out, x, y, int(i), sched.bridge)
        else:
            x0 = output_to_x0("v_aligned", out, x, y, int(i), sched.bridge)
        return keep_frame0(x0, first_frame) if keep else x0

    return sample_bridge(denoise_x0, prior, sched.bridge, steps, "trailing", method, generator, callback)


__all__ = ["BRIDGE_KINDS", "KINDS", "Schedules", "check_kind", "generate", "keep_frame0", "net_input", "net_timestep",
           "static_prior"]
