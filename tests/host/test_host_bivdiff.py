"""BIVDiff inside a real ComfyUI: the shipped workflows run end to end on tiny stand-in weights,
the Mixed Inversion node and the core smoothing sampler equal the pure-torch pipeline, the mix is
linear in the ratio, the ControlNet, the outpainting mask, the inpainting mask video and the
InstructPix2Pix source frames and image guidance reach the image model, and bad input stops at the
right node with a typed error.

Stand-ins (written under the names the workflows load): a tiny SD-1.5 checkpoint (model_channels
320 so ComfyUI detects it as SD-1.5, one level; the random TAESD as its VAE), a 9-channel
inpainting variant and an 8-channel InstructPix2Pix variant (ComfyUI tells them apart by the
input channels of the weights), a ControlNet of the same size, a tiny ModelScope UNet3D in
diffusion_models, a 9-frame clip as GIF and MP4, and a 9-frame mask video (a moving square).
There is no text encoder stand-in (ComfyUI's CLIP sizes are fixed: hundreds of MB of random
weights); the text-encoding nodes are replaced by a test-only node that returns seeded random
CONDITIONING of each model's width.
"""

from __future__ import annotations

import copy

import pytest

pytestmark = pytest.mark.host

NAME = "BIVDiff-ZeroScope-Smooth-Frames"
FULL = "BIVDiff-ZeroScope-ControlNet-Canny"
OUTPAINT = "BIVDiff-ZeroScope-Outpainting"
INPAINT = "BIVDiff-ZeroScope-Inpainting"
IP2P = "BIVDiff-ZeroScope-InstructPix2Pix-Edit"
INPAINT_FILE = "sd-v1-5-inpainting.ckpt"
IP2P_FILE = "instruct-pix2pix-00-22000.safetensors"
CONTROLNET_FILE = "control_v11p_sd15_canny.pth"
VIDEO_FILE = "bear.mp4"
OUTPAINT_VIDEO = "hike.mp4"
MASK_VIDEO = "hike-mask.mp4"
EDIT_VIDEO = "train.mp4"
SD15_FILE = "v1-5-pruned-emaonly.safetensors"
UNET_FILE = "zeroscope_v2_576w_unet.safetensors"
GIF = "bear_by_controlnet_parallel.gif"
FRAMES, PIXELS, STEPS = 4, 32, 4
VIDEO_CFG = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=16)
IMAGE_WIDTH = 768  # SD-1.5's context width
STUB = "BIVTest_RandomConditioning"
BIV_NODES = ("BIV_LoadVideoModel", "BIV_MixedInversion", "BIV_SelectFrames", "BIV_OutpaintingMask")


def _random_like(shapes: dict, seed: int, scale: float):
    """Seeded stand-in weights: 1-D 'weight' tensors (norm scales) near 1, everything else small."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in sorted(shapes.items()):
        r = torch.randn(shape, generator=g)
        out[k] = 1 + 0.05 * r if (len(shape) == 1 and k.endswith("weight")) else scale * r
    return out


def mask_frame(i: int):
    """Frame i of the stand-in mask video: a white 16x16 square (repaint) moving right, on black."""
    import numpy as np

    m = np.zeros((PIXELS, PIXELS, 3), dtype="uint8")
    m[8:24, i:i + 16] = 255
    return m


def stub_conditioning(width: int, tokens: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, tokens, width, generator=g)


class RandomConditioning:
    """Test-only stand-in for CLIPTextEncode: seeded random CONDITIONING of a given width."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"width": ("INT", {"default": 768, "min": 1, "max": 4096}),
                             "tokens": ("INT", {"default": 77, "min": 1, "max": 512}),
                             "seed": ("INT", {"default": 0, "min": 0, "max": 2**31})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, width, tokens, seed):
        return ([[stub_conditioning(width, tokens, seed), {}]],)


