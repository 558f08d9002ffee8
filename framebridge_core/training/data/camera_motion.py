"""Procedural camera-motion clips rendered from still photographs, with exact ground truth.

A clip is a virtual camera looking at a flat source image: frame 0 shows a square window of the
source, later frames apply one of :data:`MOTIONS` with uniform speed as an exact affine map sampled
from the source itself. Content that enters at a border is therefore real image content from
outside frame 0's view, and the future of a clip is determined by frame 0 and the class, which is
what the tiny models learn and are scored on. The geometry is given in :func:`camera_path`, the
view rules in :func:`render_clip` and the sampling and antialiasing in :func:`_render`.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from ...errors import ConfigError, ShapeError
from ...labels import CAMERA_MOTIONS, motion_key
from .sources import DEFAULT_NUM_TEXTURES, SOURCE_KINDS, list_sources, load_source

__all__ = [
    "MOTIONS",
    "MOTION_DESCRIPTIONS",
    "NUM_MOTIONS",
    "PAN_FRACTION",
    "ZOOM_FACTOR",
    "ROTATION_DEGREES",
    "motion_index",
    "motion_name",
    "camera_path",
    "clip_extent",
    "fit_view",
    "default_view",
    "render_clip",
    "to_uint8_frames",
    "CameraMotionDataset",
]

#: Motion classes; the index is the class id stored in trained models, so this order is frozen
#: (it lives in labels.py, which the ComfyUI nodes read without importing this module).
MOTIONS: tuple[str, ...] = CAMERA_MOTIONS
NUM_MOTIONS = len(MOTIONS)

#: What the viewer sees for each class.
MOTION_DESCRIPTIONS: dict[str, str] = {
    "static": "static: the camera does not move; every frame equals frame 0.",
    "pan-left": "pan-left: the camera turns left, so the content slides right.",
    "pan-right": "pan-right: the camera turns right, so the content slides left.",
    "pan-up": "pan-up: the camera tilts up, so the content slides down.",
    "pan-down": "pan-down: the camera tilts down, so the content slides up.",
    "zoom-in": "zoom-in: the camera zooms in on the frame centre, so the content grows and moves outward.",
    "zoom-out": "zoom-out: the camera zooms out from the frame centre, so the content shrinks toward the centre and new content appears at every border.",
    "rotate-cw": "rotate-cw: the content turns clockwise on screen about the frame centre (the camera rolls counter-clockwise).",
    "rotate-ccw": "rotate-ccw: the content turns counter-clockwise on screen about the frame centre (the camera rolls clockwise).",
}

#: Total pan over a clip, as a fraction of the frame width (strength 1).
PAN_FRACTION = 0.25
#: Total zoom factor over a clip (strength 1); zoom-out uses its inverse.
ZOOM_FACTOR = 1.35
#: Total rotation over a clip in degrees (strength 1).
ROTATION_DEGREES = 22.0

# A window wider than this many output pixels per pixel is prefiltered before sampling.
_PREFILTER_RATIO = 1.2
_PAN_DIRECTIONS = {"pan-left": (-1.0, 0.0), "pan-right": (1.0, 0.0), "pan-up": (0.0, -1.0), "pan-down": (0.0, 1.0)}


# ----------------------------------------------------------------------------- names


def motion_index(name) -> int:
    """Class id of a motion name; case-insensitive, ``_``/space accepted for ``-``; ints pass through."""
    if isinstance(name, bool):
        name = str(name)
    if isinstance(name, int):
        if 0 <= name < NUM_MOTIONS:
            return int(name)
        raise ConfigError(
            f"motion id {name} is out of range; allowed: 0..{NUM_MOTIONS - 1} "
            f"({', '.join(f'{i}={m}' for i, m in enumerate(MOTIONS))})."
        )
    if isinstance(name, str):
        key = motion_key(name)
        if key in MOTIONS:
            return MOTIONS.index(key)
    raise ConfigError(
        f"motion {name!r} is not a known camera motion; allowed: {', '.join(MOTIONS)} "
        "(case-insensitive, '_' works for '-'). For example motion='pan-left' or motion=1."
    )


def motion_name(motion) -> str:
    """Canonical name of a motion given by name or id."""
    return MOTIONS[motion_index(motion)]


# ----------------------------------------------------------------------------- geometry


def _check_strength(strength) -> float:
    try:
        s = float(strength)
    except (TypeError, ValueError):
        s = float("nan")
    if not math.isfinite(s) or s < 0 or s > 4:
        raise ConfigError(
            f"strength={strength!r} is invalid; allowed: a number in [0, 4] (1 = the trained "
            "magnitudes, 0 = no motion). Use strength=1.0."
        )
    return s


def _check_frames(frames) -> int:
    if isinstance(frames, bool) or int(frames) != frames or frames < 1:
        raise ConfigError(f"frames={frames!r} is invalid; allowed: an integer >= 1, e.g. frames=16.")
    return int(frames)


def _check_size(size) -> int:
    if isinstance(size, bool) or int(size) != size or size < 2:
        raise ConfigError(f"size={size!r} is invalid; allowed: an integer >= 2 (output side in pixels), e.g. size=64.")
    return int(size)


def camera_path(motion, frames: int = 16, strength: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-frame camera transform: ``(shift [frames, 2], matrix [frames, 2, 2])`` (float64).

    Coordinates: source pixel ``(i, j)`` covers ``[j, j+1] x [i, i+1]`` (x right, y down), so pixel
    centres sit at half-integers. Output pixel ``(r, c)`` of a ``size`` x ``size`` frame has the
    screen offset ``p = ((c + 0.5) / size - 0.5, (r + 0.5) / size - 0.5)`` in units of the window
    (``[-0.5, 0.5]^2``), and frame ``k`` (``t = k / (frames - 1)``) samples the source at::

        q = center + window * (shift[k] + matrix[k] @ p)

    Frame 0 is always ``shift = 0, matrix = I``. The magnitudes are fixed per class:

    * pans move the camera by ``PAN_FRACTION * strength`` of the frame width over the clip
      (``shift = t * PAN_FRACTION * strength * direction``);
    * zooms scale the view by ``ZOOM_FACTOR ** strength`` over the clip, geometrically (constant
      relative speed): zoom-in ``matrix = Z ** -t * I``, zoom-out ``matrix = Z ** t * I``;
    * rotations turn the content by ``ROTATION_DEGREES * strength`` about the frame centre; on
      screen (y down) rotate-cw turns content clockwise: ``matrix = R(-angle * t)`` for cw,
      ``R(+angle * t)`` for ccw, with ``R(a) = [[cos a, -sin a], [sin a, cos a]]``.
    """
    name = motion_name(motion)
    frames = _check_frames(frames)
    s = _check_strength(strength)
    t = torch.arange(frames, dtype=torch.float64) / max(frames - 1, 1)
    shift = torch.zeros(frames, 2, dtype=torch.float64)
    scale = torch.ones(frames, dtype=torch.float64)
    angle = torch.zeros(frames, dtype=torch.float64)
    if name in _PAN_DIRECTIONS:
        dx, dy = _PAN_DIRECTIONS[name]
        shift[:, 0] = dx * PAN_FRACTION * s * t
        shift[:, 1] = dy * PAN_FRACTION * s * t
    elif name == "zoom-in":
        scale = ZOOM_FACTOR ** (-s * t)
    elif name == "zoom-out":
        scale = ZOOM_FACTOR ** (s * t)
    elif name == "rotate-cw":
        angle = -math.radians(ROTATION_DEGREES) * s * t
    elif name == "rotate-ccw":
        angle = math.radians(ROTATION_DEGREES) * s * t
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    matrix = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    return shift, matrix


