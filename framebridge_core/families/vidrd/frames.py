"""The VidRD UNet on the frames-as-batch layout hosts use (:mod:`..frames`)."""

from __future__ import annotations

from ..video_unet_parts import VideoUNetFrames
from .unet3d import VidRDUNet3D


class VidRDFrames(VideoUNetFrames):
    """:class:`~..video_unet_parts.VideoUNetFrames` around :class:`~.unet3d.VidRDUNet3D`."""

    network = VidRDUNet3D


__all__ = ["VidRDFrames"]