@pytest.fixture(scope="module")
def biv(host):
    """Write the stand-ins into the host's base directory and register the stub node."""
    import shutil

    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import load_file, save_file

    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from framebridge_core.families.modelscope.unet3d import ModelScopeUNet3D, ModelScopeUNet3DConfig

    base = host.base
    unet_cfg = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1],
                    channel_mult=[1], transformer_depth=[1], transformer_depth_middle=1, transformer_depth_output=[1, 1],
                    context_dim=IMAGE_WIDTH, num_heads=8, num_head_channels=-1, use_linear_in_transformer=False,
                    use_spatial_transformer=True, use_temporal_attention=False, adm_in_channels=None)
    sd15 = UNetModel(**unet_cfg, operations=comfy.ops.disable_weight_init, device="meta")
    shapes = {k: tuple(v.shape) for k, v in sd15.state_dict().items()}
    ckpt = {"model.diffusion_model." + k: v.half() for k, v in _random_like(shapes, 11, 0.02).items()}
    vae = load_file(str(base / "models" / "vae" / host.files["vae"]))  # the random TAESD of the Latte tests
    ckpt.update({"first_stage_model." + k: v for k, v in vae.items()})
    (base / "models" / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_file(ckpt, str(base / "models" / "checkpoints" / SD15_FILE))

    # the 9-channel inpainting UNet (noisy latent + mask + masked-image latent), same tiny size
    inpaint = UNetModel(**{**unet_cfg, "in_channels": 9}, operations=comfy.ops.disable_weight_init, device="meta")
    inpaint_sd = _random_like({k: tuple(v.shape) for k, v in inpaint.state_dict().items()}, 14, 0.02)
    inpaint_ckpt = {"model.diffusion_model." + k: v.half() for k, v in inpaint_sd.items()}
    inpaint_ckpt.update({"first_stage_model." + k: v for k, v in vae.items()})
    torch.save(inpaint_ckpt, str(base / "models" / "checkpoints" / INPAINT_FILE))

    # the 8-channel InstructPix2Pix UNet (noisy latent + source-frame latent), same tiny size
    ip2p = UNetModel(**{**unet_cfg, "in_channels": 8}, operations=comfy.ops.disable_weight_init, device="meta")
    ip2p_sd = _random_like({k: tuple(v.shape) for k, v in ip2p.state_dict().items()}, 15, 0.02)
    ip2p_ckpt = {"model.diffusion_model." + k: v.half() for k, v in ip2p_sd.items()}
    ip2p_ckpt.update({"first_stage_model." + k: v for k, v in vae.items()})
    save_file(ip2p_ckpt, str(base / "models" / "checkpoints" / IP2P_FILE))

    video_cfg = ModelScopeUNet3DConfig(**VIDEO_CFG)
    video_shapes = {k: tuple(v.shape) for k, v in ModelScopeUNet3D(video_cfg, device="meta").state_dict().items()}
    video_sd = _random_like(video_shapes, 12, 0.05)
    (base / "models" / "diffusion_models").mkdir(parents=True, exist_ok=True)
    save_file(video_sd, str(base / "models" / "diffusion_models" / UNET_FILE))

    # a flickering clip: a moving gradient plus per-frame noise
    rs = np.random.RandomState(3)
    yy, xx = np.mgrid[0:PIXELS, 0:PIXELS]
    frames = [Image.fromarray(np.clip(127 + 100 * np.sin((xx + 2 * i) / 5.0)[..., None] * np.ones(3)
                                      + rs.randn(PIXELS, PIXELS, 3) * 30, 0, 255).astype("uint8")) for i in range(9)]
    frames[0].save(base / "input" / GIF, save_all=True, append_images=frames[1:], duration=100, loop=0)

    # a ControlNet matching the tiny SD-1.5 (ComfyUI reads its config from the keys, like the UNet's)
    from comfy.cldm.cldm import ControlNet

    cn_cfg = {k: v for k, v in unet_cfg.items() if k not in ("out_channels", "transformer_depth_output",
                                                               "use_temporal_attention")}
    cn = ControlNet(hint_channels=3, **cn_cfg, operations=comfy.ops.disable_weight_init, device="meta")
    cn_sd = _random_like({k: tuple(v.shape) for k, v in cn.state_dict().items()}, 13, 0.02)
    (base / "models" / "controlnet").mkdir(parents=True, exist_ok=True)
    torch.save({"control_model." + k: v.half() for k, v in cn_sd.items()}, str(base / "models" / "controlnet" / CONTROLNET_FILE))

    import av

    def write_mp4(name, images):
        with av.open(str(base / "input" / name), mode="w") as container:
            stream = container.add_stream("mpeg4", rate=8)
            stream.width = stream.height = PIXELS
            stream.pix_fmt = "yuv420p"
            for img in images:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(img), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    write_mp4(VIDEO_FILE, frames)
    shutil.copy(base / "input" / VIDEO_FILE, base / "input" / OUTPAINT_VIDEO)
    shutil.copy(base / "input" / VIDEO_FILE, base / "input" / EDIT_VIDEO)
    write_mp4(MASK_VIDEO, [Image.fromarray(mask_frame(i)) for i in range(9)])

    host.nodes.NODE_CLASS_MAPPINGS[STUB] = RandomConditioning
    try:
        yield dict(video_cfg=video_cfg, video_sd=video_sd)
    finally:
        host.nodes.NODE_CLASS_MAPPINGS.pop(STUB, None)


def prepare(host, alpha: float | None = None, ladder: str | None = None, name: str = NAME) -> dict:
    """The shipped API twin at test size, with the text encoders swapped for the stub."""
    prompt = host.lower_steps(host.load_api(name), STEPS)
    for node in prompt.values():
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=PIXELS, height=PIXELS, batch_size=FRAMES)
    for node in prompt.values():  # the source clip, and the mask video where there is one
        if node["class_type"] == "BIV_SelectFrames":
            node["inputs"].update(stride=2, frames=FRAMES)
        elif node["class_type"] == "ImageScale":
            node["inputs"].update(width=PIXELS, height=PIXELS)
    for nid, node in list(prompt.items()):
        if node["class_type"] == "CLIPTextEncode":
            src = prompt[node["inputs"]["clip"][0]]["class_type"]
            width, tokens = (IMAGE_WIDTH, 77) if src == "CheckpointLoaderSimple" else (VIDEO_CFG["cross_attention_dim"], 7)
            prompt[nid] = {"class_type": STUB, "inputs": {"width": width, "tokens": tokens, "seed": int(nid)}}
    del prompt[host.node_id(prompt, "CLIPLoader")]
    inv = prompt[host.node_id(prompt, "BIV_MixedInversion")]["inputs"]
    if alpha is not None:
        inv["mixing_ratio"] = alpha
    if ladder is not None:
        inv["ladder"] = ladder
    return prompt


