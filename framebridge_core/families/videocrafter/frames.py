"""FrameBridge-VideoCrafter on the frames-as-batch layout hosts use (:mod:`..frames`)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...errors import ConfigError
from ..frames import fold_frames, repeat_rows, unfold_frames, video_rows
from .bridge import VideoCrafterBridge, VideoCrafterConfig


class VideoCrafterBridgeFrames(nn.Module):
    """The bridge network on frames-as-batch tensors, fed the *aligned* input.

    ``forward(z, t, context, fb_cond_frame, fb_clip_vision, fb_fs)``:

    * ``z``: the SAF-aligned state ``(x_t − b_i·y)/n_i`` as ``[B·T, C, H, W]`` (the host aligns it
      in full precision, see :func:`aligned_state`), ``t``: ``[B·T]`` bridge indices;
    * ``context``: text embedding rows ``[B·T or B, ≥77, D]`` (the first 77 tokens are used);
    * ``fb_cond_frame``: the image latent per frame row ``[B·T, C, H, W]``;
    * ``fb_clip_vision``: CLIP ViT-H tokens per row ``[B·T or B, 257, 1280]``;
    * ``fb_fs``: frame stride per row (default: the model's, 3).

    Returns ``eps_psi`` as ``[B·T, C, H, W]``.
    """

    def __init__(self, config=None, *, operations=None, device=None, dtype=None, attention=None, **fields):
        super().__init__()
        if not isinstance(config, VideoCrafterConfig):
            config = VideoCrafterConfig.from_dict(dict(config or {}, **fields))
        self.config = config
        self.net = VideoCrafterBridge(config, operations=operations, device=device, dtype=dtype, attention=attention)
        self.dtype = dtype if dtype is not None else torch.float32

    def forward(self, z, t, context=None, control=None, transformer_options=None, fb_cond_frame=None,
                fb_clip_vision=None, fb_fs=None, **_unused):
        cfg = self.config
        T = cfg.num_frames
        rows = z.shape[0]
        zv = fold_frames(z, T, "the bridge state")  # [B, T, C, H, W]
        if fb_cond_frame is None:
            raise ConfigError("the conditioning has no FrameBridge image latent: route positive and negative through "
                              "'Bridge Prior from Image' before the sampler.")
        if fb_clip_vision is None:
            raise ConfigError("the conditioning has no CLIP vision tokens: connect 'CLIP Vision Encode' (crop: center, "
                              "with the model's CLIP_VISION) to 'Bridge Prior from Image' (clip_vision_output).")
        if context is None:
            raise ConfigError("FrameBridge-VideoCrafter needs text conditioning: encode the prompt (and an empty "
                              "negative prompt) with 'CLIP Text Encode' and the model's CLIP.")
        cond = fold_frames(repeat_rows(fb_cond_frame, rows, "the image latent"), T, "the image latent")
        text = video_rows(context, rows, T, "the text conditioning")
        tokens = video_rows(fb_clip_vision, rows, T, "the CLIP vision tokens")
        ctx = self.net.context(text, tokens)
        fs = None
        if fb_fs is not None:
            fs = video_rows(torch.as_tensor(fb_fs, device=z.device).reshape(-1), rows, T, "the frame stride").long()
        tt = self.net.timestep(video_rows(t.reshape(-1), rows, T, "the timestep")).to(z.device)
        out = self.net(zv.transpose(1, 2), tt, cond.transpose(1, 2), ctx, fs)
        return unfold_frames(out.transpose(1, 2))


__all__ = ["VideoCrafterBridgeFrames"]
