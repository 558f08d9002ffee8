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
from .networks import _inner, _Through, LatteNetworkTask, build_network, widen_input  # noqa: F401  (re-exported)
from ..tiny.format import EXPORT_FILE, META_PREFIX, PREDICTS, PRESETS, TIMESTEP, load_trained, network_config, read_weights
from ..tiny.variants import BRIDGE_KINDS, Schedules, check_kind
from .losses import training_loss

STATE_FILE = "state.pt"
#: autocast precisions of the forward pass (the weights and the optimiser stay float32)
PRECISIONS = ("bf16", "fp16", "fp32")
#: model families ``train`` accepts: the pack's tiny Latte models and the released backbones' families
FAMILY_NAMES = ("tiny", "latte", "videocrafter", "cogvideox")


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
    # -- scale (training/distributed.py): the global batch is batch x processes x accum --------------
    accum: int = 1                  # gradient-accumulation micro-steps per optimiser step
    grad_checkpointing: bool = False  # recompute each transformer/UNet block in the backward pass
    fsdp: bool = False              # shard parameters, gradients and optimiser state over the processes
    device: str = "auto"            # auto (CUDA device LOCAL_RANK when there is one), cpu or cuda
    # -- model family and data (training/families.py, training/data/video_folder.py) ----------------
    family: str = "tiny"            # tiny (the pack's pixel models), latte (SD-VAE latents), videocrafter or cogvideox
    family_config: str = ""         # JSON file with the network config of a family (default: from --init-from)
    data: str = ""                  # a video folder (metadata.csv); default: the procedural camera-motion data

    def __post_init__(self) -> None:
        check_kind(self.kind)
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}.")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}; "
                              f"bf16 and fp16 run the forward pass under autocast (fp16 with loss scaling).")
        if self.family not in FAMILY_NAMES:
            raise ConfigError(f"unknown family {self.family!r}; choose one of {', '.join(FAMILY_NAMES)}.")
        if self.family != "tiny":
            from .families import check_family_kind

            check_family_kind(self.family, self.kind, self.init_from)
        if self.accum < 1:
            raise ConfigError(f"--accum must be >= 1 (micro-steps per optimiser step), got {self.accum}.")
        if self.kind in ("saf", "plain-finetune") and not self.init_from:
            raise ConfigError(f"--kind {self.kind} fine-tunes a trained diffusion model: pass --init-from "
                              f"<diffusion run>/model.safetensors.")
        if self.kind == "bridge-np" and not self.neural_prior:
            raise ConfigError("--kind bridge-np needs the trained neural prior: pass --neural-prior "
                              "<neural-prior run>/model.safetensors.")
        if self.batch < 1 or self.steps < 1:
            raise ConfigError(f"batch and steps must be positive, got batch={self.batch}, steps={self.steps}.")


