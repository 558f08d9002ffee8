"""FrameBridge-VideoCrafter in ComfyUI: the MODEL, and CLIP / VAE / CLIP_VISION built by ComfyUI.

:class:`FrameBridgeVideoCrafter` is the MODEL (a ``BaseModel`` with the bridge σ as its
``model_sampling``); :func:`load_videocrafter` reads the released checkpoint and hands the
encoders to ComfyUI's own CLIP, CLIP vision and VAE classes, so the standard text-encode, vision
and VAE nodes work unchanged; :func:`videocrafter_prior_values` is what Bridge Prior from Image
attaches for this family.
"""

from __future__ import annotations

import json
import os
import tempfile

import torch
import comfy.clip_vision
import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.text_encoders.sd2_clip
import comfy.utils
import folder_paths

from ...framebridge_core.bridge.schedule import BridgeSchedule
from ...framebridge_core.checkpoints import load_state_dict, load_weights_strict
from ...framebridge_core.errors import CheckpointError, ConfigError, ShapeError
from ...framebridge_core.families.videocrafter.bridge import (
    DEFAULT_CFG,
    DEFAULT_SPACING,
    DEFAULT_STEPS,
    check_frames_and_size,
    check_schedule_buffers,
)
from ...framebridge_core.families.videocrafter.checkpoint import VIDEOCRAFTER, split_checkpoint
from ...framebridge_core.families.videocrafter.frames import VideoCrafterBridgeFrames
from ..common import comfy_attention, identify, new_patcher, wrong_loader
from .bridge import ATTACHMENT, BridgeInfo, BridgeModelSampling, SAFBridgeModel, text_and_image_conds

FAMILY = "videocrafter"
CLIP_VISION_TOKENS_KEY = "fb_clip_vision"
CONFIG_ATTACHMENT = "framebridge_videocrafter_config"


class VideoCrafterFamilyConfig(comfy.supported_models_base.BASE):
    """FrameBridge-VideoCrafter on the SD VAE (4 channels, scale 0.18215), frames-as-batch."""

    unet_config = {}
    unet_extra_config = {}
    latent_format = comfy.latent_formats.SD15
    # the official sampler ran fp32 weights under fp16 autocast
    supported_inference_dtypes = [torch.float16, torch.bfloat16, torch.float32]
    memory_usage_factor = 2.0


class FrameBridgeVideoCrafter(SAFBridgeModel):
    """A ``BaseModel`` whose ``model_sampling`` is the bridge σ (:class:`.bridge.BridgeModelSampling`).

    It aligns the state for SAF in full precision (``z = (x_t − b_i·y)/n_i``), the network gets
    ``t̃_i`` and returns ``eps_psi``, and ``x̂0 = x_t − σ_i·F``. Text arrives as ``c_crossattn``
    (CLIP Text Encode), the image latent as ``fb_cond_frame`` and the CLIP ViT-H tokens as
    ``fb_clip_vision``, both set by Bridge Prior from Image on positive *and* negative, so CFG
    drops only the text (docs/math.md §3.4).
    """

    def __init__(self, model_config, device=None):
        super().__init__(model_config, model_type=comfy.model_base.ModelType.EPS, device=device,
                         unet_model=VideoCrafterBridgeFrames)
        self.model_sampling = BridgeModelSampling(BridgeSchedule())

    family_title = "FrameBridge-VideoCrafter"

    def denoised(self, sigma, out, x, z, index):
        return self.model_sampling.calculate_denoised(sigma, out, x)

    def extra_conds(self, **kwargs):
        out = text_and_image_conds(self, kwargs)
        tokens = kwargs.get(CLIP_VISION_TOKENS_KEY, None)
        if tokens is not None:
            out[CLIP_VISION_TOKENS_KEY] = comfy.conds.CONDRegular(tokens)
        fs = kwargs.get("fb_fs", None)
        if fs is not None:
            out["fb_fs"] = comfy.conds.CONDRegular(torch.tensor([int(fs)], dtype=torch.long))
        return out


# ----------------------------------------------------------------------------------------------
# MODEL
# ----------------------------------------------------------------------------------------------


def build_videocrafter_patcher(config, parts, weight_dtype=None):
    """A ``ModelPatcher`` for the bridge network from :func:`split_checkpoint` parts."""
    if config.resampler is None or not parts.image_proj:
        raise CheckpointError("this file has the FrameBridge-VideoCrafter UNet but no Resampler (image_proj_model.*) "
                              "weights; load the full released checkpoint, which holds both.")
    if parts.buffers:
        check_schedule_buffers(parts.buffers)
    model_config = VideoCrafterFamilyConfig({"config": config, "attention": comfy_attention})
    params = sum(v.numel() for v in parts.unet.values()) + sum(v.numel() for v in parts.image_proj.values())
    patcher = new_patcher(model_config, FrameBridgeVideoCrafter, params, weight_dtype)
    model = patcher.model
    net = model.diffusion_model.net
    load_weights_strict(net.diffusion_model, parts.unet, "FrameBridge-VideoCrafter UNet")
    load_weights_strict(net.image_proj_model, parts.image_proj, "Resampler (image_proj_model)")
    patcher.set_attachments(ATTACHMENT, BridgeInfo(
        family=FAMILY, num_frames=config.num_frames, latent_channels=config.latent_channels,
        latent_size=config.latent_size, num_classes=0, null_class=None, neural_prior_input=False,
        default_cfg=DEFAULT_CFG, default_steps=DEFAULT_STEPS, default_spacing=DEFAULT_SPACING,
        schedule=model.model_sampling.schedule))
    patcher.set_attachments(CONFIG_ATTACHMENT, config)
    return patcher


