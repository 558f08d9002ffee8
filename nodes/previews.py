"""Live previews of a video while it samples.

Core's previewer (``latent_preview``) turns x̂0 into a picture with the MODEL's latent format
(``latent_rgb_factors``: a linear map from the latent channels to RGB, or a TAESD) and shows the
first frame only. A bridge model that keeps its input as frame 0 would then show the input image,
unchanged, for the whole run. The pack's own samplers show a strip of frames across the clip instead:
:func:`video_strip` picks up to :data:`STRIP_FRAMES` frames, evenly spaced, and lays them side by side
as one latent image that core's previewer decodes.

Every family's latent format has RGB factors: the pixel-space tiny/Latte models (identity,
``families.bridge.PixelSpace``), the SD VAE of Latte, VideoCrafter and ModelScope (core's ``SD15``)
and CogVideoX's 16-channel 3-D VAE (``families.cogvideox.CogVideoXLatent``). Core's
``SamplerCustomAdvanced`` and KSampler show the first frame with the same factors.
"""

from __future__ import annotations

import torch

import comfy.utils
import latent_preview

#: frames shown side by side in a preview
STRIP_FRAMES = 8


def video_strip(x0: torch.Tensor, frames: int = STRIP_FRAMES) -> torch.Tensor:
    """``[1, C, h, n·w]``: up to ``frames`` evenly spaced frames of the first video, side by side.

    ``x0`` is frames-as-batch ``[T, C, h, w]`` (Latte, VideoCrafter, ModelScope, the tiny models) or
    one 3-D latent per video ``[B, C, T, h, w]`` (CogVideoX)."""
    video = x0[0].movedim(1, 0) if x0.ndim == 5 else x0  # [T, C, h, w]
    count = min(int(frames), video.shape[0])
    picks = torch.linspace(0, video.shape[0] - 1, count).round().long().tolist()
    return torch.cat([video[i] for i in picks], dim=-1)[None]


def video_previewer(model):
    """Core's previewer for the MODEL's latent format (None when previews are off: ``--preview-method none``)."""
    return latent_preview.get_previewer(model.load_device, model.model.latent_format)


def video_preview_callback(model, steps: int, progress: comfy.utils.ProgressBar | None = None, offset: int = 0,
                           total: int | None = None):
    """A sampler callback ``callback(step, x0, x, total_steps)`` (what ``latent_preview.prepare_callback``
    returns) that moves ``progress`` and sends a strip of the clip as the preview.

    ``offset`` / ``total``: where these ``steps`` lie in a longer run (Extend Video samples several
    segments under one progress bar)."""
    previewer = video_previewer(model)
    total = int(total or steps)
    pbar = progress if progress is not None else comfy.utils.ProgressBar(total)

    def callback(step, x0, x, total_steps):
        preview = None
        if previewer is not None:
            preview = previewer.decode_latent_to_preview_image("JPEG", video_strip(x0))
        pbar.update_absolute(offset + step + 1, total, preview)

    return callback


__all__ = ["STRIP_FRAMES", "video_preview_callback", "video_previewer", "video_strip"]