def add_conv_head(state: dict[str, torch.Tensor], net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Warm-start a conv-head network from a linear-head one (the earlier bundled models).

    The final layer gets zero rows for the head's feature channels (patch layout ``(p, q, c)``, c
    fastest) and the head keeps ``net``'s fresh initialisation, whose last convolution is zero: the
    network computes exactly the linear-head model until training moves it. A network with the
    overlap-add unpatchify (``head_overlap``) gets it at zero, which also leaves the function unchanged.
    """
    cfg = net.config
    if cfg.head_overlap and "final_layer.overlap.weight" not in state:  # the overlap-add unpatchify starts at zero
        state = dict(state)
        state["final_layer.overlap.weight"] = torch.zeros_like(net.state_dict()["final_layer.overlap.weight"])
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
    if cfg.data:
        from .data.video_folder import VideoFolderDataset

        p = PRESETS[cfg.preset]
        return VideoFolderDataset(cfg.data, size=p["size"], frames=p["frames"])
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


#: options that may change between a run and its resumption (the global batch must stay the same)
_RESUMABLE = ("out", "steps", "minutes", "threads", "ckpt_every", "log_every", "batch", "accum", "device",
              "grad_checkpointing", "fsdp")
#: options added after state files already existed, with the value those files were made with
_ADDED = {"accum": 1, "grad_checkpointing": False, "fsdp": False, "device": "auto", "family": "tiny",
          "family_config": "", "data": ""}


def _identity(config: dict) -> dict:
    return {k: v for k, v in {**_ADDED, **config}.items() if k not in _RESUMABLE}


class TinyTask(LatteNetworkTask):
    """The pack's tiny Latte models (:mod:`framebridge_core.tiny.variants`) on a clip dataset.

    A *task* gives the loop its network (``net``: what is trained and wrapped; ``inner``: what
    ``state.pt`` and the export hold), the random plan of one global batch (:meth:`draw`), the loss of
    rows ``[lo, hi)`` of that plan (:meth:`loss`), the blocks gradient checkpointing recomputes and
    the export. Family tasks (:mod:`framebridge_core.training.families`) have the same shape.
    """

    def __init__(self, cfg: "TrainConfig", dataset):
        self.cfg, self.dataset = cfg, dataset
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
        self.neural_prior = None
        if cfg.kind == "bridge-np":
            self.neural_prior, _ = load_trained(cfg.neural_prior, "neural-prior")
            self.neural_prior.requires_grad_(False)
        self.config, self.net, self.inner = config, net, inner
        self.sched = Schedules.default()

    def draw(self, n: int, data_gen: torch.Generator, noise_gen: torch.Generator):
        """The plan of one global batch of ``n`` clips: which clips (rendered per shard) and the noise."""
        ds = self.dataset
        if hasattr(ds, "draw_plan") and hasattr(ds, "clip_shape"):
            plan, shape = ds.draw_plan(n, data_gen), (n,) + tuple(ds.clip_shape)
        else:  # any dataset with sample_batch(n, generator): every process makes the whole batch
            plan = ds.sample_batch(n, data_gen)
            shape = tuple(plan[0].shape)
        from .losses import draw_randomness

        draws = draw_randomness(self.cfg.kind, shape, torch.float32, self.config.null_class, self.cfg.class_dropout,
                                noise_gen)
        return plan, draws

    def loss(self, model, step_plan, lo: int, hi: int, device: torch.device) -> torch.Tensor:
        from .losses import loss_from_draws

        plan, draws = step_plan
        if hasattr(self.dataset, "render_plan") and hasattr(self.dataset, "clip_shape"):
            video, labels = self.dataset.render_plan(plan, lo, hi)
        else:
            video, labels = plan[0][lo:hi], plan[1][lo:hi]
        if device.type != "cpu":
            video, labels, draws = video.to(device), labels.to(device), draws.to(device)
        return loss_from_draws(self.cfg.kind, _Through(model, self.net), video, labels, draws.shard(lo, hi),
                               self.sched, neural_prior=self.neural_prior, weighting=self.cfg.loss_weighting)

    def export(self, weights: dict, step: int, seconds: float, path: Path, global_batch: int) -> Path:
        return export(self.cfg, self.config, weights, step, seconds, self.dataset, path, batch=global_batch)


@dataclass
class _Run:
    """The state of a run between steps: what ``state.pt`` saves, plus the fixed parts of the run."""

    task: Any
    env: Any
    model: torch.nn.Module          # what the forward pass goes through (the network, or its DDP/FSDP wrapper)
    opt: torch.optim.Optimizer
    data_gen: torch.Generator
    noise_gen: torch.Generator
    ema: dict
    state_path: Path
    global_batch: int
    scaler: Any = None
    step: int = 0
    elapsed: float = 0.0
    log: list = field(default_factory=list)
    gen_states: tuple = ()          # generator states at the start of the current step (for Ctrl-C)

    @property
    def inner(self) -> torch.nn.Module:
        return self.task.inner

    @property
    def net(self) -> torch.nn.Module:
        return self.task.net


def _make_task(cfg: "TrainConfig", dataset):
    if cfg.family == "tiny":
        return TinyTask(cfg, dataset)
    if cfg.family == "latte":
        from .latte_family import LatteTask

        return LatteTask(cfg, dataset)
    from .families import FamilyTask

    return FamilyTask(cfg, dataset)


def _read_state(path: Path, env) -> Optional[dict]:
    """``state.pt`` read by rank 0 (``weights_only``: never runs code from the file), given to every rank."""
    from .distributed import broadcast_object

    st = None
    if env.is_main and path.is_file():
        st = torch.load(path, map_location="cpu", weights_only=True)
    return broadcast_object(st, env)


def _setup(cfg: "TrainConfig", dataset, state_path: Path, env, resume: bool) -> _Run:
    """Network (optionally warm-started, or resumed), wrapper, optimiser, generators and EMA."""
    from .distributed import check_global_batch
    from .scale import autocast_setup, enable_checkpointing, wrap_model

    global_batch = check_global_batch(cfg.batch, env.world_size, cfg.accum)
    task = _make_task(cfg, dataset)
    st = _read_state(state_path, env) if resume else None
    if st is not None:
        _check_resumable(st, cfg, global_batch, state_path)
        task.inner.load_state_dict(st["model"])
    task.to(env.device)
    if cfg.grad_checkpointing:
        enable_checkpointing(task.blocks())
    model = wrap_model(task.net, task.blocks(), env, cfg.fsdp)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    data_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 1)
    noise_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 2)
    from .scale import ema_init

    ema = ema_init(task.inner, model, cfg.fsdp)
    run = _Run(task=task, env=env, model=model, opt=opt, data_gen=data_gen, noise_gen=noise_gen, ema=ema,
               state_path=state_path, global_batch=global_batch, scaler=autocast_setup(cfg.precision, env.device))
    if st is not None:
        _resume(run, cfg, st)
    return run


def _check_resumable(st: dict, cfg: "TrainConfig", global_batch: int, path: Path) -> None:
    if _identity(st["config"]) != _identity(asdict(cfg)):
        raise ConfigError(f"{path} was written by a different configuration; "
                          f"start a new --out folder or pass the same options.")
    before = int(st.get("global_batch", st["config"]["batch"]))
    if before != global_batch:
        raise ConfigError(f"{path} was trained with a global batch of {before}; this launch makes {global_batch} "
                          f"(--batch {cfg.batch} x processes x --accum {cfg.accum}). Choose --batch/--accum so that "
                          f"batch x processes x accum = {before}.")


def _resume(run: _Run, cfg: "TrainConfig", st: dict) -> None:
    """Restore the optimiser, EMA, generators and counters of a run from its ``state.pt`` contents."""
    from .scale import ema_from_full, load_optimizer

    run.ema = ema_from_full(st["ema"], run.ema, run.env.device)
    load_optimizer(run.opt, run.model, run.task.net, st["optimizer"], cfg.fsdp)
    run.data_gen.set_state(st["data_gen"])
    run.noise_gen.set_state(st["noise_gen"])
    if run.scaler is not None and st.get("scaler"):
        run.scaler.load_state_dict(st["scaler"])
    run.step, run.elapsed, run.log = st["step"], st["elapsed"], st["log"]


def _checkpoint(run: _Run, cfg: "TrainConfig", gen_states: Optional[tuple] = None) -> None:
    """Write ``state.pt`` from rank 0 (with FSDP every rank takes part in gathering the shards)."""
    from .scale import ema_to_full, full_model_state, full_optimizer_state

    model_sd = full_model_state(run.task.inner, run.model, cfg.fsdp)
    opt_sd = full_optimizer_state(run.opt, run.model, run.task.net, cfg.fsdp)
    ema = ema_to_full(run.ema)
    if not run.env.is_main:
        return
    data_state, noise_state = gen_states or (run.data_gen.get_state(), run.noise_gen.get_state())
    _save_atomic({"config": asdict(cfg), "model": model_sd, "ema": ema, "optimizer": opt_sd,
                  "data_gen": data_state, "noise_gen": noise_state, "step": run.step, "elapsed": run.elapsed,
                  "log": run.log, "global_batch": run.global_batch, "world_size": run.env.world_size,
                  "scaler": run.scaler.state_dict() if run.scaler is not None else {}},
                 run.state_path)


def _train_step(run: _Run, cfg: "TrainConfig", autocast) -> float:
    """One optimiser step over the global batch (every process its shards, ``accum`` micro-steps;
    warm-up learning rate, clipped gradients) and the EMA update; returns the mean loss of the batch."""
    from contextlib import nullcontext

    from .distributed import mean_over_ranks, shard_bounds
    from .scale import clip_gradients

    lr = cfg.lr * min(1.0, (run.step + 1) / max(cfg.warmup, 1))
    for g in run.opt.param_groups:
        g["lr"] = lr
    run.gen_states = (run.data_gen.get_state(), run.noise_gen.get_state())
    plan = run.task.draw(run.global_batch, run.data_gen, run.noise_gen)
    run.opt.zero_grad(set_to_none=True)
    total = 0.0
    for micro in range(cfg.accum):
        lo, hi = shard_bounds(run.global_batch, run.env, micro, cfg.accum)
        last = micro == cfg.accum - 1
        sync = nullcontext() if last or not hasattr(run.model, "no_sync") else run.model.no_sync()
        with sync:
            with autocast():
                loss = run.task.loss(run.model, plan, lo, hi, run.env.device)
            if cfg.accum > 1:
                loss = loss / cfg.accum
            local = loss.item()
            if not torch.isfinite(loss) and not run.env.distributed:
                raise FloatingPointError(f"training loss became {local} at step {run.step}; lower --lr.")
            (run.scaler.scale(loss) if run.scaler is not None else loss).backward()
        total += local
    value = mean_over_ranks(total, run.env)
    if not torch.isfinite(torch.tensor(value)):
        raise FloatingPointError(f"training loss became {value} at step {run.step}; lower --lr.")
    if run.scaler is not None:
        run.scaler.unscale_(run.opt)
    if cfg.grad_clip:
        clip_gradients(run.model, cfg.grad_clip, cfg.fsdp)
    if run.scaler is not None:
        run.scaler.step(run.opt)
        run.scaler.update()
    else:
        run.opt.step()
    run.step += 1
    _ema_update(run.ema, run.inner, min(cfg.ema, (1 + run.step) / (10 + run.step)))
    run.gen_states = ()
    return value


def _train_steps(run: _Run, cfg: "TrainConfig", on_step: Optional[Callable[[int, float], None]]) -> None:
    """Step until ``cfg.steps`` or the wall-time budget, logging and checkpointing on the way."""
    from .distributed import any_rank
    from .scale import autocast_context

    autocast = autocast_context(cfg.precision, run.env.device)
    progress = _Progress(cfg.steps, cfg.log_every, run.step) if run.env.is_main else None
    smooth = None
    t_start = time.time() - run.elapsed
    run.net.train()
    while run.step < cfg.steps:
        over = bool(cfg.minutes) and (time.time() - t_start) / 60 >= cfg.minutes
        if any_rank(over, run.env) if cfg.minutes else False:
            break
        value = _train_step(run, cfg, autocast)
        smooth = value if smooth is None else 0.98 * smooth + 0.02 * value
        run.elapsed = time.time() - t_start
        run.log.append((run.step, value, round(run.elapsed, 2)))
        left = cfg.minutes - run.elapsed / 60 if cfg.minutes else None
        if progress is not None:
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
    * Under ``torchrun`` (``WORLD_SIZE`` > 1) every process computes its shard of each global batch
      (``batch`` × processes × ``accum`` clips) and DDP (or FSDP with ``cfg.fsdp``) averages the
      gradients: the parameters follow the single-process run on the same global batch, and
      ``state.pt`` resumes on any number of processes (:mod:`framebridge_core.training.distributed`).
      Only rank 0 writes files or progress.
    * An EMA of the weights is kept; it is what is exported, as the official code does.
    * ``state.pt`` (weights, EMA, optimiser, step, generator states, loss log) is written every
      ``ckpt_every`` steps, at the end and on Ctrl-C or SIGTERM; ``resume=True`` continues from it.
    * The run stops at ``cfg.steps`` or after ``cfg.minutes`` of wall time, whichever comes first.
    * ``model.safetensors`` (EMA weights, fp16 by default) is exported with metadata that names the
      family, variant, config, data, step count and date (:func:`export`), plus ``loss.csv``.
    """
    from .distributed import setup, teardown

    out = Path(cfg.out)
    was_initialised = _dist_initialised()
    env = setup(cfg.device)
    try:
        if env.is_main:
            out.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        dataset = dataset if dataset is not None else _dataset(cfg)
        run = _setup(cfg, dataset, out / STATE_FILE, env, resume)
        # SIGTERM (a job scheduler, `kill`, torchrun stopping its workers) behaves like Ctrl-C: checkpoint, then stop
        previous = signal.getsignal(signal.SIGTERM)
        if threading_is_main():
            signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            _train_steps(run, cfg, on_step)
        except KeyboardInterrupt:
            if not cfg.fsdp:  # FSDP gathers need every rank; its run resumes from the last periodic state
                _checkpoint(run, cfg, run.gen_states or None)
            if env.is_main:
                sys.stderr.write(f"\ninterrupted at step {run.step}; resume with --resume\n")
            raise
        finally:
            if threading_is_main():
                signal.signal(signal.SIGTERM, previous)
        _checkpoint(run, cfg)
        from .scale import ema_to_full

        weights = ema_to_full(run.ema)
        path = out / EXPORT_FILE
        if env.is_main:
            sys.stderr.write("\n")
            _write_loss_csv(run.log, out / "loss.csv")
            run.task.export(weights, run.step, run.elapsed, path, run.global_batch)
        return path
    finally:
        if not was_initialised:
            teardown(env)


def _dist_initialised() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def export(cfg: TrainConfig, config: LatteConfig, weights: dict[str, torch.Tensor], step: int,
           seconds: float, dataset, path: Path, batch: Optional[int] = None) -> Path:
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
        "class_kind": getattr(dataset, "class_kind", "camera-motion"),
        "data": getattr(dataset, "description", None) or
                f"camera-motion (procedural, data seed {cfg.data_seed}, sources {'+'.join(cfg.sources)})",
        "steps": str(step),
        "batch": str(cfg.batch if batch is None else batch),
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
    """The command line's options; ``--family latte`` takes the released recipe for the ones not given
    (:func:`framebridge_core.training.latte_family.official_recipe`)."""
    names = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in args.items() if k in names and v is not None}
    if given.get("family") == "latte":
        from .latte_family import official_recipe

        given = {**official_recipe(given.get("kind", "bridge")), **given}
    return TrainConfig(**given)
