"""What ``generate`` does, as one function: load the bundled tiny model, animate an image, write the
animation and its contact sheet. The command line prints its result; ``bench speed`` times it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..bridge.extend import Extended
from ..video_io import contact_sheet, load_image, write_animation
from .animator import DEFAULT_IMAGE, TinyAnimator


@dataclass
class ClipFile:
    out: Path
    sheet: Path
    video: torch.Tensor       # [F, 3, S, S] in [-1, 1]
    extended: Extended
    generation_s: float       # sampling only (model load and file writing excluded)


def make_clip_file(out, *, image=None, motion: str = "zoom-in", steps: int = 25, cfg: Optional[float] = None,
                   seed: int = 0, neural_prior: bool = True, model: Optional[str] = None,
                   frames: Optional[int] = None, overlap: int = 1, scale: int = 4, fps: int = 8) -> ClipFile:
    """Animate ``image`` (default: the pack's default image) with ``motion`` and write ``out``
    (``.webp``, ``.gif`` or ``.mp4``) plus ``<out>-sheet.png`` (one row per model window)."""
    animator = TinyAnimator(model, neural_prior=neural_prior)
    frame = load_image(image or DEFAULT_IMAGE, animator.size)
    t0 = time.time()
    n = frames if frames is not None else animator.frames
    extended = animator.animate_long(frame, motion, n, overlap=overlap, steps=steps, cfg=cfg, seed=seed)
    generation_s = time.time() - t0
    video = extended.video
    path = write_animation(video, out, fps=fps, scale=scale)
    sheet = contact_sheet(list(video.split(animator.frames)), path.with_name(path.stem + "-sheet.png"), scale=2)
    return ClipFile(path, sheet, video, extended, generation_s)


__all__ = ["ClipFile", "make_clip_file"]