def clip_extent(motion, frames: int = 16, strength: float = 1.0) -> tuple[float, float, float, float]:
    """``(xmin, xmax, ymin, ymax)`` of every frame's footprint, relative to the centre, in window units."""
    shift, matrix = camera_path(motion, frames, strength)
    corners = torch.tensor([[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]], dtype=torch.float64)
    pts = shift[:, None, :] + torch.einsum("fij,cj->fci", matrix, corners)
    x, y = pts[..., 0], pts[..., 1]
    return (x.min().item(), x.max().item(), y.min().item(), y.max().item())


def _hw(source_hw) -> tuple[int, int]:
    if isinstance(source_hw, torch.Tensor):
        return int(source_hw.shape[-2]), int(source_hw.shape[-1])
    h, w = source_hw
    return int(h), int(w)


def fit_view(source_hw, motion, window: float, center, frames: int = 16, strength: float = 1.0):
    """Shrink ``window`` and move ``center`` (both source px) the least so the whole clip stays inside.

    Returns ``(window, (cx, cy))``; a view that already fits comes back unchanged.
    """
    h, w = _hw(source_hw)
    xmin, xmax, ymin, ymax = clip_extent(motion, frames, strength)
    win = min(float(window), w / (xmax - xmin), h / (ymax - ymin))
    cx, cy = float(center[0]), float(center[1])
    cx = min(max(cx, -xmin * win), w - xmax * win)
    cy = min(max(cy, -ymin * win), h - ymax * win)
    return win, (cx, cy)


