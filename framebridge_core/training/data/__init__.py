"""Training and benchmark data: a procedural camera-motion video dataset from still photographs.

Pure torch; the optional image sources (scikit-image, scikit-learn, Pillow and the ComfyUI
templates media wheel) are imported lazily, and procedural textures work without any of them.
"""

from . import camera_motion, sources
from .camera_motion import *  # noqa: F401,F403  (re-exports camera_motion.__all__)
from .sources import *  # noqa: F401,F403  (re-exports sources.__all__)

__all__ = [*camera_motion.__all__, *sources.__all__]
