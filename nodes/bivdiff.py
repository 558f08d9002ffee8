"""BIVDiff nodes: the video model (ModelScope / ZeroScope, or VidRD) as a core MODEL, Mixed Inversion, and
small helpers (frame sub-sampling, outpainting mask).

The image-model stage (SD-1.5 + ControlNet / InstructPix2Pix / inpainting on a batch of frames)
and the video smoothing (KSamplerAdvanced, add_noise disabled, ddim_uniform) are core nodes; only
what core lacks lives here. The math is in ``framebridge_core.bivdiff.inversion``.
"""

from __future__ import annotations

import math

import torch
from comfy_api.latest import io

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.model_sampling
import comfy.samplers
import comfy.supported_models_base
import comfy.utils
import folder_paths
import latent_preview

from ..framebridge_core.bivdiff import depth as bivdiff_depth
from ..framebridge_core.bivdiff import presets as bivdiff
from ..framebridge_core.checkpoints import load_state_dict, normalize_state_dict
from ..framebridge_core.families.modelscope.checkpoint import MODELSCOPE_UNET3D, modelscope_state_dict
from ..framebridge_core.families.vidrd.checkpoint import OFFICIAL_FILE as VIDRD_FILE, VIDRD
from ..framebridge_core.errors import ConfigError, ShapeError
from ..framebridge_core.bivdiff.inversion import LADDERS, check_mixing_ratio, inversion_ladder, mix_latents
from ..framebridge_core.vp import ddim_step, scaled_linear_alphas_cumprod as sd_alphas_cumprod, sigma_of
from .common import CheckedNode, WEIGHT_DTYPES, check_choice, check_number, identify, wrong_loader
from .families.modelscope import build_modelscope_patcher
from .families.vidrd import build_vidrd_patcher
from .paths import file_fingerprint

CATEGORY = "FrameBridge/BIVDiff"
VIDEO_MODEL_FOLDER = "diffusion_models"


class LoadVideoModel(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BIV_LoadVideoModel",
            display_name="Load BIVDiff Video Model",
            category=CATEGORY,
            description=(
                "Loads one of BIVDiff's video models from models/diffusion_models as a MODEL; the family is read "
                "from the weights: a ModelScope T2V / ZeroScope v2 video UNet (diffusers 'unet/diffusion_pytorch_"
                f"model.safetensors', or the original ModelScope 'text2video_pytorch_model.pth') or VidRD ('{VIDRD_FILE}', Stable Diffusion 2.1-base inflated to video). "
                "Both use OpenCLIP-H as text encoder: load ZeroScope's text_encoder, or for VidRD SD 2.1's, with "
                "'Load CLIP' (type stable_diffusion), or take the CLIP of an SD 2.1 checkpoint. Both share "
                "SD-1.5's latent space, so BIVDiff can mix their inversion with SD-1.5's."
            ),
            inputs=[
                io.Combo.Input("unet_name", options=folder_paths.get_filename_list(VIDEO_MODEL_FOLDER),
                               tooltip="The video UNet in models/diffusion_models: ZeroScope's UNet or VidRD's "
                                       f"{VIDRD_FILE} (the family is read from the weights, not the file name)."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip="Precision of the weights. 'default' lets ComfyUI choose for your device "
                                       "(BIVDiff ran fp16)."),
            ],
            outputs=[io.Model.Output(tooltip="The video model: use it in BIVDiff Mixed Inversion and for the "
                                             "smoothing pass (KSamplerAdvanced, add_noise disabled).")],
        )

    @classmethod
    def fingerprint_inputs(cls, unet_name, weight_dtype):
        return file_fingerprint(VIDEO_MODEL_FOLDER, unet_name), weight_dtype

    @classmethod
    def execute(cls, unet_name, weight_dtype) -> io.NodeOutput:
        node = "Load BIVDiff Video Model"
        check_choice(weight_dtype, WEIGHT_DTYPES, node, "weight_dtype")
        path = folder_paths.get_full_path_or_raise(VIDEO_MODEL_FOLDER, unet_name)
        sd, meta = load_state_dict(path)
        info = identify(unet_name, sd, meta, node)
        if info.name not in (MODELSCOPE_UNET3D, VIDRD):
            raise wrong_loader(unet_name, info.name, node, "ModelScope / ZeroScope and VidRD video UNets")
        sd, _, _ = normalize_state_dict(sd)
        if info.name == VIDRD:
            return io.NodeOutput(build_vidrd_patcher(info.config, sd, WEIGHT_DTYPES[weight_dtype]))
        sd = modelscope_state_dict(sd)  # the original ModelScope layout is renamed to the network's names
        return io.NodeOutput(build_modelscope_patcher(info.config, sd, WEIGHT_DTYPES[weight_dtype]))


