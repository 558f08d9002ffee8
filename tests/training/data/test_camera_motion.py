"""Camera-motion dataset: exact geometry, sign conventions, determinism, splits, errors.

Everything except the last tests runs on synthetic tensors or procedural textures, so no optional
image package is needed.
"""

import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from framebridge_core.training.data import (
    DEFAULT_IMAGE_SOURCE,
    MOTION_DESCRIPTIONS,
    MOTIONS,
    CameraMotionDataset,
    camera_path,
    list_sources,
    load_source,
    make_texture,
    motion_index,
    render_clip,
    split_key,
    split_of,
    to_uint8_frames,
)
from framebridge_core.errors import ConfigError, FrameBridgeError, ShapeError

ROOT = Path(__file__).resolve().parents[3]


def _rand_source(h, w, seed=0):
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def _blob_source(h, w, points, sigma=2.0):
    """Channel c holds a Gaussian blob at source point points[c] (continuous coords)."""
    ys = torch.arange(h, dtype=torch.float64)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float64)[None, :] + 0.5
    src = torch.zeros(3, h, w, dtype=torch.float64)
    for c, (px, py) in enumerate(points):
        src[c] = torch.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2 * sigma**2))
    return src.float()


def _centroid(frame_channel):
    """Intensity centroid (x, y) of one [H, W] channel in [-1, 1], relative to the frame centre."""
    wgt = (frame_channel.double() + 1) / 2
    h, w = wgt.shape
    ys = torch.arange(h, dtype=torch.float64)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float64)[None, :] + 0.5
    tot = wgt.sum()
    return ((wgt * xs).sum() / tot - w / 2).item(), ((wgt * ys).sum() / tot - h / 2).item()


# ----------------------------------------------------------------------------- frame 0


@pytest.mark.parametrize("motion", MOTIONS)
def test_frame0_is_the_plain_crop_for_a_grid_aligned_view(motion):
    src = _rand_source(100, 140)
    clip = render_clip(src, motion, size=32, frames=6, window=32, center=(70, 50))
    assert clip.shape == (6, 3, 32, 32) and clip.dtype == torch.float32
    # Compared in 0..1 units: float32 grid coordinates leave ~1e-5 px of error at x ~ 100 px.
    assert ((clip[0] + 1) / 2 - src[:, 34:66, 54:86]).abs().max().item() < 1e-5


def test_frame0_with_flip_is_the_crop_of_the_mirrored_source():
    src = _rand_source(60, 90, seed=1)
    clip = render_clip(src, "static", size=16, frames=2, window=16, center=(30, 30), flip=True)
    assert ((clip[0] + 1) / 2 - src.flip(-1)[:, 22:38, 22:38]).abs().max().item() < 1e-5


def test_downscaled_frame0_matches_an_area_resize_of_the_window():
    h, w = 160, 200
    ys = torch.arange(h, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, :] + 0.5
    smooth = torch.stack(
        [
            0.5 + 0.4 * torch.sin(xs / 9.0) * torch.cos(ys / 13.0),
            0.5 + 0.4 * torch.cos((xs + ys) / 11.0),
            (xs / w) * (ys / h),
        ]
    )
    clip = render_clip(smooth, "zoom-out", size=32, frames=4, window=96, center=(100, 80))
    ref = F.interpolate(smooth[None, :, 32:128, 52:148], size=(32, 32), mode="area")[0] * 2 - 1
    assert (clip[0] - ref).abs().max().item() < 0.03


def test_antialiasing_removes_aliasing_of_fine_detail():
    checker = ((torch.arange(200)[:, None] + torch.arange(200)[None, :]) % 2).float().expand(3, -1, -1)
    kw = dict(size=32, frames=2, window=150, center=(100, 100))
    smooth = render_clip(checker, "static", **kw)[0]
    aliased = render_clip(checker, "static", antialias=False, **kw)[0]
    assert smooth.std().item() < 0.05  # a 1-px checker seen from far away is flat grey
    assert aliased.std().item() > 0.2


# ----------------------------------------------------------------------------- exact motion


