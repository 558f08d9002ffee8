"""BIVDiff control inside a real ComfyUI: the T2I-Adapter canny and ControlNet depth workflows run end to
end on tiny stand-in weights and their control changes the frame-wise stage (a depth T2I-Adapter in the depth
workflow too); BIVDiff Depth Frames stops bad depth maps; the original ModelScope layout (.pth) gives the same video
model as the diffusers layout.

Stand-ins on top of ``test_host_bivdiff.py``'s (its ``biv`` fixture writes the SD-1.5, ControlNet and ZeroScope
files and the stub text-encoder node): canny and depth T2I-Adapters in TencentARC's format (what core Load
ControlNet Model reads; its layout is fixed by the adapter's first width: 320, 640, 1280, 1280, so they are full
width, fp16, random), an SD-1.5 with two ResNets per level (a core UNet adds the adapter's first feature after its
third input block; the shared one-block stand-in never reaches it), the ControlNet stand-in under the depth file
name, and a grey depth video (a moving radial gradient).
"""

from __future__ import annotations

import copy
import shutil

import pytest

import test_host_bivdiff as B  # tests/host/test_host_bivdiff.py: the shared BIVDiff stand-ins and helpers

pytestmark = pytest.mark.host

biv = B.biv  # the same module-scoped fixture, run for this module too
T2I = "BIVDiff-ZeroScope-T2IAdapter-Canny"
DEPTH = "BIVDiff-ZeroScope-ControlNet-Depth"
ADAPTER_FILE = "t2iadapter_canny_sd15v2.pth"
DEPTH_ADAPTER_FILE = "t2iadapter_depth_sd15v2.pth"
DEPTH_CONTROLNET_FILE = "control_v11f1p_sd15_depth.pth"
SD15_TWO_BLOCKS = "sd15-two-resnets-per-level.safetensors"
T2I_VIDEO, DEPTH_SOURCE, DEPTH_VIDEO = "car-turn-2.mp4", "mbike-trick.mp4", "mbike-trick-depth.mp4"
ORIGINAL_FILE = "text2video_pytorch_model.pth"


def depth_frame(i: int):
    """Frame i of the stand-in depth video: a grey radial gradient (near = bright) whose centre moves right."""
    import numpy as np

    yy, xx = np.mgrid[0:B.PIXELS, 0:B.PIXELS]
    r = np.sqrt((xx - 8 - i) ** 2 + (yy - 16) ** 2)
    grey = np.clip(255 - 9 * r, 0, 255).astype("uint8")
    return np.repeat(grey[..., None], 3, axis=-1)


