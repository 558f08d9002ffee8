"""FrameBridge-CogVideoX in ComfyUI: the MODEL (bridge sampling on CogVideoX's 5-D video latents), a VAE
that core VAE Encode/Decode accept (ComfyUI 0.3.64's own loader cannot read the CogVideoX VAE), and the
226-token T5 text encoding the transformer was trained with."""

from __future__ import annotations

import logging
import math

import torch

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.supported_models_base

from ...framebridge_core.bridge.schedule import BridgeSchedule
from ...framebridge_core.checkpoints import load_state_dict, load_weights_strict
from ...framebridge_core.errors import ConfigError, ShapeError
from ...framebridge_core.families.cogvideox.bridge import (
    DEFAULT_CFG,
    DEFAULT_SPACING,
    DEFAULT_STEPS,
    TRAINED_FRAMES,
    TRAINED_SIZE,
    check_size,
    latent_frames,
    x0_from_v,
)
from ...framebridge_core.families.cogvideox.checkpoint import vae_config_from_weights
from ...framebridge_core.families.cogvideox.frames import CogVideoXBridgeFrames
from ...framebridge_core.families.cogvideox.vae import CogVideoXVAE
from ..common import comfy_attention, new_patcher
from .bridge import ATTACHMENT, BridgeInfo, BridgeModelSampling, SAFBridgeModel, text_and_image_conds

FAMILY = "cogvideox"
CONFIG_ATTACHMENT = "framebridge_cogvideox_config"
log = logging.getLogger(__name__)


#: latent -> RGB preview factors for CogVideoX's VAE latents (16 rows of R, G, B), a least-squares fit
#: published with kijai/ComfyUI-CogVideoXWrapper (latent_preview.py, Apache-2.0); no bias
COGVIDEOX_RGB_FACTORS = [
    [0.1195, 0.0992, -0.0048], [-0.0012, 0.0550, 0.0213], [-0.0141, -0.0087, -0.0210], [0.0306, 0.1219, 0.0140],
    [0.0927, 0.0303, 0.0508], [0.0379, 0.0494, 0.0586], [0.0177, 0.0088, 0.0360], [0.1061, 0.0234, 0.0572],
    [0.1274, -0.0110, 0.0433], [-0.0187, 0.0822, 0.1061], [0.0084, 0.0762, 0.0930], [0.1294, 0.1236, 0.0448],
    [0.0457, 0.0411, -0.0177], [0.0002, -0.0140, 0.0533], [0.0808, 0.1155, -0.0215], [-0.0152, -0.0058, 0.0722],
]


class CogVideoXLatent(comfy.latent_formats.LatentFormat):
    """CogVideoX-2B's 3-D VAE latents: 16 channels, [B, 16, T, H, W], scaling factor 1.15258426; live
    previews map them to RGB with :data:`COGVIDEOX_RGB_FACTORS`."""

    latent_channels = 16
    latent_dimensions = 3

    def __init__(self):
        self.scale_factor = 1.15258426
        self.latent_rgb_factors = COGVIDEOX_RGB_FACTORS
        self.latent_rgb_factors_bias = None
        self.taesd_decoder_name = None


class CogVideoXFamilyConfig(comfy.supported_models_base.BASE):
    unet_config = {}
    unet_extra_config = {}
    latent_format = CogVideoXLatent
    # the official sampler ran bf16; fp16 is fine for the 2B model
    supported_inference_dtypes = [torch.bfloat16, torch.float16, torch.float32]
    memory_usage_factor = 1.0


