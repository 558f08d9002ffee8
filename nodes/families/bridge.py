"""What the FrameBridge families share in ComfyUI: the bridge ``model_sampling``, the info attached to a
loaded MODEL, and the latent formats.

A FrameBridge model is a normal ``MODEL`` (a ``ModelPatcher`` around a ``BaseModel``), so LoRA,
hooks, model patches and ``TorchCompileModel`` chain with it. ComfyUI addresses time by a σ
value; for a bridge model that σ is the Bridge-TTS σ_i of the bridge index i (strictly
increasing in i), which :class:`BridgeModelSampling` maps back to i for the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm

from ...framebridge_core.bridge.schedule import BridgeSchedule
from ...framebridge_core.errors import CheckpointError, ConfigError
from ...framebridge_core.families.frames import PRIOR_KEY, aligned_state

ATTACHMENT = "framebridge"


@dataclass(frozen=True)
class BridgeInfo:
    """What the sampler and prior nodes need to know about a loaded FrameBridge model."""

    family: str
    num_frames: int
    latent_channels: int
    latent_size: int
    num_classes: int
    null_class: int | None
    neural_prior_input: bool
    default_cfg: float
    default_steps: int
    default_spacing: str
    schedule: BridgeSchedule
    latent_space: str = "sd-vae"           # "sd-vae" (4-ch SD VAE latents) or "pixel" (RGB in [-1, 1])
    class_names: tuple = ()                # names of the class labels, when the file lists them


class BridgeModelSampling(torch.nn.Module):
    """``model_sampling`` of a bridge model with an ``eps_psi`` network output.

    σ is the bridge σ_i; ``timestep(σ)`` is the bridge index i (what Latte's embedder takes);
    ``calculate_denoised`` is ``x̂0 = x_t − σ_i·F`` on the full-precision state (docs/math.md §1.5).
    Sampling starts at the prior with no noise, so ``noise_scaling`` returns the latent itself.
    """

    def __init__(self, schedule: BridgeSchedule):
        super().__init__()
        self.schedule = schedule
        self.register_buffer("sigmas", schedule.sigma.float())
        self.register_buffer("log_sigmas", schedule.sigma.log().float())

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def timestep(self, sigma):
        return self.schedule.nearest_index(sigma.to(self.sigmas.device)).to(sigma.device).float()

    def sigma(self, timestep):
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), 0, len(self.sigmas) - 1)
        lo, hi = t.floor().long(), t.ceil().long()
        w = t.frac()
        return ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]).exp().to(timestep.device)

    def percent_to_sigma(self, percent):
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * (len(self.sigmas) - 1))))

    def calculate_input(self, sigma, noise):
        return noise

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        return latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent


class PixelSpace(comfy.latent_formats.LatentFormat):
    """RGB pixels in [-1, 1], exactly what ComfyUI's ``pixel_space`` VAE encodes an IMAGE to."""

    latent_channels = 3

    def __init__(self):
        self.latent_rgb_factors = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
        self.latent_rgb_factors_bias = [0.0, 0.0, 0.0]
        self.taesd_decoder_name = None

    def process_in(self, latent):
        return latent

    def process_out(self, latent):
        return latent


#: latent space name (checkpoint metadata ``framebridge.latent_space``) -> ComfyUI latent format
LATENT_FORMATS = {"sd-vae": comfy.latent_formats.SD15, "pixel": PixelSpace}


def latent_space_of(metadata) -> str:
    """The latent space a checkpoint's metadata names (``framebridge.latent_space``; default the SD VAE)."""
    space = (metadata or {}).get("framebridge.latent_space", "sd-vae")
    if space not in LATENT_FORMATS:
        raise CheckpointError(f"the checkpoint's latent space {space!r} is not supported; "
                              f"known: {', '.join(LATENT_FORMATS)}.")
    return space


class SAFBridgeModel(comfy.model_base.BaseModel):
    """A bridge model fine-tuned with SAF (VideoCrafter, CogVideoX): it aligns the state in full precision
    (``z = (x_t − b_i·y)/n_i``), runs the network on ``z`` and turns its output into x̂0 with
    :meth:`denoised`. The prior comes from the bridge sampler; other samplers get the image latent."""

    family_title = "FrameBridge"

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        index = self.model_sampling.timestep(t)
        prior = transformer_options.get(PRIOR_KEY)
        if prior is None:  # a non-bridge sampler: the official prior is the image latent itself
            prior = kwargs.get("fb_cond_frame")
        if prior is None:
            raise ConfigError(f"{self.family_title} needs the bridge prior: route the conditioning through 'Bridge "
                              f"Prior from Image' and sample with 'Bridge Sampler' or the Bridge SAMPLER.")
        z = aligned_state(x, index, prior.to(x.device), self.model_sampling.schedule)
        dtype = self.manual_cast_dtype if self.manual_cast_dtype is not None else self.get_dtype()
        device = x.device
        context = None if c_crossattn is None else mm.cast_to_device(c_crossattn, device, dtype)
        extra = {k: comfy.model_base.convert_tensor(v, dtype, device) if hasattr(v, "dtype") else v
                 for k, v in kwargs.items()}
        out = self.diffusion_model(z.to(dtype), index.to(device), context=context, control=control,
                                   transformer_options=transformer_options, **extra).float()
        return self.denoised(t, out, x, z, index)

    def denoised(self, sigma, out, x, z, index):
        raise NotImplementedError


def text_and_image_conds(model, kwargs: dict) -> dict:
    """The conds every FrameBridge family shares: the text (``c_crossattn``, when the family takes text) and
    the image latent set by Bridge Prior from Image (``fb_cond_frame``, in the model's latent space)."""
    out = {}
    if kwargs.get("cross_attn") is not None:
        out["c_crossattn"] = comfy.conds.CONDCrossAttn(kwargs["cross_attn"])
    if kwargs.get("fb_cond_frame") is not None:
        out["fb_cond_frame"] = comfy.conds.CONDNoiseShape(model.process_latent_in(kwargs["fb_cond_frame"]))
    return out


def bridge_info(model_patcher) -> BridgeInfo | None:
    """The FrameBridge attachment of a MODEL, or None for other models."""
    return model_patcher.get_attachment(ATTACHMENT)


__all__ = ["ATTACHMENT", "LATENT_FORMATS", "BridgeInfo", "BridgeModelSampling", "PixelSpace", "SAFBridgeModel",
           "bridge_info",
           "latent_space_of", "text_and_image_conds"]
