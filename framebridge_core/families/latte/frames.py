"""FrameBridge-Latte on the frames-as-batch layout hosts use (:mod:`..frames`).

The network wants ``[B, T, C, H, W]`` plus a prepended condition frame; these adapters assemble
that input and return the raw ``eps_psi`` prediction per frame row, so the host applies
``x̂0 = x_t − σ_i·F`` with its full-precision state.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ...bridge import preconditioning
from ...bridge.schedule import BridgeSchedule
from ...errors import ConfigError
from ..frames import PRIOR_KEY, first_of_each_video, fold_frames, repeat_rows, unfold_frames, video_rows
from .network import LatteConfig, LatteModel, LatteNeuralPrior

def _as_config(config, fields: dict) -> LatteConfig:
    """A LatteConfig from an object, a dict, or keyword fields (hosts pass the config as kwargs)."""
    if isinstance(config, LatteConfig):
        return config
    return LatteConfig.from_dict(dict(config or {}, **fields))


class LatteBridgeFrames(nn.Module):
    """The FrameBridge-Latte bridge network on frames-as-batch tensors.

    ``forward(x, t, fb_cond_frame=..., fb_class=..., transformer_options=...)``:

    * ``x``: bridge state ``[B·T, C, H, W]`` (raw, not SAF-aligned: Latte has no SAF).
    * ``t``: ``[B·T]`` bridge indices (the network timestep is the index itself).
    * ``fb_cond_frame``: the condition (image) latent repeated per row, ``[B·T, C, H, W]``.
    * ``fb_class``: ``[B·T]`` class labels (``config.null_class`` = unconditional).
    * ``fb_neural_prior``: whether the prior came from the neural prior; checked against the
      network's input channels so a mismatched pair fails with an explanation.
    * ``transformer_options[PRIOR_KEY]``: the bridge prior y ``[B·T, C, H, W]``; read only when the
      network takes the neural-prior coarse video as extra channels.

    Returns ``eps_psi`` as ``[B·T, C, H, W]`` (a ``precond`` network's output is converted to the
    ``eps_psi`` it stands for, using the prior: the image repeated, or the coarse video). With
    ``config.keep_first_frame`` frame 0's output is the one whose x̂0 is the image latent itself.
    """

    def __init__(self, config=None, *, operations=None, device=None, dtype=None, attention=None, **fields):
        super().__init__()
        cfg = _as_config(config, fields)
        if cfg.condition_type != "concat_pre" or not cfg.has_timestep:
            raise ConfigError("LatteBridgeFrames needs a bridge network (concat_pre, with timestep).")
        self.config = cfg
        self.net = LatteModel(cfg, operations=operations, device=device, dtype=dtype, attention=attention)
        self.dtype = dtype if dtype is not None else torch.float32
        # bridge σ_i table, for networks whose output is converted to eps_psi (output="precond")
        self._sigma = BridgeSchedule().sigma.float()

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context=None,
        control=None,
        transformer_options: Optional[dict] = None,
        fb_cond_frame: Optional[torch.Tensor] = None,
        fb_class: Optional[torch.Tensor] = None,
        fb_neural_prior: Optional[bool] = None,
        **_unused,
    ) -> torch.Tensor:
        cfg = self.config
        T = cfg.num_frames
        xv = fold_frames(x, T, "the bridge state")
        if fb_cond_frame is None:
            raise ConfigError(
                "the conditioning has no FrameBridge image latent: route positive and negative through "
                "'Bridge Prior from Image' before the sampler."
            )
        cond = video_rows(fb_cond_frame, x.shape[0], T, "the image latent")
        labels = None
        if fb_class is not None:
            labels = video_rows(fb_class.reshape(-1), x.shape[0], T, "the class label")
            bad = labels[(labels < 0) | (labels >= cfg.num_embeddings)]
            if bad.numel():
                null = f", or {cfg.null_class} for unconditional" if cfg.null_class is not None else ""
                raise ConfigError(
                    f"class index {int(bad[0])} is out of range for this model: it has {cfg.num_classes} "
                    f"classes (0..{cfg.num_classes - 1}{null}). Pick a class this model was trained on in "
                    f"the class conditioning node (e.g. 'FrameBridge UCF-101 Class' for UCF-101 models)."
                )
        tt = first_of_each_video(t.reshape(-1), T)
        if fb_neural_prior is not None and bool(fb_neural_prior) != cfg.prior_concat:
            if cfg.prior_concat:
                raise ConfigError(
                    "this FrameBridge model was trained with the neural prior (8 input channels): put "
                    "'Neural Prior' between 'Bridge Prior from Image' and the sampler."
                )
            raise ConfigError(
                "this FrameBridge model does not take a neural prior (4 input channels), but the prior "
                "came from 'Neural Prior': remove that node, or load the FrameBridge model trained with it."
            )
        coarse = None
        if cfg.prior_concat:
            prior = (transformer_options or {}).get(PRIOR_KEY)
            if prior is None:
                raise ConfigError(
                    "this FrameBridge model takes the neural prior as extra input channels, but the "
                    "sampler gave no prior; sample it with 'Bridge Sampler' or the Bridge SAMPLER."
                )
            coarse = fold_frames(repeat_rows(prior, x.shape[0], "the prior").to(xv.dtype), T, "the prior")
        x_in = self.net.build_bridge_input(xv, cond.to(xv.dtype), coarse)
        out = self.net(x_in, tt, labels, drop_condition_frame=True)[:, :, : cfg.latent_channels]
        if cfg.output in preconditioning.CONVERTED_OUTPUTS:  # convert to the eps_psi the sampler expects
            y = coarse if coarse is not None else cond[:, None].expand_as(xv)
            sigma = self._sigma.to(xv.device)[tt.long()].view(-1, 1, 1, 1, 1)
            out = preconditioning.to_eps_psi(out.float(), xv.float(), y.float(), sigma, cfg.output).to(out.dtype)
        if cfg.keep_first_frame:  # the F whose x̂0 = x_t − σ·F is the image at frame 0
            sigma = self._sigma.to(xv.device)[tt.long()].view(-1, 1, 1, 1)
            first = (xv[:, 0].float() - cond.float()) / sigma
            out = torch.cat([first[:, None].to(out.dtype), out[:, 1:]], dim=1)
        return unfold_frames(out)


class LatteNeuralPriorFrames(nn.Module):
    """The neural prior network on frames-as-batch tensors: one deterministic pass.

    ``forward(prior, labels)`` with ``prior`` the static prior ``[B·T, C, H, W]`` (its first frame
    of each video is the image latent) and ``labels`` ``[B]``; returns the coarse video
    ``[B·T, C, H, W]``.
    """

    def __init__(self, config=None, *, operations=None, device=None, dtype=None, attention=None, **fields):
        super().__init__()
        cfg = _as_config(config, fields)
        self.config = cfg
        self.net = LatteNeuralPrior(cfg, operations=operations, device=device, dtype=dtype, attention=attention)

    def forward(self, prior: torch.Tensor, labels=None) -> torch.Tensor:
        first = fold_frames(prior, self.config.num_frames, "the prior")[:, :1]
        return unfold_frames(self.net(first, labels))


__all__ = ["LatteBridgeFrames", "LatteNeuralPriorFrames"]
