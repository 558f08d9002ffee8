"""Extend Video: continue a finished clip with the same FrameBridge model, segment by segment.

Each new segment is what the usual chain makes from one image: **Bridge Prior from Image** on the
clip's frame ``-overlap`` (the bridge prior and the condition frame), **Neural Prior** when the model
was trained with it, and **Bridge Sampler** with seed ``seed + n`` for segment n; the segment is
decoded with the VAE and joined to the clip with a cross-fade over the ``overlap`` shared frames
(``framebridge_core.bridge.extend``). Works for every FrameBridge family: the bundled tiny models,
Latte, VideoCrafter and CogVideoX.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

import comfy.model_management as mm

from .common import CheckedNode
from ..framebridge_core.bridge.extend import extend_clip, segments_needed
from ..framebridge_core.bridge.sampling import METHODS
from ..framebridge_core.bridge.schedule import SPACINGS
from ..framebridge_core.errors import ConfigError, ShapeError
from .loaders import PriorNet
from .prior import BridgePriorFromImage, NeuralPrior, require_bridge_model
from .sampler import AUTO, BridgeSamplerNode

CATEGORY = "FrameBridge"
NODE = "Extend Video"
#: the longest clip the node makes
MAX_FRAMES = 4096


def _send_text(node_id, text: str) -> None:
    """A line under the node in the UI ("segment 2 of 4"); nothing when no server runs."""
    try:
        from server import PromptServer

        server = PromptServer.instance
    except (ImportError, AttributeError):
        return
    if node_id is not None and server is not None and hasattr(server, "send_progress_text"):
        server.send_progress_text(text, node_id)


def decode_frames(vae, samples: torch.Tensor) -> torch.Tensor:
    """A video LATENT decoded to IMAGE frames ``[T, H, W, 3]`` (as core VAE Decode, 3-D latents flattened)."""
    images = vae.decode(samples)
    if images.ndim == 5:
        images = images.reshape(-1, *images.shape[-3:])
    return images


def _clip(vae, images, latent) -> torch.Tensor:
    if (images is None) == (latent is None):
        raise ConfigError(f"{NODE}: connect exactly one clip: 'images' (IMAGE frames, e.g. from VAE Decode) or "
                          f"'latent' (the LATENT from Bridge Sampler); {'both are' if images is not None else 'neither is'} "
                          f"connected.")
    clip = images if images is not None else decode_frames(vae, latent["samples"])
    if clip.ndim != 4 or clip.shape[-1] < 3 or clip.shape[0] < 1:
        raise ShapeError(f"{NODE}: the clip has shape {tuple(clip.shape)}; it takes IMAGE frames [frames, height, "
                         f"width, 3] (one clip, frames as the batch).")
    if not bool(torch.isfinite(clip).all()):
        raise ShapeError(f"{NODE}: the clip has NaN or infinite pixels; check the node that makes it.")
    return clip[..., :3].float().to(mm.intermediate_device())


def _check_size(info, vae, clip: torch.Tensor) -> None:
    if info.family == "cogvideox":  # any size the model takes; Bridge Prior from Image checks it
        return
    side = info.latent_size * vae.spacial_compression_encode()
    if tuple(clip.shape[1:3]) != (side, side):
        raise ShapeError(f"{NODE}: the clip's frames are {clip.shape[2]}x{clip.shape[1]} but this FrameBridge model "
                         f"makes {side}x{side} frames; extend the clip the model made (before any upscaling), or "
                         f"resize it to {side}x{side} first.")


def _check_prior_net(info, prior_net) -> None:
    if info.neural_prior_input and prior_net is None:
        raise ConfigError(f"{NODE}: this FrameBridge model was trained with the neural prior; connect 'Load Neural "
                          f"Prior' to prior_net (the same network the clip was made with).")
    if prior_net is not None and not info.neural_prior_input:
        raise ConfigError(f"{NODE}: prior_net is connected but this FrameBridge model does not take a neural prior "
                          f"(it bridges from the still image); disconnect prior_net.")


class ExtendVideo(CheckedNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FB_ExtendVideo",
            display_name="Extend Video",
            category=CATEGORY,
            description=(
                "Continues a finished clip with the same FrameBridge model and conditioning: the clip's last frame "
                "(or frame -overlap) becomes the next segment's bridge prior, each segment is sampled like "
                "'Bridge Sampler' (seed + segment number) and joined with a cross-fade over the overlap, until "
                "the clip has 'frames' frames. Every FrameBridge family; output: the whole clip as IMAGE frames."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The FrameBridge model that made the clip (from 'Load FrameBridge' or "
                                                "'Load FrameBridge Checkpoint')."),
                io.Vae.Input("vae", tooltip="The VAE of the clip (tiny models: pixel_space): decodes each segment, and the "
                                           "latent input."),
                io.Conditioning.Input("positive", tooltip="The conditioning the clip was made with: motion/class or text "
                                                          "(before or after 'Bridge Prior from Image'; each segment gets its "
                                                          "own start frame attached)."),
                io.Conditioning.Input("negative", tooltip="Unconditional branch, as for the clip."),
                io.Int.Input("frames", default=64, min=2, max=MAX_FRAMES,
                             tooltip="Length of the output clip in frames, the input clip included (it must be longer "
                                     "than the clip). Each segment adds the model's frame count minus overlap."),
                io.Int.Input("overlap", default=1, min=1, max=64,
                             tooltip="Frames each segment shares with the clip so far, cross-faded. 1: the last frame "
                                     "starts the next segment (the smoothest seams with the bundled models). Must be "
                                     "below the model's frame count."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Segment n samples with seed + n; the same seed gives the same long clip."),
                io.Int.Input("steps", default=0, min=0, max=1000,
                             tooltip="Steps per segment, as in 'Bridge Sampler' (0 = the model's default)."),
                io.Combo.Input("spacing", options=[AUTO, *SPACINGS], default=AUTO,
                               tooltip="The time grid, as in 'Bridge Sampler' (auto = the model's default)."),
                io.Float.Input("cfg", default=0.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance, as in 'Bridge Sampler' (0 = the model's default)."),
                io.Combo.Input("method", options=[AUTO, *METHODS], default=AUTO,
                               tooltip="The bridge sampler, as in 'Bridge Sampler' (auto = sde, the official one)."),
                io.Float.Input("eta", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="Noise fraction for 'mixed' (1 = sde, 0 = ode); ignored otherwise."),
                io.Image.Input("images", optional=True, tooltip="The clip as IMAGE frames (e.g. from VAE Decode). "
                                                                "Connect this or 'latent'."),
                io.Latent.Input("latent", optional=True, tooltip="The clip as the LATENT from 'Bridge Sampler' "
                                                                 "(decoded with the VAE). Connect this or 'images'."),
                PriorNet.Input("prior_net", optional=True,
                               tooltip="For models trained with the neural prior: 'Load Neural Prior'; each segment "
                                       "then starts from its coarse video, like the clip."),
                io.ClipVisionOutput.Input("clip_vision_output", optional=True,
                                          tooltip="FrameBridge-VideoCrafter: 'CLIP Vision Encode' of the clip's image; "
                                                  "used for every segment."),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="The whole clip, 'frames' frames.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, vae, positive, negative, frames, overlap, seed, steps, spacing, cfg, method, eta,
                images=None, latent=None, prior_net=None, clip_vision_output=None) -> io.NodeOutput:
        info = require_bridge_model(model, NODE)
        clip = _clip(vae, images, latent)
        length = info.num_frames
        count = segments_needed(clip.shape[0], int(frames), length, int(overlap))
        _check_size(info, vae, clip)
        _check_prior_net(info, prior_net)
        node_id = getattr(getattr(cls, "hidden", None), "unique_id", None)

        def make_segment(index: int, tail: torch.Tensor) -> torch.Tensor:
            mm.throw_exception_if_processing_interrupted()
            _send_text(node_id, f"segment {index} of {count}")
            pos, neg, prior = BridgePriorFromImage.execute(
                model, vae, tail[:1], positive, negative, length, "none", clip_vision_output).args
            if prior_net is not None:
                pos, neg, prior = NeuralPrior.execute(prior_net, pos, neg, prior).args
            out = BridgeSamplerNode.execute(model, pos, neg, prior, int(seed) + index, steps, spacing, cfg,
                                            method, eta).args[0]
            return decode_frames(vae, out["samples"]).float().to(clip.device)

        extended = extend_clip(clip, make_segment, int(frames), length, int(overlap))
        _send_text(node_id, f"{count} segment(s) added: {extended.video.shape[0]} frames")
        return io.NodeOutput(extended.video.clamp(0, 1))


NODES = [ExtendVideo]

__all__ = ["ExtendVideo", "NODES", "decode_frames"]