@pytest.mark.parametrize(
    "motion, shift",
    [("pan-left", (1, 0)), ("pan-right", (-1, 0)), ("pan-up", (0, 1)), ("pan-down", (0, -1))],
)
def test_pan_shifts_content_by_exact_pixels_in_the_expected_direction(motion, shift):
    # window 32 px, 25 % pan over 9 frames = 8 px = 1 px per frame; content moves by `shift` per frame.
    src = _rand_source(80, 120, seed=2)
    clip = render_clip(src, motion, size=32, frames=9, window=32, center=(60, 40))
    dx, dy = shift
    for k in range(1, 9):
        sx, sy = dx * k, dy * k
        moved = clip[k][:, max(sy, 0) : 32 + min(sy, 0), max(sx, 0) : 32 + min(sx, 0)]
        orig = clip[0][:, max(-sy, 0) : 32 + min(-sy, 0), max(-sx, 0) : 32 + min(-sx, 0)]
        assert (moved - orig).abs().max().item() < 1e-5, (motion, k)
        assert (clip[k] - clip[0]).abs().max().item() > 0.1


def test_pan_reveals_real_content_not_padding():
    src = _rand_source(80, 120, seed=3)
    clip = render_clip(src, "pan-left", size=32, frames=9, window=32, center=(60, 40))
    revealed = clip[8][:, :, :8]  # 8 new columns at the left edge
    assert ((revealed + 1) / 2 - src[:, 24:56, 36:44]).abs().max().item() < 1e-5
    # Border replication would repeat one column; real content does not.
    assert (revealed - clip[8][:, :, 8:9]).abs().max().item() > 0.1
    # Zoom-out also reveals new content at every border.
    out = render_clip(src, "zoom-out", size=32, frames=9, window=32, center=(60, 40), antialias=False)
    rows = 40 + 32 * 1.35 * ((torch.arange(32, dtype=torch.float64) + 0.5) / 32 - 0.5)  # last frame, source px
    assert rows.min() > 1 and rows.max() < 79  # inside the 80-px source: no padding involved
    assert out[8][:, 0, :].std().item() > 0.1 and out[8][:, :, 0].std().item() > 0.1


def test_static_clip_is_constant():
    clip = render_clip(make_texture(3), "static", size=32, frames=8)
    for k in range(1, 8):
        assert torch.equal(clip[k], clip[0])


@pytest.mark.parametrize("motion, factor", [("zoom-in", 1.35), ("zoom-out", 1 / 1.35)])
def test_zoom_scales_about_the_frame_centre(motion, factor):
    # Frame 0: 64-px window centred at (100, 100); blob 0 sits 8 px right of the centre, blob 1 at it.
    src = _blob_source(200, 200, [(108, 100), (100, 100), (0, 0)])
    clip = render_clip(src, motion, size=64, frames=16, window=64, center=(100, 100))
    for k in (0, 7, 15):
        expect = 8 * factor ** (k / 15)
        x, y = _centroid(clip[k][0])
        assert abs(x - expect) < 0.15 and abs(y) < 0.1, (k, x, y, expect)
        cx, cy = _centroid(clip[k][1])
        assert abs(cx) < 0.05 and abs(cy) < 0.05  # the centre stays fixed
    # The content grows (zoom-in) or shrinks (zoom-out): blob area scales with factor**2.
    area0 = ((clip[0][1] + 1) / 2).sum().item()
    area1 = ((clip[15][1] + 1) / 2).sum().item()
    assert abs(area1 / area0 - factor**2) < 0.05 * factor**2


@pytest.mark.parametrize("motion, sign", [("rotate-cw", 1), ("rotate-ccw", -1)])
def test_rotation_direction_as_seen_on_screen(motion, sign):
    # Screen y points down, so clockwise turns +x towards +y: atan2(y, x) grows for rotate-cw.
    src = _blob_source(200, 200, [(110, 100), (100, 100), (0, 0)])
    clip = render_clip(src, motion, size=64, frames=16, window=64, center=(100, 100))
    for k in (0, 5, 15):
        x, y = _centroid(clip[k][0])
        assert abs(math.hypot(x, y) - 10) < 0.15
        assert abs(math.degrees(math.atan2(y, x)) - sign * 22.0 * k / 15) < 0.5, (k, x, y)


