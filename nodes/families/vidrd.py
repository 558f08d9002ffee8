"""VidRD in ComfyUI: BIVDiff's other video model as a MODEL that core samplers and Mixed Inversion take
(Stable Diffusion 2.1-base inflated to video: ε-prediction on SD's scaled-linear schedule, SD VAE latents,
frames-as-batch; its text encoder is SD 2.1's OpenCLIP-H from a core CLIP loader)."""

from __future__ import annotations

import comfy.model_base

from ...framebridge_core.checkpoints import load_weights_strict
from ...framebridge_core.families.vidrd.checkpoint import V_PREDICTION, VidRDSpec, unet_state_dict
from ...framebridge_core.families.vidrd.frames import VidRDFrames
from ..common import comfy_attention, new_patcher
from .modelscope import ModelScopeFamilyConfig, ModelScopeVideoModel

#: attachment naming the VidRD spec of a loaded video MODEL
ATTACHMENT = "bivdiff_video_model"


class VidRDFamilyConfig(ModelScopeFamilyConfig):
    """VidRD: SD 2.1-base's schedule (scaled_linear 0.00085 -> 0.012, 1000 steps) and SD VAE latents (SD 2.x
    shares SD 1.x's VAE and scale 0.18215): ModelScope's settings."""


class VidRDVideoModel(ModelScopeVideoModel):
    """A VidRD UNet on frames-as-batch latents (ModelScope's video model with VidRD's network)."""

    unet_class = VidRDFrames


def model_type_of(spec: VidRDSpec):
    return comfy.model_base.ModelType.V_PREDICTION if spec.prediction_type == V_PREDICTION else \
        comfy.model_base.ModelType.EPS


def build_vidrd_patcher(spec: VidRDSpec, state_dict: dict, weight_dtype=None):
    """A ModelPatcher holding the VidRD UNet of ``state_dict`` (the Lightning checkpoint's keys or bare UNet keys)."""
    unet, _ = unet_state_dict(state_dict)
    unet_config = dict(spec.unet.to_dict(), attention=comfy_attention)
    model_config = VidRDFamilyConfig(unet_config)
    mtype = model_type_of(spec)

    def make(config, device=None):
        return VidRDVideoModel(config, model_type=mtype, device=device)

    patcher = new_patcher(model_config, make, sum(v.numel() for v in unet.values()), weight_dtype)
    load_weights_strict(patcher.model.diffusion_model.net, unet, "VidRD UNet")
    patcher.set_attachments(ATTACHMENT, spec)
    return patcher


__all__ = ["ATTACHMENT", "VidRDFamilyConfig", "VidRDVideoModel", "build_vidrd_patcher", "model_type_of"]