# ---- Mixed Inversion ------------------------------------------------------------------------------


def _check_sd_schedule(model, role: str):
    ms = model.get_model_object("model_sampling")
    plain_eps = isinstance(ms, comfy.model_sampling.EPS) and not isinstance(
        ms, (comfy.model_sampling.V_PREDICTION, comfy.model_sampling.EDM, comfy.model_sampling.CONST))
    sigmas = getattr(ms, "sigmas", None)
    want = sigma_of(sd_alphas_cumprod()).float()
    same = (plain_eps and sigmas is not None and sigmas.shape == want.shape
            and torch.allclose(sigmas.detach().float().cpu(), want, rtol=1e-3))
    if not same:
        raise ConfigError(
            f"the {role} model ({type(model.model).__name__}, {type(ms).__name__}) is not an ε-prediction model on "
            f"SD's 1000-step scaled_linear schedule; BIVDiff inverts both models on that one schedule. Use SD-1.5 "
            f"(or SD-2.x-base) as the image model and ModelScope / ZeroScope or VidRD as the video model, "
            f"without ModelSampling* patches.")
    return ms


def _latent_format(model):
    fmt = model.get_model_object("latent_format")
    return fmt, int(getattr(fmt, "latent_channels", 4)), float(fmt.scale_factor)


class InversionSampler(comfy.samplers.Sampler):
    """DDIM inversion along a :class:`~framebridge_core.bivdiff.inversion.Ladder` through ComfyUI's model call.

    ``latent_image`` is the clean latent in model space (``0.18215·LATENT``), read as the VP latent
    at the ladder's first level. The model is called at σ(t) on ``x = z / sqrt(ᾱ_t)`` (so its input
    ``x / sqrt(1+σ²)`` is ``z``), ε is recovered from its x0, and the DDIM move is done in VP form by
    the core. Returns ``z_T / sqrt(ᾱ_start)``: the VE state a ComfyUI sampler starts from at t=981.
    """

    def __init__(self, ladder):
        self.ladder = ladder

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        ms = model_wrap.inner_model.model_sampling
        lad = self.ladder
        # float64 state: ComfyUI returns x0 = x - σ·ε, and at the first levels (σ≈0.03) recovering ε
        # from a float32 difference would lose ~4 digits; the network itself still runs in its dtype
        z = latent_image.double()
        s_in = z.new_ones(z.shape[0], dtype=torch.float32)
        total = len(lad)
        for k, t in enumerate(lad.timesteps):
            sigma = ms.sigmas[t].to(z.device).float()
            x = z / math.sqrt(float(lad.alpha_from[k]))
            denoised = model_wrap(x, sigma * s_in, **extra_args)
            eps = (x - denoised.double()) / sigma.double()
            z = ddim_step(z, eps, lad.alpha_from[k], lad.alpha_to[k])
            if callback is not None:
                callback(k, denoised.float(), x.float(), total)
            mm.throw_exception_if_processing_interrupted()
        return (z / math.sqrt(float(sd_alphas_cumprod()[lad.sampler_start]))).to(latent_image.dtype)


def _invert(model, conditioning, samples, ladder, what):
    guider = comfy.samplers.CFGGuider(model)
    guider.inner_set_conds({"positive": conditioning})  # no CFG: one conditional call per step (official)
    guider.set_cfg(1.0)
    ms = model.get_model_object("model_sampling")
    sigmas = ms.sigmas[list(ladder.timesteps)].float().cpu()
    callback = latent_preview.prepare_callback(model, len(ladder), {})
    try:
        out = guider.sample(torch.zeros_like(samples), samples, InversionSampler(ladder), sigmas, denoise_mask=None,
                            callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=0)
    except ShapeError as e:
        raise ShapeError(f"{what} model: {e}") from e
    return out.to(mm.intermediate_device())