def upstream(prompt: dict, node: str) -> set:
    """``node`` and every node it depends on."""
    seen, todo = set(), [node]
    while todo:
        nid = todo.pop()
        if nid not in seen:
            seen.add(nid)
            todo += [v[0] for v in prompt[nid]["inputs"].values() if isinstance(v, list)]
    return seen


def stage_one_sampler(prompt: dict) -> str:
    """The image model's sampler: KSampler, or SamplerCustomAdvanced (InstructPix2Pix's two guidance scales)."""
    (ks,) = [k for k, n in prompt.items() if n["class_type"] in ("KSampler", "SamplerCustomAdvanced")]
    return ks


def stage_one_only(host, prompt: dict) -> dict:
    """The frame-wise stage: what the WEBP fed by the image model's sampler (via VAE Decode) needs."""
    ks = stage_one_sampler(prompt)
    save = next(k for k, n in prompt.items() if n["class_type"] == "SaveAnimatedWEBP"
                and prompt[n["inputs"]["images"][0]]["inputs"]["samples"][0] == ks)
    return {k: prompt[k] for k in upstream(prompt, save)}


def run_ok(host, prompt):
    run = host.run(copy.deepcopy(prompt))
    assert run.valid and run.success, run.describe()
    return run


def test_bivdiff_nodes_are_registered_with_tooltips(host):
    for node in BIV_NODES:
        info = host.node_info(node)
        assert info["category"] == "FrameBridge/BIVDiff" and info["description"], node
        inputs = host.node_class(node).INPUT_TYPES()
        for section in ("required", "optional"):
            for name, spec in inputs.get(section, {}).items():
                assert str((spec[1] if len(spec) > 1 else {}).get("tooltip", "")).strip(), (node, name)


