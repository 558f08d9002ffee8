"""VidRD (BIVDiff's ModelT2V.pth) inside a real ComfyUI: 'Load BIVDiff Video Model' reads the official
Lightning layout (``{"state_dict": {"unet.*", "text_encoder.*"}}``, torch.load weights_only) from
models/diffusion_models, the BIVDiff smoothing and ControlNet-canny workflows' API twins run with it in
place of ZeroScope, its MODEL goes through Mixed Inversion and equals the pure-torch DDIM inversion, and a
v-prediction file is refused by Mixed Inversion.

The stand-in: a VidRD UNet with two 64-channel levels (the smallest size whose hidden values are the
official ones: 64-wide heads, 32 norm groups, so a .pth without metadata loads), 32-wide text context,
seeded random weights, written by the module fixture below. The other stand-ins and the text-encoder stub
are those of test_host_bivdiff.py.
"""

from __future__ import annotations

import copy

import pytest

from test_host_bivdiff import FRAMES, FULL, NAME, PIXELS, STEPS, VIDEO_CFG, _random_like, biv, prepare, run_ok, \
    stub_conditioning  # noqa: F401  (biv: the stand-ins' fixture)
from test_host_bivdiff_control import control  # noqa: F401  (the depth video and ControlNet stand-ins)

pytestmark = pytest.mark.host

VIDRD_FILE = "ModelT2V.pth"  # the official name (BIVDiff's configs/*_vidrd.yaml)
VPRED_FILE = "vidrd_vpred_test.safetensors"
VIDRD_CFG = dict(block_out_channels=(64, 64), layers_per_block=1, cross_attention_dim=VIDEO_CFG["cross_attention_dim"])


@pytest.fixture(scope="module")
def vidrd(host, biv):  # noqa: F811
    import torch
    from safetensors.torch import save_file

    from framebridge_core.families.vidrd.unet3d import VidRDUNet3D, VidRDUNet3DConfig

    cfg = VidRDUNet3DConfig(**VIDRD_CFG)
    shapes = {k: tuple(v.shape) for k, v in VidRDUNet3D(cfg, device="meta").state_dict().items()}
    sd = _random_like(shapes, 21, 0.05)
    full = {f"unet.{k}": v for k, v in sd.items()}
    full["text_encoder.text_model.final_layer_norm.weight"] = torch.ones(8)  # ignored: the CLIP comes from a loader
    folder = host.base / "models" / "diffusion_models"
    torch.save({"state_dict": full, "epoch": 0, "global_step": 1, "pytorch-lightning_version": "1.9.5"},
               str(folder / VIDRD_FILE))
    save_file(sd, str(folder / VPRED_FILE), metadata={"framebridge.prediction_type": "v_prediction"})
    return dict(cfg=cfg, sd=sd)


def with_vidrd(prompt: dict, host) -> dict:
    prompt[host.node_id(prompt, "BIV_LoadVideoModel")]["inputs"]["unet_name"] = VIDRD_FILE
    return prompt


def test_the_loader_lists_and_loads_modelt2v_as_a_vidrd_model(host, vidrd):
    import comfy.model_sampling

    from framebridge_core.families.vidrd.checkpoint import EPSILON

    node = host.node_class("BIV_LoadVideoModel")
    assert VIDRD_FILE in host.folder_paths.get_filename_list("diffusion_models")  # .pth is listed
    assert "ModelT2V.pth" in host.node_info("BIV_LoadVideoModel")["description"]
    patcher = node.execute(unet_name=VIDRD_FILE, weight_dtype="fp32").result[0]
    assert type(patcher.model).__name__ == "VidRDVideoModel"
    ms = patcher.get_model_object("model_sampling")
    assert isinstance(ms, comfy.model_sampling.EPS) and not isinstance(ms, comfy.model_sampling.V_PREDICTION)
    spec = patcher.get_attachment("bivdiff_video_model")
    assert spec.unet.block_out_channels == (64, 64) and spec.prediction_type == EPSILON
    vpred = node.execute(unet_name=VPRED_FILE, weight_dtype="fp32").result[0]
    assert isinstance(vpred.get_model_object("model_sampling"), comfy.model_sampling.V_PREDICTION)


def test_smoothing_workflow_runs_with_vidrd(host, vidrd):
    torch = pytest.importorskip("torch")
    prompt = with_vidrd(prepare(host, alpha=0.5), host)
    run = run_ok(host, prompt)
    h = PIXELS // 8
    loaded = run.output(host.node_id(prompt, "BIV_LoadVideoModel"), 0)
    assert type(loaded.model).__name__ == "VidRDVideoModel"
    for nid in ("VAEEncode", "BIV_MixedInversion", "KSamplerAdvanced"):
        t = run.output(host.node_id(prompt, nid), 0)["samples"]
        assert tuple(t.shape) == (FRAMES, 4, h, h) and torch.isfinite(t).all(), nid
    image = run.output(host.node_id(prompt, "VAEDecode"), 0)
    assert tuple(image.shape) == (FRAMES, PIXELS, PIXELS, 3) and bool(torch.isfinite(image).all())


