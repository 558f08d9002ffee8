"""The shipped BIVDiff workflows use BIVDiff's settings (static check, no ComfyUI needed; the host
tests run them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
API = sorted((ROOT / "workflows" / "api").glob("BIVDiff-*.json"))
POS = " ,best quality, extremely detailed, HD, ultra-realistic, 8K, HQ, masterpiece, trending on artstation, art, smooth"
NEG_START = "longbody, lowres, bad anatomy"
#: per workflow: BIVDiff's mixing ratio and its positive suffix / negative prompt for that image model
EXPECTED = {
    "BIVDiff-ZeroScope-ControlNet-Canny.json": (1.0, POS, NEG_START),
    "BIVDiff-ZeroScope-Smooth-Frames.json": (1.0, POS, NEG_START),
    "BIVDiff-ZeroScope-Outpainting.json": (0.1, "", ""),  # StableDiffusionInpainting/infer.py: "" and ""
}


def by_type(prompt, class_type):
    return [n["inputs"] for n in prompt.values() if n["class_type"] == class_type]


def test_there_are_bivdiff_workflows_with_ui_twins():
    assert [p.name for p in API] == ["BIVDiff-ZeroScope-ControlNet-Canny.json", "BIVDiff-ZeroScope-Outpainting.json",
                                     "BIVDiff-ZeroScope-Smooth-Frames.json"]
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
    (sel,) = by_type(prompt, "BIV_SelectFrames")
    assert sel["frames"] == 8
    for scale in by_type(prompt, "ImageScale"):
        assert (scale["width"], scale["height"]) == (512, 512)
    # one VAE (SD-1.5's) for every encode and decode, and the video model's own text encoder
    vaes = {tuple(n["vae"]) for n in by_type(prompt, "VAEEncode") + by_type(prompt, "VAEDecode")}
    vaes |= {tuple(n["vae"]) for n in by_type(prompt, "InpaintModelConditioning")}
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