def test_smoothing_workflow_runs_end_to_end(host, biv):
    torch = pytest.importorskip("torch")
    from PIL import Image

    prompt = prepare(host)
    run = run_ok(host, prompt)
    h = PIXELS // 8
    latent = run.output(host.node_id(prompt, "VAEEncode"), 0)["samples"]
    inverted = run.output(host.node_id(prompt, "BIV_MixedInversion"), 0)["samples"]
    smoothed = run.output(host.node_id(prompt, "KSamplerAdvanced"), 0)["samples"]
    for t in (latent, inverted, smoothed):
        assert tuple(t.shape) == (FRAMES, 4, h, h) and torch.isfinite(t).all()
    assert float(inverted.std()) > 2 * float(latent.std())  # noise at t=751 is ~1/(sqrt(ᾱ)·0.18215) times larger
    image = run.output(host.node_id(prompt, "VAEDecode"), 0)
    assert tuple(image.shape) == (FRAMES, PIXELS, PIXELS, 3) and 0 <= float(image.min()) <= float(image.max()) <= 1
    saved = run.ui[host.node_id(prompt, "SaveAnimatedWEBP")]["images"]
    with Image.open(host.base / "output" / saved[0]["subfolder"] / saved[0]["filename"]) as webp:
        assert webp.n_frames == FRAMES and webp.size == (PIXELS, PIXELS)


@pytest.mark.parametrize("ladder", ["matched", "official"])
def test_comfyui_path_equals_the_core_pipeline(host, biv, ladder):
    """Video branch only (α=0): Mixed Inversion node + core KSamplerAdvanced (ddim, ddim_uniform) equal
    framebridge_core's DDIM inversion + DDIM sampling with the same UNet, conditioning and latent."""
    torch = pytest.importorskip("torch")
    from framebridge_core.bivdiff.inversion import (
        ddim_invert,
        from_comfy_latent,
        inversion_ladder,
        to_comfy_latent,
    )
    from framebridge_core.bridge.sampling import cfg_combine
    from framebridge_core.testing import ddim_sample, frames_to_video, video_to_frames
    from framebridge_core.vp import scaled_linear_alphas_cumprod as sd_alphas_cumprod
    from framebridge_core.families.modelscope.unet3d import ModelScopeUNet3D

    prompt = prepare(host, alpha=0.0, ladder=ladder)
    run = run_ok(host, prompt)
    latent = run.output(host.node_id(prompt, "VAEEncode"), 0)["samples"]
    node_inverted = run.output(host.node_id(prompt, "BIV_MixedInversion"), 0)["samples"]
    node_smoothed = run.output(host.node_id(prompt, "KSamplerAdvanced"), 0)["samples"]

    # the reference runs in float64: a float32 run of this random network differs from itself by ~1e-4
    unet = ModelScopeUNet3D(biv["video_cfg"]).eval().double()
    unet.load_state_dict(biv["video_sd"])
    inv = prompt[host.node_id(prompt, "BIV_MixedInversion")]["inputs"]
    ks = prompt[host.node_id(prompt, "KSamplerAdvanced")]["inputs"]
    cond = lambda ref: stub_conditioning(**{k: prompt[ref[0]]["inputs"][k] for k in ("width", "tokens", "seed")})
    c_inv, c_pos, c_neg = (cond(r).double() for r in (inv["video_conditioning"], ks["positive"], ks["negative"]))

    def eps_inv(z, t):
        with torch.no_grad():
            return unet(z, t, c_inv)

    def eps_guided(z, t):
        with torch.no_grad():
            u, c = unet(torch.cat([z, z]), t, torch.cat([c_neg, c_pos])).chunk(2)
        return cfg_combine(c, u, ks["cfg"])

    lad = inversion_ladder(STEPS, ladder)
    z_t = ddim_invert(eps_inv, frames_to_video(latent.double() * 0.18215), lad)
    core_inverted = video_to_frames(to_comfy_latent(z_t, sd_alphas_cumprod()[lad.sampler_start]))
    err_inv = float((core_inverted - node_inverted).abs().max() / core_inverted.abs().max())
    # the yardstick: how far a float32 run of the same core pipeline lands from the float64 one
    unet32 = ModelScopeUNet3D(biv["video_cfg"]).eval()
    unet32.load_state_dict(biv["video_sd"])
    z32 = ddim_invert(lambda z, t: unet32(z, t, c_inv.float()).detach(), frames_to_video(latent * 0.18215), lad)
    err32 = float((video_to_frames(to_comfy_latent(z32, sd_alphas_cumprod()[lad.sampler_start])) - core_inverted)
                  .abs().max() / core_inverted.abs().max())
    print(f"{ladder}: inversion max rel error {err_inv:.2e} (core float32: {err32:.2e})")
    assert err_inv < max(3 * err32, 1e-5), (err_inv, err32)

    # smoothing, checked from the node's own inverted latent: with CFG 7.5 this random network
    # amplifies the ~1e-4 float32 noise of the inversion stage ~100-fold over 4 steps
    z_node = frames_to_video(from_comfy_latent(node_inverted.double(), sd_alphas_cumprod()[lad.sampler_start]))
    core_smoothed = video_to_frames(ddim_sample(eps_guided, z_node, STEPS, set_alpha_to_one=True)) / 0.18215
    err = float((core_smoothed - node_smoothed).abs().max() / core_smoothed.abs().max())
    print(f"{ladder}: smoothing max rel error {err:.2e}")
    assert err < 1e-3, err


