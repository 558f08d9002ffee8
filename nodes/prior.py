"""Bridge Prior from Image (the image repeated over the frames) and Neural Prior (a coarse video)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.model_management as mm
import comfy.utils
import node_helpers

from .common import CheckedNode, check_choice, check_number
from ..framebridge_core.errors import ConfigError, ShapeError
from .loaders import PriorNet
from .families.bridge import LATENT_FORMATS, bridge_info
from .families.cogvideox import check_text, cogvideox_prior
from .families.latte import check_class
from .families.videocrafter import videocrafter_prior_values

CATEGORY = "FrameBridge"
RESIZE_MODES = ("center crop", "stretch", "none")
#: the most frames Bridge Prior from Image makes (its widget maximum; checked before allocating)
MAX_LENGTH = 512


def require_bridge_model(model, node: str):
    info = bridge_info(model)
    if info is None:
        raise ConfigError(f"{node}: the MODEL is not a FrameBridge bridge model; load it with 'Load FrameBridge'.")
    return info


def _fit_image(image: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    h, w = image.shape[1], image.shape[2]
    if (h, w) == (size, size):
        return image
    if mode == "none":
        raise ShapeError(
            f"the image is {w}x{h} but this FrameBridge model needs {size}x{size} pixels; set resize to "
            f"'center crop' or 'stretch', or resize the image first."
        )
    crop = "center" if mode == "center crop" else "disabled"
    return comfy.utils.common_upscale(image.movedim(-1, 1), size, size, "bilinear", crop).movedim(1, -1)


class BridgePriorFromImage(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FB_BridgePriorFromImage",
            display_name="Bridge Prior from Image",
            category=CATEGORY,
            description=(
                "Builds FrameBridge's data prior: the input image encoded by the VAE and repeated over the "
                "frames (frames-as-batch, like SVD). Sampling starts from this prior instead of noise. Also "
                "attaches the image latent to positive and negative, as the model's condition frame."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The FrameBridge model from 'Load FrameBridge' (its size and frame count are read from it)."),
                io.Vae.Input("vae", tooltip="The VAE the model was trained with (FrameBridge-Latte: sd-vae-ft-ema, a 4-channel "
                                           "SD VAE; FrameBridge-CogVideoX: 'Load CogVideoX VAE')."),
                io.Image.Input("image", tooltip="The first frame. A batch of N images makes N videos."),
                io.Conditioning.Input("positive", tooltip="Conditioning to attach the image to (e.g. from 'FrameBridge UCF-101 Class')."),
                io.Conditioning.Input("negative", tooltip="Unconditional branch of guidance; gets the same image."),
                io.Int.Input("length", default=16, min=1, max=MAX_LENGTH,
                             tooltip="Frames per video. FrameBridge-Latte and -VideoCrafter always make 16 (fixed by the "
                                     "network); FrameBridge-CogVideoX takes 4k+1 frames and was trained on 17."),
                io.Combo.Input("resize", options=list(RESIZE_MODES), default="center crop",
                               tooltip="How to bring the image to the model's resolution: resize the short side "
                                       "and crop the centre (the official preprocessing), stretch, or require an exact fit."),
                io.ClipVisionOutput.Input("clip_vision_output", optional=True,
                                          tooltip="FrameBridge-VideoCrafter only: 'CLIP Vision Encode' (crop center) "
                                                  "of the same image; its tokens condition the network."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive"),
                io.Conditioning.Output(display_name="negative"),
                io.Latent.Output(display_name="prior", tooltip="The prior video latent [frames, C, h, w] in raw VAE space."),
            ],
        )

    @classmethod
    def execute(cls, model, vae, image, positive, negative, length, resize, clip_vision_output=None) -> io.NodeOutput:
        info = require_bridge_model(model, "Bridge Prior from Image")
        check_choice(resize, RESIZE_MODES, "Bridge Prior from Image", "resize")
        check_number(length, "Bridge Prior from Image", "length", 1, MAX_LENGTH)  # before any memory is taken
        if not bool(torch.isfinite(image).all()):
            raise ShapeError("Bridge Prior from Image: the image has NaN or infinite pixels (a broken upstream node or "
                             "file); the video would come out black. Check the node that makes the image.")
        if info.family == "cogvideox":
            return _cogvideox(model, vae, image, positive, negative, length, resize, info)
        if length != info.num_frames:
            raise ShapeError(
                f"length={length} is not possible for this model: FrameBridge-{info.family.capitalize()} makes "
                f"{info.num_frames}-frame videos. Set length to {info.num_frames}."
            )
        vae_channels = getattr(vae, "latent_channels", None)
        want_vae = ("the 'pixel_space' VAE (Load VAE -> pixel_space)" if info.latent_space == "pixel"
                    else "the SD VAE sd-vae-ft-ema")
        if vae_channels is not None and vae_channels != info.latent_channels:
            raise ShapeError(
                f"the VAE makes {vae_channels}-channel latents but this FrameBridge model works on "
                f"{info.latent_channels}-channel latents; load the VAE it was trained with: {want_vae}."
            )
        pixel_vae = getattr(vae, "downscale_ratio", None) == 1
        if pixel_vae != (info.latent_space == "pixel"):
            raise ShapeError(
                f"this FrameBridge model was trained on {info.latent_space} latents but the VAE "
                f"{'is' if pixel_vae else 'is not'} the pixel_space VAE; use {want_vae}.")
        scale = vae.spacial_compression_encode()
        pixels = _fit_image(image[..., :3], info.latent_size * scale, resize)
        latent = vae.encode(pixels)
        if latent.ndim != 4 or tuple(latent.shape[1:]) != (info.latent_channels, info.latent_size, info.latent_size):
            raise ShapeError(
                f"the VAE encoded the image to {tuple(latent.shape[1:])}, but the model needs "
                f"({info.latent_channels}, {info.latent_size}, {info.latent_size}); use a 2-D VAE with "
                f"{scale}x compression and {info.latent_channels} channels."
            )
        prior = latent.repeat_interleave(length, dim=0).to(mm.intermediate_device())
        values = {"fb_cond_frame": prior, "fb_neural_prior": False}
        if info.family == "videocrafter":
            values = videocrafter_prior_values(model, prior, length, clip_vision_output)
        positive = node_helpers.conditioning_set_values(positive, values)
        negative = node_helpers.conditioning_set_values(negative, values)
        return io.NodeOutput(positive, negative, {"samples": prior})


def _cogvideox(model, vae, image, positive, negative, length, resize, info) -> io.NodeOutput:
    """FrameBridge-CogVideoX: the static ``length``-frame clip VAE-encoded is both the prior and the
    channel-concatenated condition (``[images, 16, frames, h, w]``); sizes other than 256² are allowed."""
    check_text(model, positive, "positive")
    check_text(model, negative, "negative")
    pixels = image[..., :3]
    if resize != "none":
        side = info.latent_size * 8
        pixels = _fit_image(pixels, side, resize)
    prior = cogvideox_prior(model, vae, pixels, length).to(mm.intermediate_device())
    values = {"fb_cond_frame": prior, "fb_neural_prior": False}
    positive = node_helpers.conditioning_set_values(positive, values)
    negative = node_helpers.conditioning_set_values(negative, values)
    return io.NodeOutput(positive, negative, {"samples": prior})


def _class_source(conditioning):
    for _, extras in conditioning:
        if "fb_class_source" in extras:
            return extras["fb_class_source"]
    return None


def _class_label(conditioning) -> int | None:
    for _, extras in conditioning:
        if "fb_class" in extras:
            return int(extras["fb_class"])
    return None


class NeuralPrior(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FB_NeuralPrior",
            display_name="Neural Prior",
            category=CATEGORY,
            description=(
                "Replaces the still-image prior with a coarse video predicted by the neural prior network "
                "in one pass (FrameBridge §4.2). Use it only with FrameBridge models trained with it "
                "(8 input channels); the sampler refuses a mismatched pair."
            ),
            inputs=[
                PriorNet.Input("prior_net", tooltip="From 'Load Neural Prior'."),
                io.Conditioning.Input("positive", tooltip="From 'Bridge Prior from Image'; its class label conditions the prior net."),
                io.Conditioning.Input("negative", tooltip="Unconditional branch (null class); passed through with the neural-prior flag."),
                io.Latent.Input("prior", tooltip="The image prior from 'Bridge Prior from Image'."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive"),
                io.Conditioning.Output(display_name="negative"),
                io.Latent.Output(display_name="prior", tooltip="The coarse video: the new bridge prior."),
            ],
        )

    @classmethod
    def execute(cls, prior_net, positive, negative, prior) -> io.NodeOutput:
        cfg = prior_net.config
        samples = prior["samples"]
        want = f"[frames, {cfg.latent_channels}, {cfg.input_size}, {cfg.input_size}]"
        if samples.ndim != 4:
            raise ShapeError(f"Neural Prior: the prior has shape {tuple(samples.shape)}, but this neural prior takes "
                             f"{want} latents (frames as batch); make it with 'Bridge Prior from Image'.")
        frames, channels, height, width = (int(n) for n in samples.shape)
        if channels != cfg.latent_channels:
            raise ShapeError(f"Neural Prior: the prior has {channels} channels, but this neural prior takes "
                             f"{cfg.latent_channels}-channel latents {want}; use the VAE the models were trained with "
                             f"in 'Bridge Prior from Image'.")
        if (height, width) != (cfg.input_size, cfg.input_size):
            raise ShapeError(f"Neural Prior: the prior is {width}x{height} (width x height), but this neural prior "
                             f"takes {cfg.input_size}x{cfg.input_size} latents {want}; make the prior with "
                             f"'Bridge Prior from Image' for the same FrameBridge model and VAE.")
        if frames == 0 or frames % cfg.num_frames:
            raise ShapeError(f"Neural Prior: the prior has {frames} frames, but this neural prior takes videos of "
                             f"{cfg.num_frames} frames (a multiple of {cfg.num_frames} for several videos); set "
                             f"length={cfg.num_frames} in 'Bridge Prior from Image'.")
        label = _class_label(positive)
        if label is None and cfg.num_classes > 0:
            raise ConfigError("Neural Prior: the positive conditioning has no class label; connect "
                              "'FrameBridge UCF-101 Class' or 'FrameBridge Camera Motion' before "
                              "'Bridge Prior from Image'.")
        if label is not None and label < 0:
            label = cfg.null_class
        elif label is not None:
            check_class(cfg, label, _class_source(positive), LATENT_FORMATS[prior_net.latent_space], "Neural Prior")
        fmt = LATENT_FORMATS[prior_net.latent_space]()
        mm.load_model_gpu(prior_net.patcher)
        net = prior_net.patcher.model
        device = prior_net.patcher.load_device
        dtype = next(net.parameters()).dtype
        with torch.no_grad():
            x = fmt.process_in(samples).to(device=device, dtype=dtype)
            videos = x.shape[0] // cfg.num_frames
            labels = None if label is None else torch.full((videos,), label, device=device, dtype=torch.long)
            coarse = net(x, labels)
        coarse = fmt.process_out(coarse.float()).to(mm.intermediate_device())
        values = {"fb_neural_prior": True}
        return io.NodeOutput(
            node_helpers.conditioning_set_values(positive, values),
            node_helpers.conditioning_set_values(negative, values),
            {**prior, "samples": coarse},
        )
