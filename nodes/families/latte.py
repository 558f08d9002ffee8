"""FrameBridge-Latte in ComfyUI: the model config, the ``BaseModel`` and the MODEL built from a checkpoint."""

from __future__ import annotations

import json

import torch

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_patcher
import comfy.supported_models_base

from ...framebridge_core.bridge.schedule import BridgeSchedule
from ...framebridge_core.checkpoints import load_weights_strict
from ...framebridge_core.errors import ConfigError
from ...framebridge_core.families.latte.frames import LatteBridgeFrames
from ...framebridge_core.labels import CAMERA_MOTIONS, UCF101_CLASSES
from ..common import comfy_attention, new_patcher
from .bridge import ATTACHMENT, BridgeInfo, BridgeModelSampling, PixelSpace, latent_space_of, text_and_image_conds


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
        out = text_and_image_conds(self, {"fb_cond_frame": kwargs.get("fb_cond_frame")})  # no text: class labels
        label = kwargs.get("fb_class", None)
        if label is not None:
            label = int(label)
            if label < 0:  # "the null class of whatever model this is" (negative of class nodes)
                null = self.diffusion_model.net.config.null_class
                label = label if null is None else null
            else:
                check_class(self.diffusion_model.net.config, label, kwargs.get("fb_class_source"),
                            self.model_config.latent_format)
            out["fb_class"] = comfy.conds.CONDRegular(torch.tensor([label], dtype=torch.long))
        if "fb_neural_prior" in kwargs:
            out["fb_neural_prior"] = comfy.conds.CONDConstant(bool(kwargs["fb_neural_prior"]))
        return out


def check_class(config, label: int, source=None, latent_format=None, node: str = "") -> None:
    """A :class:`ConfigError` when the class index ``label`` is not one of the model's classes, naming the class
    the user picked, the node that picked it, the model's range and the node that fits the model."""
    if 0 <= label < config.num_classes or config.num_classes == 0:  # no class table: the label is not used
        return
    name, picked_by = source if source else ("", "the class conditioning node")
    what = f"class {name!r} (index {label})" if name else f"class index {label}"
    fits = ("'FrameBridge Camera Motion'" if latent_format is PixelSpace or config.num_classes == len(CAMERA_MOTIONS)
            else "'FrameBridge UCF-101 Class'" if config.num_classes == len(UCF101_CLASSES) else "a class node")
    raise ConfigError(f"{node + ': ' if node else ''}{what} from '{picked_by}' is out of range for this model: it has "
                      f"{config.num_classes} classes (0..{config.num_classes - 1}). Pick one of them with {fits}.")


def _meta(metadata, key: str, default: str) -> str:
    return (metadata or {}).get("framebridge." + key, default)


def build_latte_patcher(config, state_dict: dict, weight_dtype=None, metadata=None):
    """A ``ModelPatcher`` for a FrameBridge-Latte bridge checkpoint (state dict without prefix).

    ``metadata`` (safetensors header) selects the latent space and the sampling defaults of models
    trained by this project; official checkpoints have none and get the UCF-101 settings.
    """
    space = latent_space_of(metadata)
    unet_config = dict(config.to_dict(), attention=comfy_attention)
    model_config = (LattePixelFamilyConfig if space == "pixel" else LatteFamilyConfig)(unet_config)
    patcher = new_patcher(model_config, FrameBridgeLatte, sum(v.numel() for v in state_dict.values()), weight_dtype)
    model = patcher.model
    load_weights_strict(model.diffusion_model.net, state_dict, "FrameBridge-Latte bridge network")
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


__all__ = ["FrameBridgeLatte", "check_class", "LatteFamilyConfig", "LattePixelFamilyConfig", "build_latte_patcher"]
