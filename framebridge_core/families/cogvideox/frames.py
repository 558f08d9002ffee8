"""FrameBridge-CogVideoX on the host's video latent layout: ComfyUI keeps CogVideoX latents as
``[B, C, T, H, W]`` (one 3-D VAE latent per video), the transformer wants ``[B, T, C, H, W]``."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...errors import ConfigError, ShapeError
from ..frames import repeat_rows
from .bridge import CogVideoXBridge
from .network import CogVideoXConfig


class CogVideoXBridgeFrames(nn.Module):
    """``forward(z, t, context, fb_cond_frame) -> v``, all video tensors ``[B, C, T, H, W]``.

    ``z`` is the SAF-aligned state (the host aligns it in full precision), ``t`` the bridge indices
    ``[B]``, ``context`` the T5 text tokens ``[B, 226, 4096]``, ``fb_cond_frame`` the VAE latent of the
    static image clip (set by Bridge Prior from Image on positive and negative).
    """

    def __init__(self, config=None, *, operations=None, device=None, dtype=None, attention=None, **fields):
        super().__init__()
        if not isinstance(config, CogVideoXConfig):
            config = CogVideoXConfig.from_dict(dict(config or {}, **fields))
        self.config = config
        self.net = CogVideoXBridge(config, operations=operations, device=device, dtype=dtype, attention=attention)
        self.dtype = dtype if dtype is not None else torch.float32

    def forward(self, z, t, context=None, control=None, transformer_options=None, fb_cond_frame=None, **_unused):
        if z.ndim != 5:
            raise ShapeError(f"a FrameBridge-CogVideoX latent is [batch, 16, frames, h, w]; got shape {tuple(z.shape)}. "
                             f"Encode the image with the CogVideoX VAE (Load CogVideoX VAE).")
        if fb_cond_frame is None:
            raise ConfigError("the conditioning has no FrameBridge image latent: route positive and negative through "
                              "'Bridge Prior from Image' before the sampler.")
        if context is None:
            raise ConfigError("FrameBridge-CogVideoX needs text conditioning: encode the prompt (and an empty negative "
                              "prompt) with 'CogVideoX Text Encode' and a T5-XXL CLIP.")
        cfg = self.config
        if context.shape[1] != cfg.max_text_seq_length or context.shape[2] != cfg.text_embed_dim:
            raise ShapeError(
                f"the text conditioning is {context.shape[1]} tokens x {context.shape[2]}; this model needs exactly "
                f"{cfg.max_text_seq_length} tokens x {cfg.text_embed_dim} (T5-v1.1-XXL, padded or cut to "
                f"{cfg.max_text_seq_length}): encode the prompts with 'CogVideoX Text Encode' and a t5xxl text encoder.")
        cond = repeat_rows(fb_cond_frame, z.shape[0], "the image latent").to(z.dtype)
        tt = self.net.timestep(t.reshape(-1)).to(z.device)
        out = self.net(z.transpose(1, 2), tt, cond.transpose(1, 2), repeat_rows(context, z.shape[0], "the text"))
        return out.transpose(1, 2)


__all__ = ["CogVideoXBridgeFrames"]