def test_the_mix_is_linear_in_the_ratio_and_each_branch_matters(host, biv):
    torch = pytest.importorskip("torch")
    out = {}
    for alpha in (0.0, 1.0, 0.25):
        prompt = prepare(host, alpha=alpha)
        out[alpha] = run_ok(host, prompt).output(host.node_id(prompt, "BIV_MixedInversion"), 0)["samples"]
    assert torch.allclose(out[0.25], 0.25 * out[1.0] + 0.75 * out[0.0], rtol=1e-5, atol=1e-5)
    assert float((out[1.0] - out[0.0]).abs().max()) > 1e-2


def test_full_controlnet_workflow_runs_and_the_controlnet_steers_stage_one(host, biv):
    torch = pytest.importorskip("torch")
    h = PIXELS // 8
    runs = {}
    for strength in (1.0, 0.0):
        prompt = prepare(host, name=FULL)
        prompt[host.node_id(prompt, "ControlNetApplyAdvanced")]["inputs"]["strength"] = strength
        if strength == 0.0:
            prompt = stage_one_only(host, prompt)
        runs[strength] = (prompt, run_ok(host, prompt))
    prompt, run = runs[1.0]
    frame_wise = run.output(host.node_id(prompt, "KSampler"), 0)["samples"]
    smoothed = run.output(host.node_id(prompt, "KSamplerAdvanced"), 0)["samples"]
    assert tuple(frame_wise.shape) == tuple(smoothed.shape) == (FRAMES, 4, h, h)
    assert torch.isfinite(smoothed).all()
    assert not torch.equal(frame_wise[0], frame_wise[1]), "each frame gets its own noise"
    uncontrolled = runs[0.0][1].output(host.node_id(prompt, "KSampler"), 0)["samples"]
    assert float((frame_wise - uncontrolled).abs().max()) > 1e-3, "the canny ControlNet must change stage 1"
    assert len(run.ui) == 2 and all(len(v["images"]) == 1 for v in run.ui.values()), run.ui  # frame-wise + final


