"""Training loop for the project's own small models: bridge, diffusion, neural prior, SAF.

``python -m framebridge_core train --kind bridge --preset tiny --out runs/bridge`` trains on the
procedural camera-motion dataset (:mod:`framebridge_core.training.data.camera_motion`); the variants
are defined in :mod:`framebridge_core.tiny.variants`. Runs are reproducible and resumable, so long
CPU trainings can be stopped and continued without changing the result; :func:`train` describes
the checkpoints, the stopping rules and the exported file.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..errors import ConfigError
from ..families.latte.network import LatteConfig, LatteModel, LatteNeuralPrior
from ..tiny.format import EXPORT_FILE, META_PREFIX, PREDICTS, PRESETS, TIMESTEP, load_trained, network_config, read_weights
from ..tiny.variants import BRIDGE_KINDS, Schedules, check_kind
from .losses import training_loss

STATE_FILE = "state.pt"


@dataclass
class TrainConfig:
    kind: str = "bridge"
    preset: str = "tiny"
    out: str = "runs/bridge"
    steps: int = 3000
    minutes: float = 0.0            # wall-time budget; 0 = none
    batch: int = 8
    lr: float = 1e-3                # 3e-4 learnt the motion classes markedly slower (tiny-model notes)
    warmup: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.995              # a ~200-step window: CPU runs are a few thousand steps long
    class_dropout: float = 0.1
    # std of the initial class table. The official 0.02 leaves the class almost invisible next to
    # the timestep embedding, and with adaLN-Zero the class path then learns last: at our budget the
    # networks ignored the motion class. 1.0 makes the classes distinct from step 0
    # (docs/notes/tiny-model.md has the measurement).
    label_init_std: float = 1.0
    loss_weighting: str = "sigma2-clamped"   # eps_psi variants; "uniform" = the official loss
    bridge_output: str = "eps_psi"           # bridge / bridge-np network output: eps_psi, precond or x0
    seed: int = 0
    ckpt_every: int = 250
    log_every: int = 25
    precision: str = "bf16"        # autocast dtype on CPU ("bf16" or "fp32")
    init_from: str = ""            # weights to start from (saf / plain-finetune / bridge-np warm start)
    neural_prior: str = ""         # trained neural prior (bridge-np)
    threads: int = 0               # torch intra-op threads; 0 = leave as is
    export_dtype: str = "fp16"
    data_seed: int = 0
    sources: tuple = ("skimage", "sklearn", "templates", "textures")
    head_width: int = -1            # conv head width after unpatchify; -1 = the preset's, 0 = linear (official)
    head_features: int = -1         # feature channels for the conv head; -1 = the preset's
    keep_first_frame: bool = True   # samplers keep the input image as frame 0 (exported in the file)

    def __post_init__(self) -> None:
        check_kind(self.kind)
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}.")
        if self.precision not in ("bf16", "fp32"):
            raise ConfigError(f"precision must be 'bf16' or 'fp32', got {self.precision!r}.")
        if self.kind in ("saf", "plain-finetune") and not self.init_from:
            raise ConfigError(f"--kind {self.kind} fine-tunes a trained diffusion model: pass --init-from "
                              f"<diffusion run>/model.safetensors.")
        if self.kind == "bridge-np" and not self.neural_prior:
            raise ConfigError("--kind bridge-np needs the trained neural prior: pass --neural-prior "
                              "<neural-prior run>/model.safetensors.")
        if self.batch < 1 or self.steps < 1:
            raise ConfigError(f"batch and steps must be positive, got batch={self.batch}, steps={self.steps}.")


def build_network(kind: str, config: LatteConfig, generator: Optional[torch.Generator] = None,
                  label_init_std: Optional[float] = None) -> torch.nn.Module:
    """A freshly initialised network (official initialisation; ``label_init_std`` rescales the
    class table, see :class:`TrainConfig`)."""
    net = LatteNeuralPrior(config) if kind == "neural-prior" else LatteModel(config)
    inner = _inner(net)
    inner.initialize_weights(generator)
    if label_init_std is not None and inner.y_embedder is not None:
        w = inner.y_embedder.embedding_table.weight
        with torch.no_grad():
            w.copy_(torch.randn(w.shape, generator=generator) * label_init_std)
    return net


def widen_input(state: dict[str, torch.Tensor], in_channels: int) -> dict[str, torch.Tensor]:
    """Warm-start a neural-prior bridge (2C input channels) from a plain bridge (C channels).

    The extra channels of the patch embedding (and of the conv head's input) start at zero, so the widened network computes
    exactly the plain bridge until training moves them.
    """
    w = state["x_embedder.proj.weight"]
    if w.shape[1] == in_channels:
        return state
    if w.shape[1] * 2 != in_channels:
        raise ConfigError(f"cannot widen a patch embedding with {w.shape[1]} input channels to {in_channels}.")
    state = dict(state)
    state["x_embedder.proj.weight"] = torch.cat([w, torch.zeros_like(w)], dim=1)
    head = state.get("head.layers.0.weight")
    if head is not None:  # the conv head sees [final channels, network input]: the input part grows at the end
        state["head.layers.0.weight"] = torch.cat([head, torch.zeros_like(head[:, -w.shape[1]:])], dim=1)
    return state


def add_conv_head(state: dict[str, torch.Tensor], net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Warm-start a conv-head network from a linear-head one (the earlier bundled models).

    The final layer gets zero rows for the head's feature channels (patch layout ``(p, q, c)``, c
    fastest) and the head keeps ``net``'s fresh initialisation, whose last convolution is zero: the
    network computes exactly the linear-head model until training moves it.
    """
    cfg = net.config
    if cfg.head_width == 0 or any(k.startswith("head.") for k in state):
        return state
    p, old_c, new_c = cfg.patch_size, cfg.out_channels, cfg.final_channels
    w, b = state["final_layer.linear.weight"], state["final_layer.linear.bias"]
    if w.shape[0] != p * p * old_c:
        raise ConfigError(f"cannot add a conv head: the final layer has {w.shape[0]} rows, expected {p * p * old_c}.")
    state = dict(state)
    wide_w = torch.zeros(p, p, new_c, w.shape[1], dtype=w.dtype)
    wide_w[:, :, :old_c] = w.reshape(p, p, old_c, -1)
    wide_b = torch.zeros(p, p, new_c, dtype=b.dtype)
    wide_b[:, :, :old_c] = b.reshape(p, p, old_c)
    state["final_layer.linear.weight"] = wide_w.reshape(p * p * new_c, -1)
    state["final_layer.linear.bias"] = wide_b.reshape(-1)
    state.update({k: v.detach().clone() for k, v in net.state_dict().items() if k.startswith("head.")})
    return state


def _dataset(cfg: TrainConfig, split: str = "train"):
    from .data.camera_motion import CameraMotionDataset
    from .data.sources import warn_unavailable

    p = PRESETS[cfg.preset]
    warn_unavailable(cfg.sources)
    return CameraMotionDataset(split=split, size=p["size"], frames=p["frames"], seed=cfg.data_seed,
                               include=tuple(cfg.sources))


def _motions(dataset) -> tuple:
    """Class names of a dataset (its ``motions``; the camera-motion classes by default)."""
    names = getattr(dataset, "motions", None)
    if names is None:
        from .data.camera_motion import MOTIONS

        names = MOTIONS
    return tuple(names)


class _Progress:
    """A one-line progress report on stderr (no dependency), every ``every`` steps."""

    def __init__(self, total: int, every: int, start: int, stream=sys.stderr):
        self.total, self.every, self.stream = total, every, stream
        self.t0, self.s0 = time.time(), start

    def update(self, step: int, loss: float, minutes_left: Optional[float]) -> None:
        if step % self.every and step != self.total:
            return
        done = step - self.s0
        rate = (time.time() - self.t0) / max(done, 1)
        eta = rate * (self.total - step) / 60
        if minutes_left is not None:
            eta = min(eta, minutes_left)
        bar = int(30 * step / self.total)
        self.stream.write(f"\r[{'#' * bar}{'.' * (30 - bar)}] {step}/{self.total} loss {loss:.4f} "
                          f"{rate:.2f}s/step eta {eta:.1f} min ")
        self.stream.flush()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)