@pytest.fixture(scope="module")
def control(host, biv):
    import av
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    import comfy.ops
    import comfy.t2i_adapter.adapter as t2i
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from framebridge_core.families.modelscope.original_layout import diffusers_to_original

    base = host.base
    for name, cin, seed in ((ADAPTER_FILE, 64, 21), (DEPTH_ADAPTER_FILE, 192, 23)):  # 1 (canny) / 3 (depth) x 8x8
        adapter = t2i.Adapter(cin=cin, channels=[320, 640, 1280, 1280], nums_rb=2, ksize=1, sk=True, use_conv=False,
                              xl=False)
        shapes = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
        del adapter
        torch.save({k: v.half() for k, v in B._random_like(shapes, seed, 0.02).items()},
                   str(base / "models" / "controlnet" / name))
    shutil.copy(base / "models" / "controlnet" / B.CONTROLNET_FILE, base / "models" / "controlnet" / DEPTH_CONTROLNET_FILE)

    unet_cfg = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2],
                    channel_mult=[1], transformer_depth=[1, 1], transformer_depth_middle=1,
                    transformer_depth_output=[1, 1, 1], context_dim=B.IMAGE_WIDTH, num_heads=8, num_head_channels=-1,
                    use_linear_in_transformer=False, use_spatial_transformer=True, use_temporal_attention=False,
                    adm_in_channels=None)
    sd15 = UNetModel(**unet_cfg, operations=comfy.ops.disable_weight_init, device="meta")
    ckpt = {"model.diffusion_model." + k: v.half() for k, v in
            B._random_like({k: tuple(v.shape) for k, v in sd15.state_dict().items()}, 22, 0.02).items()}
    ckpt.update({"first_stage_model." + k: v for k, v in load_file(str(base / "models" / "vae" / host.files["vae"])).items()})
    save_file(ckpt, str(base / "models" / "checkpoints" / SD15_TWO_BLOCKS))

    for name in (T2I_VIDEO, DEPTH_SOURCE):
        shutil.copy(base / "input" / B.VIDEO_FILE, base / "input" / name)
    with av.open(str(base / "input" / DEPTH_VIDEO), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width = stream.height = B.PIXELS
        stream.pix_fmt = "yuv420p"
        for i in range(9):
            for packet in stream.encode(av.VideoFrame.from_ndarray(depth_frame(i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)

    original = diffusers_to_original(biv["video_sd"], B.VIDEO_CFG["layers_per_block"])
    torch.save(original, str(base / "models" / "diffusion_models" / ORIGINAL_FILE))
    assert np.asarray(depth_frame(0)).std() > 10
    return dict(original=original)


def t2i_prompt(host) -> dict:
    prompt = B.prepare(host, name=T2I)
    prompt[host.node_id(prompt, "CheckpointLoaderSimple")]["inputs"]["ckpt_name"] = SD15_TWO_BLOCKS
    return prompt


def frame_wise_with_strength(host, prompt: dict, strength: float):
    p = B.stage_one_only(host, copy.deepcopy(prompt))
    p[host.node_id(p, "ControlNetApplyAdvanced")]["inputs"]["strength"] = strength
    return B.run_ok(host, p).output(host.node_id(p, "KSampler"), 0)["samples"]


def test_depth_frames_node_is_registered_with_tooltips(host):
    info = host.node_info("BIV_DepthFrames")
    assert info["category"] == "FrameBridge/BIVDiff" and info["description"]
    inputs = host.node_class("BIV_DepthFrames").INPUT_TYPES()
    for section in ("required", "optional"):
        for name, spec in inputs.get(section, {}).items():
            assert str((spec[1] if len(spec) > 1 else {}).get("tooltip", "")).strip(), name


def test_t2i_adapter_workflow_runs_and_the_adapter_steers_stage_one(host, control):
    torch = pytest.importorskip("torch")
    h = B.PIXELS // 8
    prompt = t2i_prompt(host)
    run = B.run_ok(host, prompt)
    loader = run.output(host.node_id(prompt, "ControlNetLoader"), 0)
    assert type(loader).__name__ == "T2IAdapter" and loader.channels_in == 1  # the canny adapter: one channel
    frame_wise = run.output(host.node_id(prompt, "KSampler"), 0)["samples"]
    smoothed = run.output(host.node_id(prompt, "KSamplerAdvanced"), 0)["samples"]
    assert tuple(frame_wise.shape) == tuple(smoothed.shape) == (B.FRAMES, 4, h, h)
    assert torch.isfinite(frame_wise).all() and torch.isfinite(smoothed).all()
    assert not torch.equal(frame_wise[0], frame_wise[1]), "each frame gets its own noise"
    # the condition map is Canny of the 0..1 frames (the fix of BIVDiff's [-1, 1] input), one per frame
    frames = run.output(host.node_id(prompt, "ImageScale"), 0)
    assert 0 <= float(frames.min()) and float(frames.max()) <= 1 and float(frames.mean()) > 0.2
    edges = run.output(host.node_id(prompt, "Canny"), 0)
    hint = run.output(host.node_id(prompt, "ControlNetApplyAdvanced"), 0)[0][1]["control"].cond_hint_original
    assert torch.equal(hint, edges.movedim(-1, 1)) and tuple(hint.shape) == (B.FRAMES, 3, B.PIXELS, B.PIXELS)
    assert 0.02 < float((edges > 0.5).float().mean()) < 0.6, "the edge maps hold edges"
    uncontrolled = frame_wise_with_strength(host, prompt, 0.0)
    assert torch.equal(frame_wise_with_strength(host, prompt, 1.0), frame_wise), "stage one alone repeats the run"
    assert float((frame_wise - uncontrolled).abs().max()) > 1e-3, "the T2I-Adapter must change stage 1"
    assert len(run.ui) == 2 and all(len(v["images"]) == 1 for v in run.ui.values()), run.ui  # frame-wise + final


def test_controlnet_depth_workflow_runs_and_the_depth_steers_stage_one(host, control):
    torch = pytest.importorskip("torch")
    h = B.PIXELS // 8
    prompt = B.prepare(host, name=DEPTH)
    run = B.run_ok(host, prompt)
    depth = run.output(host.node_id(prompt, "BIV_DepthFrames"), 0)
    assert tuple(depth.shape) == (B.FRAMES, B.PIXELS, B.PIXELS, 3)
    assert torch.equal(depth[..., 0], depth[..., 2])
    for f in depth:  # each map stretched to 0..1, as MiDaS
        assert float(f.min()) == 0.0 and float(f.max()) == 1.0
    # the depth video's frames 0, 2, 4, 6 (the same sampling as the clip): the bright centre moves right
    centres = [int(f[..., 0].mean(dim=0).argmax()) for f in depth]
    assert centres == sorted(centres) and centres[-1] > centres[0], centres
    frame_wise = run.output(host.node_id(prompt, "KSampler"), 0)["samples"]
    smoothed = run.output(host.node_id(prompt, "KSamplerAdvanced"), 0)["samples"]
    assert tuple(frame_wise.shape) == tuple(smoothed.shape) == (B.FRAMES, 4, h, h)
    assert torch.isfinite(frame_wise).all() and torch.isfinite(smoothed).all()
    uncontrolled = frame_wise_with_strength(host, prompt, 0.0)
    assert float((frame_wise - uncontrolled).abs().max()) > 1e-3, "the depth ControlNet must change stage 1"
    # the depth itself reaches the image model: inverted depth gives other frames (stage one alone is
    # deterministic, so any difference is the depth's; the random stand-in ControlNet reacts weakly, ~2e-4)
    assert torch.equal(frame_wise_with_strength(host, prompt, 1.0), frame_wise)
    p = B.stage_one_only(host, copy.deepcopy(prompt))
    p[host.node_id(p, "BIV_DepthFrames")]["inputs"]["invert"] = True
    inverted = B.run_ok(host, p).output(host.node_id(p, "KSampler"), 0)["samples"]
    assert float((inverted - frame_wise).abs().max()) > 2e-5
    assert len(run.ui) == 2 and all(len(v["images"]) == 1 for v in run.ui.values()), run.ui


def test_a_depth_t2i_adapter_takes_the_depth_maps_in_the_depth_workflow(host, control):
    """BIVDiff's other depth route (T2I-Adapter depth): the depth workflow with the adapter file in Load ControlNet
    Model; core reads it as a 3-channel adapter and the grey maps of BIVDiff Depth Frames steer stage one."""
    torch = pytest.importorskip("torch")
    prompt = B.prepare(host, name=DEPTH)
    prompt[host.node_id(prompt, "CheckpointLoaderSimple")]["inputs"]["ckpt_name"] = SD15_TWO_BLOCKS
    prompt[host.node_id(prompt, "ControlNetLoader")]["inputs"]["control_net_name"] = DEPTH_ADAPTER_FILE
    prompt = B.stage_one_only(host, prompt)
    run = B.run_ok(host, prompt)
    loader = run.output(host.node_id(prompt, "ControlNetLoader"), 0)
    assert type(loader).__name__ == "T2IAdapter" and loader.channels_in == 3
    frame_wise = run.output(host.node_id(prompt, "KSampler"), 0)["samples"]
    assert tuple(frame_wise.shape) == (B.FRAMES, 4, B.PIXELS // 8, B.PIXELS // 8) and torch.isfinite(frame_wise).all()
    uncontrolled = frame_wise_with_strength(host, prompt, 0.0)
    assert float((frame_wise - uncontrolled).abs().max()) > 1e-3, "the depth T2I-Adapter must change stage 1"
    p = copy.deepcopy(prompt)
    p[host.node_id(p, "BIV_DepthFrames")]["inputs"]["invert"] = True
    inverted = B.run_ok(host, p).output(host.node_id(p, "KSampler"), 0)["samples"]
    assert float((inverted - frame_wise).abs().max()) > 1e-3, "the depth maps themselves must reach the adapter"


def test_a_depth_video_that_does_not_match_the_source_stops_at_depth_frames(host, control):
    prompt = B.prepare(host, name=DEPTH)
    depth_select = prompt[host.node_id(prompt, "BIV_DepthFrames")]["inputs"]["depth"][0]  # ImageScale of the depth
    select = prompt[depth_select]["inputs"]["image"][0]
    prompt[select]["inputs"]["frames"] = B.FRAMES - 1
    run = host.run(prompt)
    err = run.error
    assert err is not None and not run.success, run.describe()
    assert err["node_type"] == "BIV_DepthFrames" and err["exception_type"].endswith("ShapeError"), run.describe()
    assert f"{B.FRAMES - 1} depth maps for {B.FRAMES} frames" in err["exception_message"]


def test_the_original_modelscope_pth_gives_the_same_video_as_the_diffusers_file(host, biv, control):
    torch = pytest.importorskip("torch")
    out = {}
    for name in (B.UNET_FILE, ORIGINAL_FILE):
        prompt = B.prepare(host, alpha=0.0)  # the video model alone inverts, then smooths
        prompt[host.node_id(prompt, "BIV_LoadVideoModel")]["inputs"]["unet_name"] = name
        run = B.run_ok(host, prompt)
        out[name] = run.output(host.node_id(prompt, "KSamplerAdvanced"), 0)["samples"]
        model = run.output(host.node_id(prompt, "BIV_LoadVideoModel"), 0)
        net = model.model.diffusion_model.net
        assert all(torch.equal(v.float(), biv["video_sd"][k].float()) for k, v in net.state_dict().items())
    assert torch.equal(out[B.UNET_FILE], out[ORIGINAL_FILE])
    assert "input_blocks.0.1.proj_in.weight" in control["original"]  # it really was the original layout