@pytest.mark.parametrize("motion", MOTIONS)
def test_every_frame_samples_the_documented_source_points(motion):
    # A ramp source encodes the sampled position; compare with an independent formula.
    h, w = 150, 190
    ramp = torch.stack(
        [
            ((torch.arange(w) + 0.5) / w).expand(h, w),
            ((torch.arange(h) + 0.5) / h)[:, None].expand(h, w),
            torch.full((h, w), 0.5),
        ]
    ).float()
    win, cx, cy, frames, size = 80.0, 97.0, 71.0, 5, 16
    clip = render_clip(ramp, motion, size=size, frames=frames, window=win, center=(cx, cy), antialias=False)
    c = (torch.arange(size, dtype=torch.float64) + 0.5) / size - 0.5
    py, px = torch.meshgrid(c, c, indexing="ij")
    for k in range(frames):
        t = k / (frames - 1)
        dx = {"pan-left": -0.25 * t, "pan-right": 0.25 * t}.get(motion, 0.0)
        dy = {"pan-up": -0.25 * t, "pan-down": 0.25 * t}.get(motion, 0.0)
        s = {"zoom-in": 1.35 ** (-t), "zoom-out": 1.35**t}.get(motion, 1.0)
        a = math.radians({"rotate-cw": -22.0 * t, "rotate-ccw": 22.0 * t}.get(motion, 0.0))
        qx = cx + win * (dx + s * (math.cos(a) * px - math.sin(a) * py))
        qy = cy + win * (dy + s * (math.sin(a) * px + math.cos(a) * py))
        got_x = (clip[k][0].double() + 1) / 2 * w
        got_y = (clip[k][1].double() + 1) / 2 * h
        assert (got_x - qx).abs().max().item() < 2e-3 and (got_y - qy).abs().max().item() < 2e-3, (motion, k)
    shift, matrix = camera_path(motion, frames)
    assert torch.equal(shift[0], torch.zeros(2)) and torch.allclose(matrix[0], torch.eye(2, dtype=torch.float64))


def test_views_are_clamped_inside_the_source():
    h, w = 120, 150
    ramp = torch.stack(
        [((torch.arange(w) + 0.5) / w).expand(h, w), ((torch.arange(h) + 0.5) / h)[:, None].expand(h, w), torch.zeros(h, w)]
    ).float()
    # A too-large window at the border: clamping shrinks/moves it; no sample hits the padded margin.
    clip = render_clip(ramp, "pan-left", size=16, frames=5, window=400, center=(2, 2), antialias=False)
    x = (clip[:, 0] + 1) / 2 * w
    y = (clip[:, 1] + 1) / 2 * h
    assert x.min() > 0.5 + 1e-3 and x.max() < w - 0.5 - 1e-3 and y.min() > 0.5 + 1e-3 and y.max() < h - 0.5 - 1e-3
    # Dataset views too, for every motion.
    ds = CameraMotionDataset(sources={"ramp": ramp}, size=16, frames=5, antialias=False)
    video, labels = ds.sample_batch(36, torch.Generator().manual_seed(0))
    assert set(labels.tolist()) == set(range(len(MOTIONS)))
    x = (video[:, :, 0] + 1) / 2 * w
    y = (video[:, :, 1] + 1) / 2 * h
    assert x.min() > 0.5 + 1e-3 and x.max() < w - 0.5 - 1e-3 and y.min() > 0.5 + 1e-3 and y.max() < h - 0.5 - 1e-3


# ----------------------------------------------------------------------------- dataset


def _texture_dataset(split="train", **kw):
    return CameraMotionDataset(split, size=32, frames=8, include=("textures",), num_textures=40, **kw)


def test_sample_batch_is_deterministic_in_the_generator():
    ds = _texture_dataset()
    v1, l1 = ds.sample_batch(6, torch.Generator().manual_seed(5))
    v2, l2 = ds.sample_batch(6, torch.Generator().manual_seed(5))
    v3, l3 = ds.sample_batch(6, torch.Generator().manual_seed(6))
    assert torch.equal(v1, v2) and torch.equal(l1, l2)
    assert not torch.equal(v1, v3)
    assert v1.shape == (6, 8, 3, 32, 32) and v1.dtype == torch.float32
    assert l1.dtype == torch.long and l1.shape == (6,)
    assert v1.min().item() >= -1 and v1.max().item() <= 1 and v1.std().item() > 0.1
    # The dataset's own generator is seeded by `seed`.
    a = _texture_dataset(seed=3).sample_batch(2)[0]
    b = _texture_dataset(seed=3).sample_batch(2)[0]
    assert torch.equal(a, b)