#: options that may change between a run and its resumption
_RESUMABLE = ("out", "steps", "minutes", "threads", "ckpt_every", "log_every")


def _identity(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in _RESUMABLE}


def _inner(net: torch.nn.Module) -> torch.nn.Module:
    return net.nwarp_model if isinstance(net, LatteNeuralPrior) else net


@dataclass
class _Run:
    """The state of a run between steps: what ``state.pt`` saves, plus the fixed parts of the run."""

    config: LatteConfig
    net: torch.nn.Module
    inner: torch.nn.Module
    neural_prior: Optional[torch.nn.Module]
    sched: Schedules
    opt: torch.optim.Optimizer
    data_gen: torch.Generator
    noise_gen: torch.Generator
    ema: dict
    state_path: Path
    step: int = 0
    elapsed: float = 0.0
    log: list = field(default_factory=list)


def _setup(cfg: TrainConfig, dataset, state_path: Path) -> _Run:
    """Network (optionally warm-started), frozen neural prior, optimiser, generators and EMA."""
    num_classes = len(_motions(dataset))
    config = network_config(cfg.kind, cfg.preset, num_classes, cfg.bridge_output,
                            head_width=None if cfg.head_width < 0 else cfg.head_width,
                            head_features=None if cfg.head_features < 0 else cfg.head_features,
                            keep_first_frame=cfg.keep_first_frame)
    init_gen = torch.Generator().manual_seed(cfg.seed)
    net = build_network(cfg.kind, config, init_gen, cfg.label_init_std)
    inner = _inner(net)
    if cfg.init_from:
        sd, _ = read_weights(cfg.init_from)
        from ..checkpoints import load_weights_strict

        sd = add_conv_head(widen_input(sd, config.in_channels), inner)
        load_weights_strict(inner, sd, f"{cfg.kind} network (init)")
    neural_prior = None
    if cfg.kind == "bridge-np":
        neural_prior, _ = load_trained(cfg.neural_prior, "neural-prior")
        neural_prior.requires_grad_(False)
    sched = Schedules.default()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    data_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 1)
    noise_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 2)
    ema = {k: v.detach().clone().float() for k, v in inner.state_dict().items()}
    return _Run(config=config, net=net, inner=inner, neural_prior=neural_prior, sched=sched, opt=opt,
                data_gen=data_gen, noise_gen=noise_gen, ema=ema, state_path=state_path)


