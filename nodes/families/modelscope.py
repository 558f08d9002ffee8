"""ModelScope T2V / ZeroScope in ComfyUI: BIVDiff's video model as a MODEL that core samplers and Mixed
Inversion take (ε-prediction on SD's scaled-linear schedule, SD VAE latents, frames-as-batch)."""

from __future__ import annotations

import torch

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_patcher
import comfy.supported_models_base

from ...framebridge_core.checkpoints import load_weights_strict
from ...framebridge_core.families.modelscope.frames import ModelScopeFrames
from ..common import comfy_attention, new_patcher

#: attachment naming the ModelScope config of a loaded video MODEL
ATTACHMENT = "bivdiff_video_model"


class ModelScopeFamilyConfig(comfy.supported_models_base.BASE):
    """ModelScope T2V / ZeroScope: ε-prediction on SD's scaled_linear schedule, SD VAE latents."""

    unet_config = {}
    unet_extra_config = {}
    latent_format = comfy.latent_formats.SD15
    sampling_settings = {}  # ModelSamplingDiscrete default: "linear" 0.00085 -> 0.012 (SD's scaled_linear)
    supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]
    memory_usage_factor = 2.0


class ModelScopeVideoModel(comfy.model_base.BaseModel):
    """A ModelScope UNet3D on frames-as-batch latents. ``num_video_frames`` is the latent batch, so
    ComfyUI's cond/uncond batching ([2F] rows) still gives the network whole videos."""

    unet_class = ModelScopeFrames  # the frames-as-batch network (VidRD's model sets its own)

    def __init__(self, model_config, model_type=comfy.model_base.ModelType.EPS, device=None):
        super().__init__(model_config, model_type=model_type, device=device, unet_model=self.unet_class)

    def extra_conds(self, **kwargs):
        out = super().extra_conds(**kwargs)
        noise = kwargs.get("noise", None)
        if noise is not None:
            out["num_video_frames"] = comfy.conds.CONDConstant(noise.shape[0])
        return out


def build_modelscope_patcher(config, state_dict: dict, weight_dtype=None):
    unet_config = dict(config.to_dict(), attention=comfy_attention)
    model_config = ModelScopeFamilyConfig(unet_config)
    patcher = new_patcher(model_config, ModelScopeVideoModel, sum(v.numel() for v in state_dict.values()), weight_dtype)
    load_weights_strict(patcher.model.diffusion_model.net, state_dict, "ModelScope UNet3D")
    patcher.set_attachments(ATTACHMENT, config)
    return patcher


__all__ = ["ATTACHMENT", "ModelScopeFamilyConfig", "ModelScopeVideoModel", "build_modelscope_patcher"]
