"""Extend Video and live previews inside a real ComfyUI.

* The 64-frame Tiny long-video workflow runs as shipped (fewer steps), its segments are exactly what
  Bridge Prior from Image + Neural Prior + Bridge Sampler make from the clip's last frame with seed + n,
  and bad inputs give typed errors naming the fix.
* Every family's sampler sends a live preview while it samples: the bundled pixel-space tiny models,
  FrameBridge-Latte on the SD latent, FrameBridge-VideoCrafter, FrameBridge-CogVideoX (16-channel 3-D
  latent) and the ModelScope video model of BIVDiff, on the stand-in weights of the other host tests.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.host

HOST_DIR = Path(__file__).resolve().parent
REPO = HOST_DIR.parents[1]
LONG = "FrameBridge-Tiny-Long-Video"
IMAGE = "framebridge-default.png"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _sibling(name: str):
    """Another host test module of this folder, loaded by path (for its stand-in writers)."""
    key = f"framebridge_host_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, HOST_DIR / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[key] = module
    return sys.modules[key]


def _pack_module(suffix: str):
    mods = [m for name, m in sys.modules.items() if name.endswith(suffix)]
    assert mods, f"ComfyUI did not import the pack's {suffix}"
    return mods[0]


def _long_prompt(host, steps=3, frames=40, seed=0):
    shutil.copy(REPO / "assets" / "default-image.png", host.base / "input" / IMAGE)
    prompt = host.lower_steps(host.load_api(LONG), steps)
    prompt[host.node_id(prompt, "LoadImage")]["inputs"]["image"] = IMAGE
    prompt = host.set_seed(prompt, seed)
    prompt[host.node_id(prompt, "FB_ExtendVideo")]["inputs"]["frames"] = frames
    return prompt


def _run_ok(host, prompt):
    run = host.run(prompt)
    assert run.valid and run.success, run.describe()
    return run


# ---- Extend Video ------------------------------------------------------------------------------------


def test_extend_video_is_registered_with_the_widget_order_of_the_table(host, workflow_table):
    assert "FB_ExtendVideo" in host.nodes.NODE_CLASS_MAPPINGS
    info = host.node_info("FB_ExtendVideo")
    names = []
    for section in ("required", "optional"):
        for name in info["input_order"].get(section, []):
            spec = info["input"][section][name]
            kind = "COMBO" if isinstance(spec[0], list) else spec[0]
            opts = spec[1] if len(spec) > 1 else {}
            if kind in WIDGET_TYPES:
                names.append(name)
                if opts.get("control_after_generate"):
                    names.append(None)
    assert tuple(names) == workflow_table.OUR_WIDGETS["FB_ExtendVideo"]
    assert info["output"] == ["IMAGE"] and info["category"] == "FrameBridge"


def test_long_video_workflow_makes_64_frames(host):
    torch = pytest.importorskip("torch")
    from PIL import Image

    prompt = _long_prompt(host, steps=3, frames=64)
    run = _run_ok(host, prompt)
    video = run.output(host.node_id(prompt, "FB_ExtendVideo"), 0)
    assert tuple(video.shape) == (64, 64, 64, 3) and torch.isfinite(video).all()
    assert float(video.min()) >= 0 and float(video.max()) <= 1
    first = run.output(host.node_id(prompt, "FB_BridgeSampler"), 0)["samples"]
    assert torch.allclose(video[:16], ((first + 1) / 2).clamp(0, 1).movedim(1, -1), atol=1e-6), \
        "the first 16 frames are the sampled clip"
    assert float((video[-1] - video[0]).abs().mean()) > 0.01, "the long clip should move"
    saved = run.ui[host.node_id(prompt, "SaveAnimatedWEBP")]["images"]
    path = host.base / "output" / saved[0]["subfolder"] / saved[0]["filename"]
    with Image.open(path) as webp:
        assert webp.size == (256, 256) and webp.n_frames == 64
    texts = [d["text"] for e, d in run.messages if e == "progress_text"]
    assert any("segment 4 of 4" in t for t in texts), texts


def test_segments_are_the_manual_chain_from_the_last_frame_and_repeat_with_the_seed(host):
    torch = pytest.importorskip("torch")
    prompt = _long_prompt(host, steps=3, frames=31, seed=7)
    run = _run_ok(host, prompt)
    video = run.output(host.node_id(prompt, "FB_ExtendVideo"), 0)
    assert video.shape[0] == 31

    # segment 1 by hand: the usual nodes on the clip's last frame, seed + 1
    nodes = host.nodes.NODE_CLASS_MAPPINGS
    model, vae = run.output("2", 0), run.output("4", 0)
    pos, neg, net = run.output("3", 0), run.output("3", 1), run.output("10", 0)
    with torch.inference_mode():  # as ComfyUI's executor runs nodes (the outputs above are inference tensors)
        p, n, prior = nodes["FB_BridgePriorFromImage"].execute(model, vae, video[15:16], pos, neg, 16, "none").args
        p, n, prior = nodes["FB_NeuralPrior"].execute(net, p, n, prior).args
        latent = nodes["FB_BridgeSampler"].execute(model, p, n, prior, 8, 3, "trailing", 2.0, "sde", 0.5).args[0]
        segment = vae.decode(latent["samples"])
    assert torch.allclose(video[15:31], segment.clamp(0, 1), atol=1e-5)

    again = _run_ok(host, prompt)
    assert torch.equal(again.output(host.node_id(prompt, "FB_ExtendVideo"), 0), video)
    other = _long_prompt(host, steps=3, frames=31, seed=8)
    changed = _run_ok(host, other).output(host.node_id(other, "FB_ExtendVideo"), 0)
    assert not torch.equal(changed[16:], video[16:])


def test_images_input_with_overlap_cross_fades(host):
    torch = pytest.importorskip("torch")
    prompt = _long_prompt(host, steps=2, frames=30)
    prompt["90"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["4", 0]}}
    ext = prompt[host.node_id(prompt, "FB_ExtendVideo")]["inputs"]
    del ext["latent"]
    ext.update(images=["90", 0], overlap=3)
    run = _run_ok(host, prompt)
    video = run.output(host.node_id(prompt, "FB_ExtendVideo"), 0)
    clip = run.output("90", 0)
    assert video.shape[0] == 30 and torch.equal(video[:13], clip[:13])
    assert not torch.equal(video[14:16], clip[14:16]), "the overlap is a blend of the clip and the new segment"


@pytest.mark.parametrize("change,needle", [
    (dict(overlap=16), "overlap=16"),
    (dict(frames=16), "frames=16 is not longer than the clip"),
    (dict(prior_net=None), "trained with the neural prior"),
    (dict(images=["1", 0]), "connect exactly one clip"),
])
def test_bad_input_is_a_typed_error_naming_the_fix(host, change, needle):
    prompt = _long_prompt(host, steps=2)
    ext = prompt[host.node_id(prompt, "FB_ExtendVideo")]["inputs"]
    for key, value in change.items():
        if value is None:
            del ext[key]
        else:
            ext[key] = value
    run = host.run(prompt)
    assert not run.success
    err = run.error
    assert err is not None and err["node_type"] == "FB_ExtendVideo", run.describe()
    assert err["exception_type"].endswith(("ConfigError", "ShapeError")), err["exception_type"]
    assert needle in err["exception_message"], err["exception_message"]


def test_an_upscaled_clip_is_refused_with_the_size(host):
    prompt = _long_prompt(host, steps=2)
    prompt["90"] = {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["4", 0]}}
    prompt["91"] = {"class_type": "ImageScaleBy", "inputs": {"image": ["90", 0], "upscale_method": "bilinear",
                                                             "scale_by": 2.0}}
    ext = prompt[host.node_id(prompt, "FB_ExtendVideo")]["inputs"]
    del ext["latent"]
    ext["images"] = ["91", 0]
    run = host.run(prompt)
    assert not run.success and "128x128" in run.error["exception_message"] and "64x64" in run.error["exception_message"]


# ---- previews ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def captured_previews():
    """Latent2RGB previews on, and every (value, total, preview) the progress bars send."""
    import comfy.utils
    from comfy.cli_args import LatentPreviewMethod, args

    seen = []
    old_hook, old_method = comfy.utils.PROGRESS_BAR_HOOK, args.preview_method
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total, preview)))
    args.preview_method = LatentPreviewMethod.Latent2RGB
    try:
        yield seen
    finally:
        args.preview_method = old_method
        comfy.utils.set_progress_bar_global_hook(old_hook)


def check_previews(seen, frame_hw, tiles):
    """Previews were sent while sampling, each a plausible picture: RGB, the latent's size (``tiles`` frames
    side by side: the pack's samplers show a strip of up to 8 frames), not one flat colour."""
    import numpy as np

    previews = [p for _, _, p in seen if p is not None]
    assert previews, f"no preview was sent ({len(seen)} progress updates)"
    assert len(previews) >= 2, "a preview per step"
    fmt, image, max_size = previews[-1]
    assert fmt == "JPEG" and image.mode == "RGB"
    h, w = frame_hw
    assert image.size == (w * tiles, h), (image.size, frame_hw, tiles)
    pixels = np.asarray(image).astype(float)
    assert pixels.std() > 1.0, "the preview is one flat colour"
    return previews


