"""SAF fine-tuning of tiny-config VideoCrafter and CogVideoX bridges from a text-to-video diffusion
checkpoint, under torchrun with 2 CPU processes: the export is a file the pack's own loader detects
and loads, and the 2-process run equals a 1-process run on the same global batch."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from framebridge_core.checkpoints import load_state_dict
from framebridge_core.errors import CheckpointError, ConfigError
from framebridge_core.families import detect_family, load_model
from framebridge_core.families.cogvideox.bridge import CogVideoXBridge
from framebridge_core.families.cogvideox.network import CogVideoXConfig, CogVideoXTransformer
from framebridge_core.families.videocrafter.bridge import VideoCrafterBridge, VideoCrafterConfig
from framebridge_core.families.videocrafter.resampler import ResamplerConfig
from framebridge_core.families.videocrafter.unet3d import UNet3D, UNet3DConfig
from framebridge_core.testing import seeded_random_weights
from framebridge_core.training.loop import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
VC_UNET = dict(out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1,),
               num_head_channels=16, context_dim=32, temporal_length=4)
VC_BRIDGE = VideoCrafterConfig(
    unet=UNet3DConfig(in_channels=8, **VC_UNET),
    resampler=ResamplerConfig(dim=32, depth=1, dim_head=8, heads=2, num_queries=16, embedding_dim=40, output_dim=32,
                              ff_mult=2, video_length=4), latent_size=8)
COG_T2V = dict(num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16, time_embed_dim=32,
               text_embed_dim=24, num_layers=2, sample_width=8, sample_height=8, sample_frames=9,
               max_text_seq_length=8)


def _videocrafter_t2v(path: Path) -> dict:
    """A VideoCrafter-1 style text-to-video UNet (4 input channels, no image attention, no frame stride),
    as a Lightning-style checkpoint read with weights_only."""
    unet = UNet3D(UNet3DConfig(in_channels=4, image_cross_attention=False, image_cross_attention_scale_learnable=False,
                               fs_condition=False, **VC_UNET))
    seeded_random_weights(unet, seed=3)
    sd = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    torch.save({"state_dict": sd, "global_step": 7}, path)
    return unet.state_dict()


def _cogvideox_t2v(folder: Path) -> dict:
    """A CogVideoX-2B style text-to-video transformer folder (16 input channels)."""
    folder.mkdir()
    net = seeded_random_weights(CogVideoXTransformer(CogVideoXConfig.from_dict(COG_T2V)), seed=4)
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"_class_name": "CogVideoXTransformer3DModel", **COG_T2V}))
    return sd


def _latent_folder(root: Path, family: str, clips: int = 4) -> Path:
    root.mkdir()
    g = torch.Generator().manual_seed(5)
    rows = []
    for i in range(clips):
        if family == "videocrafter":
            item = {"latent": torch.randn(4, 4, 8, 8, generator=g), "text": torch.randn(77, 32, generator=g),
                    "image": torch.randn(9, 40, generator=g)}
        else:
            item = {"latent": torch.randn(3, 16, 8, 8, generator=g), "text": torch.randn(8, 24, generator=g)}
        save_file(item, str(root / f"clip{i}.safetensors"))
        rows.append({"video": f"clip{i}.mp4", "caption": f"clip number {i}", "latents": f"clip{i}.safetensors"})
    null = {"text": torch.zeros(77, 32) if family == "videocrafter" else torch.zeros(8, 24)}
    save_file(null, str(root / "null.safetensors"))
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["video", "caption", "latents"])
        w.writeheader()
        w.writerows(rows)
    return root


def _setup(tmp_path: Path, family: str):
    if family == "videocrafter":
        init = tmp_path / "vc1-t2v.ckpt"
        source = _videocrafter_t2v(init)
        conf = tmp_path / "bridge.json"
        conf.write_text(json.dumps(VC_BRIDGE.to_dict()))
        extra = ["--family-config", str(conf)]
    else:
        init = tmp_path / "cogvideox-2b-t2v"
        source = _cogvideox_t2v(init)
        extra = []
    return init, source, extra, _latent_folder(tmp_path / "data", family)


def _args(family, init, extra, data, out, batch):
    return ["--family", family, "--kind", "saf", "--init-from", str(init), "--data", str(data), "--out", str(out),
            "--steps", "2", "--batch", str(batch), "--lr", "1e-3", "--warmup", "1", "--precision", "fp32",
            "--device", "cpu", "--threads", "1", "--export-dtype", "fp32", *extra]


@pytest.mark.parametrize("family", ["videocrafter", "cogvideox"])
def test_saf_finetune_under_torchrun_exports_a_file_the_loader_reads(tmp_path, family):
    init, source, extra, data = _setup(tmp_path, family)
    out2 = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "framebridge_core", "train", *_args(family, init, extra, data, out2, batch=1)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # the pack's detector and loader (what Load FrameBridge / Load FrameBridge Checkpoint call)
    path = out2 / "model.safetensors"
    sd, meta = load_state_dict(path)
    info = detect_family(sd, meta)
    model, info = load_model(path)
    assert isinstance(model, VideoCrafterBridge if family == "videocrafter" else CogVideoXBridge)
    assert meta["framebridge.family"] == family and meta["framebridge.variant"] == "saf"
    state = torch.load(out2 / "state.pt", weights_only=True)
    assert state["world_size"] == 2 and state["global_batch"] == 2
    inner = model.diffusion_model if family == "videocrafter" else model.transformer
    prefix = "diffusion_model." if family == "videocrafter" else "transformer."
    for k, v in inner.state_dict().items():
        assert torch.equal(v, state["ema"][prefix + k]), k

    # initialised from the diffusion checkpoint: shared tensors moved little, the new input channels were added
    if family == "videocrafter":
        w = inner.state_dict()["time_embed.0.weight"]
        assert float((w - source["time_embed.0.weight"]).abs().max()) < 0.01
        assert inner.state_dict()["input_blocks.0.0.weight"].shape[1] == 8
    else:
        w = inner.state_dict()["patch_embed.proj.weight"]
        assert float((w[:, :16] - source["patch_embed.proj.weight"]).abs().max()) < 0.01
        assert float(w[:, 16:].abs().max()) < 0.01          # image-latent channels start at zero

    # the same run on one process with the same global batch
    out1 = tmp_path / "one"
    one = TrainConfig(family=family, kind="saf", init_from=str(init), data=str(data), out=str(out1), steps=2, batch=2,
                      lr=1e-3, warmup=1, precision="fp32", device="cpu", export_dtype="fp32",
                      family_config=extra[1] if extra else "")
    train(one)
    single = torch.load(out1 / "state.pt", weights_only=True)
    # Not 1e-6 everywhere: some tensors get a gradient that is only rounding noise (~1e-10), whose sign
    # depends on the summation order of 1 vs 2 processes, and Adam turns it into an update of up to
    # lr·|g|/eps per step. Examples: the key-norm bias of CogVideoX (softmax is shift-invariant), the
    # biases of VideoCrafter convolutions followed by a GroupNorm of one channel per group (32 groups of
    # the tiny config's 32 channels remove any per-channel shift), the image-attention keys behind a zero
    # gate. Measured: VideoCrafter worst 9.8e-5, median 2.7e-7 over 500 tensors. A wrong shard or data
    # order moves almost every tensor by ~lr (Adam's first step is lr·sign(g)), which the median catches.
    diffs = sorted(float((v - state["model"][k]).abs().max()) for k, v in single["model"].items())
    assert diffs[len(diffs) // 2] <= 1e-6
    assert diffs[-1] <= 3e-4
    assert [l[1] for l in single["log"]] == pytest.approx([l[1] for l in state["log"]], rel=1e-5)


def test_family_options_are_checked():
    with pytest.raises(ConfigError, match="--kind bridge is not available for --family videocrafter.*saf"):
        TrainConfig(family="videocrafter", kind="bridge", init_from="x.ckpt")
    with pytest.raises(ConfigError, match="unknown family 'wan'"):
        TrainConfig(family="wan", kind="saf", init_from="x")
    with pytest.raises(ConfigError, match="precision must be one of bf16, fp16, fp32"):
        TrainConfig(precision="fp8")


def test_a_checkpoint_of_another_family_is_refused(tmp_path):
    init, _, extra, data = _setup(tmp_path, "cogvideox")
    cfg = TrainConfig(family="videocrafter", kind="saf", init_from=str(init), data=str(data), out=str(tmp_path / "o"),
                      steps=1, batch=1, precision="fp32", device="cpu")
    with pytest.raises(CheckpointError, match="no VideoCrafter UNet in the --init-from checkpoint"):
        train(cfg)


def test_a_code_carrying_diffusion_checkpoint_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "ran.txt"), "w"))

    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"x": Payload()}}, bad)
    cfg = TrainConfig(family="videocrafter", kind="saf", init_from=str(bad), out=str(tmp_path / "o"), steps=1,
                      batch=1, precision="fp32", device="cpu", data=str(_latent_folder(tmp_path / "d", "videocrafter")))
    with pytest.raises(CheckpointError):
        train(cfg)
    assert not (tmp_path / "ran.txt").exists()