# ----------------------------------------------------------------------------------------------
# CLIP (text), CLIP_VISION, VAE from the checkpoint's parts, built by ComfyUI
# ----------------------------------------------------------------------------------------------


def _count(sd, prefix: str) -> int:
    ids = {int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0


def _text_config(sd) -> dict:
    """HF CLIPTextModel config of an OpenCLIP text tower (``model.*`` keys) from its shapes."""
    vocab, width = sd["model.token_embedding.weight"].shape
    cfg = json.loads(open(os.path.join(os.path.dirname(comfy.text_encoders.sd2_clip.__file__),
                                       "sd2_clip_config.json")).read())
    cfg.update(hidden_size=int(width), vocab_size=int(vocab),
               num_hidden_layers=_count(sd, "model.transformer.resblocks."),
               num_attention_heads=max(1, int(width) // 64),
               intermediate_size=int(sd["model.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
               max_position_embeddings=int(sd["model.positional_embedding"].shape[0]),
               projection_dim=int(sd["model.text_projection"].shape[1]) if "model.text_projection" in sd else int(width))
    return cfg


def _sd2_target(config: dict):
    """ComfyUI's SD2 text encoder (penultimate layer + final LayerNorm) for a given tower size."""
    base = comfy.supported_models.SD20({}).clip_target()
    default = _text_config_default()
    if config == default:
        return base

    class TextModel(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kw):
            super().__init__(device=device, layer="hidden", layer_idx=-2, textmodel_json_config=dict(config),
                             dtype=dtype, special_tokens={"start": 49406, "end": 49407, "pad": 0},
                             return_projected_pooled=True, model_options=model_options)

    class Model(comfy.sd1_clip.SD1ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}, **kw):
            super().__init__(device=device, dtype=dtype, model_options=model_options, clip_name="h",
                             clip_model=TextModel, **kw)

    return comfy.supported_models_base.ClipTarget(base.tokenizer, Model)


def _text_config_default() -> dict:
    path = os.path.join(os.path.dirname(comfy.text_encoders.sd2_clip.__file__), "sd2_clip_config.json")
    with open(path) as f:
        return json.load(f)


def clip_from_open_clip(sd_text: dict):
    """A ComfyUI ``CLIP`` from the ``cond_stage_model.*`` part (OpenCLIP ViT-H text, ``model.*`` keys)."""
    if "model.token_embedding.weight" not in sd_text:
        raise CheckpointError("the text encoder part has no 'model.token_embedding.weight': not an OpenCLIP text tower.")
    target = _sd2_target(_text_config(sd_text))
    sd = comfy.supported_models.SD20({}).process_clip_state_dict({"cond_stage_model." + k: v for k, v in sd_text.items()})
    clip = comfy.sd.CLIP(target, embedding_directory=folder_paths.get_folder_paths("embeddings"),
                         tokenizer_data=sd, parameters=comfy.utils.calculate_parameters(sd))
    missing, _ = clip.load_sd(sd, full_model=True)
    missing = [k for k in missing if not k.endswith(("position_ids", "logit_scale"))]
    if missing:
        raise CheckpointError(f"the OpenCLIP text encoder in this checkpoint is incomplete: {len(missing)} missing "
                              f"weight(s), e.g. {missing[:3]}.")
    return clip


def clip_vision_from_open_clip(sd_vis: dict):
    """A ComfyUI ``CLIP_VISION`` from the ``embedder.*`` part (OpenCLIP ``model.visual.*`` keys)."""
    prefix = "model.visual."
    if f"{prefix}conv1.weight" not in sd_vis:
        raise CheckpointError("the image encoder part has no 'model.visual.conv1.weight': not an OpenCLIP vision tower.")
    sd = dict(sd_vis)
    width, _, patch, _ = sd[f"{prefix}conv1.weight"].shape
    layers = _count(sd, f"{prefix}transformer.resblocks.")
    positions = int(sd[f"{prefix}positional_embedding"].shape[0])
    hf = comfy.clip_vision.convert_to_transformers(sd, prefix)
    if int(width) == 1280 and layers == 32:  # OpenCLIP ViT-H-14: ComfyUI's own config
        clip_vision = comfy.clip_vision.load_clipvision_from_sd(hf)
    else:  # another size (e.g. a small stand-in): the same ComfyUI model with a config from the shapes
        config = {"attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "gelu", "hidden_size": int(width),
                  "image_size": int(round((positions - 1) ** 0.5)) * int(patch), "initializer_factor": 1.0,
                  "initializer_range": 0.02,
                  "intermediate_size": int(hf["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
                  "layer_norm_eps": 1e-05, "model_type": "clip_vision_model",
                  "num_attention_heads": max(1, int(width) // 64), "num_channels": 3, "num_hidden_layers": layers,
                  "patch_size": int(patch), "projection_dim": int(hf["visual_projection.weight"].shape[0])}
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "clip_vision_config.json")
            with open(path, "w") as f:
                json.dump(config, f)
            clip_vision = comfy.clip_vision.ClipVisionModel(path)
        clip_vision.load_sd(hf)
    if clip_vision is None:
        raise CheckpointError("ComfyUI did not recognise the image encoder in this checkpoint.")
    return clip_vision


def load_videocrafter(path, weight_dtype=None):
    """``(MODEL, CLIP | None, VAE | None, CLIP_VISION | None)`` from a FrameBridge-VideoCrafter file.

    The released Lightning ``.ckpt`` gives all four; a UNet + Resampler file gives only the MODEL
    (load the encoders with core CLIPLoader / VAELoader / CLIPVisionLoader). Raises
    :class:`CheckpointError` for other families.

    The OpenCLIP-H text tower goes to ComfyUI's own SD2 text encoder (penultimate layer, final
    LayerNorm: the official ``FrozenOpenCLIPEmbedder``), the vision tower to ComfyUI's CLIP vision
    model (its ``last_hidden_state`` is the official "all tokens before ln_post"), the VAE to
    ``comfy.sd.VAE``.
    """
    sd, meta = load_state_dict(path)
    name = os.path.basename(str(path))
    info = identify(name, sd, meta, "Load FrameBridge Checkpoint")
    if info.name != VIDEOCRAFTER:
        raise wrong_loader(name, info.name, "Load FrameBridge Checkpoint",
                           "the all-in-one FrameBridge-VideoCrafter checkpoint")
    parts = split_checkpoint(sd)
    del sd
    model = build_videocrafter_patcher(info.config, parts, weight_dtype)
    clip = clip_from_open_clip(parts.clip_text) if parts.clip_text else None
    vae = comfy.sd.VAE(sd=parts.vae) if parts.vae else None
    clip_vision = clip_vision_from_open_clip(parts.clip_vision) if parts.clip_vision else None
    return model, clip, vae, clip_vision


# ----------------------------------------------------------------------------------------------
# Prior (used by Bridge Prior from Image)
# ----------------------------------------------------------------------------------------------


def videocrafter_prior_values(model, latent: torch.Tensor, length: int, clip_vision_output) -> dict:
    """Conditioning values Bridge Prior from Image attaches for this family (positive and negative):
    the image latent (also the prior, docs/math.md §4.1) and all CLIP ViT-H tokens of the image."""
    config = model.get_attachment(CONFIG_ATTACHMENT)
    if clip_vision_output is None:
        raise ConfigError("FrameBridge-VideoCrafter also needs the image as CLIP vision tokens: connect "
                          "'CLIP Vision Encode' (crop: center, clip_vision from 'Load FrameBridge Checkpoint') to "
                          "the clip_vision_output input of 'Bridge Prior from Image'.")
    tokens = getattr(clip_vision_output, "last_hidden_state", None)
    if tokens is None or tokens.ndim != 3:
        raise ShapeError("the CLIP vision output has no token sequence (last_hidden_state); use a CLIP ViT vision model.")
    width = config.resampler.embedding_dim
    if tokens.shape[-1] != width:
        raise ShapeError(f"the CLIP vision tokens are {tokens.shape[-1]}-d but this model's Resampler reads {width}-d "
                         f"tokens (OpenCLIP ViT-H-14); encode the image with the CLIP_VISION of the FrameBridge checkpoint.")
    check_frames_and_size(config, length, latent.shape[-2], latent.shape[-1])
    images = latent.shape[0] // length
    if tokens.shape[0] not in (1, images):
        raise ShapeError(f"{tokens.shape[0]} CLIP vision encodings for {images} image(s); encode the same images "
                         f"that make the prior.")
    if tokens.shape[0] > 1:
        tokens = tokens.repeat_interleave(length, dim=0)  # one row per frame, like the latent
    return {"fb_cond_frame": latent, CLIP_VISION_TOKENS_KEY: tokens, "fb_neural_prior": False}


__all__ = ["FrameBridgeVideoCrafter", "build_videocrafter_patcher", "clip_from_open_clip", "clip_vision_from_open_clip",
           "load_videocrafter", "videocrafter_prior_values"]
