"""The bundled tiny FrameBridge: animate an image with a camera motion on any CPU, offline.

The pack ships small pixel-space Latte FrameBridge models trained by :mod:`.training` on the
procedural camera-motion dataset (64×64 RGB, 16 frames): a bridge from the image (``bridge``),
its neural prior, and a bridge that starts from the neural prior's coarse video (``bridge-np``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import torch

from ..bridge.extend import Extended, check_overlap, extend_clip
from ..errors import ConfigError
from ..labels import motion_key
from .format import META_PREFIX, load_trained
from .variants import Schedules, generate

#: the ``framebridge_core`` package directory
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def bundled_places(name: str) -> tuple[Path, Path]:
    """Where the pack's folder ``name`` (``pretrained`` or ``assets``) can be, in the order looked at:
    inside the package (a regular install: the wheel maps the folder there as package data), then
    next to it (a clone in ComfyUI's custom_nodes, a checkout, an editable install)."""
    return PACKAGE_DIR / name, PACKAGE_DIR.parent / name


def bundled_dir(name: str) -> Path:
    """The pack's bundled folder ``name`` (``pretrained`` or ``assets``), installed or in a checkout."""
    places = bundled_places(name)
    for place in places:
        if place.is_dir():
            return place
    raise ConfigError(f"the pack's '{name}' folder is missing: looked in {places[0]} (regular install) and "
                      f"{places[1]} (clone or editable install); reinstall the pack.")


def _bundled_dir_or_checkout(name: str) -> Path:
    # import must not fail when the folder is missing (--model/--image need neither); bundled() reports it
    try:
        return bundled_dir(name)
    except ConfigError:
        return bundled_places(name)[1]


PRETRAINED_DIR = _bundled_dir_or_checkout("pretrained")
BRIDGE_FILE = "framebridge-tiny-motion.safetensors"
BRIDGE_NP_FILE = "framebridge-tiny-motion-np.safetensors"
NEURAL_PRIOR_FILE = "neural-prior-tiny-motion.safetensors"
DEFAULT_IMAGE = _bundled_dir_or_checkout("assets") / "default-image.png"


def bundled(name: str) -> Path:
    path = PRETRAINED_DIR / name
    if not path.is_file():
        first, then = bundled_places("pretrained")
        raise ConfigError(f"bundled model '{name}' is missing from {PRETRAINED_DIR} (the pack's 'pretrained' "
                          f"folder is looked for in {first}, then {then}); reinstall the pack or pass --model <file>.")
    return path


def motion_names(meta: dict[str, str]) -> list[str]:
    return json.loads(meta[META_PREFIX + "classes"])


def motion_label(meta: dict[str, str], motion: str) -> int:
    names = motion_names(meta)
    key = motion_key(motion)
    if key not in names:
        raise ConfigError(f"unknown motion {motion!r}; this model knows: {', '.join(names)}.")
    return names.index(key)


class TinyAnimator:
    """Loads a bundled (or given) model once; :meth:`animate` makes one clip per call."""

    def __init__(self, model: Optional[str] = None, *, neural_prior: bool = False,
                 neural_prior_model: Optional[str] = None):
        path = Path(model) if model else bundled(BRIDGE_NP_FILE if neural_prior else BRIDGE_FILE)
        self.net, self.meta = load_trained(str(path))
        self.kind = self.meta.get(META_PREFIX + "variant", "bridge")
        self.prior_net = None
        if self.kind == "bridge-np":
            np_path = Path(neural_prior_model) if neural_prior_model else bundled(NEURAL_PRIOR_FILE)
            self.prior_net, _ = load_trained(str(np_path), "neural-prior")
        self.sched = Schedules.default()

    @property
    def size(self) -> int:
        return self.net.config.input_size

    @property
    def frames(self) -> int:
        return self.net.config.num_frames

    @property
    def default_cfg(self) -> float:
        """The class guidance the model was exported with (1.0 = none when the file does not say)."""
        return float(self.meta.get(META_PREFIX + "default_cfg", "1.0"))

    def animate(self, frame: torch.Tensor, motion: str, *, steps: int = 25, cfg: Optional[float] = None,
                seed: int = 0, callback: Optional[Callable[[dict], None]] = None,
                keep_first_frame: bool = True) -> torch.Tensor:
        """``frame [3, S, S]`` in [-1, 1] -> ``[F, 3, S, S]`` clip in [-1, 1] (``cfg``: the model's default).

        ``keep_first_frame``: the sampler keeps the input as frame 0 of every x̂0 (so of the clip),
        also for files exported before models carried the flag."""
        if tuple(frame.shape) != (3, self.size, self.size):
            raise ConfigError(f"image frame has shape {tuple(frame.shape)}; this model takes "
                              f"[3, {self.size}, {self.size}] (use video_io.image_to_frame).")
        label = torch.tensor([motion_label(self.meta, motion)])
        gen = torch.Generator().manual_seed(int(seed))
        video = generate(self.kind, self.net, frame[None].float(), label, steps=steps, sched=self.sched,
                         cfg_scale=self.default_cfg if cfg is None else cfg, generator=gen, neural_prior=self.prior_net, callback=callback,
                         keep_first_frame=keep_first_frame)
        return video[0].clamp(-1, 1)

    def animate_long(self, frame: torch.Tensor, motion: str, frames: int, *, overlap: int = 1, steps: int = 25,
                     cfg: Optional[float] = None, seed: int = 0, keep_first_frame: bool = True,
                     callback: Optional[Callable[[int, int], None]] = None) -> Extended:
        """A clip of ``frames`` frames: :meth:`animate` (seed ``seed``), then segments chained by
        :func:`~framebridge_core.bridge.extend.extend_clip`. Segment ``n`` starts from the clip's frame
        ``-overlap`` with seed ``seed + n`` (its prior built as for the first clip); the ``overlap``
        shared frames are cross-faded.
        ``frames`` up to the model's frame count gives :meth:`animate`'s clip, cut to length.
        ``callback(done, total)`` runs after each segment."""
        if int(frames) < 1:
            raise ConfigError(f"frames={frames} is not possible; ask for at least 1 frame (the model makes "
                              f"{self.frames} per segment).")
        check_overlap(overlap, self.frames)
        first = self.animate(frame, motion, steps=steps, cfg=cfg, seed=seed, keep_first_frame=keep_first_frame)
        if int(frames) <= first.shape[0]:
            return Extended(first[:int(frames)], [], int(overlap), self.frames)

        def make_segment(index: int, tail: torch.Tensor) -> torch.Tensor:
            return self.continue_from(tail, motion, steps=steps, cfg=cfg, seed=seed + index,
                                      keep_first_frame=keep_first_frame)

        return extend_clip(first, make_segment, int(frames), self.frames, overlap, callback)

    def continue_from(self, tail: torch.Tensor, motion: str, *, steps: int = 25, cfg: Optional[float] = None,
                      seed: int = 0, keep_first_frame: bool = True) -> torch.Tensor:
        """One segment ``[F, 3, S, S]`` that starts at ``tail[0]`` (``tail [k, 3, S, S]``: the last k frames
        of a clip, which the joining cross-fades)."""
        if tail.ndim != 4 or tuple(tail.shape[1:]) != (3, self.size, self.size):
            raise ConfigError(f"the clip's tail has shape {tuple(tail.shape)}; this model continues "
                              f"[k, 3, {self.size}, {self.size}] clips.")
        return self.animate(tail[0], motion, steps=steps, cfg=cfg, seed=seed, keep_first_frame=keep_first_frame)
