"""The fault catalogue: bad inputs and faults sent to a real ComfyUI server (``python main.py``), each followed by
a good prompt that must succeed. Every refusal is checked for the value, what is allowed and the node that fixes
it; no pickle runs code; nothing is left behind in ComfyUI's folders. docs/reliability.md lists the cases.

Cases whose ``expect`` is "refused" are stopped when queued (POST /prompt answers 400, nothing runs); "error"
cases run and stop at ``node`` with one of the pack's typed errors; "success" cases are unusual but valid inputs
that must give a video.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import pytest

import faults as F  # tests/host/faults.py

pytestmark = pytest.mark.host


@dataclass(frozen=True)
class Case:
    id: str
    build: object            # () -> API prompt
    expect: str              # "refused" | "error" | "success"
    node: str = ""           # the class_type that refuses / fails
    exception: str = ""      # the pack's error class for "error" cases
    needles: tuple = ()      # parts of the message: the value, what is allowed, the node / loader that fixes it


def tiny(**edits):
    """The Tiny workflow (2 steps) with ``{class_type: {input: value}}`` edits."""
    def build():
        prompt = F.good_prompt(seed=7, prefix="catalogue/bad")
        for class_type, inputs in edits.items():
            F.edit(prompt, class_type, **inputs)
        return prompt
    return build


def with_nodes(base: str, nodes: dict, links: dict, steps: int = 2):
    """``base`` workflow with extra nodes added and inputs re-linked: ``links = {class_type: {input: value}}``."""
    def build():
        prompt = F.load_api(base)
        for class_type in ("FB_BridgeSampler",):
            if any(v["class_type"] == class_type for v in prompt.values()):
                F.edit(prompt, class_type, steps=steps)
        F.edit(prompt, "SaveAnimatedWEBP", filename_prefix="catalogue/bad")
        prompt.update({k: {"class_type": c, "inputs": dict(i)} for k, (c, i) in nodes.items()})
        for class_type, inputs in links.items():
            F.edit(prompt, class_type, **inputs)
        return prompt
    return build


def still(**edits):
    def build():
        prompt = F.load_api(F.TINY_STILL)
        F.edit(prompt, "FB_BridgeSampler", steps=2, seed=7)
        F.edit(prompt, "SaveAnimatedWEBP", filename_prefix="catalogue/bad")
        for class_type, inputs in edits.items():
            F.edit(prompt, class_type, **inputs)
        return prompt
    return build


def ucf_class(base_build, name: str):
    """Swap the camera-motion node for 'FrameBridge UCF-101 Class' with ``name``."""
    def build():
        prompt = base_build()
        prompt[F.node_of(prompt, "FB_CameraMotion")] = {"class_type": "FB_UCF101Class", "inputs": {"class_name": name}}
        return prompt
    return build


def latte_np(**edits):
    def build():
        prompt = F.load_api(F.LATTE_NP)
        F.edit(prompt, "FB_BridgeSampler", steps=2)
        F.edit(prompt, "SaveAnimatedWEBP", filename_prefix="catalogue/bad")
        for class_type, inputs in edits.items():
            F.edit(prompt, class_type, **inputs)
        return prompt
    return build


def image_node(class_type: str, **inputs):
    """The Tiny workflow with its LoadImage replaced by a core node making the image."""
    def build():
        prompt = F.good_prompt(seed=7, prefix="catalogue/odd")
        prompt[F.node_of(prompt, "LoadImage")] = {"class_type": class_type, "inputs": inputs}
        return prompt
    return build


def blended_image(factor: float):
    """A NaN / inf image, made by core Image Blend with a non-finite factor (its min/max check lets NaN through)."""
    def build():
        prompt = F.good_prompt(seed=7, prefix="catalogue/bad")
        load = F.node_of(prompt, "LoadImage")
        prompt["90"] = {"class_type": "ImageBlend", "inputs": {"image1": [load, 0], "image2": [load, 0],
                                                               "blend_factor": factor, "blend_mode": "normal"}}
        F.edit(prompt, "FB_BridgePriorFromImage", image=["90", 0])
        return prompt
    return build


def prior_through(class_type: str, target: str = "FB_NeuralPrior", **inputs):
    """The Tiny workflow with a core latent node between 'Bridge Prior from Image' and ``target``."""
    def build():
        prompt = F.good_prompt(seed=7, prefix="catalogue/bad")
        if target == "FB_BridgeSampler":
            prompt = F.load_api(F.TINY_STILL)
            F.edit(prompt, "FB_BridgeSampler", steps=2)
            F.edit(prompt, "SaveAnimatedWEBP", filename_prefix="catalogue/bad")
        prior = F.node_of(prompt, "FB_BridgePriorFromImage")
        prompt["91"] = {"class_type": class_type, "inputs": {**inputs, "samples": [prior, 2]}}
        F.edit(prompt, target, prior=["91", 0])
        return prompt
    return build


def empty_latent_prior(target: str = "FB_NeuralPrior"):
    def build():
        prompt = F.good_prompt(seed=7, prefix="catalogue/bad")
        if target == "FB_BridgeSampler":
            prompt = F.load_api(F.TINY_STILL)
            F.edit(prompt, "FB_BridgeSampler", steps=2)
            F.edit(prompt, "SaveAnimatedWEBP", filename_prefix="catalogue/bad")
        prompt["92"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 16}}
        F.edit(prompt, target, prior=["92", 0])
        return prompt
    return build


def mixed_inversion(image_model: str, latent_vae: str, **overrides):
    """BIVDiff Mixed Inversion of the example image, 2 frames, with the conditioning of the class node (the check
    of the models comes before any model call)."""
    def build():
        prompt = {
            "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
            "2": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["1", 0]}},
            "3": {"class_type": "VAELoader", "inputs": {"vae_name": latent_vae}},
            "4": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["3", 0]}},
            "5": {"class_type": "BIV_LoadVideoModel", "inputs": {"unet_name": F.MODELSCOPE, "weight_dtype": "default"}},
            "6": {"class_type": "FB_CameraMotion", "inputs": {"motion": "static"}},
            "8": {"class_type": "BIV_MixedInversion", "inputs": {
                "latent": ["4", 0], "image_model": ["7", 0], "image_conditioning": ["6", 0], "video_model": ["5", 0],
                "video_conditioning": ["6", 1], "mixing_ratio": 0.5, "steps": 2, "ladder": "matched"}},
            "9": {"class_type": "PreviewAny", "inputs": {"source": ["8", 0]}},
        }
        if image_model == "sd15":
            prompt["7"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": F.SD15}}
        else:
            prompt["7"] = {"class_type": "FB_LoadFrameBridge", "inputs": {"ckpt_name": F.TINY_MODEL,
                                                                        "weight_dtype": "default"}}
        prompt["8"]["inputs"].update(overrides)
        return prompt
    return build


LOAD = "FB_LoadFrameBridge"
PRIOR = "FB_BridgePriorFromImage"
SAMPLER = "FB_BridgeSampler"

CASES = [
    # ---- checkpoints
    Case("wrong family: neural prior file in Load FrameBridge", tiny(FB_LoadFrameBridge={"ckpt_name": "neural-prior-tiny-motion.safetensors"}),
         "error", LOAD, "CheckpointError", ("'neural-prior-tiny-motion.safetensors'", "neural prior network",
                                            "'Load Neural Prior'")),
    Case("wrong family: SD-1.5 checkpoint in Load FrameBridge", tiny(FB_LoadFrameBridge={"ckpt_name": F.SD15}),
         "error", LOAD, "CheckpointError", (f"'{F.SD15}'", "Stable Diffusion 1.x/2.x checkpoint",
                                            "core 'Load Checkpoint'")),
    Case("wrong family: ModelScope UNet in Load FrameBridge", tiny(FB_LoadFrameBridge={"ckpt_name": F.MODELSCOPE}),
         "error", LOAD, "CheckpointError", (f"'{F.MODELSCOPE}'", "ModelScope / ZeroScope video UNet",
                                            "'Load BIVDiff Video Model'")),
    Case("wrong family: Latte model in Load FrameBridge Checkpoint",
         lambda: {"1": {"class_type": "FB_LoadFrameBridgeCheckpoint",
                        "inputs": {"ckpt_name": "framebridge_latte_ucf101.pt", "weight_dtype": "default"}},
                  "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 2]}}},
         "error", "FB_LoadFrameBridgeCheckpoint", "CheckpointError",
         ("'framebridge_latte_ucf101.pt'", "FrameBridge-Latte bridge model", "'Load FrameBridge'")),
    Case("truncated checkpoint", tiny(FB_LoadFrameBridge={"ckpt_name": "truncated.safetensors"}),
         "error", LOAD, "CheckpointError", ("'truncated.safetensors'", "truncated or corrupt", "Re-download")),
    Case("zero-byte checkpoint", tiny(FB_LoadFrameBridge={"ckpt_name": F.EMPTY}),
         "error", LOAD, "CheckpointError", (f"'{F.EMPTY}'", "0 bytes", "the file is empty", "Re-download")),
    Case("checkpoint holding no tensors", tiny(FB_LoadFrameBridge={"ckpt_name": F.NOT_TENSORS}),
         "error", LOAD, "CheckpointError", (f"'{F.NOT_TENSORS}'", "holds a list, not a state dict")),
    Case("pickle that would run code (.pt)", tiny(FB_LoadFrameBridge={"ckpt_name": F.CODE_PT}),
         "error", LOAD, "CheckpointError", (f"'{F.CODE_PT}'", "besides tensors", "weights_only=True", "never executed",
                                            ".safetensors")),
    Case("pickle that would run code, named .safetensors", tiny(FB_LoadFrameBridge={"ckpt_name": F.CODE_SAFETENSORS}),
         "error", LOAD, "CheckpointError", (f"'{F.CODE_SAFETENSORS}'", "named .safetensors", "Python pickle",
                                            "rename it to .pt")),
    Case("int8 weights", tiny(FB_LoadFrameBridge={"ckpt_name": F.INT8}),
         "error", LOAD, "CheckpointError", ("is int8", "floating-point weights", "fp32/fp16/bf16")),
    Case("all-NaN weights", tiny(FB_LoadFrameBridge={"ckpt_name": F.NAN}),
         "error", LOAD, "CheckpointError", ("NaN or infinite values", "Re-download")),
    Case("missing file", tiny(FB_LoadFrameBridge={"ckpt_name": "missing.safetensors"}),
         "refused", LOAD, "", ("Load FrameBridge", "ckpt_name='missing.safetensors'", "is not one of",
                               "framebridge-tiny-motion-np.safetensors", "models folder")),
    Case("path traversal in a file widget", tiny(FB_LoadFrameBridge={"ckpt_name": "../../../../etc/passwd"}),
         "refused", LOAD, "", ("Load FrameBridge", "ckpt_name='../../../../etc/passwd'", "is not one of")),
    Case("path traversal in Load Neural Prior", tiny(FB_LoadNeuralPrior={"ckpt_name": "../user/comfy.settings.json"}),
         "refused", "FB_LoadNeuralPrior", "", ("Load Neural Prior", "ckpt_name='../user/comfy.settings.json'",
                                               "is not one of")),
    Case("weight_dtype not in the list", tiny(FB_LoadFrameBridge={"weight_dtype": "fp64"}),
         "refused", LOAD, "", ("Load FrameBridge", "weight_dtype='fp64'", "'fp16'", "'bf16'")),
    # ---- conditioning
    Case("camera motion not in the list", tiny(FB_CameraMotion={"motion": "sideways"}),
         "refused", "FB_CameraMotion", "", ("FrameBridge Camera Motion", "motion='sideways'", "'pan-left'")),
    Case("UCF-101 class not in the list", ucf_class(tiny(), "Skydiving"),
         "refused", "FB_UCF101Class", "", ("FrameBridge UCF-101 Class", "class_name='Skydiving'", "'ApplyEyeMakeup'")),
    Case("class out of range for the model (at Neural Prior)", ucf_class(tiny(), "YoYo"),
         "error", "FB_NeuralPrior", "ConfigError", ("Neural Prior", "'YoYo' (index 100)", "'FrameBridge UCF-101 Class'",
                                                    "0..8", "'FrameBridge Camera Motion'")),
    Case("class out of range for the model (at the sampler)", ucf_class(still(), "YoYo"),
         "error", SAMPLER, "ConfigError", ("'YoYo' (index 100)", "'FrameBridge UCF-101 Class'", "9 classes",
                                           "'FrameBridge Camera Motion'")),
    # ---- priors
    Case("resize not in the list", tiny(FB_BridgePriorFromImage={"resize": "bogus"}),
         "refused", PRIOR, "", ("Bridge Prior from Image", "resize='bogus'", "'center crop', 'stretch', 'none'")),
    Case("prior frame count the model does not make", tiny(FB_BridgePriorFromImage={"length": 24}),
         "error", PRIOR, "ShapeError", ("length=24", "16-frame", "Set length to 16")),
    Case("absurd frame count (refused before allocating)", tiny(FB_BridgePriorFromImage={"length": 10 ** 9}),
         "refused", PRIOR, "", ("Bridge Prior from Image", "length=1000000000", "1..512")),
    Case("VAE of another latent space", tiny(VAELoader={"vae_name": "sd-vae-ft-ema.safetensors"}),
         "error", PRIOR, "ShapeError", ("4-channel latents", "3-channel latents", "'pixel_space' VAE")),
    Case("prior size that does not fit (64 wide, 96 high) at Neural Prior",
         prior_through("LatentUpscale", upscale_method="nearest-exact", width=512, height=768, crop="disabled"),
         "error", "FB_NeuralPrior", "ShapeError", ("Neural Prior", "64x96", "64x64", "'Bridge Prior from Image'")),
    Case("prior size not a multiple of the patch (63x63) at the sampler",
         prior_through("LatentUpscale", "FB_BridgeSampler", upscale_method="nearest-exact", width=504, height=504,
                       crop="disabled"),
         "error", SAMPLER, "ShapeError", ("(16, 3, 63, 63)", "[frames, 3, 64, 64]", "'Bridge Prior from Image'")),
    Case("prior frame count that does not fit at Neural Prior",
         prior_through("LatentFromBatch", batch_index=0, length=8),
         "error", "FB_NeuralPrior", "ShapeError", ("Neural Prior", "8 frames", "16 frames", "length=16")),
    Case("prior frame count that does not fit at the sampler",
         prior_through("LatentFromBatch", "FB_BridgeSampler", batch_index=0, length=8),
         "error", SAMPLER, "ShapeError", ("8 frames", "multiple of the model's 16", "length=16")),
    Case("prior channels that do not fit at Neural Prior", empty_latent_prior(),
         "error", "FB_NeuralPrior", "ShapeError", ("Neural Prior", "4 channels", "3-channel latents")),
    Case("prior channels that do not fit at the sampler", empty_latent_prior("FB_BridgeSampler"),
         "error", SAMPLER, "ShapeError", ("(16, 4, 64, 64)", "[frames, 3, 64, 64]", "'Bridge Prior from Image'")),
    Case("neural prior with a model that does not take one",
         tiny(FB_LoadFrameBridge={"ckpt_name": "framebridge-tiny-motion.safetensors"}),
         "error", SAMPLER, "ConfigError", ("'Neural Prior'", "does not take a neural prior", "3 input channels")),
    Case("still prior with a model trained with the neural prior",
         still(FB_LoadFrameBridge={"ckpt_name": F.TINY_MODEL}),
         "error", SAMPLER, "ConfigError", ("trained with the neural prior", "6 input channels", "'Neural Prior'")),
    Case("Latte: 4-channel model given a neural prior", latte_np(FB_LoadFrameBridge={"ckpt_name": "framebridge_latte_ucf101.pt"}),
         "error", SAMPLER, "ConfigError", ("does not take a neural prior", "4 input channels", "'Neural Prior'")),
    # ---- images
    Case("NaN image", blended_image(float("nan")),
         "error", PRIOR, "ShapeError", ("Bridge Prior from Image", "NaN or infinite pixels", "node that makes the image")),
    Case("1x1 image with resize 'none'", lambda: F.edit(image_node("EmptyImage", width=1, height=1, batch_size=1, color=0)(),
                                                        PRIOR, resize="none"),
         "error", PRIOR, "ShapeError", ("1x1", "64x64", "'center crop'")),
    Case("1x1 image (center crop): a video", image_node("EmptyImage", width=1, height=1, batch_size=1, color=0xFFFFFF),
         "success"),
    Case("all-black image: a video", image_node("EmptyImage", width=64, height=64, batch_size=1, color=0), "success"),
    # ---- sampler settings
    Case("steps negative", tiny(FB_BridgeSampler={"steps": -5}),
         "refused", SAMPLER, "", ("Bridge Sampler", "steps=-5", "0..1000")),
    Case("steps huge", tiny(FB_BridgeSampler={"steps": 100000}),
         "refused", SAMPLER, "", ("Bridge Sampler", "steps=100000", "0..1000")),
    Case("steps 0 (the model's own default): a video", tiny(FB_BridgeSampler={"steps": 0, "seed": 11}), "success"),
    Case("CFG NaN", tiny(FB_BridgeSampler={"cfg": float("nan")}),
         "refused", SAMPLER, "", ("Bridge Sampler", "cfg=nan", "not a finite number")),
    Case("CFG inf", tiny(FB_BridgeSampler={"cfg": float("inf")}),
         "refused", SAMPLER, "", ("Bridge Sampler", "cfg=inf", "not a finite number")),
    Case("sampler method not in the list", tiny(FB_BridgeSampler={"method": "euler"}),
         "refused", SAMPLER, "", ("Bridge Sampler", "method='euler'", "'sde'")),
    # ---- BIVDiff
    Case("BIVDiff inversion with a model of another latent space", mixed_inversion("framebridge", "pixel_space"),
         "error", "BIV_MixedInversion", "ConfigError", ("image model", "not an ε-prediction model", "SD-1.5",
                                                        "ModelScope / ZeroScope")),
    Case("BIVDiff inversion of a latent from another VAE", mixed_inversion("sd15", "taesd_16ch.safetensors"),
         "error", "BIV_MixedInversion", "ShapeError", ("16 channels", "4 channels", "share one latent space",
                                                       "SD VAE")),
    Case("BIVDiff mixing_ratio NaN", mixed_inversion("sd15", "sd-vae-ft-ema.safetensors", mixing_ratio=float("nan")),
         "refused", "BIV_MixedInversion", "", ("BIVDiff Mixed Inversion", "mixing_ratio=nan", "not a finite number")),
    Case("BIVDiff ladder not in the list", mixed_inversion("sd15", "sd-vae-ft-ema.safetensors", ladder="reverse"),
         "refused", "BIV_MixedInversion", "", ("BIVDiff Mixed Inversion", "ladder='reverse'", "'matched'")),
    Case("BIVDiff steps above the maximum", mixed_inversion("sd15", "sd-vae-ft-ema.safetensors", steps=1001),
         "refused", "BIV_MixedInversion", "", ("BIVDiff Mixed Inversion", "steps=1001", "1..1000")),
]


@pytest.fixture(scope="module")
def comfy_server(host, tmp_path_factory):
    """``python main.py`` on the host's stand-in files plus the catalogue's bad files (its own base directory)."""
    import shutil

    base = tmp_path_factory.mktemp("catalogue_base")
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / "ComfyUI-FrameBridge").symlink_to(F.REPO, target_is_directory=True)
    shutil.copytree(host.base / "models", base / "models", dirs_exist_ok=True)
    shutil.copytree(host.base / "input", base / "input", dirs_exist_ok=True)
    F.write_bad_files(base, host.base / "models" / "vae" / host.files["vae"])
    yield from F.start_server(host.root, base)


@pytest.fixture(scope="module")
def catalogue(comfy_server):
    """The server, and what its folders held before the first case."""
    marker = comfy_server.base / F.MARKER_NAME
    before = {name: F.tree(comfy_server.base / name) for name in ("input", "output", "temp", "models")}
    first = F.queue(comfy_server, F.good_prompt(seed=1))  # warm: load the models once
    assert first.ok, first
    return dict(server=comfy_server, marker=marker, before=before, saved=set(F.output_files(comfy_server, first)),
                seed=[100], times=[])


def _good_after(cat) -> None:
    cat["seed"][0] += 1
    good = F.queue(cat["server"], F.good_prompt(seed=cat["seed"][0]))
    assert good.ok, f"the good prompt after the fault failed: {good}"
    files = F.output_files(cat["server"], good)
    assert files and all(f.is_file() and f.stat().st_size > 0 for f in files)
    cat["saved"].update(files)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault_then_a_good_prompt(catalogue, case):
    server = catalogue["server"]
    start = time.monotonic()
    out = F.queue(server, case.build())
    if case.expect == "success":
        assert out.ok, f"{case.id}: {out}"
        files = F.output_files(server, out)
        assert files and all(f.is_file() and f.stat().st_size > 0 for f in files), out
        catalogue["saved"].update(files)
    elif case.expect == "refused":
        assert out.refused, f"{case.id}: expected a refusal when queued, got {out}"
        assert out.node_type == case.node, out
    else:
        assert not out.refused and out.status == "error", f"{case.id}: {out}"
        assert (out.node_type, out.exception) == (case.node, case.exception), out
    for needle in case.needles:
        assert needle.lower() in out.message.lower(), f"{case.id}: {needle!r} not in {out.message!r}"
    if case.expect != "success":
        assert not F.output_files(server, out), "a failed prompt saved a file"
        assert len(out.message) < 700, f"{case.id}: the message is {len(out.message)} characters: {out.message!r}"
    assert not catalogue["marker"].exists(), "a checkpoint ran code while it was read"
    _good_after(catalogue)
    catalogue["times"].append(time.monotonic() - start)
    report = os.environ.get("FB_FAULT_REPORT")  # JSON lines of what the user saw, for docs/reliability.md
    if report:
        with open(report, "a", encoding="utf-8") as f:
            f.write(json.dumps({"case": case.id, "expect": case.expect, "node": out.node_type,
                                "exception": out.exception, "message": out.message}) + "\n")


def test_cancel_mid_sampling_then_a_good_prompt(catalogue):
    server = catalogue["server"]
    slow = F.good_prompt(seed=4242, steps=1000, prefix="catalogue/cancelled")
    pending = F.queue(server, slow, wait=False)
    deadline, running_since = time.monotonic() + 60, None
    while time.monotonic() < deadline:  # wait until the sampler is running (its progress bar, or 8 s of running)
        if server.get("/queue")["queue_running"]:
            running_since = running_since or time.monotonic()
            if _sampling(server) or time.monotonic() - running_since > 8:
                break
        time.sleep(0.2)
    code, _ = server.post("/interrupt", {})
    assert code == 200
    out = F.finish(server, pending.prompt_id, timeout=300)
    assert out.status == "error" and out.exception == "interrupted" and out.node_type == SAMPLER, out
    assert not F.output_files(server, out)
    assert not list((server.base / "output").rglob("cancelled*")), "the cancelled prompt saved a file"
    _good_after(catalogue)


def _sampling(server) -> bool:
    """Whether the server's log shows the Bridge Sampler's progress bar has started."""
    return "/1000 [" in server.log_tail(3000)


def test_two_prompts_queued_at_once_both_run(catalogue):
    server = catalogue["server"]
    a = F.queue(server, F.good_prompt(seed=501, prefix="catalogue/pair"), wait=False)
    b = F.queue(server, F.good_prompt(seed=502, prefix="catalogue/pair"), wait=False)
    outs = [F.finish(server, p.prompt_id) for p in (a, b)]
    assert all(o.ok for o in outs), outs
    files = [F.output_files(server, o) for o in outs]
    assert all(len(f) == 1 for f in files) and files[0] != files[1]
    assert files[0][0].read_bytes() != files[1][0].read_bytes(), "two seeds gave the same video"
    catalogue["saved"].update(files[0] + files[1])


def test_the_same_seed_twice_gives_identical_bytes(catalogue):
    server = catalogue["server"]
    runs = [F.queue(server, F.good_prompt(seed=s, prefix="catalogue/seed")) for s in (901, 902, 901)]
    assert all(r.ok for r in runs), runs
    data = [F.output_files(server, r)[0].read_bytes() for r in runs]
    assert data[0] == data[2], "the same seed gave different bytes"
    assert data[0] != data[1], "a different seed gave the same bytes (the comparison could not fail)"
    for r in runs:
        catalogue["saved"].update(F.output_files(server, r))


def test_zz_nothing_left_behind(catalogue):
    """Runs last (module order): ComfyUI's folders hold only what was there and the good prompts' videos."""
    base = catalogue["server"].base
    assert F.tree(base / "input") == catalogue["before"]["input"]
    assert F.tree(base / "models") == catalogue["before"]["models"]
    saved = {str(p.relative_to(base / "output")) for p in catalogue["saved"]}
    assert F.tree(base / "output") - catalogue["before"]["output"] == saved
    assert F.tree(base / "temp") - catalogue["before"]["temp"] == set(), "files left in temp/"
    assert not catalogue["marker"].exists()


def test_the_catalogue_has_at_least_30_cases():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


def test_values_that_arrive_through_links_are_checked_when_the_node_runs(host):
    """At validation a linked input is None (its value does not exist yet): it must not be refused then, and a bad
    value that arrives through the link is refused when the node runs, with the same kind of message."""
    motion = host.node_class("FB_CameraMotion")
    assert motion.validate_inputs(motion=None) is True
    with pytest.raises(Exception) as caught:
        motion.execute("sideways")
    assert type(caught.value).__name__ == "ConfigError"
    assert all(s in str(caught.value) for s in ("FrameBridge Camera Motion", "motion='sideways'", "'pan-left'"))
    sampler = host.node_class(SAMPLER)
    assert sampler.validate_inputs(steps=None, cfg=None, method=None) is True
    refused = sampler.validate_inputs(steps=-1)
    assert isinstance(refused, str) and "steps=-1" in refused and "0..1000" in refused
    with pytest.raises(Exception) as caught:
        sampler.execute(None, None, None, None, 0, 2, "auto", float("inf"), "sde", 0.5)
    assert type(caught.value).__name__ == "ConfigError" and "cfg=inf" in str(caught.value)
    assert "Bridge Sampler" in str(caught.value)


def test_an_infinite_image_is_refused_by_bridge_prior_from_image(host):
    """+inf pixels (core nodes cannot make them through a prompt: Image Blend's max refuses a factor of inf)."""
    import torch

    model = host.node_class(LOAD).execute(F.TINY_MODEL, "default").result[0]
    vae = host.node_class("VAELoader")().load_vae("pixel_space")[0]
    pos, neg = host.node_class("FB_CameraMotion").execute("zoom-in").result
    image = torch.rand(1, 64, 64, 3)
    image[0, 10, 20, 2] = float("inf")
    with pytest.raises(Exception) as caught:
        host.node_class(PRIOR).execute(model, vae, image, pos, neg, 16, "center crop")
    assert type(caught.value).__name__ == "ShapeError"
    assert "Bridge Prior from Image" in str(caught.value) and "NaN or infinite pixels" in str(caught.value)
