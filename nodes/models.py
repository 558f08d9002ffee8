"""ComfyUI model classes for the FrameBridge families: config, BaseModel subclass, bridge sampling.

A FrameBridge model is a normal ``MODEL`` (a ``ModelPatcher`` around a ``BaseModel``), so LoRA,
hooks, model patches and ``TorchCompileModel`` chain with it. ComfyUI addresses time by a σ
value; for a bridge model that σ is the Bridge-TTS σ_i of the bridge index i (strictly
increasing in i), which :class:`BridgeModelSampling` maps back to i for the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.supported_models_base

from ..framebridge_core.bridge.schedule import BridgeSchedule
from ..framebridge_core.checkpoints import load_weights_strict
from ..framebridge_core.errors import CheckpointError
from ..framebridge_core.families.latte.frames import LatteBridgeFrames

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
    ``calculate_denoised`` is ``x̂0 = x_t − σ_i·F`` on the full-precision state (spec §1.5B).
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


class LatteFamilyConfig(comfy.supported_models_base.BASE):
    """FrameBridge-Latte on the SD VAE (sd-vae-ft-ema, 4 channels, scale 0.18215)."""

    unet_config = {}
    unet_extra_config = {}
    latent_format = comfy.latent_formats.SD15
    supported_inference_dtypes = [torch.float32, torch.bfloat16, torch.float16]
    memory_usage_factor = 1.5


class LattePixelFamilyConfig(LatteFamilyConfig):
    """FrameBridge-Latte trained in pixel space (the bundled tiny models): use the pixel_space VAE."""

    latent_format = PixelSpace
    memory_usage_factor = 1.0


class FrameBridgeLatte(comfy.model_base.BaseModel):
    """A FrameBridge-Latte bridge network as a ComfyUI model (frames-as-batch latents)."""

    def __init__(self, model_config, device=None):
        super().__init__(model_config, model_type=comfy.model_base.ModelType.EPS, device=device,
                         unet_model=LatteBridgeFrames)
        self.model_sampling = BridgeModelSampling(BridgeSchedule())

    def extra_conds(self, **kwargs):
        out = {}
        cond_frame = kwargs.get("fb_cond_frame", None)
        if cond_frame is not None:
            out["fb_cond_frame"] = comfy.conds.CONDNoiseShape(self.process_latent_in(cond_frame))
        label = kwargs.get("fb_class", None)
        if label is not None:
            label = int(label)
            if label < 0:  # "the null class of whatever model this is" (negative of class nodes)
                null = self.diffusion_model.net.config.null_class
                label = label if null is None else null
            out["fb_class"] = comfy.conds.CONDRegular(torch.tensor([label], dtype=torch.long))
        if "fb_neural_prior" in kwargs:
            out["fb_neural_prior"] = comfy.conds.CONDConstant(bool(kwargs["fb_neural_prior"]))
        return out


def comfy_attention(q, k, v):
    """ComfyUI's optimized attention (sage/flash/xformers/pytorch per launch flags) on [B, h, N, d]."""
    from comfy.ldm.modules.attention import optimized_attention

    return optimized_attention(q, k, v, heads=q.shape[1], skip_reshape=True, skip_output_reshape=True)


def _pick_dtypes(weight_dtype, params: int, supported):
    load_device = mm.get_torch_device()
    dtype = weight_dtype or mm.unet_dtype(model_params=params, supported_dtypes=supported)
    manual_cast = mm.unet_manual_cast(dtype, load_device, supported)
    return load_device, dtype, manual_cast


def _meta(metadata, key: str, default: str) -> str:
    return (metadata or {}).get("framebridge." + key, default)


def latent_space_of(metadata) -> str:
    space = _meta(metadata, "latent_space", "sd-vae")
    if space not in LATENT_FORMATS:
        raise CheckpointError(f"the checkpoint's latent space {space!r} is not supported; "
                              f"known: {', '.join(LATENT_FORMATS)}.")
    return space


def build_latte_patcher(config, state_dict: dict, weight_dtype=None, metadata=None):
    """A ``ModelPatcher`` for a FrameBridge-Latte bridge checkpoint (state dict without prefix).

    ``metadata`` (safetensors header) selects the latent space and the sampling defaults of models
    trained by this project; official checkpoints have none and get the UCF-101 settings.
    """
    space = latent_space_of(metadata)
    unet_config = dict(config.to_dict(), attention=comfy_attention)
    model_config = (LattePixelFamilyConfig if space == "pixel" else LatteFamilyConfig)(unet_config)
    params = sum(v.numel() for v in state_dict.values())
    load_device, dtype, manual_cast = _pick_dtypes(weight_dtype, params, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(dtype, manual_cast)
    model = FrameBridgeLatte(model_config, device=mm.unet_inital_load_device(params, dtype))
    load_weights_strict(model.diffusion_model.net, state_dict, "FrameBridge-Latte bridge network")
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device())
    patcher.set_attachments(ATTACHMENT, BridgeInfo(
        family="latte",
        num_frames=config.num_frames,
        latent_channels=config.latent_channels,
        latent_size=config.input_size,
        num_classes=config.num_classes,
        null_class=config.null_class,
        neural_prior_input=config.prior_concat,
        default_cfg=float(_meta(metadata, "default_cfg", "7.0")),
        default_steps=int(_meta(metadata, "default_steps", "50")),
        default_spacing=_meta(metadata, "default_spacing", "trailing" if space == "pixel" else "iddpm"),
        schedule=model.model_sampling.schedule,
        latent_space=space,
        class_names=tuple(json.loads(_meta(metadata, "classes", "[]"))),
    ))
    return patcher


def bridge_info(model_patcher) -> BridgeInfo | None:
    """The FrameBridge attachment of a MODEL, or None for other models."""
    return model_patcher.get_attachment(ATTACHMENT)