class FrameBridgeCogVideoX(SAFBridgeModel):
    """A ``BaseModel`` with the bridge σ as ``model_sampling``: it aligns the state for SAF in full
    precision, the transformer gets ``t̃_i`` and returns v in aligned coordinates, and the model
    returns ``x̂0 = α_d·z − σ_d·v``. Text arrives as ``c_crossattn``, the image-clip latent as
    ``fb_cond_frame`` (on positive and negative, so CFG guides the text only)."""

    def __init__(self, model_config, device=None):
        super().__init__(model_config, model_type=comfy.model_base.ModelType.EPS, device=device,
                         unet_model=CogVideoXBridgeFrames)
        self.model_sampling = BridgeModelSampling(BridgeSchedule())

    family_title = "FrameBridge-CogVideoX"

    def denoised(self, sigma, out, x, z, index):
        return x0_from_v(out, z, index, self.model_sampling.schedule)

    def extra_conds(self, **kwargs):
        return text_and_image_conds(self, kwargs)


def build_cogvideox_patcher(config, state_dict: dict, weight_dtype=None):
    """A ``ModelPatcher`` for the FrameBridge-CogVideoX transformer (diffusers key names)."""
    model_config = CogVideoXFamilyConfig({"config": config, "attention": comfy_attention})
    patcher = new_patcher(model_config, FrameBridgeCogVideoX, sum(v.numel() for v in state_dict.values()), weight_dtype)
    model = patcher.model
    load_weights_strict(model.diffusion_model.net.transformer, state_dict, "FrameBridge-CogVideoX transformer")
    patcher.set_attachments(ATTACHMENT, BridgeInfo(
        family=FAMILY, num_frames=TRAINED_FRAMES, latent_channels=config.out_channels,
        latent_size=TRAINED_SIZE // 8, num_classes=0, null_class=None, neural_prior_input=False,
        default_cfg=DEFAULT_CFG, default_steps=DEFAULT_STEPS, default_spacing=DEFAULT_SPACING,
        schedule=model.model_sampling.schedule))
    patcher.set_attachments(CONFIG_ATTACHMENT, config)
    return patcher


# ----------------------------------------------------------------------------------------------
# VAE
# ----------------------------------------------------------------------------------------------


class _VAEStage(torch.nn.Module):
    """What ``comfy.sd.VAE`` calls: ``encode(x[B,3,T,H,W]) -> mean latent``, ``decode(z) -> pixels``."""

    def __init__(self, vae: CogVideoXVAE, tiled: bool):
        super().__init__()
        self.vae = vae
        self.tiled = tiled

    def encode(self, x):
        return self.vae.encode(x, tiled=self.tiled)

    def decode(self, z, **_options):
        return self.vae.decode(z, tiled=self.tiled)


class CogVideoXComfyVAE(comfy.sd.VAE):
    """A core ``VAE`` around the CogVideoX 3-D causal VAE: an IMAGE batch of 4k+1 frames encodes to one
    ``[1, 16, k+1, H/8, W/8]`` latent (raw VAE space); VAE Decode returns the frames."""

    def __init__(self, vae: CogVideoXVAE, tiled: bool = True, device=None, dtype=None):
        self.memory_used_encode = lambda shape, dt: 1000 * max(shape[2], 1) * shape[3] * shape[4] * mm.dtype_size(dt)
        self.memory_used_decode = lambda shape, dt: (1700 * 4 * shape[2] * 64 * shape[3] * shape[4]
                                                     * mm.dtype_size(dt) / (4 if tiled else 1))
        self.downscale_ratio = (lambda a: max(0, math.floor((a + 3) / 4)), 8, 8)
        self.upscale_ratio = (lambda a: max(0, a * 4 - 3), 8, 8)
        self.downscale_index_formula = self.upscale_index_formula = (4, 8, 8)
        self.latent_channels, self.latent_dim, self.output_channels = vae.config.latent_channels, 3, 3
        self.process_input = lambda image: image * 2.0 - 1.0
        self.process_output = lambda image: torch.clamp((image + 1.0) / 2.0, min=0.0, max=1.0)
        self.working_dtypes = [torch.bfloat16, torch.float16, torch.float32]
        self.disable_offload, self.not_video, self.extra_1d_channel, self.crop_input = False, False, None, True
        self.first_stage_model = _VAEStage(vae, tiled)
        self.device = device if device is not None else mm.vae_device()
        self.vae_dtype = dtype if dtype is not None else mm.vae_dtype(self.device, self.working_dtypes)
        self.first_stage_model.to(self.vae_dtype)
        self.output_device = mm.intermediate_device()
        self.patcher = comfy.model_patcher.ModelPatcher(self.first_stage_model, load_device=self.device,
                                                        offload_device=mm.vae_offload_device())