class MixedInversion(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BIV_MixedInversion",
            display_name="BIVDiff Mixed Inversion",
            category=CATEGORY,
            description=(
                "BIVDiff's Mixed Inversion: DDIM-inverts the frames made by the image model twice, with the image "
                "model (frame by frame) and with the video model, and mixes the two noises: "
                "mixing_ratio*image + (1-mixing_ratio)*video. Feed the result to KSamplerAdvanced with the video "
                "model (add_noise disable, the same steps, sampler ddim, scheduler ddim_uniform) to make the frames "
                "temporally consistent. A branch whose weight is 0 is skipped."
            ),
            inputs=[
                io.Latent.Input("latent", tooltip="The image model's frames, VAE-encoded with the SD VAE "
                                                  "(frames as batch: [frames, 4, h, w])."),
                io.Model.Input("image_model", tooltip="Plain SD-1.5 (BIVDiff inverts with SD-1.5 whatever the image "
                                                      "model of the first stage was)."),
                io.Conditioning.Input("image_conditioning",
                                      tooltip="Inversion prompt for the image model: BIVDiff's intent is the empty "
                                              "prompt \"\"; its code uses the negative prompt (ControlNet / "
                                              "InstructPix2Pix runs)."),
                io.Model.Input("video_model", tooltip="From 'Load BIVDiff Video Model' (ModelScope / ZeroScope or "
                                                      "VidRD)."),
                io.Conditioning.Input("video_conditioning",
                                      tooltip="Inversion prompt for the video model, encoded with its own text "
                                              "encoder (\"\" by default)."),
                io.Float.Input("mixing_ratio", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Weight of the image-model inversion. BIVDiff: 1.0 for ControlNet, "
                                       "T2I-Adapter, InstructPix2Pix; 0.25 for Prompt2Prompt; 0.1 for inpainting "
                                       "and outpainting. 1 = most smoothing, 0 = keeps the input frames."),
                io.Int.Input("steps", default=bivdiff.DEFAULT_STEPS, min=1, max=1000,
                             tooltip="DDIM steps of each inversion; use the same number in the smoothing "
                                     "KSamplerAdvanced (BIVDiff: 50)."),
                io.Combo.Input("ladder", options=list(LADDERS), default="matched",
                               tooltip="matched: the inversion ends exactly where the sampler starts (t=981 for "
                                       "50 steps). official: BIVDiff's code, which overshoots to t=998 and hands "
                                       "that over as t=981."),
            ],
            outputs=[io.Latent.Output(tooltip="The mixed inverted noise as a LATENT for KSamplerAdvanced "
                                              "(add_noise disable, start_at_step 0).")],
        )

    @classmethod
    def execute(cls, latent, image_model, image_conditioning, video_model, video_conditioning, mixing_ratio, steps,
                ladder) -> io.NodeOutput:
        node = "BIVDiff Mixed Inversion"
        check_choice(ladder, LADDERS, node, "ladder")
        check_number(steps, node, "steps", 1, 1000)
        try:
            check_mixing_ratio(mixing_ratio)
        except ConfigError as e:
            raise ConfigError(f"{node}: {e}") from e
        samples = latent["samples"]
        if samples.ndim != 4:
            raise ShapeError(
                f"the latent has shape {tuple(samples.shape)}; BIVDiff needs SD-VAE frames as a batch "
                f"[frames, 4, h, w] (VAE Encode of the image model's frames).")
        if samples.shape[0] < 2:
            raise ShapeError(f"the latent has {samples.shape[0]} frame; a video model needs at least 2 frames "
                             f"(BIVDiff: 8).")
        _check_sd_schedule(image_model, "image")
        _check_sd_schedule(video_model, "video")
        (fi, ci, si), (fv, cv, sv) = _latent_format(image_model), _latent_format(video_model)
        if (ci, si) != (cv, sv) or samples.shape[1] != ci:
            raise ShapeError(
                f"the image model ({type(fi).__name__}: {ci} channels, scale {si}), the video model "
                f"({type(fv).__name__}: {cv} channels, scale {sv}) and the latent ({samples.shape[1]} channels) must "
                f"share one latent space: BIVDiff mixes two inversions of the same latent. Use SD-1.5 with "
                f"ModelScope / ZeroScope or VidRD and the SD VAE.")
        lad = inversion_ladder(steps, ladder)
        alpha = float(mixing_ratio)
        img = _invert(image_model, image_conditioning, samples, lad, "image") if alpha > 0 else None
        vid = _invert(video_model, video_conditioning, samples, lad, "video") if alpha < 1 else None
        if img is None:
            out = vid
        elif vid is None:
            out = img
        else:
            out = mix_latents(img, vid, alpha)
        return io.NodeOutput({"samples": out})


# ---- helpers -------------------------------------------------------------------------------------


