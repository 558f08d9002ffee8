"""The shipped BIVDiff workflows use BIVDiff's settings (static check, no ComfyUI needed; the host
tests run them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Prompt2Prompt runs two inversions and two samplers: tests/test_prompt2prompt_workflow.py checks it
P2P = "BIVDiff-ZeroScope-Prompt2Prompt-Edit.json"
API = sorted(p for p in (ROOT / "workflows" / "api").glob("BIVDiff-*.json") if p.name != P2P)
POS = " ,best quality, extremely detailed, HD, ultra-realistic, 8K, HQ, masterpiece, trending on artstation, art, smooth"
NEG_START = "longbody, lowres, bad anatomy"
#: per workflow: BIVDiff's mixing ratio and its positive suffix / negative prompt for that image model
EXPECTED = {
    "BIVDiff-ZeroScope-ControlNet-Canny.json": (1.0, POS, NEG_START),
    "BIVDiff-ZeroScope-Smooth-Frames.json": (1.0, POS, NEG_START),
    "BIVDiff-ZeroScope-Outpainting.json": (0.1, "", ""),  # StableDiffusionInpainting/infer.py: "" and ""
    "BIVDiff-ZeroScope-Inpainting.json": (0.1, "", ""),
    "BIVDiff-ZeroScope-InstructPix2Pix-Edit.json": (1.0, POS, NEG_START),  # InstructPix2Pix/infer.py: POS / NEG
    "BIVDiff-ZeroScope-T2IAdapter-Canny.json": (1.0, "", ""),  # T2IAdapter/infer.py: "" and ""
    "BIVDiff-ZeroScope-ControlNet-Depth.json": (1.0, POS, NEG_START),
    "BIVDiff-VidRD-ControlNet-Depth.json": (1.0, POS, NEG_START),
}
#: per workflow: the stage-one nodes (image model, conditioning and sampler), all ComfyUI core
STAGE_ONE = {
    "BIVDiff-ZeroScope-ControlNet-Canny.json": {"Canny", "ControlNetLoader", "ControlNetApplyAdvanced",
                                                "EmptyLatentImage", "KSampler"},
    "BIVDiff-ZeroScope-Outpainting.json": {"InpaintModelConditioning", "KSampler"},
    "BIVDiff-ZeroScope-Inpainting.json": {"ImageToMask", "ThresholdMask", "InpaintModelConditioning", "KSampler"},
    "BIVDiff-ZeroScope-InstructPix2Pix-Edit.json": {"InstructPixToPixConditioning", "DualCFGGuider", "RandomNoise",
                                                    "KSamplerSelect", "BasicScheduler", "SamplerCustomAdvanced"},
    "BIVDiff-ZeroScope-Smooth-Frames.json": set(),
    "BIVDiff-ZeroScope-T2IAdapter-Canny.json": {"Canny", "ControlNetLoader", "ControlNetApplyAdvanced",
                                                "EmptyLatentImage", "KSampler"},
    "BIVDiff-ZeroScope-ControlNet-Depth.json": {"BIV_DepthFrames", "ControlNetLoader", "ControlNetApplyAdvanced",
                                                "EmptyLatentImage", "KSampler"},
    "BIVDiff-VidRD-ControlNet-Depth.json": {"BIV_DepthFrames", "ControlNetLoader", "ControlNetApplyAdvanced",
                                            "EmptyLatentImage", "KSampler"},
}
#: per workflow: the image model of stage one (the inversion always uses plain SD-1.5)
IMAGE_MODEL = {
    "BIVDiff-ZeroScope-ControlNet-Canny.json": "v1-5-pruned-emaonly.safetensors",
    "BIVDiff-ZeroScope-Outpainting.json": "sd-v1-5-inpainting.ckpt",
    "BIVDiff-ZeroScope-Inpainting.json": "sd-v1-5-inpainting.ckpt",
    "BIVDiff-ZeroScope-InstructPix2Pix-Edit.json": "instruct-pix2pix-00-22000.safetensors",
    "BIVDiff-ZeroScope-T2IAdapter-Canny.json": "v1-5-pruned-emaonly.safetensors",
    "BIVDiff-ZeroScope-ControlNet-Depth.json": "v1-5-pruned-emaonly.safetensors",
    "BIVDiff-VidRD-ControlNet-Depth.json": "v1-5-pruned-emaonly.safetensors",
}
STAGE_ONE_SAMPLERS = ("KSampler", "SamplerCustomAdvanced")


def by_type(prompt, class_type):
    return [n["inputs"] for n in prompt.values() if n["class_type"] == class_type]


def test_there_are_bivdiff_workflows_with_ui_twins():
    assert [p.name for p in API] == ["BIVDiff-VidRD-ControlNet-Depth.json", "BIVDiff-ZeroScope-ControlNet-Canny.json", "BIVDiff-ZeroScope-ControlNet-Depth.json",
                                     "BIVDiff-ZeroScope-Inpainting.json", "BIVDiff-ZeroScope-InstructPix2Pix-Edit.json",
                                     "BIVDiff-ZeroScope-Outpainting.json", "BIVDiff-ZeroScope-Smooth-Frames.json",
                                     "BIVDiff-ZeroScope-T2IAdapter-Canny.json"]
    for p in API:
        assert (ROOT / "workflows" / p.name).is_file(), p.name


@pytest.mark.parametrize("path", API, ids=lambda p: p.name)
def test_bivdiff_settings(path):
    prompt = json.loads(path.read_text(encoding="utf-8"))
    (inv,) = by_type(prompt, "BIV_MixedInversion")
    (ks,) = by_type(prompt, "KSamplerAdvanced")
    alpha, pos, neg = EXPECTED[path.name]
    assert (inv["steps"], inv["ladder"], inv["mixing_ratio"]) == (50, "matched", alpha)
    assert (ks["add_noise"], ks["steps"], ks["cfg"], ks["sampler_name"], ks["scheduler"]) == (
        "disable", 50, 7.5, "ddim", "ddim_uniform")
    assert (ks["start_at_step"], ks["return_with_leftover_noise"]) == (0, "disable")
    assert ks["model"] == inv["video_model"] and ks["latent_image"][0] in prompt
    assert prompt[ks["latent_image"][0]]["class_type"] == "BIV_MixedInversion"
    text = lambda ref: prompt[ref[0]]["inputs"]["text"]
    assert text(inv["image_conditioning"]) == "" and text(inv["video_conditioning"]) == ""  # null-text inversion
    assert text(ks["positive"]).endswith(pos) and text(ks["negative"]).startswith(neg)
    for sel in by_type(prompt, "BIV_SelectFrames"):  # the source (and the mask video)
        assert sel["frames"] == 8
    for scale in by_type(prompt, "ImageScale"):
        assert (scale["width"], scale["height"]) == (512, 512)
    # one VAE (SD-1.5's) for every encode and decode, and the video model's own text encoder
    vaes = {tuple(n["vae"]) for n in by_type(prompt, "VAEEncode") + by_type(prompt, "VAEDecode")}
    vaes |= {tuple(n["vae"]) for t in ("InpaintModelConditioning", "InstructPixToPixConditioning")
             for n in by_type(prompt, t)}
    assert len(vaes) == 1 and prompt[next(iter(vaes))[0]]["class_type"] == "CheckpointLoaderSimple"
    assert vaes == {tuple(inv["image_model"][:1] + [2])}  # the inversion model's (SD-1.5's) VAE
    assert prompt[prompt[ks["positive"][0]]["inputs"]["clip"][0]]["class_type"] == "CLIPLoader"
    assert by_type(prompt, "CLIPLoader")[0]["type"] == "stable_diffusion"


def test_outpainting_workflow_regenerates_whole_frames_with_the_band_mask():
    prompt = json.loads((ROOT / "workflows" / "api" / "BIVDiff-ZeroScope-Outpainting.json").read_text())
    (cond,) = by_type(prompt, "InpaintModelConditioning")
    assert cond["noise_mask"] is False  # BIVDiff pastes nothing back: the whole frame is regenerated
    assert prompt[cond["mask"][0]]["class_type"] == "BIV_OutpaintingMask"
    assert prompt[cond["mask"][0]]["inputs"]["direction"] == "horizontal"  # the official default
    (ks,) = by_type(prompt, "KSampler")
    assert prompt[ks["positive"][0]]["class_type"] == "InpaintModelConditioning"
    assert ks["latent_image"] == [ks["positive"][0], 2] and ks["denoise"] == 1.0
    (inv,) = by_type(prompt, "BIV_MixedInversion")
    assert ks["model"] != inv["image_model"]  # stage 1 uses the inpainting model, the inversion plain SD-1.5


def test_controlnet_workflow_follows_the_official_frame_sampling_and_stage_one():
    prompt = json.loads((ROOT / "workflows" / "api" / "BIVDiff-ZeroScope-ControlNet-Canny.json").read_text())
    (sel,) = by_type(prompt, "BIV_SelectFrames")
    assert (sel["stride"], sel["frames"]) == (4, 8)  # configs/*.yaml: frame_rate 4, video_length 8
    (empty,) = by_type(prompt, "EmptyLatentImage")
    assert (empty["width"], empty["height"], empty["batch_size"]) == (512, 512, 8)
    (ks,) = by_type(prompt, "KSampler")
    assert (ks["steps"], ks["cfg"], ks["denoise"]) == (50, 7.5, 1.0)
    (cn,) = by_type(prompt, "ControlNetApplyAdvanced")
    assert (cn["strength"], cn["start_percent"], cn["end_percent"]) == (1.0, 0.0, 1.0)
    assert prompt[cn["image"][0]]["class_type"] == "Canny"
    (inv,) = by_type(prompt, "BIV_MixedInversion")
    assert prompt[prompt[inv["latent"][0]]["inputs"]["pixels"][0]]["class_type"] == "VAEDecode"  # the frame-wise frames


def sampler_model(prompt, inputs):
    """The MODEL a stage-one sampler (KSampler, or SamplerCustomAdvanced through its guider) runs."""
    return inputs["model"] if "model" in inputs else prompt[inputs["guider"][0]]["inputs"]["model"]


@pytest.mark.parametrize("path", API, ids=lambda p: p.name)
def test_stage_one_uses_core_nodes_and_the_task_image_model(path):
    prompt = json.loads(path.read_text(encoding="utf-8"))
    ours = {n["class_type"] for n in prompt.values() if n["class_type"].startswith("BIV_")}
    assert ours <= {"BIV_LoadVideoModel", "BIV_MixedInversion", "BIV_SelectFrames", "BIV_OutpaintingMask",
                    "BIV_DepthFrames"}
    present = {n["class_type"] for n in prompt.values()}
    assert STAGE_ONE[path.name] <= present, STAGE_ONE[path.name] - present
    samplers = [(t, n) for t in STAGE_ONE_SAMPLERS for n in by_type(prompt, t)]
    if path.name not in IMAGE_MODEL:
        assert not samplers  # frames made elsewhere
        return
    ((kind, ks),) = samplers
    model = sampler_model(prompt, ks)
    assert prompt[model[0]]["class_type"] == "CheckpointLoaderSimple"
    assert prompt[model[0]]["inputs"]["ckpt_name"] == IMAGE_MODEL[path.name]
    (inv,) = by_type(prompt, "BIV_MixedInversion")
    assert prompt[inv["image_model"][0]]["inputs"]["ckpt_name"] == "v1-5-pruned-emaonly.safetensors"
    # the frame-wise result is what gets inverted (VAE Decode of the stage-one sampler, then VAE Encode)
    decode = prompt[prompt[inv["latent"][0]]["inputs"]["pixels"][0]]
    assert decode["class_type"] == "VAEDecode" and decode["inputs"]["samples"][1] == 0
    assert prompt[decode["inputs"]["samples"][0]]["class_type"] == kind
    (sel, *rest) = by_type(prompt, "BIV_SelectFrames")
    for s in [sel, *rest]:
        assert (s["stride"], s["frames"]) == (4, 8)  # configs/*.yaml: frame_rate 4, video_length 8
    if kind == "KSampler":
        assert (ks["seed"], ks["steps"], ks["cfg"], ks["denoise"]) == (42, 50, 7.5, 1.0)
        assert (ks["sampler_name"], ks["scheduler"]) == ("ddim", "ddim_uniform")  # no PNDM in ComfyUI


def test_instructpix2pix_workflow_uses_the_two_guidance_scales_and_two_prompts():
    prompt = json.loads((ROOT / "workflows" / "api" / "BIVDiff-ZeroScope-InstructPix2Pix-Edit.json").read_text())
    (iid,) = [k for k, n in prompt.items() if n["class_type"] == "InstructPixToPixConditioning"]
    ip2p = prompt[iid]["inputs"]
    assert prompt[ip2p["pixels"][0]]["class_type"] == "ImageScale"  # the source frames, 512x512
    (guider,) = by_type(prompt, "DualCFGGuider")
    # diffusers: uncond + 7.5 (text - image) + 1.5 (image - uncond) = DualCFGGuider regular with
    # cond1 = (image, text), cond2 = (image, negative), negative = (no image, negative)
    assert (guider["cfg_conds"], guider["cfg_cond2_negative"], guider["style"]) == (7.5, 1.5, "regular")
    assert guider["cond1"] == [iid, 0] and guider["cond2"] == [iid, 1]
    assert guider["negative"] == ip2p["negative"]  # the plain negative prompt: no source-image latent
    (sca,) = by_type(prompt, "SamplerCustomAdvanced")
    assert sca["latent_image"] == [iid, 2]
    assert prompt[sca["noise"][0]]["inputs"]["noise_seed"] == 42
    assert prompt[sca["sampler"][0]]["inputs"]["sampler_name"] == "euler_ancestral"  # the checkpoint's scheduler
    sched = prompt[sca["sigmas"][0]]["inputs"]
    assert (sched["scheduler"], sched["steps"], sched["denoise"]) == ("normal", 50, 1.0)
    assert sched["model"] == guider["model"]
    text = lambda ref: prompt[ref[0]]["inputs"]["text"]
    assert text(ip2p["positive"]) == "Make it minecraft style" + POS  # the instruction
    (ks,) = by_type(prompt, "KSamplerAdvanced")
    assert text(ks["positive"]) == "A train is running, minecraft style" + POS  # the edited video's description
    assert text(ip2p["negative"]) == text(ks["negative"]) and text(ks["negative"]).startswith(NEG_START)
    assert [n["file"] for n in by_type(prompt, "LoadVideo")] == ["train.mp4"]  # BIVDiff's editing example


def test_inpainting_workflow_reads_a_binarized_mask_video_like_the_source():
    prompt = json.loads((ROOT / "workflows" / "api" / "BIVDiff-ZeroScope-Inpainting.json").read_text())
    (cond,) = by_type(prompt, "InpaintModelConditioning")
    assert cond["noise_mask"] is False  # no paste-back: the whole frame is regenerated, as in BIVDiff
    thr = prompt[cond["mask"][0]]
    assert thr["class_type"] == "ThresholdMask" and thr["inputs"]["value"] == 0.5  # diffusers binarizes at 0.5
    to_mask = prompt[thr["inputs"]["mask"][0]]
    assert to_mask["class_type"] == "ImageToMask"

    def chain(ref):  # ImageScale <- BIV_SelectFrames <- GetVideoComponents <- LoadVideo
        out = []
        while ref is not None:
            node = prompt[ref[0]]
            out.append(node)
            ref = node["inputs"].get("image") or node["inputs"].get("images") or node["inputs"].get("video")
        return out

    mask_chain, source_chain = chain(to_mask["inputs"]["image"]), chain(cond["pixels"])
    assert [n["class_type"] for n in mask_chain] == [n["class_type"] for n in source_chain] == [
        "ImageScale", "BIV_SelectFrames", "GetVideoComponents", "LoadVideo"]
    for m, s in zip(mask_chain[:2], source_chain[:2]):  # the same frame sampling and size
        assert m["inputs"] | {"image": None, "images": None} == s["inputs"] | {"image": None, "images": None}
    assert (source_chain[-1]["inputs"]["file"], mask_chain[-1]["inputs"]["file"]) == ("hike.mp4", "hike-mask.mp4")
    (ks,) = by_type(prompt, "KSampler")
    assert prompt[ks["positive"][0]]["class_type"] == "InpaintModelConditioning"
    assert ks["latent_image"] == [ks["positive"][0], 2] and ks["negative"] == [ks["positive"][0], 1]


def _chain(prompt, ref):
    """The node ``ref`` points at and the nodes its image / video input comes from, in order."""
    out = []
    while ref is not None:
        node = prompt[ref[0]]
        out.append(node)
        ref = node["inputs"].get("image") or node["inputs"].get("images") or node["inputs"].get("video")
    return out


def test_t2iadapter_workflow_loads_the_adapter_through_core_and_feeds_canny_the_0_1_frames():
    prompt = json.loads((ROOT / "workflows" / "api" / "BIVDiff-ZeroScope-T2IAdapter-Canny.json").read_text())
    (loader,) = by_type(prompt, "ControlNetLoader")
    assert loader["control_net_name"] == "t2iadapter_canny_sd15v2.pth"  # models/T2IAdapter/infer.py adapter_dict
    (cn,) = by_type(prompt, "ControlNetApplyAdvanced")
    assert (cn["strength"], cn["start_percent"], cn["end_percent"]) == (1.0, 0.0, 1.0)
    # the fix of models/T2IAdapter/infer.py:62 (its [-1, 1] -> [0, 1] rescale is commented out): Canny takes the
    # scaled frames as ComfyUI IMAGEs (0..1), nothing rescales them in between
    canny = _chain(prompt, cn["image"])
    assert [n["class_type"] for n in canny] == ["Canny", "ImageScale", "BIV_SelectFrames", "GetVideoComponents",
                                                "LoadVideo"]
    assert (canny[0]["inputs"]["low_threshold"], canny[0]["inputs"]["high_threshold"]) == (0.4, 0.8)
    assert canny[-1]["inputs"]["file"] == "car-turn-2.mp4"  # configs/..._t2iadapter_and_vidrd.yaml
    (ks,) = by_type(prompt, "KSampler")
    assert (ks["sampler_name"], ks["scheduler"]) == ("ddim", "ddim_uniform")  # the adapter pipeline's DDIM
    text = lambda ref: prompt[ref[0]]["inputs"]["text"]
    assert text(cn["positive"]) == "A red car moves in front of buildings" and text(cn["negative"]) == ""


def test_depth_workflow_checks_the_depth_video_against_the_source_frames():
    prompt = json.loads((ROOT / "workflows" / "api" / "BIVDiff-ZeroScope-ControlNet-Depth.json").read_text())
    (loader,) = by_type(prompt, "ControlNetLoader")
    assert loader["control_net_name"] == "control_v11f1p_sd15_depth.pth"  # models/ControlNet/infer.py depth_midas
    (cn,) = by_type(prompt, "ControlNetApplyAdvanced")
    depth_node = prompt[cn["image"][0]]
    assert depth_node["class_type"] == "BIV_DepthFrames"
    assert (depth_node["inputs"]["normalize"], depth_node["inputs"]["invert"]) == ("per_frame", False)  # as MiDaS
    depth, source = _chain(prompt, depth_node["inputs"]["depth"]), _chain(prompt, depth_node["inputs"]["frames"])
    kinds = ["ImageScale", "BIV_SelectFrames", "GetVideoComponents", "LoadVideo"]
    assert [n["class_type"] for n in depth] == [n["class_type"] for n in source] == kinds
    for d, s in zip(depth[:2], source[:2]):  # the same frames of both videos, at the same size
        assert d["inputs"] | {"image": None, "images": None} == s["inputs"] | {"image": None, "images": None}
    assert (source[-1]["inputs"]["file"], depth[-1]["inputs"]["file"]) == ("mbike-trick.mp4", "mbike-trick-depth.mp4")
    # one video-model loader feeds the inversion and the smoothing, so another video model is one node swap
    (video_loader,) = [k for k, n in prompt.items() if n["class_type"] == "BIV_LoadVideoModel"]
    (inv,) = by_type(prompt, "BIV_MixedInversion")
    (ks,) = by_type(prompt, "KSamplerAdvanced")
    assert inv["video_model"] == ks["model"] == [video_loader, 0]
    text = lambda ref: prompt[ref[0]]["inputs"]["text"]
    assert text(ks["positive"]) == "A person on a motorcycle does a burnout on a frozen lake" + POS