def _largest_window_at(source_hw, center, frames: int, strength: float) -> float:
    """Largest window around a fixed centre that fits every motion."""
    h, w = _hw(source_hw)
    try:
        cx, cy = float(center[0]), float(center[1])
    except (TypeError, ValueError, IndexError) as exc:
        raise ConfigError(f"center={center!r} is invalid; expected an (x, y) pair in source pixels.") from exc
    room = (cx, w - cx, cy, h - cy)
    win = float("inf")
    for m in MOTIONS:
        xmin, xmax, ymin, ymax = clip_extent(m, frames, strength)
        for r, e in zip(room, (-xmin, xmax, -ymin, ymax)):
            if e > 0:
                win = min(win, r / e)
    return max(win, 0.0)


def default_view(source_hw, frames: int = 16, strength: float = 1.0):
    """Centred view with the largest window that fits every motion: ``(window, (cx, cy))``.

    Frame 0 is then the same for every class, so one image can be animated with each motion.
    """
    h, w = _hw(source_hw)
    win = float("inf")
    for m in MOTIONS:
        xmin, xmax, ymin, ymax = clip_extent(m, frames, strength)
        win = min(win, w / (2 * max(-xmin, xmax)), h / (2 * max(-ymin, ymax)))
    return win, (w / 2.0, h / 2.0)


# ----------------------------------------------------------------------------- rendering


class _Plan:
    """Per (motion, frames, size, strength): screen-to-source offsets and per-frame footprints."""

    def __init__(self, motion: int, frames: int, size: int, strength: float):
        shift, matrix = camera_path(motion, frames, strength)
        c = (torch.arange(size, dtype=torch.float64) + 0.5) / size - 0.5
        p = torch.stack(torch.meshgrid(c, c, indexing="xy"), -1).reshape(-1, 2)  # (x, y), row-major
        q = shift[:, None, :] + torch.einsum("fij,nj->fni", matrix, p)  # [F, size*size, 2]
        self.offsets = q.reshape(1, frames * size, size, 2)  # float64: one rounding to float32 later
        self.scale = torch.linalg.det(matrix).abs().sqrt()  # linear zoom of each frame's footprint
        self.frames, self.size = frames, size


_plans: dict[tuple, _Plan] = {}


def _plan(motion: int, frames: int, size: int, strength: float) -> _Plan:
    key = (motion, frames, size, strength)
    plan = _plans.get(key)
    if plan is None:
        if len(_plans) > 256:
            _plans.clear()
        plan = _plans[key] = _Plan(motion, frames, size, strength)
    return plan


