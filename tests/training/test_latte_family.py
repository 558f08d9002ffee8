"""``train --family latte``: FrameBridge-Latte bridge, neural prior, bridge with the neural prior, and
SAF / plain fine-tunes of a Latte diffusion checkpoint, on precomputed latents with class labels, at
a tiny config (hidden 32, depth 2, patch 2, 4 frames of 4x4x4 latents). Each kind trains 2 steps
and exports a file the pack's own loader reads as the right network; 2 gloo processes equal 1."""

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
from framebridge_core.errors import CheckpointError, ConfigError, ShapeError
from framebridge_core.families import load_model
from framebridge_core.families.frames import PRIOR_KEY
from framebridge_core.families.latte.frames import LatteBridgeFrames
from framebridge_core.families.latte.network import LatteConfig, LatteModel, LatteNeuralPrior
from framebridge_core.testing import seeded_random_weights
from framebridge_core.tiny.format import load_trained
from framebridge_core.tiny.variants import Schedules, generate
from framebridge_core.training.data.video_folder import VideoFolderDataset
from framebridge_core.training.latte_family import LatteTask
from framebridge_core.training.loop import TrainConfig, config_from_args, train

ROOT = Path(__file__).resolve().parents[2]
NET = dict(input_size=4, patch_size=2, hidden_size=32, depth=2, num_heads=2, num_frames=4)
CLASSES = ("jump", "run", "swim")


def _data(root: Path, labels: bool = True, shape=(4, 4, 4, 4), clips: int = 4) -> Path:
    root.mkdir()
    g = torch.Generator().manual_seed(5)
    rows = []
    for i in range(clips):
        save_file({"latent": torch.randn(*shape, generator=g)}, str(root / f"clip{i}.safetensors"))
        row = {"video": f"clip{i}.avi", "latents": f"clip{i}.safetensors"}
        if labels:
            row["label"] = CLASSES[i % 3]
        rows.append(row)
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def _official_diffusion(path: Path) -> dict:
    """A Latte UCF-101 style diffusion checkpoint: ``{"ema": ...}``, 4 frames in ``temp_embed`` (no
    prepended condition frame), ``learn_sigma`` (8 output channels), classes + null row."""
    cfg = LatteConfig(**NET, in_channels=4, out_channels=8, learn_sigma=True, condition_type=None,
                      num_classes=len(CLASSES))
    net = seeded_random_weights(LatteModel(cfg), seed=11)
    net.reset_fixed_embeddings()
    sd = {k: v.detach().clone() for k, v in net.state_dict().items()}
    torch.save({"ema": sd}, path)
    return sd


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("latte")
    conf = root / "net.json"
    conf.write_text(json.dumps(NET))
    data = _data(root / "data")
    prior = train(_cfg(root / "prior-run", "neural-prior", data, conf))
    source = _official_diffusion(root / "latte-ucf101.pt")
    return {"root": root, "conf": conf, "data": data, "prior": prior, "diffusion": root / "latte-ucf101.pt",
            "source": source}


def _cfg(out: Path, kind: str, data: Path, conf: Path, **kw) -> TrainConfig:
    opts = dict(steps=2, batch=2, lr=1e-3, warmup=1, precision="fp32", device="cpu", export_dtype="fp32",
                loss_weighting="uniform", **kw)
    return TrainConfig(family="latte", kind=kind, data=str(data), family_config=str(conf), out=str(out), **opts)


def _check_bridge_file(path: Path, in_channels: int, state: dict) -> None:
    model, info = load_model(path)
    assert info.name == "latte_bridge" and isinstance(model, LatteModel)
    assert model.config.in_channels == in_channels and model.config.latent_channels == 4
    assert model.config.num_classes == 3 and model.config.null_class == 3 and model.config.num_frames == 4
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["ema"][k]), k
    # the network Load FrameBridge builds for the samplers (frames as batch) returns the model's eps_psi
    frames = LatteBridgeFrames(info.config)
    frames.net.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(4, 4, 4, 4, generator=g), torch.randn(1, 4, 4, 4, generator=g)
    coarse = torch.randn(1, 4, 4, 4, 4, generator=g) if in_channels == 8 else None
    extra = {}
    if coarse is not None:
        extra = {"transformer_options": {PRIOR_KEY: coarse.reshape(4, 4, 4, 4)}, "fb_neural_prior": True}
    out = frames(x, torch.full((4,), 500), fb_cond_frame=cond.expand(4, -1, -1, -1),
                 fb_class=torch.ones(4, dtype=torch.long), **extra)
    want = model.eps_psi(x[None], torch.tensor([500]), torch.tensor([1]), cond, coarse)
    assert torch.allclose(out, want[0], atol=1e-6)