def _resume(run: _Run, cfg: TrainConfig) -> None:
    """Restore a run from its ``state.pt``; refuses one written by a different configuration."""
    st = torch.load(run.state_path, map_location="cpu", weights_only=True)  # never runs code from the file
    if _identity(st["config"]) != _identity(asdict(cfg)):
        raise ConfigError(f"{run.state_path} was written by a different configuration; "
                          f"start a new --out folder or pass the same options.")
    run.inner.load_state_dict(st["model"])
    run.ema = st["ema"]
    run.opt.load_state_dict(st["optimizer"])
    run.data_gen.set_state(st["data_gen"])
    run.noise_gen.set_state(st["noise_gen"])
    run.step, run.elapsed, run.log = st["step"], st["elapsed"], st["log"]


def _checkpoint(run: _Run, cfg: TrainConfig) -> None:
    _save_atomic({"config": asdict(cfg), "model": run.inner.state_dict(), "ema": run.ema,
                  "optimizer": run.opt.state_dict(), "data_gen": run.data_gen.get_state(),
                  "noise_gen": run.noise_gen.get_state(), "step": run.step, "elapsed": run.elapsed,
                  "log": run.log},
                 run.state_path)


def _train_step(run: _Run, cfg: TrainConfig, dataset, autocast: bool) -> float:
    """One optimiser step (warm-up learning rate, clipped gradients) and the EMA update; returns the loss."""
    lr = cfg.lr * min(1.0, (run.step + 1) / max(cfg.warmup, 1))
    for g in run.opt.param_groups:
        g["lr"] = lr
    video, labels = dataset.sample_batch(cfg.batch, run.data_gen)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = training_loss(cfg.kind, run.net, video, labels,
                             run.sched, run.noise_gen, class_dropout=cfg.class_dropout,
                             neural_prior=run.neural_prior, weighting=cfg.loss_weighting)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss.item()} at step {run.step}; lower --lr.")
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.net.parameters(), cfg.grad_clip)
    run.opt.step()
    run.step += 1
    _ema_update(run.ema, run.inner, min(cfg.ema, (1 + run.step) / (10 + run.step)))
    return loss.item()


def _train_steps(run: _Run, cfg: TrainConfig, dataset,
                 on_step: Optional[Callable[[int, float], None]]) -> None:
    """Step until ``cfg.steps`` or the wall-time budget, logging and checkpointing on the way."""
    autocast = cfg.precision == "bf16"
    progress = _Progress(cfg.steps, cfg.log_every, run.step)
    smooth = None
    t_start = time.time() - run.elapsed
    run.net.train()
    while run.step < cfg.steps:
        if cfg.minutes and (time.time() - t_start) / 60 >= cfg.minutes:
            break
        value = _train_step(run, cfg, dataset, autocast)
        smooth = value if smooth is None else 0.98 * smooth + 0.02 * value
        run.elapsed = time.time() - t_start
        run.log.append((run.step, value, round(run.elapsed, 2)))
        left = cfg.minutes - run.elapsed / 60 if cfg.minutes else None
        progress.update(run.step, smooth, left)
        if on_step is not None:
            on_step(run.step, value)
        if run.step % cfg.ckpt_every == 0:
            _checkpoint(run, cfg)