def load_cogvideox_vae(path, tiled: bool = True, dtype=None) -> CogVideoXComfyVAE:
    """The CogVideoX VAE of a diffusers ``vae/`` file or folder, config from its config.json or weights."""
    sd, meta = load_state_dict(path)
    config = vae_config_from_weights(sd, meta)
    vae = CogVideoXVAE(config)
    load_weights_strict(vae, sd, "CogVideoX VAE")
    return CogVideoXComfyVAE(vae.eval(), tiled=tiled, dtype=dtype)


def is_cogvideox_vae(vae) -> bool:
    return isinstance(vae, CogVideoXComfyVAE)


# ----------------------------------------------------------------------------------------------
# Prior and text
# ----------------------------------------------------------------------------------------------


def cogvideox_prior(model, vae, pixels: torch.Tensor, length: int) -> torch.Tensor:
    """The official prior: the image repeated into a static ``length``-frame clip, VAE-encoded
    (``[images, 16, (length-1)/4+1, H/8, W/8]``, raw VAE space)."""
    config = model.get_attachment(CONFIG_ATTACHMENT)
    latent_frames(length)
    if not is_cogvideox_vae(vae):
        raise ShapeError("FrameBridge-CogVideoX needs the CogVideoX VAE (a 3-D causal VAE with 16 channels): load it "
                         "with 'Load CogVideoX VAE' (the vae/ folder or file of CogVideoX-2B).")
    for line in check_size(config, pixels.shape[1], pixels.shape[2]):
        log.warning(line)
    latents = [vae.encode(img[None].expand(length, -1, -1, -1)) for img in pixels]
    return torch.cat(latents, dim=0)


def check_text(model, conditioning, which: str) -> None:
    """Text conditioning of the width and length the transformer takes, before any sampling."""
    config = model.get_attachment(CONFIG_ATTACHMENT)
    for cond, _ in conditioning:
        if cond.ndim != 3 or cond.shape[1] != config.max_text_seq_length or cond.shape[2] != config.text_embed_dim:
            raise ShapeError(
                f"the {which} conditioning is {tuple(cond.shape[1:])} (tokens, width); FrameBridge-CogVideoX needs "
                f"({config.max_text_seq_length}, {config.text_embed_dim}): T5-v1.1-XXL embeddings of exactly "
                f"{config.max_text_seq_length} tokens. Encode with 'CogVideoX Text Encode' and a t5xxl text encoder "
                f"(CLIPLoader, type sd3 or cogvideox).")


def t5_tokens(clip, text: str, length: int) -> dict:
    """T5 tokens padded or cut to exactly ``length`` (HF ``padding="max_length", truncation=True``)."""
    probe = clip.tokenize("")
    keys = [k for k in probe if k.startswith("t5")]
    if not keys:
        raise ConfigError(f"this CLIP has no T5 text encoder (it tokenizes for {', '.join(probe) or 'nothing'}); "
                          f"FrameBridge-CogVideoX uses T5-v1.1-XXL: load t5xxl with CLIPLoader (type sd3 or cogvideox).")
    options = {f"{k}_min_length": length for k in keys}
    tokens = clip.tokenize(text, tokenizer_options=options)
    for k in keys:
        batches = tokens[k]
        flat = [t for batch in batches for t in batch]
        if len(flat) > length:
            end = batches[-1][-1] if batches[-1] else flat[length - 1]
            flat = flat[: length - 1] + [end]
        tokens[k] = [flat]
    return tokens


__all__ = ["CogVideoXComfyVAE", "FrameBridgeCogVideoX", "build_cogvideox_patcher", "check_text", "cogvideox_prior",
           "is_cogvideox_vae", "load_cogvideox_vae", "t5_tokens"]
