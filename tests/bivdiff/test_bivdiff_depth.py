"""BIVDiff Depth Frames: depth maps from any preprocessor checked and normalised as BIVDiff's MiDaS maps."""

from __future__ import annotations

import pytest
import torch

from framebridge_core.bivdiff.depth import normalize_depth_frames
from framebridge_core.errors import ConfigError, ShapeError


def ramp_depth(frames=3, h=6, w=5, channels=3):
    """Frame i: a left-to-right ramp from 0.1*i to 0.5 + 0.1*i (never the full 0..1 range)."""
    x = torch.linspace(0, 0.5, w)
    d = torch.stack([(x + 0.1 * i).expand(h, w) for i in range(frames)])[..., None]
    return d.expand(frames, h, w, channels).clone()


def test_per_frame_stretches_each_map_to_0_1_like_midas_and_keeps_the_order():
    d = ramp_depth()
    out = normalize_depth_frames(d)
    assert out.shape == (3, 6, 5, 3) and out.dtype == torch.float32
    assert torch.equal(out[..., 0], out[..., 1]) and torch.equal(out[..., 0], out[..., 2])  # grey
    for f in out:
        assert float(f.min()) == 0.0 and float(f.max()) == 1.0
    assert torch.allclose(out[0, 0, :, 0], torch.linspace(0, 1, 5), atol=1e-6)
    assert torch.allclose(out[0], out[2])  # per frame: the clip-wide offset is gone


def test_per_clip_keeps_frames_comparable_and_none_keeps_values():
    d = ramp_depth()
    clip = normalize_depth_frames(d, "per_clip")
    assert float(clip.min()) == 0.0 and float(clip.max()) == 1.0
    assert float(clip[0].max()) < float(clip[2].max())  # the later frames stay brighter
    assert torch.allclose(normalize_depth_frames(d, "none"), d)


def test_one_channel_and_rgba_maps_become_three_grey_channels_and_invert_flips():
    d = ramp_depth(channels=1)
    out = normalize_depth_frames(d)
    assert out.shape[-1] == 3
    rgba = torch.cat([ramp_depth(), torch.ones(3, 6, 5, 1)], dim=-1)
    assert torch.allclose(normalize_depth_frames(rgba), out, atol=1e-6)
    assert torch.allclose(normalize_depth_frames(d, invert=True), 1 - out)


def test_frame_count_and_size_must_match_the_source_frames():
    d = ramp_depth()
    assert normalize_depth_frames(d, like=torch.zeros(3, 6, 5, 3)).shape == (3, 6, 5, 3)
    with pytest.raises(ShapeError, match=r"3 depth maps for 8 frames.*same BIVDiff Select Frames"):
        normalize_depth_frames(d, like=torch.zeros(8, 6, 5, 3))
    with pytest.raises(ShapeError, match=r"depth maps of 5x6 for frames of 512x512.*Image Scale"):
        normalize_depth_frames(d, like=torch.zeros(3, 512, 512, 3))


def test_bad_depth_maps_are_refused_with_the_fix():
    d = ramp_depth()
    coloured = d.clone()
    coloured[..., 0] = 1 - coloured[..., 0]
    with pytest.raises(ShapeError, match=r"coloured.*differ by up to 1\.00.*grey output"):
        normalize_depth_frames(coloured)
    flat = d.clone()
    flat[1] = 0.3
    with pytest.raises(ShapeError, match=r"depth frame 1 is flat \(every pixel 0\.3\)"):
        normalize_depth_frames(flat)
    nan = d.clone()
    nan[2, 0, 0, 0] = float("nan")
    with pytest.raises(ShapeError, match="NaN or infinite"):
        normalize_depth_frames(nan)
    with pytest.raises(ShapeError, match=r"span -0\.5.*outside 0\.\.1.*'per_frame'"):
        normalize_depth_frames(d - 0.5, "none")
    with pytest.raises(ShapeError, match=r"\[frames, height, width, 1\|3\|4 channels\]; got shape \(6, 5\)"):
        normalize_depth_frames(torch.zeros(6, 5))
    with pytest.raises(ConfigError, match=r"normalize='sigmoid'; choose one of per_frame, per_clip, none"):
        normalize_depth_frames(d, "sigmoid")


def test_video_compression_noise_in_grey_maps_is_accepted():
    d = ramp_depth()
    d[..., 1] += 4 / 255  # an 8-bit yuv420 round trip leaves small channel differences
    assert normalize_depth_frames(d).shape == (3, 6, 5, 3)