def test_controlnet_canny_workflow_runs_with_vidrd(host, vidrd):
    torch = pytest.importorskip("torch")
    prompt = with_vidrd(prepare(host, name=FULL), host)
    run = run_ok(host, prompt)
    smoother = host.node_id(prompt, "KSamplerAdvanced")
    smoothed = run.output(smoother, 0)["samples"]
    assert tuple(smoothed.shape) == (FRAMES, 4, PIXELS // 8, PIXELS // 8) and torch.isfinite(smoothed).all()
    (decode,) = [k for k, n in prompt.items()
                 if n["class_type"] == "VAEDecode" and n["inputs"]["samples"][0] == smoother]
    image = run.output(decode, 0)
    assert tuple(image.shape) == (FRAMES, PIXELS, PIXELS, 3) and bool(torch.isfinite(image).all())


def test_mixed_inversion_with_vidrd_equals_the_core_ddim_inversion(host, vidrd):
    """Video branch only (α=0): the node's inversion through the VidRD MODEL equals framebridge_core's DDIM
    inversion with the same network in float64 (within a float32 run's own distance from it)."""
    torch = pytest.importorskip("torch")
    from framebridge_core.bivdiff.inversion import ddim_invert, inversion_ladder, to_comfy_latent
    from framebridge_core.families.vidrd.unet3d import VidRDUNet3D
    from framebridge_core.testing import frames_to_video, video_to_frames
    from framebridge_core.vp import scaled_linear_alphas_cumprod as sd_alphas_cumprod

    prompt = with_vidrd(prepare(host, alpha=0.0, ladder="matched"), host)
    run = run_ok(host, prompt)
    latent = run.output(host.node_id(prompt, "VAEEncode"), 0)["samples"]
    node_inverted = run.output(host.node_id(prompt, "BIV_MixedInversion"), 0)["samples"]
    inv = prompt[host.node_id(prompt, "BIV_MixedInversion")]["inputs"]
    ref = prompt[inv["video_conditioning"][0]]["inputs"]
    c_inv = stub_conditioning(ref["width"], ref["tokens"], ref["seed"])

    lad = inversion_ladder(STEPS, "matched")
    start = sd_alphas_cumprod()[lad.sampler_start]
    out = {}
    for dtype in (torch.float64, torch.float32):
        unet = VidRDUNet3D(vidrd["cfg"]).eval().to(dtype)
        unet.load_state_dict(vidrd["sd"])
        with torch.no_grad():
            z = ddim_invert(lambda x, t: unet(x, t, c_inv.to(dtype)), frames_to_video(latent.to(dtype) * 0.18215), lad)
        out[dtype] = video_to_frames(to_comfy_latent(z, start)).double()
    core = out[torch.float64]
    scale = float(core.abs().max())
    err = float((node_inverted.double() - core).abs().max()) / scale
    err32 = float((out[torch.float32] - core).abs().max()) / scale
    print(f"VidRD inversion max rel error {err:.2e} (core float32: {err32:.2e})")
    assert float((node_inverted - latent).abs().max()) > 1e-2  # it did move the latent
    assert err < max(3 * err32, 1e-5), (err, err32)


def test_mixed_inversion_refuses_a_v_prediction_vidrd(host, vidrd):
    prompt = prepare(host, alpha=0.0)
    prompt[host.node_id(prompt, "BIV_LoadVideoModel")]["inputs"]["unet_name"] = VPRED_FILE
    run = host.run(copy.deepcopy(prompt))
    assert run.valid and not run.success
    err = run.error
    assert err["node_type"] == "BIV_MixedInversion" and err["exception_type"].endswith("ConfigError"), err
    assert "not an ε-prediction model" in err["exception_message"]
    assert "VidRD" in err["exception_message"]


def test_modelt2v_in_load_framebridge_names_its_loader(host, vidrd):
    import shutil

    folder = host.base / "models" / "framebridge"
    shutil.copy(host.base / "models" / "diffusion_models" / VIDRD_FILE, folder / VIDRD_FILE)
    try:
        # the pack's own CheckpointError (ComfyUI imports the pack as a package), so matched by name
        with pytest.raises(Exception, match="'ModelT2V.pth' is a VidRD video UNet.*'Load BIVDiff Video Model'") as caught:
            host.node_class("FB_LoadFrameBridge").execute(VIDRD_FILE, "default")
        assert type(caught.value).__name__ == "CheckpointError"
    finally:
        (folder / VIDRD_FILE).unlink()


def test_the_vidrd_depth_workflow_runs_as_shipped(host, vidrd, control):  # noqa: F811
    """workflows/BIVDiff-VidRD-ControlNet-Depth.json (BIVDiff's controlnet-and-vidrd config): its twin names
    ModelT2V.pth, and the three stages run with the VidRD stand-in and the depth video."""
    torch = pytest.importorskip("torch")
    prompt = prepare(host, name="BIVDiff-VidRD-ControlNet-Depth")
    assert prompt[host.node_id(prompt, "BIV_LoadVideoModel")]["inputs"]["unet_name"] == VIDRD_FILE
    run = run_ok(host, prompt)
    assert type(run.output(host.node_id(prompt, "BIV_LoadVideoModel"), 0).model).__name__ == "VidRDVideoModel"
    depth = run.output(host.node_id(prompt, "BIV_DepthFrames"), 0)
    assert tuple(depth.shape) == (FRAMES, PIXELS, PIXELS, 3) and float(depth.max()) == 1.0
    smoothed = run.output(host.node_id(prompt, "KSamplerAdvanced"), 0)["samples"]
    frame_wise = run.output(host.node_id(prompt, "KSampler"), 0)["samples"]
    assert tuple(smoothed.shape) == (FRAMES, 4, PIXELS // 8, PIXELS // 8) and torch.isfinite(smoothed).all()
    assert not torch.allclose(smoothed, frame_wise, atol=1e-3)  # the video model changed the frame-wise result
