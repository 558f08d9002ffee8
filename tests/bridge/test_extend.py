"""Long videos by chaining bridges: planning, joining, the seam/drift measurement, and the bundled tiny
models chained to 64 frames through the animator and the command line."""

from __future__ import annotations

import pytest
import torch

from framebridge_core.bridge.extend import (
    Extended,
    blend_weights,
    check_overlap,
    colour_shift,
    extend_clip,
    frame_changes,
    join_segments,
    seam_pairs,
    seam_report,
    segments_needed,
)
from framebridge_core.errors import ConfigError, FrameBridgeError, ShapeError


def ramp(frames: int, start: float = 0.0, step: float = 1.0) -> torch.Tensor:
    """``[frames, 1, 2, 2]`` whose value grows by ``step`` per frame."""
    return (start + step * torch.arange(frames, dtype=torch.float32)).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()


# -- planning and errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("clip,total,seg,overlap,want", [(16, 64, 16, 1, 4), (16, 17, 16, 1, 1), (16, 31, 16, 1, 1),
                                                          (16, 32, 16, 1, 2), (16, 64, 16, 4, 4), (17, 64, 17, 1, 3)])
def test_segments_needed(clip, total, seg, overlap, want):
    assert segments_needed(clip, total, seg, overlap) == want
    # and that many are really enough, one fewer is not
    assert clip + want * (seg - overlap) >= total > clip + (want - 1) * (seg - overlap)


@pytest.mark.parametrize("overlap", [0, -1, 16, 40])
def test_overlap_outside_the_segment_is_a_typed_error_naming_the_range(overlap):
    with pytest.raises(ConfigError, match=rf"overlap={overlap} .*between 1 and 15"):
        check_overlap(overlap, 16)


def test_nothing_to_extend_and_too_short_clips_are_refused():
    with pytest.raises(ConfigError, match="frames=16 is not longer than the clip"):
        segments_needed(16, 16, 16, 1)
    with pytest.raises(ShapeError, match="overlap=4 needs at least 4"):
        segments_needed(2, 64, 16, 4)
    assert issubclass(ShapeError, FrameBridgeError)


# -- joining ---------------------------------------------------------------------------------------


def test_blend_weights_ramp_from_the_old_clip_to_the_new_segment():
    assert blend_weights(1).tolist() == [0.0]
    assert blend_weights(4).tolist() == [0.0, 0.25, 0.5, 0.75]


def test_join_with_overlap_one_keeps_the_clip_and_drops_the_shared_frame():
    clip, seg = ramp(16), ramp(16, start=100)
    out = join_segments(clip, seg, 1)
    assert out.shape[0] == 31
    assert torch.equal(out[:16], clip)            # the shared frame is the clip's own last frame
    assert torch.equal(out[16:], seg[1:])


def test_join_cross_fades_the_overlap():
    clip, seg = torch.zeros(8, 3, 2, 2), torch.ones(8, 3, 2, 2)
    out = join_segments(clip, seg, 4)
    assert out.shape[0] == 12
    assert out[:4].eq(0).all() and out[8:].eq(1).all()
    assert [float(out[t, 0, 0, 0]) for t in range(4, 8)] == [0.0, 0.25, 0.5, 0.75]


def test_join_refuses_mismatched_frames():
    with pytest.raises(ShapeError, match="same model and VAE"):
        join_segments(torch.zeros(4, 3, 8, 8), torch.zeros(4, 3, 4, 4), 1)
    with pytest.raises(ConfigError, match="overlap=4"):
        join_segments(torch.zeros(4, 3, 2, 2), torch.zeros(4, 3, 2, 2), 4)


def test_extend_clip_chains_segments_from_the_tail_and_cuts_to_length():
    seen = []

    def make(index, tail):
        seen.append((index, tail.shape[0], float(tail[0, 0, 0, 0])))
        return ramp(16, start=float(tail[0, 0, 0, 0]))  # continues the ramp exactly from the tail's first frame

    progress = []
    ext = extend_clip(ramp(16), make, 64, 16, overlap=2, callback=lambda d, t: progress.append((d, t)))
    assert ext.video.shape[0] == 64
    assert torch.equal(ext.video, ramp(64)), "a segment that continues the motion must join seamlessly"
    assert [s[:2] for s in seen] == [(1, 2), (2, 2), (3, 2), (4, 2)]
    assert [s[2] for s in seen] == [14.0, 28.0, 42.0, 56.0]
    assert ext.seams == [14, 28, 42, 56] and progress[-1] == (4, 4)


def test_extend_clip_checks_the_segment_length():
    with pytest.raises(ShapeError, match="segment 1 has 8 frames, expected 16"):
        extend_clip(ramp(16), lambda i, tail: ramp(8), 40, 16)


def test_extend_clip_stops_when_the_callback_raises():
    calls = []

    class Cancelled(Exception):
        pass

    def make(index, tail):
        calls.append(index)
        return ramp(16)

    def cancel(done, total):
        raise Cancelled

    with pytest.raises(Cancelled):
        extend_clip(ramp(16), make, 64, 16, callback=cancel)
    assert calls == [1]


# -- the measurement -------------------------------------------------------------------------------


