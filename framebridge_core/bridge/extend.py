"""Long videos by chaining bridges: each new segment starts from the end of the clip so far.

FrameBridge samples a clip from a prior built on a known first frame, so a clip can be continued:
the clip's frame ``-overlap`` becomes the next segment's first frame (its bridge prior and condition
frame), the segment is sampled with the same model and conditioning, and the ``overlap`` frames the
segment shares with the clip are cross-faded (``overlap`` 1: the last frame starts the next segment). Pure torch: the sampling itself is a callable the caller
passes in (:func:`extend_clip`), so the command line and the ComfyUI node chain segments the same way.

Every function works on tensors with time in dimension 0 (``[T, C, H, W]``, ``[T, H, W, C]``, ...).
:func:`seam_report` measures what chaining costs: the frame-to-frame change across a segment
boundary against inside a segment, and the colour drift from frame 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from ..errors import ConfigError, ShapeError

#: ``make_segment(index, tail) -> [segment_length, ...]``: segment ``index`` (1, 2, ...) continuing
#: from ``tail`` (the clip's last ``overlap`` frames); its frame 0 must continue from ``tail[0]``.
SegmentMaker = Callable[[int, torch.Tensor], torch.Tensor]


def check_overlap(overlap: int, segment_length: int) -> None:
    """``overlap`` frames shared by consecutive segments must leave each segment at least one new frame."""
    if segment_length < 2:
        raise ConfigError(f"a segment of {segment_length} frame(s) cannot continue a clip; the model must make "
                          f"at least 2 frames per segment.")
    if not 1 <= int(overlap) < segment_length:
        raise ConfigError(f"overlap={overlap} is not possible with {segment_length}-frame segments: it must be "
                          f"between 1 and {segment_length - 1} (1 = the last frame starts the next segment); "
                          f"lower overlap.")


def segments_needed(clip_frames: int, total_frames: int, segment_length: int, overlap: int) -> int:
    """How many new segments make a ``clip_frames`` clip at least ``total_frames`` long (each adds
    ``segment_length − overlap`` frames)."""
    check_overlap(overlap, segment_length)
    if clip_frames < overlap:
        raise ShapeError(f"the clip has {clip_frames} frame(s) but overlap={overlap} needs at least {overlap}; "
                         f"lower overlap or give a longer clip.")
    if total_frames <= clip_frames:
        raise ConfigError(f"frames={total_frames} is not longer than the clip ({clip_frames} frames): nothing to "
                          f"extend; set frames above {clip_frames}.")
    return math.ceil((total_frames - clip_frames) / (segment_length - overlap))


def blend_weights(overlap: int) -> torch.Tensor:
    """Weight of the new segment on each of the ``overlap`` shared frames: ``j / overlap`` for frame j, a
    linear cross-fade that reaches 1 on the first frame only the new segment has."""
    return torch.arange(int(overlap), dtype=torch.float64) / int(overlap)


def join_segments(clip: torch.Tensor, segment: torch.Tensor, overlap: int) -> torch.Tensor:
    """``clip`` followed by ``segment``, whose first ``overlap`` frames cover the clip's last ``overlap``
    frames and are cross-faded with them (:func:`blend_weights`)."""
    k = int(overlap)
    if clip.shape[1:] != segment.shape[1:]:
        raise ShapeError(f"a segment of frame shape {tuple(segment.shape[1:])} cannot follow a clip of frame shape "
                         f"{tuple(clip.shape[1:])}; both must come from the same model and VAE.")
    if not 1 <= k <= min(clip.shape[0], segment.shape[0] - 1):
        raise ConfigError(f"overlap={k} does not fit a {clip.shape[0]}-frame clip and a {segment.shape[0]}-frame "
                          f"segment; use 1 to {min(clip.shape[0], segment.shape[0] - 1)}.")
    w = blend_weights(k).to(device=segment.device, dtype=torch.promote_types(segment.dtype, torch.float32))
    w = w.view((k,) + (1,) * (segment.ndim - 1))
    old, new = clip[-k:].to(w.dtype), segment[:k].to(w.dtype)
    blended = ((1 - w) * old + w * new).to(clip.dtype)
    return torch.cat([clip[:-k], blended, segment[k:].to(clip.dtype)], dim=0)


@dataclass
class Extended:
    """A chained clip and where its seams are: ``seams[i]`` is the index of the first frame that segment
    ``i + 1`` covers (the start of its cross-fade) in ``video``."""

    video: torch.Tensor
    seams: list = field(default_factory=list)
    overlap: int = 1
    segment_length: int = 0


def extend_clip(clip: torch.Tensor, make_segment: SegmentMaker, total_frames: int, segment_length: int,
                overlap: int = 1, callback: Optional[Callable[[int, int], None]] = None) -> Extended:
    """Continue ``clip`` segment by segment until it has ``total_frames`` frames.

    ``make_segment(index, tail)`` samples segment ``index`` (1-based) from the clip's last ``overlap``
    frames (see :data:`SegmentMaker`); segments are joined with :func:`join_segments` and the result is
    cut to ``total_frames``. ``callback(done, total)`` runs after each segment (raise from it to stop).
    """
    count = segments_needed(clip.shape[0], total_frames, segment_length, overlap)
    video, seams = clip, []
    for index in range(1, count + 1):
        segment = make_segment(index, video[-overlap:])
        if segment.shape[0] != segment_length:
            raise ShapeError(f"segment {index} has {segment.shape[0]} frames, expected {segment_length}.")
        seams.append(video.shape[0] - overlap)
        video = join_segments(video, segment, overlap)
        if callback is not None:
            callback(index, count)
    seams = [s for s in seams if s < total_frames]
    return Extended(video[:total_frames], seams, int(overlap), int(segment_length))


# -- measuring the seams ---------------------------------------------------------------------------


def frame_changes(video: torch.Tensor) -> torch.Tensor:
    """``[T − 1]``: mean absolute change from frame t to frame t + 1."""
    if video.shape[0] < 2:
        raise ShapeError(f"a clip of {video.shape[0]} frame(s) has no frame-to-frame change.")
    v = video.double()
    return (v[1:] - v[:-1]).abs().flatten(1).mean(dim=1)


def seam_pairs(seams, overlap: int, frames: int) -> list[int]:
    """Indices t of the frame pairs (t, t + 1) that cross a seam: from the last frame before the
    cross-fade to the first frame only the new segment has (``overlap + 1`` pairs per seam)."""
    pairs = set()
    for s in seams:
        pairs.update(t for t in range(s - 1, s + overlap) if 0 <= t < frames - 1)
    return sorted(pairs)


@dataclass
class SeamReport:
    """What chaining costs. Changes and shifts are in the clip's value units (× 255 for 8-bit levels
    when the clip is in [0, 1])."""

    inside_change: float      # mean frame-to-frame change of pairs inside a segment
    seam_change: float        # mean frame-to-frame change of pairs across a seam
    seam_ratio: float         # seam_change / inside_change (1 = a seam is as smooth as the rest)
    worst_seam_ratio: float   # the largest single seam pair / inside_change
    drift: list               # per segment: mean |channel mean − frame 0's| of its last frame
    segment_drift: list       # per segment: the same, averaged over the segment's frames

    def lines(self) -> list[str]:
        drift = ", ".join(f"{d:.4f}" for d in self.drift)
        return [f"seam: {self.seam_change:.4f} across vs {self.inside_change:.4f} inside a segment "
                f"(ratio {self.seam_ratio:.2f}, worst pair {self.worst_seam_ratio:.2f})",
                f"colour drift vs frame 0 at the end of each segment: {drift}"]


def colour_shift(video: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """``[T]``: mean over channels of |mean colour of frame t − mean colour of frame 0|."""
    v = video.double().movedim(channel_dim, 1).flatten(2).mean(dim=2)  # [T, C]
    return (v - v[:1]).abs().mean(dim=1)


def seam_report(extended: Extended, channel_dim: int = 1) -> SeamReport:
    """Seam smoothness and colour drift of a chained clip (``channel_dim``: 1 for ``[T, C, H, W]``,
    -1 for ComfyUI's ``[T, H, W, C]`` IMAGE)."""
    video = extended.video
    changes = frame_changes(video)
    pairs = seam_pairs(extended.seams, extended.overlap, video.shape[0])
    if not pairs:
        raise ShapeError("the clip has no seam: it was not extended.")
    inside_mask = torch.ones(changes.shape[0], dtype=torch.bool)
    inside_mask[pairs] = False
    inside = float(changes[inside_mask].mean())
    seam = float(changes[pairs].mean())
    worst = float(changes[pairs].max())
    shift = colour_shift(video, channel_dim)
    ends = [*extended.seams, video.shape[0]]
    starts = [0, *extended.seams]
    drift = [float(shift[e - 1]) for e in ends]
    segment_drift = [float(shift[s:e].mean()) for s, e in zip(starts, ends)]
    ratio = seam / inside if inside > 0 else float("inf")
    worst_ratio = worst / inside if inside > 0 else float("inf")
    return SeamReport(inside, seam, ratio, worst_ratio, drift, segment_drift)


__all__ = ["Extended", "SeamReport", "SegmentMaker", "blend_weights", "check_overlap", "colour_shift",
           "extend_clip", "frame_changes", "join_segments", "seam_pairs", "seam_report",
           "segments_needed"]