class SelectFrames(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BIV_SelectFrames",
            display_name="BIVDiff Select Frames",
            category=CATEGORY,
            description="Takes every stride-th frame of a clip, up to 'frames' frames (BIVDiff: every 4th, 8 frames).",
            inputs=[
                io.Image.Input("images", tooltip="The source clip as an image batch (Load Video, or Load Image on a GIF)."),
                io.Int.Input("stride", default=bivdiff.DEFAULT_STRIDE, min=1, max=1000,
                             tooltip="Keep frames 0, stride, 2*stride, ... (BIVDiff's 'frame_rate' is this stride)."),
                io.Int.Input("frames", default=bivdiff.DEFAULT_FRAMES, min=1, max=4096,
                             tooltip="How many frames to keep (BIVDiff: 8)."),
                io.Combo.Input("if_too_short", options=list(bivdiff.FRAME_POLICIES), default="error",
                               tooltip="When the clip is too short: stop with an error, or return fewer frames."),
            ],
            outputs=[io.Image.Output(tooltip="The selected frames, in order.")],
        )

    @classmethod
    def execute(cls, images, stride, frames, if_too_short) -> io.NodeOutput:
        check_choice(if_too_short, bivdiff.FRAME_POLICIES, "BIVDiff Select Frames", "if_too_short")
        idx = bivdiff.stride_indices(images.shape[0], stride, frames, if_too_short)
        return io.NodeOutput(images[idx])


class OutpaintingMask(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BIV_OutpaintingMask",
            display_name="BIVDiff Outpainting Mask",
            category=CATEGORY,
            description=("BIVDiff's outpainting mask for every frame: the top and bottom quarters (horizontal) or "
                         "the left and right quarters (vertical) are regenerated; the canvas is not enlarged."),
            inputs=[
                io.Image.Input("images", tooltip="The frames to outpaint (sets the mask size and count)."),
                io.Combo.Input("direction", options=list(bivdiff.OUTPAINT_DIRECTIONS), default="horizontal",
                               tooltip="horizontal: top and bottom bands; vertical: left and right bands."),
            ],
            outputs=[io.Mask.Output(tooltip="1 = regenerate; one mask per frame, for InpaintModelConditioning.")],
        )

    @classmethod
    def execute(cls, images, direction) -> io.NodeOutput:
        check_choice(direction, bivdiff.OUTPAINT_DIRECTIONS, "BIVDiff Outpainting Mask", "direction")
        m = bivdiff.outpainting_mask(images.shape[1], images.shape[2], direction)
        return io.NodeOutput(m[None].expand(images.shape[0], -1, -1).contiguous())


class DepthFrames(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BIV_DepthFrames",
            display_name="BIVDiff Depth Frames",
            category=CATEGORY,
            description=("Checks depth maps made by any depth preprocessor (or a depth video) and normalises them as "
                         "BIVDiff's MiDaS maps are (grey, near = bright, each frame stretched to 0..1), for a depth "
                         "ControlNet or T2I-Adapter. Refuses coloured depth views, NaNs, flat frames and a frame "
                         "count or size that does not match the source frames."),
            inputs=[
                io.Image.Input("depth", tooltip="The depth maps, one per frame (grey; 1 or 3 channels)."),
                io.Combo.Input("normalize", options=list(bivdiff_depth.NORMALIZE_MODES), default="per_frame",
                               tooltip="per_frame: each map stretched to 0..1 (MiDaS in controlnet_aux, as BIVDiff); "
                                       "per_clip: one stretch for the clip; none: keep the values (must be 0..1)."),
                io.Boolean.Input("invert", default=False,
                                 tooltip="Turn far = bright maps (metric depth) into near = bright, what depth "
                                         "ControlNets and T2I-Adapters were trained on."),
                io.Image.Input("frames", optional=True,
                               tooltip="The source frames the maps belong to: count and size must match them."),
            ],
            outputs=[io.Image.Output(tooltip="Grey depth maps in 0..1 (3 channels), one per frame: the image of "
                                             "Apply ControlNet.")],
        )

    @classmethod
    def execute(cls, depth, normalize, invert, frames=None) -> io.NodeOutput:
        check_choice(normalize, bivdiff_depth.NORMALIZE_MODES, "BIVDiff Depth Frames", "normalize")
        return io.NodeOutput(bivdiff_depth.normalize_depth_frames(depth, normalize, bool(invert), frames))


NODES = [LoadVideoModel, MixedInversion, SelectFrames, OutpaintingMask, DepthFrames]