@pytest.mark.parametrize("kind", ["bridge", "bridge-np", "neural-prior"])
def test_each_kind_trains_and_exports_what_load_framebridge_reads(setup, tmp_path, kind):
    s = setup
    path = s["prior"] if kind == "neural-prior" else train(
        _cfg(tmp_path / kind, kind, s["data"], s["conf"], neural_prior=str(s["prior"]) if kind == "bridge-np" else ""))
    state = torch.load(path.parent / "state.pt", weights_only=True)
    assert state["step"] == 2 and len(state["log"]) == 2
    _, meta = load_state_dict(path)
    assert meta["framebridge.family"] == "latte" and meta["framebridge.variant"] == kind
    assert meta["framebridge.latent_space"] == "sd-vae" and json.loads(meta["framebridge.classes"]) == list(CLASSES)
    if kind == "neural-prior":
        model, info = load_model(path)
        assert info.name == "latte_neural_prior" and isinstance(model, LatteNeuralPrior)
        assert model.config.has_timestep is False and model.config.num_frames == 4
        for k, v in model.nwarp_model.state_dict().items():
            assert torch.equal(v, state["ema"][k]), k
        assert meta["framebridge.predicts"] == "x0"
    else:
        assert meta["framebridge.predicts"] == "eps_psi" and meta["framebridge.timestep"] == "bridge_index"
        _check_bridge_file(path, 8 if kind == "bridge-np" else 4, state)


@pytest.mark.parametrize("kind", ["saf", "plain-finetune"])
def test_fine_tunes_of_a_latte_diffusion_checkpoint(setup, tmp_path, kind):
    s = setup
    path = train(_cfg(tmp_path / kind, kind, s["data"], s["conf"], init_from=str(s["diffusion"])))
    # v-prediction bridges are the quality benchmark's models: Load FrameBridge's loader says so ...
    with pytest.raises(CheckpointError, match="v_aligned.*quality benchmark"):
        load_model(path)
    # ... and the benchmark's loader and sampler read them
    model, meta = load_trained(str(path))
    assert meta["framebridge.predicts"] == "v_aligned" and meta["framebridge.variant"] == kind
    assert meta["framebridge.timestep"] == ("saf_t_tilde" if kind == "saf" else "bridge_index")
    cfg = model.config
    assert (cfg.in_channels, cfg.out_channels, cfg.learn_sigma, cfg.condition_type) == (4, 4, False, "concat_pre")
    video = generate(kind, model, torch.randn(1, 4, 4, 4), torch.tensor([0]), steps=2, sched=Schedules.default(),
                     generator=torch.Generator().manual_seed(0))
    assert video.shape == (1, 4, 4, 4, 4) and bool(torch.isfinite(video).all())
    # started from the diffusion weights (2 Adam steps at lr 1e-3 move a tensor by <= 2e-3): the shared
    # tensors, the eps half of the learn_sigma output layer, and a temp_embed grown to 4 + 1 frames
    sd = model.state_dict()
    src = s["source"]
    assert float((sd["blocks.1.attn.qkv.weight"] - src["blocks.1.attn.qkv.weight"]).abs().max()) < 3e-3
    eps_rows = src["final_layer.linear.weight"].reshape(2, 2, 8, -1)[:, :, :4].reshape(16, -1)
    sigma_rows = src["final_layer.linear.weight"].reshape(2, 2, 8, -1)[:, :, 4:].reshape(16, -1)
    assert float((sd["final_layer.linear.weight"] - eps_rows).abs().max()) < 3e-3
    assert float((sd["final_layer.linear.weight"] - sigma_rows).abs().max()) > 0.1
    assert sd["temp_embed"].shape == (1, 5, 32)


def test_continuing_a_released_bridge_file_and_widening_it_for_the_neural_prior(setup, tmp_path):
    s = setup
    first = train(_cfg(tmp_path / "a", "bridge", s["data"], s["conf"]))
    released = tmp_path / "framebridge-latte.pt"           # the official {"ema": state_dict} layout, no metadata
    sd, _ = load_state_dict(first)
    torch.save({"ema": sd}, released)
    again = train(_cfg(tmp_path / "b", "bridge", s["data"], s["conf"], init_from=str(released)))
    moved = load_state_dict(again)[0]
    assert float((moved["blocks.0.mlp.fc1.weight"] - sd["blocks.0.mlp.fc1.weight"]).abs().max()) < 3e-3
    wide = train(_cfg(tmp_path / "c", "bridge-np", s["data"], s["conf"], init_from=str(released),
                      neural_prior=str(s["prior"])))
    w = load_state_dict(wide)[0]["x_embedder.proj.weight"]
    assert w.shape[1] == 8 and float(w[:, 4:].abs().max()) < 3e-3       # the coarse-video channels start at zero


