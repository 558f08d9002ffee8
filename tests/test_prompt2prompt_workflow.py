"""The shipped Prompt2Prompt BIVDiff workflow uses BIVDiff's settings (``configs/
video_editing_with_prompt2prompt_and_vidrd.yaml``, ``models/Prompt2Prompt/infer.py``, ``inference.py``);
static check, no ComfyUI needed (tests/host/test_host_prompt2prompt.py runs it)."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "BIVDiff-ZeroScope-Prompt2Prompt-Edit.json"


def load():
    return json.loads((ROOT / "workflows" / "api" / NAME).read_text(encoding="utf-8"))


def by_type(prompt, class_type):
    return {k: n["inputs"] for k, n in prompt.items() if n["class_type"] == class_type}


def test_the_ui_workflow_exists():
    assert (ROOT / "workflows" / NAME).is_file()


def test_prompt2prompt_stage_follows_the_official_settings():
    prompt = load()
    text = lambda ref: prompt[ref[0]]["inputs"]["text"]
    ((p2p_id, p2p),) = by_type(prompt, "FB_Prompt2Prompt").items()
    assert (p2p["source_prompt"], p2p["target_prompt"]) == ("A car is moving on the road",
                                                            "A car is moving on the road in the forest")
    assert (p2p["mode"], p2p["cross_replace_steps"], p2p["self_replace_steps"]) == ("refine", 0.4, 0.4)
    assert p2p["blend_source_words"] == p2p["blend_target_words"] == p2p["reweight_words"] == ""
    ckpt = prompt[p2p["model"][0]]
    assert ckpt["class_type"] == "CheckpointLoaderSimple" and ckpt["inputs"]["ckpt_name"] == "v1-5-pruned-emaonly.safetensors"
    assert p2p["clip"] == [p2p["model"][0], 1]
    samplers = by_type(prompt, "KSamplerAdvanced")
    (stage1,) = [s for s in samplers.values() if s["model"] == [p2p_id, 0]]
    assert stage1["positive"] == [p2p_id, 1] and stage1["latent_image"] == [p2p_id, 2]
    assert text(stage1["negative"]) == ""  # infer.py: NEG_PROMPT = ""
    assert (stage1["add_noise"], stage1["steps"], stage1["cfg"], stage1["sampler_name"], stage1["scheduler"]) == (
        "disable", 50, 7.5, "ddim", "ddim_uniform")
    # the source frames were inverted with SD-1.5 alone first (inference.py: mixing_ratio = 1.0)
    pre = prompt[p2p["latent"][0]]
    assert pre["class_type"] == "BIV_MixedInversion" and pre["inputs"]["mixing_ratio"] == 1.0
    assert prompt[pre["inputs"]["latent"][0]]["class_type"] == "VAEEncode"


def test_the_edited_frames_go_through_mixed_inversion_and_zeroscope():
    prompt = load()
    ((split_id, split),) = by_type(prompt, "FB_Prompt2PromptSplit").items()
    assert prompt[split["latent"][0]]["inputs"]["model"][0] in by_type(prompt, "FB_Prompt2Prompt")
    (decode_id,) = [k for k, n in by_type(prompt, "VAEDecode").items() if n["samples"] == [split_id, 1]]  # edited
    invs = by_type(prompt, "BIV_MixedInversion")
    (mix,) = [n for n in invs.values() if prompt[n["latent"][0]]["inputs"]["pixels"] == [decode_id, 0]]
    assert (mix["mixing_ratio"], mix["steps"], mix["ladder"]) == (0.25, 50, "matched")  # IDM.Prompt2Prompt.mixing_ratio
    (smooth,) = [s for s in by_type(prompt, "KSamplerAdvanced").values() if s["model"] == mix["video_model"]]
    assert prompt[smooth["latent_image"][0]]["inputs"] is mix or smooth["latent_image"][0] in invs
    assert prompt[smooth["positive"][0]]["inputs"]["text"] == "A car is moving on the road in the forest"
    assert (smooth["add_noise"], smooth["steps"], smooth["cfg"], smooth["sampler_name"], smooth["scheduler"]) == (
        "disable", 50, 7.5, "ddim", "ddim_uniform")
    for sel in by_type(prompt, "BIV_SelectFrames").values():
        assert (sel["stride"], sel["frames"]) == (4, 8)  # frame_rate 4, video_length 8
    for inv in invs.values():
        for ref in (inv["image_conditioning"], inv["video_conditioning"]):
            assert prompt[ref[0]]["inputs"]["text"] == ""
    assert {n["file"] for n in by_type(prompt, "LoadVideo").values()} == {"car-turn.mp4"}