def _prefiltered(source: torch.Tensor, factor: float) -> torch.Tensor:
    if factor >= 1.0:
        return source
    h, w = source.shape[-2:]
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    if size == (h, w):
        return source
    return F.interpolate(source[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def _render(
    source: torch.Tensor,
    plan: _Plan,
    window: float,
    cx: float,
    cy: float,
    flip: bool,
    antialias: bool,
) -> torch.Tensor:
    """[frames, 3, size, size] in 0..1 for a view that was already checked/fitted.

    Samples with ``torch.nn.functional.grid_sample`` (bilinear, ``align_corners=False``). With
    ``antialias``, a window wider than ``1.2 * size`` source pixels is sampled from a source first
    resized with an antialiasing filter (two levels blended per frame for zooms), so downscaled
    clips do not shimmer.
    """
    h, w = source.shape[-2:]
    frames, size = plan.frames, plan.size
    # Normalised sampling coordinates (align_corners=False: u = 2 x / W - 1).
    sx, sy = 2.0 * window / w, 2.0 * window / h
    grid = plan.offsets * torch.tensor([sx, sy], dtype=torch.float64)
    grid += torch.tensor([2.0 * cx / w - 1.0, 2.0 * cy / h - 1.0], dtype=torch.float64)
    if flip:
        grid[..., 0].neg_()
    grid = grid.to(torch.float32)

    def sample(img, g):
        out = F.grid_sample(img[None], g, mode="bilinear", padding_mode="border", align_corners=False)
        return out[0].view(3, -1, size, size).transpose(0, 1)

    if not antialias:
        return sample(source, grid)
    ratio = window / (_PREFILTER_RATIO * size)  # downscale needed so frame 0 samples ~1.2 px apart
    f_first = min(1.0, 1.0 / ratio)
    f_last = min(1.0, 1.0 / (ratio * plan.scale[-1].item()))
    if abs(math.log(f_first) - math.log(f_last)) < 1e-3:
        return sample(_prefiltered(source, f_first), grid)
    # Zoom: blend two prefilter levels per frame, linearly in log scale (frame 0 uses level 0 only).
    f_k = (1.0 / (ratio * plan.scale)).clamp(max=1.0)
    wts = ((f_k.log() - math.log(f_first)) / (math.log(f_last) - math.log(f_first))).clamp(0, 1)
    wts = wts.to(torch.float32).view(frames, 1, 1, 1)
    a = sample(_prefiltered(source, f_first), grid)
    b = sample(_prefiltered(source, f_last), grid)
    return torch.lerp(a, b, wts)


def _check_source(source) -> torch.Tensor:
    if not isinstance(source, torch.Tensor) or source.dim() != 3 or source.shape[0] != 3:
        shape = tuple(source.shape) if isinstance(source, torch.Tensor) else type(source).__name__
        raise ShapeError(
            f"source has shape {shape}; expected an RGB tensor [3, h, w] with values in 0..1. "
            "Convert a ComfyUI IMAGE [1, h, w, 3] with image[0].permute(2, 0, 1)."
        )
    if source.shape[1] < 2 or source.shape[2] < 2:
        raise ShapeError(f"source is {source.shape[2]}x{source.shape[1]} px; it must be at least 2x2.")
    if not source.dtype.is_floating_point:
        raise ShapeError(f"source has dtype {source.dtype}; expected a float tensor in 0..1 (divide uint8 by 255).")
    return source.detach().to(torch.float32).cpu()


def _initial_window(h: int, w: int, center, frames: int, strength: float):
    """``(window, center)`` when no window is given: the largest that fits every motion."""
    if center is None:
        return default_view((h, w), frames, strength)
    window = _largest_window_at((h, w), center, frames, strength)
    if window < 1.0:
        raise ConfigError(
            f"center={center!r} is on or outside the border of the {w}x{h} source, so no view fits "
            "around it; pick a centre inside the image or also pass window=."
        )
    return window, center


def _resolve_view(h: int, w: int, motion: int, center, window, frames: int, strength: float,
                  clamp: bool) -> tuple[float, float, float]:
    """``(window, cx, cy)`` of frame 0 from :func:`render_clip`'s arguments, checked (and fitted)."""
    if window is None:
        window, center = _initial_window(h, w, center, frames, strength)
    elif center is None:
        center = (w / 2.0, h / 2.0)
    try:
        window = float(window)
        cx, cy = float(center[0]), float(center[1])
    except (TypeError, ValueError, IndexError) as exc:
        raise ConfigError(
            f"window={window!r}, center={center!r} are invalid; expected a number and an (x, y) pair in source pixels."
        ) from exc
    if not (math.isfinite(window) and window > 0 and math.isfinite(cx) and math.isfinite(cy)):
        raise ConfigError(
            f"window={window!r}, center={center!r} are invalid; expected a window > 0 and a finite "
            f"(x, y) centre in source pixels (the source is {w}x{h})."
        )
    if clamp:
        window, (cx, cy) = fit_view((h, w), motion, window, (cx, cy), frames, strength)
        if window < 1.0:
            raise ConfigError(
                f"center={center!r} leaves no room for the motion inside the {w}x{h} source; pick a "
                "centre further from the border or pass clamp=False."
            )
    return window, cx, cy


def render_clip(
    source: torch.Tensor,
    motion,
    *,
    size: int = 64,
    frames: int = 16,
    center: Sequence[float] | None = None,
    window: float | None = None,
    strength: float = 1.0,
    flip: bool = False,
    antialias: bool = True,
    clamp: bool = True,
) -> torch.Tensor:
    """Render one clip ``[frames, 3, size, size]`` in ``[-1, 1]``; frame 0 is the un-moved view.

    Frame ``k`` samples the source as :func:`camera_path` describes. Views are kept inside the
    source: the window shrinks and the centre moves until every frame's footprint fits.

    Args:
        source: RGB image ``[3, h, w]`` in 0..1.
        motion: a name from :data:`MOTIONS` or its class id.
        center: ``(cx, cy)`` of frame 0 in source pixels (continuous, pixel ``j`` spans ``[j, j+1]``);
            default: the image centre.
        window: side of frame 0's square view in source pixels; default: the largest window around
            ``center`` that fits every motion (:func:`default_view`), so frame 0 does not depend on
            the class.
        strength: multiplies the motion magnitudes (1 = trained magnitudes).
        flip: mirror the source horizontally first (``center`` is in mirrored coordinates).
        antialias: prefilter when the window is wider than ``1.2 * size`` source pixels.
        clamp: shrink/move the view so no frame samples outside the source (:func:`fit_view`);
            with ``clamp=False`` the view is used as given and borders are padded by replication.
    """
    src = _check_source(source)
    idx = motion_index(motion)
    size, frames, strength = _check_size(size), _check_frames(frames), _check_strength(strength)
    h, w = src.shape[-2:]
    window, cx, cy = _resolve_view(h, w, idx, center, window, frames, strength, clamp)
    clip = _render(src, _plan(idx, frames, size, strength), window, cx, cy, bool(flip), bool(antialias))
    return clip.mul(2.0).sub_(1.0).clamp_(-1.0, 1.0)


def to_uint8_frames(video: torch.Tensor):
    """``[F, 3, H, W]`` in ``[-1, 1]`` -> uint8 numpy ``[F, H, W, 3]``."""
    import numpy as np

    if not isinstance(video, torch.Tensor) or video.dim() != 4 or video.shape[1] != 3:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ShapeError(f"video has shape {shape}; expected [frames, 3, height, width] in [-1, 1] (index a batch first).")
    x = ((video.detach().float().cpu() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


# ----------------------------------------------------------------------------- dataset


def _motion_ids(motions) -> tuple[int, ...]:
    """Distinct class ids of ``motions`` (names or ids, or a single one), in the given order."""
    if isinstance(motions, (str, int)):
        motions = (motions,)
    ids: list[int] = []
    for m in motions:
        i = motion_index(m)
        if i not in ids:
            ids.append(i)
    if not ids:
        raise ConfigError(f"motions={motions!r} is empty; allowed: any non-empty subset of {', '.join(MOTIONS)}.")
    return tuple(ids)


def _dataset_sources(split: str, sources, include: Iterable[str], num_textures: int
                     ) -> tuple[list[str], list[torch.Tensor]]:
    """``(names, images)`` of a dataset's sources (see :class:`CameraMotionDataset`)."""
    if sources is None:
        names = list_sources(split, include=include, num_textures=num_textures)
        images = [load_source(n) for n in names]
    elif isinstance(sources, Mapping):
        names = [str(n) for n in sources]
        images = [_check_source(sources[n]) for n in sources]
    else:
        names = [str(n) for n in sources]
        images = [load_source(n) for n in names]
    if not names:
        raise ConfigError(
            f"no source images for split={split!r} (include={tuple(include)!r}, num_textures={num_textures}); "
            "include 'textures' or raise num_textures."
        )
    return names, images


class CameraMotionDataset:
    """Random camera-motion clips from the sources of one split.

    ``sample_batch`` draws, per clip, a source, a motion class, a horizontal flip, a window of
    ``window_range`` times the source's short side (capped so the clip fits) and a centre uniformly
    inside the region where the whole clip stays in the source.

    Args:
        split: ``"train"`` or ``"test"`` (which sources, see :func:`~.sources.split_of`).
        sources: ``None`` for :func:`~.sources.list_sources`, a sequence of source names, or a mapping
            ``name -> [3, h, w]`` tensor in 0..1 (used as given).
        motions: the classes to draw (names or ids); labels are always ids into :data:`MOTIONS`
            (the ``motions`` attribute), also when only a subset is drawn (``motion_ids``).
        include, num_textures: passed to :func:`~.sources.list_sources` when ``sources`` is None.
        seed: seeds the dataset's own generator, used when ``sample_batch`` gets none.
    """

    def __init__(
        self,
        split: str = "train",
        size: int = 64,
        frames: int = 16,
        seed: int = 0,
        sources: Sequence[str] | Mapping[str, torch.Tensor] | None = None,
        motions: Iterable = MOTIONS,
        *,
        include: Iterable[str] = SOURCE_KINDS,
        num_textures: int = DEFAULT_NUM_TEXTURES,
        strength: float = 1.0,
        window_range: tuple[float, float] = (0.45, 0.9),
        flip: bool = True,
        antialias: bool = True,
    ):
        if split not in ("train", "test"):
            raise ConfigError(f"split={split!r} is not a dataset split; allowed: 'train', 'test'.")
        self.split = split
        self.size, self.frames = _check_size(size), _check_frames(frames)
        self.strength = _check_strength(strength)
        lo, hi = (float(v) for v in window_range)
        if not (0 < lo <= hi <= 1):
            raise ConfigError(
                f"window_range={window_range!r} is invalid; allowed: 0 < low <= high <= 1 (fractions of the "
                "source's short side), e.g. (0.45, 0.9)."
            )
        self.window_range = (lo, hi)
        self.flip, self.antialias = bool(flip), bool(antialias)
        #: Class ids drawn by this dataset (labels are ids into :attr:`motions`).
        self.motion_ids = _motion_ids(motions)
        #: The label vocabulary: label ``i`` is ``motions[i]`` (always the full :data:`MOTIONS`).
        self.motions = MOTIONS

        names, images = _dataset_sources(split, sources, include, num_textures)
        self.source_names: tuple[str, ...] = tuple(names)
        self.images: tuple[torch.Tensor, ...] = tuple(images)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        # Footprint of each motion's clip in window units (fixes the safe window/centre ranges).
        self._extent = {m: clip_extent(m, self.frames, self.strength) for m in self.motion_ids}

    @property
    def num_sources(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return (
            f"CameraMotionDataset(split={self.split!r}, sources={self.num_sources}, size={self.size}, "
            f"frames={self.frames}, motions={[MOTIONS[i] for i in self.motion_ids]})"
        )

    def _view(self, img: torch.Tensor, motion: int, u_win: float, u_x: float, u_y: float):
        h, w = img.shape[-2:]
        xmin, xmax, ymin, ymax = self._extent[motion]
        short = min(h, w)
        cap = min(w / (xmax - xmin), h / (ymax - ymin)) / short
        lo, hi = self.window_range
        hi = min(hi, cap)
        lo = min(lo, hi)
        window = (lo + (hi - lo) * u_win) * short
        x0, x1 = -xmin * window, w - xmax * window
        y0, y1 = -ymin * window, h - ymax * window
        return window, (x0 + (x1 - x0) * u_x, y0 + (y1 - y0) * u_y)

    def _clip(self, src: int, motion: int, flip: bool, u_win: float, u_x: float, u_y: float,
              render_motion: Optional[int] = None) -> torch.Tensor:
        img = self.images[src]
        window, (cx, cy) = self._view(img, motion, u_win, u_x, u_y)
        shown = motion if render_motion is None else render_motion
        plan = _plan(shown, self.frames, self.size, self.strength)
        return _render(img, plan, window, cx, cy, flip, self.antialias)

    def _batch(self, srcs, labels, u, render_as=None) -> torch.Tensor:
        n = len(srcs)
        out = torch.empty(n, self.frames, 3, self.size, self.size)
        for i in range(n):
            flip = self.flip and u[i, 0] < 0.5
            other = None if render_as is None else int(render_as[i])
            out[i] = self._clip(int(srcs[i]), int(labels[i]), bool(flip), float(u[i, 1]), float(u[i, 2]),
                                float(u[i, 3]), other)
        return out.mul_(2.0).sub_(1.0).clamp_(-1.0, 1.0)

    def sample_batch(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(video [n, frames, 3, size, size] in [-1, 1], labels LongTensor [n])``.

        Deterministic given the generator state (the dataset's own generator when none is given).
        """
        srcs, labels, u = self.draw_plan(n, generator)
        return self._batch(srcs, labels, u), labels

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """``(frames, 3, size, size)``: the shape of one clip of :meth:`sample_batch`."""
        return (self.frames, 3, self.size, self.size)

    def draw_plan(self, n: int, generator: torch.Generator | None = None) -> tuple:
        """The random choices of ``sample_batch(n, generator)`` (same generator use), without rendering."""
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ConfigError(f"n={n!r} is invalid; allowed: an integer >= 1 (clips per batch).")
        n = int(n)
        g = self.generator if generator is None else generator
        srcs = torch.randint(len(self.images), (n,), generator=g)
        cls = torch.randint(len(self.motion_ids), (n,), generator=g)
        u = torch.rand(n, 4, generator=g, dtype=torch.float64)
        labels = torch.tensor([self.motion_ids[int(c)] for c in cls], dtype=torch.long)
        return srcs, labels, u

    def render_plan(self, plan: tuple, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``[lo, hi)`` of the batch :meth:`draw_plan` planned: what ``sample_batch`` returns for them
        (a distributed run renders only its own shard)."""
        srcs, labels, u = plan
        return self._batch(srcs[lo:hi], labels[lo:hi], u[lo:hi]), labels[lo:hi]

    def fixed_set(self, n: int, seed: int = 0, render_as: Optional[Sequence[int]] = None
                  ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """A deterministic evaluation set ``(video, labels, source_names)``.

        Labels cycle through the dataset's motions (balanced to within one clip); sources follow a
        seeded permutation, so every source is used before any repeats. Same ``n``/``seed`` and same
        sources give the same output on every run. ``render_as`` (one motion id per clip) renders
        the same views (same frame 0) with other motions, e.g. the opposite ones; the returned
        labels stay those of the set.
        """
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ConfigError(f"n={n!r} is invalid; allowed: an integer >= 1 (clips in the set).")
        n = int(n)
        g = torch.Generator().manual_seed(int(seed))
        perm = torch.randperm(len(self.images), generator=g)
        srcs = perm[torch.arange(n) % len(self.images)]
        labels = torch.tensor([self.motion_ids[i % len(self.motion_ids)] for i in range(n)], dtype=torch.long)
        u = torch.rand(n, 4, generator=g, dtype=torch.float64)
        if render_as is not None and len(render_as) != n:
            raise ConfigError(f"render_as has {len(render_as)} motions; the set has n={n} clips.")
        return self._batch(srcs, labels, u, render_as), labels, [self.source_names[int(s)] for s in srcs]