def test_two_processes_equal_one_on_the_same_global_batch(setup, tmp_path):
    s = setup
    args = ["--family", "latte", "--kind", "bridge-np", "--data", str(s["data"]), "--family-config", str(s["conf"]),
            "--neural-prior", str(s["prior"]), "--steps", "2", "--batch", "1", "--lr", "1e-3", "--warmup", "1",
            "--class-dropout", "0.5", "--device", "cpu", "--threads", "1", "--export-dtype", "fp32",
            "--out", str(tmp_path / "two")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "framebridge_core", "train", *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    two = torch.load(tmp_path / "two" / "state.pt", weights_only=True)
    assert two["world_size"] == 2 and two["global_batch"] == 2
    assert two["config"]["lr"] == 1e-3 and two["config"]["ema"] == 0.9999      # the official recipe where not given
    one_cfg = _cfg(tmp_path / "one", "bridge-np", s["data"], s["conf"], neural_prior=str(s["prior"]),
                   class_dropout=0.5, ema=0.9999, grad_clip=0.0)
    train(one_cfg)
    one = torch.load(tmp_path / "one" / "state.pt", weights_only=True)
    # Not bit-equal: DDP sums the two shards' gradients in another order than one process does (measured: median
    # 0, worst 1.5e-8 over 33 tensors, loss log equal to 3e-8). Unlike the VideoCrafter/CogVideoX case, no tensor
    # here gets a rounding-noise gradient that Adam would blow up to ~lr, so the worst tensor is bounded tightly
    # too; a wrong shard, data order or noise moves almost every tensor by ~lr = 1e-3 (Adam's first step).
    diffs = sorted(float((v - two["model"][k]).abs().max()) for k, v in one["model"].items())
    assert diffs[len(diffs) // 2] <= 1e-7
    assert diffs[-1] <= 1e-6
    assert [l[1] for l in one["log"]] == pytest.approx([l[1] for l in two["log"]], rel=1e-5)


class _Spy:
    """Records the class labels the network is called with."""

    def __init__(self, net):
        self.net, self.labels, self.inputs = net, [], []

    def __call__(self, *args, **kw):   # (x_in, t, labels) for a bridge, (first frame, labels) for the prior
        self.inputs.append(args[0].detach().clone())
        self.labels.append(args[-1].clone())
        return self.net(*args, **kw)


@pytest.mark.parametrize("kind", ["bridge", "neural-prior"])
def test_label_dropout_uses_the_null_class(setup, kind):
    s = setup
    ds = VideoFolderDataset(s["data"])
    for p, want in ((1.0, lambda labels: torch.full_like(labels, 3)), (0.0, lambda labels: labels)):
        task = LatteTask(_cfg(s["root"] / "unused", kind, s["data"], s["conf"], class_dropout=p), ds)
        plan = task.draw(4, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
        spy = _Spy(task.net)
        loss = task.loss(spy, plan, 0, 4, torch.device("cpu"))
        assert bool(torch.isfinite(loss))
        assert torch.equal(spy.labels[0], want(ds.labels[plan[0]]))
        assert task.config.null_class == 3


def test_bridge_np_bridges_from_the_trained_neural_prior(setup):
    s = setup
    ds = VideoFolderDataset(s["data"])
    task = LatteTask(_cfg(s["root"] / "unused", "bridge-np", s["data"], s["conf"], neural_prior=str(s["prior"])), ds)
    saved = load_state_dict(s["prior"])[0]
    for k, v in task.neural_prior.nwarp_model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    plan = task.draw(2, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
    seen = []
    task.neural_prior.register_forward_hook(lambda m, a, out: seen.append(out))
    calls = _Spy(task.net)
    task.loss(calls, plan, 0, 2, torch.device("cpu"))
    # the network input's extra channels are [condition frame; the coarse video the prior network made]
    assert len(seen) == 1
    x_in = calls.inputs[0]
    assert x_in.shape == (2, 5, 8, 4, 4)
    assert torch.equal(x_in[:, 1:, 4:], seen[0]) and torch.equal(x_in[:, :1, 4:], x_in[:, :1, :4])
    assert not any(p.requires_grad for p in task.neural_prior.parameters())


def test_typed_errors(setup, tmp_path):
    s = setup
    # a checkpoint of another family
    from framebridge_core.families.cogvideox.network import CogVideoXConfig, CogVideoXTransformer

    cog = CogVideoXTransformer(CogVideoXConfig.from_dict(dict(
        num_attention_heads=2, attention_head_dim=16, in_channels=32, out_channels=16, time_embed_dim=32,
        text_embed_dim=24, num_layers=1, sample_width=8, sample_height=8, sample_frames=9, max_text_seq_length=8)))
    other = tmp_path / "cog.safetensors"
    save_file({k: v.contiguous() for k, v in cog.state_dict().items()}, str(other))
    with pytest.raises(CheckpointError, match="holds a cogvideox model, not a Latte one"):
        train(_cfg(tmp_path / "e1", "bridge", s["data"], s["conf"], init_from=str(other)))
    # the diffusion checkpoint given to a bridge kind, a bridge given to saf, a prior given to a bridge
    with pytest.raises(CheckpointError, match="diffusion checkpoint .learn_sigma.*--kind saf"):
        train(_cfg(tmp_path / "e2", "bridge", s["data"], s["conf"], init_from=str(s["diffusion"])))
    with pytest.raises(CheckpointError, match="neural prior network, which --kind bridge cannot"):
        train(_cfg(tmp_path / "e3", "bridge", s["data"], s["conf"], init_from=str(s["prior"])))
    with pytest.raises(CheckpointError, match="is a FrameBridge-Latte neural-prior model, not a diffusion"):
        train(_cfg(tmp_path / "e4", "saf", s["data"], s["conf"], init_from=str(s["prior"])))
    # missing labels
    with pytest.raises(ConfigError, match="class-conditional.*needs a 'label' column"):
        train(_cfg(tmp_path / "e5", "bridge", _data(tmp_path / "nolabels", labels=False), s["conf"]))
    # latents that do not fit the network
    with pytest.raises(ShapeError, match=r"latent \(4, 4, 8, 8\) does not fit the network.*\(4, 4, 4, 4\)"
                                         r".*input_size=8"):
        train(_cfg(tmp_path / "e6", "bridge", _data(tmp_path / "big", shape=(4, 4, 8, 8)), s["conf"]))
    with pytest.raises(ShapeError, match=r"'latent' \(4, 4, 4\).*\[F, C, H, W\]"):
        train(_cfg(tmp_path / "e7", "bridge", _data(tmp_path / "flat", shape=(4, 4, 4)), s["conf"]))
    # pixel clips, a wrong --neural-prior file, kinds the family has not
    with pytest.raises(ConfigError, match="precomputed SD-VAE latents"):
        pixels = tmp_path / "pixels"
        pixels.mkdir()
        (pixels / "metadata.csv").write_text("video,label\nwalk.gif,walk\n")
        train(_cfg(tmp_path / "e8", "bridge", pixels, s["conf"]))
    bridge = train(_cfg(tmp_path / "b", "bridge", s["data"], s["conf"]))
    with pytest.raises(CheckpointError, match="is a latte_bridge model, not a FrameBridge-Latte neural prior"):
        train(_cfg(tmp_path / "e9", "bridge-np", s["data"], s["conf"], neural_prior=str(bridge)))
    with pytest.raises(ConfigError, match="--kind diffusion is not available for --family latte"):
        TrainConfig(family="latte", kind="diffusion")
    with pytest.raises(ConfigError, match="--family latte --kind saf fine-tunes a Latte diffusion checkpoint"):
        TrainConfig(family="latte", kind="saf")


def test_the_command_line_takes_the_released_recipe_where_not_given():
    bridge = config_from_args({"family": "latte", "kind": "bridge", "out": "x"})
    assert (bridge.lr, bridge.ema, bridge.warmup, bridge.grad_clip, bridge.loss_weighting, bridge.class_dropout,
            bridge.precision) == (1e-5, 0.9999, 0, 0.0, "uniform", 0.1, "fp32")
    assert config_from_args({"family": "latte", "kind": "neural-prior", "out": "x"}).lr == 1e-4
    assert config_from_args({"family": "latte", "kind": "bridge", "out": "x", "lr": 3e-4}).lr == 3e-4
    assert config_from_args({"kind": "bridge", "out": "x"}).lr == TrainConfig().lr          # tiny: unchanged
