"""The README's demo: `python -m framebridge_core generate` with the bundled tiny models.

Checks the written animation (frame count, size), the contact sheet, that frame 0 stays close to
the input image, and that the clip follows the requested camera motion on an image the model never
saw (the default image is a test-split photograph): the last frame is closer to the exact
camera-motion ground truth of that image than to the unmoved image and than to the ground truth of
the opposite motion (pan-left vs pan-right, ...).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from framebridge_core.evaluation.motion import OPPOSITE
from framebridge_core.training.data.camera_motion import render_clip
from framebridge_core.errors import ConfigError
from framebridge_core.tiny.animator import DEFAULT_IMAGE, PRETRAINED_DIR, TinyAnimator
from framebridge_core.video_io import load_image, pil_to_uint8, read_animation

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("PIL")


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) / 2).pow(2).mean()))


@pytest.fixture(scope="module")
def animator():
    return TinyAnimator()


@pytest.fixture(scope="module")
def source():
    """The default image as a camera-motion source ([3, h, w] in 0..1)."""
    from PIL import Image

    return pil_to_uint8(Image.open(DEFAULT_IMAGE)).permute(2, 0, 1).float() / 255


def test_bundled_models_ship_with_the_pack_and_fit_the_budget():
    files = sorted(p.name for p in PRETRAINED_DIR.glob("*.safetensors"))
    assert files == ["framebridge-tiny-motion-np.safetensors", "framebridge-tiny-motion.safetensors",
                     "neural-prior-tiny-motion.safetensors"]
    for p in PRETRAINED_DIR.glob("*.safetensors"):
        assert p.stat().st_size <= 10_000_000, p.name


def test_generate_command_writes_the_animation_and_contact_sheet(tmp_path):
    out = tmp_path / "out.webp"
    res = subprocess.run([sys.executable, "-m", "framebridge_core", "generate", "--motion", "zoom-in",
                          "--out", str(out), "--steps", "10"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    frames = read_animation(out)
    assert tuple(frames.shape) == (16, 256, 256, 3)
    sheet = out.with_name("out-sheet.png")
    assert sheet.is_file() and sheet.stat().st_size > 1000
    assert "16 frames" in res.stdout and "generation" in res.stdout


def test_generate_command_explains_a_bad_motion(tmp_path):
    res = subprocess.run([sys.executable, "-m", "framebridge_core", "generate", "--motion", "dolly",
                          "--out", str(tmp_path / "x.webp")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert "unknown motion 'dolly'" in res.stderr and "zoom-in" in res.stderr


def test_first_frame_stays_the_input_image(animator):
    frame = load_image(DEFAULT_IMAGE, animator.size)
    video = animator.animate(frame, "zoom-in", steps=25, seed=0)
    assert tuple(video.shape) == (16, 3, 64, 64)
    # the sampler keeps the input as frame 0 of every x̂0, so the clip starts with the picture itself
    # (the network alone kept it at ~29 dB); without the option frame 0 is the network's
    assert _psnr(video[0], frame) > 60
    free = animator.animate(frame, "zoom-in", steps=25, seed=0, keep_first_frame=False)
    assert 20 < _psnr(free[0], frame) < 50


def test_same_seed_same_clip_and_bad_inputs_are_explained(animator):
    frame = load_image(DEFAULT_IMAGE, animator.size)
    a = animator.animate(frame, "pan-up", steps=5, seed=1)
    assert torch.equal(a, animator.animate(frame, "pan-up", steps=5, seed=1))
    with pytest.raises(ConfigError, match="knows: static, pan-left"):
        animator.animate(frame, "orbit")
    with pytest.raises(ConfigError, match=r"\[3, 64, 64\]"):
        animator.animate(frame[:, :32], "static")


def _follows(model, source, motion: str) -> None:
    truth = render_clip(source, motion, size=64, frames=16)  # exact camera motion of this image
    other = render_clip(source, OPPOSITE[motion], size=64, frames=16)
    torch.testing.assert_close(other[0], truth[0])          # the same view, moving the other way
    video = model.animate(truth[0], motion, steps=25, seed=0)
    moved, away, still = (_psnr(video[-1], t) for t in (truth[-1], other[-1], truth[0]))
    assert moved > away + 0.3 and moved > still + 0.3, (
        f"{motion}: last frame {moved:.2f} dB to the truth, {away:.2f} dB to the opposite motion, "
        f"{still:.2f} dB to the still image")


@pytest.mark.parametrize("motion", ["pan-left", "pan-up", "zoom-out", "rotate-cw"])
def test_default_pipeline_follows_the_requested_motion_on_an_unseen_image(motion, source):
    """The default of `generate` and of the Tiny workflow: the bridge from the neural prior."""
    _follows(_np_animator(), source, motion)


@pytest.mark.parametrize("motion", [
    "pan-left", "pan-up", "zoom-out",
    # rotations are the plain bridge's weakest classes (docs/notes/tiny-model.md); the bridge from
    # the neural prior passes this case
    pytest.param("rotate-cw", marks=pytest.mark.xfail(strict=True, reason="the plain bundled bridge (from the "
                 "still image) does not yet rotate the default image")),
])
def test_still_prior_bridge_follows_the_requested_motion_on_an_unseen_image(motion, source, animator):
    _follows(animator, source, motion)


_NP = {}


def _np_animator():
    if "m" not in _NP:
        _NP["m"] = TinyAnimator(neural_prior=True)
    return _NP["m"]
