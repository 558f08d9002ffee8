"""The ModelScope / ZeroScope UNet on the frames-as-batch layout hosts use (:mod:`..frames`)."""

from __future__ import annotations

from ..video_unet_parts import VideoUNetFrames
from .unet3d import ModelScopeUNet3D


class ModelScopeFrames(VideoUNetFrames):
    """:class:`~..video_unet_parts.VideoUNetFrames` around :class:`~.unet3d.ModelScopeUNet3D`."""

    network = ModelScopeUNet3D


__all__ = ["ModelScopeFrames"]