def test_seam_pairs_cover_the_cross_fade():
    assert seam_pairs([15], 1, 40) == [14, 15]
    assert seam_pairs([12], 4, 40) == [11, 12, 13, 14, 15]


def test_a_seamless_chain_measures_ratio_one_and_no_drift():
    ext = extend_clip(ramp(16), lambda i, tail: ramp(16, start=float(tail[0, 0, 0, 0])), 64, 16)
    report = seam_report(ext)
    assert report.seam_ratio == pytest.approx(1.0) and report.worst_seam_ratio == pytest.approx(1.0)
    static = Extended(torch.full((40, 3, 4, 4), 0.5), [15, 30], 1, 16)
    static.video[1:] += 0.01 * torch.randn(39, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert max(seam_report(static).drift) < 0.01


def test_a_jump_at_the_seam_and_a_colour_drift_are_measured():
    # each segment repeats the first one's motion from a brighter start: a jump at every seam
    def make(index, tail):
        seg = ramp(16, start=float(tail[0, 0, 0, 0]) + 5.0, step=1.0)
        seg[0] = tail[0]
        return seg

    ext = extend_clip(ramp(16), make, 61, 16)
    report = seam_report(ext)
    assert report.inside_change == pytest.approx(1.0)
    assert report.seam_change == pytest.approx(3.5)  # pairs (last old, shared) = 1 and (shared, new 1) = 6
    assert report.worst_seam_ratio == pytest.approx(6.0)
    assert len(report.drift) == 4 and report.drift == sorted(report.drift)
    assert "ratio 3.50" in report.lines()[0]


def test_colour_shift_reads_the_channel_axis():
    video = torch.zeros(3, 4, 4, 3)   # IMAGE layout [T, H, W, C]
    video[2, ..., 0] = 0.3            # the red mean rises by 0.3 -> mean over channels 0.1
    assert colour_shift(video, channel_dim=-1).tolist() == pytest.approx([0.0, 0.0, 0.1])
    assert frame_changes(video).tolist() == pytest.approx([0.0, 0.1])


def test_an_unextended_clip_has_no_seam_to_report():
    with pytest.raises(ShapeError, match="no seam"):
        seam_report(Extended(ramp(16), [], 1, 16))


# -- the bundled tiny models, chained ---------------------------------------------------------------


@pytest.fixture(scope="module")
def animator():
    from framebridge_core.tiny.animator import TinyAnimator

    return TinyAnimator(None, neural_prior=False)


@pytest.fixture(scope="module")
def frame(animator):
    from framebridge_core.tiny.animator import DEFAULT_IMAGE
    from framebridge_core.video_io import load_image

    return load_image(DEFAULT_IMAGE, animator.size)


def test_tiny_long_clip_continues_from_the_last_frame_and_repeats_with_the_seed(animator, frame):
    ext = animator.animate_long(frame, "zoom-in", 40, steps=3, seed=5)
    again = animator.animate_long(frame, "zoom-in", 40, steps=3, seed=5)
    assert ext.video.shape == (40, 3, animator.size, animator.size) and torch.isfinite(ext.video).all()
    assert torch.equal(ext.video, again.video), "the same seed must give the same long clip"
    assert ext.seams == [15, 30]
    # the first window is the plain 16-frame clip of the same seed
    assert torch.equal(ext.video[:16], animator.animate(frame, "zoom-in", steps=3, seed=5))
    # segment 1 starts exactly at the clip's last frame (the model keeps its first frame)
    seg1 = animator.continue_from(ext.video[15:16], "zoom-in", steps=3, seed=6)
    assert torch.equal(ext.video[15:31], seg1)
    # a generous bound: a seam is not a cut to an unrelated picture (measured ~1 on the bundled models)
    report = seam_report(Extended((ext.video + 1) / 2, ext.seams, 1, 16))
    assert report.seam_ratio < 3.0, report.lines()
    other = animator.animate_long(frame, "zoom-in", 40, steps=3, seed=6)
    assert not torch.equal(other.video[16:], ext.video[16:])


def test_tiny_long_clip_refuses_a_bad_overlap_before_sampling(animator, frame):
    with pytest.raises(ConfigError, match="overlap=16"):
        animator.animate_long(frame, "zoom-in", 64, overlap=16, steps=2)


def test_cli_generate_frames_64(tmp_path, capsys):
    from framebridge_core.cli import main
    from framebridge_core.video_io import read_animation

    out = tmp_path / "long.gif"
    rc = main(["generate", "--frames", "64", "--steps", "2", "--no-neural-prior", "--scale", "1", "--out", str(out)])
    assert rc == 0
    frames = read_animation(out)
    assert frames.shape[0] == 64
    text = capsys.readouterr().out
    assert "64 frames" in text and "4 segments chained" in text and "ratio" in text
    assert (tmp_path / "long-sheet.png").is_file()


def test_cli_generate_refuses_a_bad_overlap(tmp_path, capsys):
    from framebridge_core.cli import main

    rc = main(["generate", "--frames", "64", "--overlap", "0", "--steps", "2", "--out", str(tmp_path / "x.gif")])
    assert rc == 2 and "overlap=0" in capsys.readouterr().err