def _write_loss_csv(log: list, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loss", "seconds"])
        w.writerows(log)


def train(cfg: TrainConfig, *, resume: bool = False, dataset=None,
          on_step: Optional[Callable[[int, float], None]] = None) -> Path:
    """Run (or resume) a training run; returns the path of the exported safetensors file.

    * Batches and noise come from generators seeded by ``cfg.seed`` (no global RNG state is
      touched), so a run is reproducible and a resumed run continues the same random streams.
    * An EMA of the weights is kept; it is what is exported, as the official code does.
    * ``state.pt`` (weights, EMA, optimiser, step, generator states, loss log) is written every
      ``ckpt_every`` steps, at the end and on Ctrl-C or SIGTERM; ``resume=True`` continues from it.
    * The run stops at ``cfg.steps`` or after ``cfg.minutes`` of wall time, whichever comes first.
    * ``model.safetensors`` (EMA weights, fp16 by default) is exported with metadata that names the
      family, variant, config, data, step count and date (:func:`export`), plus ``loss.csv``.
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dataset = dataset if dataset is not None else _dataset(cfg)
    run = _setup(cfg, dataset, out / STATE_FILE)
    if resume and run.state_path.is_file():
        _resume(run, cfg)
    # SIGTERM (a job scheduler, `kill`) behaves like Ctrl-C: checkpoint, then stop
    previous = signal.getsignal(signal.SIGTERM)
    if threading_is_main():
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        _train_steps(run, cfg, dataset, on_step)
    except KeyboardInterrupt:
        _checkpoint(run, cfg)
        sys.stderr.write(f"\ninterrupted at step {run.step}; resume with --resume\n")
        raise
    finally:
        if threading_is_main():
            signal.signal(signal.SIGTERM, previous)
    _checkpoint(run, cfg)
    sys.stderr.write("\n")
    _write_loss_csv(run.log, out / "loss.csv")
    return export(cfg, run.config, run.ema, run.step, run.elapsed, dataset, out / EXPORT_FILE)


def export(cfg: TrainConfig, config: LatteConfig, weights: dict[str, torch.Tensor], step: int,
           seconds: float, dataset, path: Path) -> Path:
    from safetensors.torch import save_file

    dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[cfg.export_dtype]
    tensors = {k: v.to(dtype).contiguous() for k, v in weights.items()}
    motions = list(_motions(dataset))
    meta = {
        "family": "latte",
        "variant": cfg.kind,
        "latent_space": "pixel",
        "value_range": "-1..1",
        "predicts": config.output if cfg.kind in ("bridge", "bridge-np") else PREDICTS[cfg.kind],
        "loss_weighting": (cfg.loss_weighting if PREDICTS[cfg.kind] == "eps_psi" and config.output == "eps_psi"
                           else "uniform"),
        "timestep": TIMESTEP[cfg.kind],
        "num_heads": str(config.num_heads),
        "config": json.dumps(config.to_dict()),
        "classes": json.dumps(motions),
        "class_kind": "camera-motion",
        "data": f"camera-motion (procedural, data seed {cfg.data_seed}, sources {'+'.join(cfg.sources)})",
        "steps": str(step),
        "batch": str(cfg.batch),
        "train_minutes": f"{seconds / 60:.1f}",
        "date": _dt.date.today().isoformat(),
        "seed": str(cfg.seed),
        "default_steps": "25",
        "default_cfg": "1.0" if cfg.kind == "neural-prior" else "2.0",
        "diffusion_schedule": "linear 1e-4..0.02" if cfg.kind in ("diffusion", "saf") else "",
    }
    if cfg.kind in BRIDGE_KINDS:
        meta["bridge_schedule"] = "bridge-tts gmax beta_min=0.01 beta_max=50"
    if config.keep_first_frame:
        meta["keep_first_frame"] = "true"
    save_file(tensors, str(path), metadata={META_PREFIX + k: v for k, v in meta.items() if v})
    return path


def config_from_args(args: dict[str, Any]) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in args.items() if k in names and v is not None})