def test_outpainting_workflow_runs_with_the_band_mask(host, biv):
    torch = pytest.importorskip("torch")
    prompt = prepare(host, name=OUTPAINT)
    run = run_ok(host, prompt)
    mask = run.output(host.node_id(prompt, "BIV_OutpaintingMask"), 0)
    assert tuple(mask.shape) == (FRAMES, PIXELS, PIXELS) and float(mask.mean()) == 0.5
    assert bool((mask[:, : PIXELS // 4] == 1).all()) and bool((mask[:, PIXELS // 4: PIXELS // 4 * 3] == 0).all())
    frame_wise = run.output(host.node_id(prompt, "KSampler"), 0)["samples"]
    smoothed = run.output(host.node_id(prompt, "KSamplerAdvanced"), 0)["samples"]
    assert tuple(frame_wise.shape) == tuple(smoothed.shape) == (FRAMES, 4, PIXELS // 8, PIXELS // 8)
    assert torch.isfinite(smoothed).all()
    # the mask reaches the inpainting model: the other band direction gives other frames
    other = prepare(host, name=OUTPAINT)
    other[host.node_id(other, "BIV_OutpaintingMask")]["inputs"]["direction"] = "vertical"
    other = stage_one_only(host, other)
    vertical = run_ok(host, other).output(host.node_id(other, "KSampler"), 0)["samples"]
    assert float((vertical - frame_wise).abs().max()) > 1e-3


def test_instructpix2pix_workflow_runs_and_both_guidance_scales_act(host, biv):
    """The 8-channel InstructPix2Pix stand-in edits the frames (the source latent reaches it through
    InstructPixToPixConditioning), and DualCFGGuider's image scale matters: 1.5 (InstructPix2Pix's)
    differs from 1.0 (what a plain KSampler on the two conditionings would give)."""
    torch = pytest.importorskip("torch")
    h = PIXELS // 8
    prompt = prepare(host, name=IP2P)
    run = run_ok(host, prompt)
    sca = stage_one_sampler(prompt)
    assert prompt[sca]["class_type"] == "SamplerCustomAdvanced"
    frame_wise = run.output(sca, 0)["samples"]
    smoothed = run.output(host.node_id(prompt, "KSamplerAdvanced"), 0)["samples"]
    assert tuple(frame_wise.shape) == tuple(smoothed.shape) == (FRAMES, 4, h, h)
    assert torch.isfinite(frame_wise).all() and torch.isfinite(smoothed).all()
    assert not torch.equal(frame_wise[0], frame_wise[1]), "each frame gets its own noise"
    image_model = run.output(prompt[sca]["inputs"]["guider"][0], 0).model_patcher.model
    assert type(image_model).__name__ == "SD15_instructpix2pix"  # detected from the 8 input channels
    concat = run.output(host.node_id(prompt, "InstructPixToPixConditioning"), 0)[0][1]["concat_latent_image"]
    assert tuple(concat.shape) == (FRAMES, 4, h, h)  # one source latent per frame
    assert len(run.ui) == 2 and all(len(v["images"]) == 1 for v in run.ui.values()), run.ui  # frame-wise + final
    stage_one = stage_one_only(host, prompt)
    (guider,) = [k for k, n in stage_one.items() if n["class_type"] == "DualCFGGuider"]
    model = host.node_id(stage_one, "InstructPixToPixConditioning")
    out = {}
    for image_cfg in (1.5, 1.0):
        p = copy.deepcopy(stage_one)
        p[guider]["inputs"]["cfg_cond2_negative"] = image_cfg
        out[image_cfg] = run_ok(host, p).output(sca, 0)["samples"]
    assert torch.equal(out[1.5], frame_wise), "stage one alone repeats the full run's frames (same seed)"
    assert float((out[1.5] - out[1.0]).abs().max()) > 1e-3, "the image guidance scale must change stage 1"
    # the source frames reach the model: other source pixels give other edits
    p = copy.deepcopy(stage_one)
    p["97"] = {"class_type": "ImageInvert", "inputs": {"image": p[model]["inputs"]["pixels"]}}
    p[model]["inputs"]["pixels"] = ["97", 0]
    inverted = run_ok(host, p).output(sca, 0)["samples"]
    assert float((inverted - frame_wise).abs().max()) > 1e-3


def test_inpainting_workflow_runs_with_the_mask_video(host, biv):
    torch = pytest.importorskip("torch")
    prompt = prepare(host, name=INPAINT)
    run = run_ok(host, prompt)
    mask = run.output(host.node_id(prompt, "ThresholdMask"), 0)
    assert tuple(mask.shape) == (FRAMES, PIXELS, PIXELS)
    assert set(torch.unique(mask).tolist()) == {0.0, 1.0}  # binarized, as diffusers does at 0.5
    for k, i in enumerate(range(0, 2 * FRAMES, 2)):  # the mask video's frames 0, 2, 4, 6: same sampling as the clip
        expected = torch.from_numpy(mask_frame(i)[..., 0] > 127).float()
        assert float((mask[k] - expected).abs().mean()) < 0.02, k
    frame_wise = run.output(host.node_id(prompt, "KSampler"), 0)["samples"]
    smoothed = run.output(host.node_id(prompt, "KSamplerAdvanced"), 0)["samples"]
    assert tuple(frame_wise.shape) == tuple(smoothed.shape) == (FRAMES, 4, PIXELS // 8, PIXELS // 8)
    assert torch.isfinite(smoothed).all()
    assert len(run.ui) == 2 and all(len(v["images"]) == 1 for v in run.ui.values()), run.ui
    # the mask reaches the inpainting model: an empty mask (threshold 1) gives other frames
    other = stage_one_only(host, prepare(host, name=INPAINT))
    other[host.node_id(other, "ThresholdMask")]["inputs"]["value"] = 1.0
    unmasked = run_ok(host, other).output(host.node_id(other, "KSampler"), 0)["samples"]
    assert float((unmasked - frame_wise).abs().max()) > 1e-3


def _set(host, prompt, class_type, **inputs):
    prompt[host.node_id(prompt, class_type)]["inputs"].update(inputs)
    return prompt


def sixteen_channel_vae(host):
    prompt = prepare(host)
    prompt["99"] = {"class_type": "VAELoader", "inputs": {"vae_name": host.files["vae16"]}}
    return _set(host, prompt, "VAEEncode", vae=["99", 0])


def one_frame(host):
    return _set(host, prepare(host), "BIV_SelectFrames", frames=1)


def clip_too_short(host):
    return _set(host, prepare(host), "BIV_SelectFrames", stride=4, frames=8)


def latte_file_as_video_model(host):
    import shutil

    src = host.base / "models" / "framebridge" / host.files["bridge4"]
    shutil.copy(src, host.base / "models" / "diffusion_models" / "latte_copy.safetensors")
    return _set(host, prepare(host), "BIV_LoadVideoModel", unet_name="latte_copy.safetensors")


def v_prediction_image_model(host):
    prompt = prepare(host)
    ckpt = host.node_id(prompt, "CheckpointLoaderSimple")
    prompt["98"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": [ckpt, 0], "sampling": "v_prediction",
                                                                       "zsnr": False}}
    return _set(host, prompt, "BIV_MixedInversion", image_model=["98", 0])


CASES = [
    (v_prediction_image_model, "BIV_MixedInversion", "ConfigError",
     ["the image model", "not an ε-prediction model", "without ModelSampling* patches"]),
    (sixteen_channel_vae, "BIV_MixedInversion", "ShapeError", ["16 channels", "share one latent space", "SD-1.5"]),
    (one_frame, "BIV_MixedInversion", "ShapeError", ["1 frame", "at least 2 frames"]),
    (clip_too_short, "BIV_SelectFrames", "ShapeError", ["has 9 frames", "need at least 29", "lower frames to 3"]),
    (latte_file_as_video_model, "BIV_LoadVideoModel", "CheckpointError",
     ["latte_copy.safetensors", "a FrameBridge-Latte bridge model", "loads ModelScope / ZeroScope and VidRD video UNets",
      "Load this file with 'Load FrameBridge'"]),
]


@pytest.mark.parametrize("build,node_type,exc,needles", CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_input_stops_at_the_right_node_with_a_typed_error(host, biv, build, node_type, exc, needles):
    run = host.run(build(host))
    assert run.valid, run.describe()
    err = run.error
    assert err is not None and not run.success, run.describe()
    assert err["node_type"] == node_type and err["exception_type"].endswith(exc), run.describe()
    for needle in needles:
        assert needle in err["exception_message"], (needle, err["exception_message"])