def test_tiny_pixel_space_preview_shows_a_strip_of_the_clip(host):
    prompt = _long_prompt(host, steps=2, frames=20)
    with captured_previews() as seen:
        run = _run_ok(host, prompt)
    previews = check_previews(seen, (64, 64), 8)
    import numpy as np
    import torch

    # pixel space: the identity factors show the frames themselves; the last preview is the last
    # segment's x̂0, whose frame 0 (tile 0) is the clip frame it continues from (frame 15)
    video = run.output(host.node_id(prompt, "FB_ExtendVideo"), 0)
    tile = torch.from_numpy(np.asarray(previews[-1][1])[:, :64].astype("float32") / 255)
    assert float((tile - video[15]).abs().mean()) < 0.1  # JPEG: generous
    assert float((tile - video[15].flip(0)).abs().mean()) > float((tile - video[15]).abs().mean())


def test_latte_sd_latent_preview(host):
    prompt = host.lower_steps(host.load_api("FrameBridge-Latte-I2V"), 2)
    with captured_previews() as seen:
        _run_ok(host, prompt)
    s = host.shape["latent_size"]
    check_previews(seen, (s, s), 8)


def test_videocrafter_preview(host):
    vc = _sibling("test_videocrafter_host")
    path = host.base / "models" / "framebridge" / vc.CKPT
    if not path.is_file():
        vc.write_stand_in(path)
    prompt = host.lower_steps(host.load_api(vc.WORKFLOW), 2)
    with captured_previews() as seen:
        _run_ok(host, prompt)
    check_previews(seen, (32, 32), 8)