def test_fixed_set_is_balanced_and_repeatable():
    ds = _texture_dataset("test")
    video, labels, names = ds.fixed_set(18, seed=1)
    assert video.shape == (18, 8, 3, 32, 32)
    assert torch.bincount(labels, minlength=len(MOTIONS)).tolist() == [2] * len(MOTIONS)
    again = _texture_dataset("test").fixed_set(18, seed=1)
    assert torch.equal(video, again[0]) and torch.equal(labels, again[1]) and names == again[2]
    assert not torch.equal(video, ds.fixed_set(18, seed=2)[0])
    assert set(names) <= set(ds.source_names) and all(split_of(n) == "test" for n in names)
    assert len(set(names)) == min(18, ds.num_sources)  # every source before any repeats


def test_motion_subset_labels_use_global_ids():
    ds = _texture_dataset(motions=("zoom_in", "Rotate-CW"))
    _, labels = ds.sample_batch(12, torch.Generator().manual_seed(0))
    assert set(labels.tolist()) == {5, 7} and ds.motions == MOTIONS and ds.motion_ids == (5, 7)


def test_class_order_matches_the_bundled_models():
    """Label i means the same motion to the dataset, the shipped weights and the ComfyUI class node:
    reordering the table would silently change what the bundled models animate."""
    from framebridge_core.tiny.animator import BRIDGE_FILE, BRIDGE_NP_FILE, NEURAL_PRIOR_FILE, bundled
    from framebridge_core.tiny.format import read_weights

    for name in (BRIDGE_FILE, BRIDGE_NP_FILE, NEURAL_PRIOR_FILE):
        _, meta = read_weights(str(bundled(name)))
        assert tuple(json.loads(meta["framebridge.classes"])) == MOTIONS, name


# ----------------------------------------------------------------------------- sources and splits


def test_splits_are_disjoint_stable_and_by_source():
    train = list_sources("train", include=("textures",), num_textures=300)
    test = list_sources("test", include=("textures",), num_textures=300)
    assert not set(train) & set(test)
    assert sorted(train + test) == sorted(list_sources("all", include=("textures",), num_textures=300))
    assert 0.06 < len(test) / 300 < 0.2
    # SHA-256 based, not Python's salted hash(): fixed values.
    assert [split_of(f"texture:{k}") for k in (15, 16, 25, 28, 29)] == ["train", "test", "test", "test", "train"]
    assert split_of(DEFAULT_IMAGE_SOURCE) == "test"
    assert split_key("templates:foo_edit-2.webp") == split_key("templates:foo_edit-1.webp") == "templates:foo_edit"


def test_textures_are_seeded_and_usable():
    a, b = make_texture(7), make_texture(7)
    assert torch.equal(a, b) and not torch.equal(a, make_texture(8))
    for k in range(6):
        t = load_source(f"texture:{k}")
        assert t.shape[0] == 3 and min(t.shape[1:]) == 160 and t.dtype == torch.float32
        assert t.min() >= 0 and t.max() <= 1 and t.std() > 0.05