def test_cogvideox_preview_of_the_3d_latent(host):
    cog = _sibling("test_cogvideox_host")
    models = host.base / "models"
    if not (models / "framebridge" / cog.FOLDER).is_dir():
        cog.write_transformer_folder(models / "framebridge" / cog.FOLDER)
    (models / "vae").mkdir(parents=True, exist_ok=True)
    if not (models / "vae" / cog.VAE_FILE).is_file():
        cog.write_vae(models / "vae" / cog.VAE_FILE)
    (models / "text_encoders").mkdir(parents=True, exist_ok=True)
    if not (models / "text_encoders" / cog.T5_FILE).is_file():
        cog.write_t5_base(models / "text_encoders" / cog.T5_FILE)
    fmt = _pack_module(".nodes.families.cogvideox").CogVideoXLatent()
    assert fmt.latent_channels == 16 and len(fmt.latent_rgb_factors) == 16
    prompt = cog._prompt(host, steps=2, small=True)
    with captured_previews() as seen:
        _run_ok(host, prompt)
    check_previews(seen, (8, 8), 5)  # 64 px / 8; the 5 latent frames of 17 frames side by side


def test_modelscope_preview_through_core_ksampler(host):
    """BIVDiff's ModelScope video model is sampled by core nodes: its SD latent format gives core's preview."""
    torch = pytest.importorskip("torch")
    import comfy.latent_formats
    import latent_preview

    ms = _pack_module(".nodes.families.modelscope")
    configs = [v for v in vars(ms).values() if isinstance(v, type) and v.__module__ == ms.__name__
               and getattr(v, "latent_format", None) is not None]
    assert configs and all(c.latent_format is comfy.latent_formats.SD15 for c in configs)
    with captured_previews() as seen:
        callback = latent_preview.prepare_callback(_FakeModel(comfy.latent_formats.SD15()), 2)
        x0 = torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        callback(0, x0, x0, 2)
        callback(1, x0, x0, 2)
    check_previews(seen, (8, 8), 1)  # core's previewer: the first frame


class _FakeModel:
    """What latent_preview.prepare_callback reads of a ModelPatcher."""

    def __init__(self, latent_format):
        import torch

        self.load_device = torch.device("cpu")
        self.model = type("M", (), {"latent_format": latent_format})()