def test_default_asset_is_a_256px_png_from_the_test_split():
    data = (ROOT / "assets" / "default-image.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    assert (width, height, depth, color) == (256, 256, 8, 2)
    assert DEFAULT_IMAGE_SOURCE in (ROOT / "assets" / "README.md").read_text(encoding="utf-8").replace("`", "")


def test_import_needs_no_optional_package():
    code = (
        "import sys, framebridge_core.training.data as d\n"
        "d.CameraMotionDataset('train', size=16, frames=2, include=('textures',), num_textures=8).sample_batch(1)\n"
        "bad = [m for m in ('skimage', 'sklearn', 'PIL', 'torchvision', 'comfy', "
        "'comfyui_workflow_templates_media_image') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_real_images_when_scikit_image_is_installed():
    pytest.importorskip("skimage")
    train = list_sources("train", include=("skimage",))
    test = list_sources("test", include=("skimage",))
    assert DEFAULT_IMAGE_SOURCE in test and "skimage:astronaut" in train
    assert not set(train) & set(test)
    img = load_source("skimage:astronaut")
    assert img.shape == (3, 160, 160) and 0 <= img.min() and img.max() <= 1
    gray = load_source("skimage:camera")
    assert gray.shape[0] == 3 and torch.equal(gray[0], gray[1])
    clip = render_clip(load_source(DEFAULT_IMAGE_SOURCE), "zoom-out", size=32, frames=4)
    assert clip.shape == (4, 3, 32, 32)


# ----------------------------------------------------------------------------- names and errors


def test_motion_names_and_ids():
    assert MOTIONS[0] == "static" and len(MOTIONS) == 9 and set(MOTION_DESCRIPTIONS) == set(MOTIONS)
    assert motion_index("pan-left") == 1
    assert motion_index("PAN_LEFT") == 1 and motion_index(" Zoom-Out ") == 6 and motion_index(8) == 8
    with pytest.raises(ConfigError) as err:
        motion_index("dolly")
    msg = str(err.value)
    assert "'dolly'" in msg and all(m in msg for m in MOTIONS)
    assert isinstance(err.value, FrameBridgeError) and isinstance(err.value, ValueError)
    with pytest.raises(ConfigError, match="0..8"):
        motion_index(9)


def test_bad_inputs_raise_typed_errors():
    with pytest.raises(ShapeError, match=r"\[3, h, w\]"):
        render_clip(torch.rand(40, 40, 3), "static")
    with pytest.raises(ConfigError, match="strength"):
        render_clip(torch.rand(3, 40, 40), "static", strength=-1)
    with pytest.raises(ConfigError, match="split"):
        list_sources("validation")
    with pytest.raises(ConfigError, match="textures"):
        list_sources("train", include=("flickr",))
    with pytest.raises(ConfigError, match="texture"):
        load_source("nope")
    with pytest.raises(ShapeError):
        to_uint8_frames(torch.zeros(3, 8, 8))
    frames = to_uint8_frames(torch.tensor([-1.0, 0.0, 1.0]).view(1, 1, 1, 3).expand(2, 3, 1, 3))
    assert frames.shape == (2, 1, 3, 3) and frames.dtype.name == "uint8"
    assert frames[0, 0, :, 0].tolist() == [0, 128, 255]


def test_fixed_set_renders_the_same_views_with_other_motions():
    """``render_as`` keeps sources, views and labels and changes only the camera path."""
    ds = _texture_dataset("test")
    video, labels, names = ds.fixed_set(9, seed=3)
    still, labels2, names2 = ds.fixed_set(9, seed=3, render_as=[MOTIONS.index("static")] * 9)
    assert torch.equal(labels, labels2) and names == names2
    torch.testing.assert_close(still[:, 0], video[:, 0])                 # same view
    torch.testing.assert_close(still[:, -1], video[:, 0], atol=1e-5, rtol=0)  # static: never moves
    assert float((video[:, -1] - video[:, 0]).abs().mean()) > 0.02        # the set itself moves
    with pytest.raises(ConfigError, match="render_as has 3 motions; the set has n=9"):
        ds.fixed_set(9, seed=3, render_as=[0, 0, 0])


def test_missing_photo_packages_are_announced_loudly(monkeypatch):
    """train / bench warn on stderr when a requested photo source yields nothing (package missing)."""
    import io

    from framebridge_core.training.data import sources

    monkeypatch.setattr(sources, "_scan_kind", lambda kind: () if kind == "skimage" else ("x:1",))
    out = io.StringIO()
    assert sources.warn_unavailable(("skimage", "sklearn", "textures"), stream=out) == ["skimage"]
    text = out.getvalue()
    assert text.startswith("WARNING: image source(s) skimage are unavailable") and ".[train]" in text
    quiet = io.StringIO()
    assert sources.warn_unavailable(("sklearn", "textures"), stream=quiet) == [] and quiet.getvalue() == ""
