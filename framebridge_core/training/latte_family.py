"""FrameBridge-Latte training on SD-VAE latents (UCF-101 style, class-conditional).

``train --family latte --data <video folder with latents>`` trains the official networks
(docs/math.md §4.2, §5.3; the released ``configs/ucf101/*.yaml``):

* ``bridge``: Latte-S/2 with the ``concat_pre`` condition frame, prior = the first frame's latent
  repeated, target ``eps_psi = (x_t − x0)/σ_i``, timestep the bridge index i, label dropout to the
  null class (``--class-dropout``, 0.1).
* ``neural-prior``: Latte-nwarp-S/2 (no timestep, no prepended frame), one pass from the first frame
  repeated, regression ``MSE(coarse, x0)``.
* ``bridge-np``: the 8-channel bridge whose prior is the trained neural prior's coarse video
  (``--neural-prior``), which is also concatenated to the input channels.
* ``saf`` / ``plain-finetune``: a bridge fine-tuned from a Latte *diffusion* checkpoint (the official
  Latte UCF-101 layout: ``temp_embed`` of the video's frames, ``learn_sigma`` output, no prepended
  frame), with and without SNR alignment, v in aligned coordinates as the pack's other variants.

Any of them starts from scratch (official initialisation), from ``--init-from`` (a FrameBridge-Latte
file of the same kind, e.g. a released checkpoint to continue; a 4-channel bridge widens into a
``bridge-np``), and the network comes from ``--family-config`` (a :class:`LatteConfig` dict whose
architecture is used; the kind sets the timestep, condition frame and channels), else the init
checkpoint, else Latte-S/2. The losses are those of the pack's tiny models
(:func:`~framebridge_core.training.losses.loss_from_draws`): the same network at another size.

Data rows carry ``latent`` ``[F, C, H, W]`` (the per-frame SD-VAE latent × 0.18215, as the official
``LAT/train.py``) and the CSV's ``label``. The export is what Load FrameBridge / Load Neural Prior
detect as FrameBridge-Latte (official key names, ``framebridge.*`` metadata).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from pathlib import Path
from typing import Optional

import torch

from ..checkpoints import load_state_dict, load_weights_strict, normalize_state_dict
from ..errors import CheckpointError, ConfigError, ShapeError
from ..families.latte.network import LatteConfig, latte_s2_bridge
from ..tiny.format import PREDICTS, TIMESTEP
from ..tiny.variants import Schedules
from .networks import LatteNetworkTask

LATTE_KINDS = ("bridge", "bridge-np", "neural-prior", "saf", "plain-finetune")
META = "framebridge."


def official_recipe(kind: str) -> dict:
    """Options of the released UCF-101 recipe (``configs/ucf101/*.yaml``) that differ from the tiny
    models' defaults; the command line applies them to ``--family latte`` where they are not given.
    Gradient clipping (0.1) starts after 100k steps there: pass ``--grad-clip 0.1`` beyond that."""
    return {"lr": 1e-4 if kind == "neural-prior" else 1e-5, "ema": 0.9999, "warmup": 0, "grad_clip": 0.0,
            "loss_weighting": "uniform", "class_dropout": 0.1, "precision": "fp32"}


def check_latte_kind(kind: str, init_from: str) -> None:
    if kind not in LATTE_KINDS:
        raise ConfigError(f"--kind {kind} is not available for --family latte: allowed {', '.join(LATTE_KINDS)}.")
    if kind in ("saf", "plain-finetune") and not init_from:
        raise ConfigError(f"--family latte --kind {kind} fine-tunes a Latte diffusion checkpoint: pass --init-from "
                          f"<the Latte UCF-101 checkpoint (.pt with 'ema', or .safetensors)>.")


def for_kind(base: LatteConfig, kind: str, latent_channels: int, num_classes: int) -> LatteConfig:
    """``base``'s architecture as the network of ``kind`` (timestep, condition frame, channels, classes)."""
    if kind == "neural-prior":
        kw = dict(condition_type=None, has_timestep=False, in_channels=latent_channels)
    else:
        kw = dict(condition_type="concat_pre", has_timestep=True,
                  in_channels=2 * latent_channels if kind == "bridge-np" else latent_channels)
    return dataclasses.replace(base, out_channels=latent_channels, learn_sigma=False, output="eps_psi",
                               head_width=0, head_features=0, keep_first_frame=False, num_classes=num_classes,
                               class_dropout=True, **kw)


def _detect(sd: dict, meta: dict, what: str):
    """The Latte detector's reading of ``sd`` (CheckpointError naming the family it is otherwise)."""
    from ..families import detect_family

    try:
        info = detect_family(sd, meta)
    except CheckpointError as e:
        raise CheckpointError(f"--init-from is not a Latte checkpoint ({what} expected): {e}") from e
    if info.detector != "latte":
        raise CheckpointError(f"--init-from holds a {info.detector} model, not a Latte one ({what} expected); pass a "
                              f"Latte checkpoint, or the matching --family.")
    return info


def diffusion_config(sd: dict, meta: dict) -> LatteConfig:
    """The network of a Latte diffusion checkpoint in the official layout (``temp_embed`` = the video's
    frames, no prepended condition frame), read off the weights by the Latte detector."""
    from ..families.latte.checkpoint import LATTE_BRIDGE

    variant = meta.get(META + "variant")
    if variant in LATTE_KINDS:
        raise CheckpointError(f"--init-from is a FrameBridge-Latte {variant} model, not a diffusion checkpoint: "
                              f"continue it with --kind {variant} --init-from, or pass the Latte diffusion "
                              f"checkpoint for --kind saf / plain-finetune.")
    info = _detect(sd, meta, "a Latte diffusion checkpoint")
    if info.name != LATTE_BRIDGE:
        raise CheckpointError("--init-from is a Latte neural prior (no timestep embedder), not a diffusion checkpoint.")
    # the detector reads a timestep network as a concat_pre bridge; the official diffusion model sees its frames only
    return dataclasses.replace(info.config, condition_type=None, num_frames=int(sd["temp_embed"].shape[1]))


def diffusion_to_bridge(sd: dict, diff: LatteConfig, bridge_net) -> dict:
    """A diffusion state dict for the bridge network: ``temp_embed`` (a fixed sin-cos table) takes the
    bridge's frame count, a ``learn_sigma`` final layer keeps its ε channels (patch layout ``(p, q, c)``)."""
    sd = dict(sd)
    sd["temp_embed"] = bridge_net.temp_embed.detach().clone()
    if diff.learn_sigma:
        p, C = diff.patch_size, diff.out_channels
        w, b = sd["final_layer.linear.weight"], sd["final_layer.linear.bias"]
        keep = C // 2
        sd["final_layer.linear.weight"] = w.reshape(p, p, C, -1)[:, :, :keep].reshape(p * p * keep, -1)
        sd["final_layer.linear.bias"] = b.reshape(p, p, C)[:, :, :keep].reshape(-1)
    return sd


def _read_family_config(path: str) -> Optional[dict]:
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--family-config {path!r} is not a file; pass a JSON LatteConfig (e.g. "
                          f"{{\"hidden_size\": 384, \"depth\": 12, \"num_heads\": 6, ...}}).")
    try:
        return dict(json.loads(p.read_text()))
    except json.JSONDecodeError as e:
        raise ConfigError(f"--family-config {path!r} is not valid JSON ({e}); fix the file.") from e


class LatteTask(LatteNetworkTask):
    """The FrameBridge-Latte networks on precomputed latents (module docstring); the task interface
    of :class:`framebridge_core.training.loop.TinyTask`."""

    def __init__(self, cfg, dataset):
        from .networks import _inner, build_network, widen_input

        check_latte_kind(cfg.kind, cfg.init_from)
        self.cfg, self.dataset, self.kind = cfg, dataset, cfg.kind
        shape = self._check_data(dataset)
        classes = len(dataset.motions)
        init_sd, init_meta = ({}, {})
        if cfg.init_from:
            init_sd, init_meta = load_state_dict(cfg.init_from)
            init_sd, _, _ = normalize_state_dict(init_sd)
            init_sd = {k: v.float() for k, v in init_sd.items()}
        given = _read_family_config(cfg.family_config)
        base = None if given is None else LatteConfig.from_dict(given)
        diff = None
        if cfg.init_from:  # the checkpoint's network; --family-config gives the head count the weights do not show
            meta = dict(init_meta)
            if base is not None:
                meta.setdefault(META + "num_heads", str(base.num_heads))
            if cfg.kind in ("saf", "plain-finetune"):
                base = diff = diffusion_config(init_sd, meta)
            else:
                base = self._bridge_or_prior_config(init_sd, meta)
        base = base or latte_s2_bridge()
        # the class table: the given network's, else one row per class of the data (+ the null class)
        explicit = bool(cfg.init_from) or "num_classes" in (given or {})
        self.config = for_kind(base, cfg.kind, shape[1], base.num_classes if explicit else classes)
        self._check_shape(shape, classes)
        self.net = build_network(cfg.kind, self.config, torch.Generator().manual_seed(cfg.seed))
        self.inner = _inner(self.net)
        if cfg.init_from:
            sd = diffusion_to_bridge(init_sd, diff, self.inner) if diff is not None else widen_input(
                init_sd, self.config.in_channels)
            load_weights_strict(self.inner, sd, f"Latte {cfg.kind} network (--init-from)")
        self.neural_prior = self._load_neural_prior(cfg.neural_prior) if cfg.kind == "bridge-np" else None
        self.sched = Schedules.default()

    # -- checks ----------------------------------------------------------------------------------
    @staticmethod
    def _check_data(dataset) -> tuple:
        if not getattr(dataset, "latent_mode", False):
            raise ConfigError("--family latte trains on precomputed SD-VAE latents: pass --data <folder> whose "
                              "metadata.csv has a 'latents' column (.safetensors with 'latent' [F, 4, H, W], "
                              "the VAE latent x 0.18215) and a 'label' column.")
        if not any(r.get("label") for r in dataset.rows):
            raise ConfigError(f"--family latte is class-conditional: {dataset.base / 'metadata.csv'} needs a 'label' "
                              f"column with every clip's class (UCF-101: the action name).")
        missing = [r.get("latents") for r in dataset.rows if not r.get("label")]
        if missing:
            raise ConfigError(f"{len(missing)} clip(s) have no label (first: {missing[0]}); give every row of "
                              f"metadata.csv its class.")
        item = dataset.clip(0)
        if "latent" not in item or item["latent"].ndim != 4:
            got = tuple(item["latent"].shape) if "latent" in item else "none"
            raise ShapeError(f"the latents file {dataset.rows[0]['latents']} has 'latent' {got}; --family latte needs "
                             f"'latent' [F, C, H, W] (frames, SD-VAE channels, height, width).")
        return tuple(item["latent"].shape)

    def _check_shape(self, shape: tuple, classes: int) -> None:
        c = self.config
        want = (c.num_frames, c.latent_channels, c.input_size, c.input_size)
        if shape != want:
            raise ShapeError(f"the clips' latent {shape} does not fit the network, which takes [F, C, H, W] = "
                             f"{want}: encode {c.num_frames} frames at {c.input_size * 8}x{c.input_size * 8} pixels "
                             f"(SD-VAE /8), or pass --family-config with num_frames={shape[0]}, input_size={shape[2]}.")
        if c.num_classes < classes:
            raise ConfigError(f"the data has {classes} classes but the network's class table has {c.num_classes}; "
                              f"train from scratch or pass --family-config with num_classes={classes}.")

    def _bridge_or_prior_config(self, sd: dict, meta: dict) -> LatteConfig:
        from ..families.latte.checkpoint import LATTE_NEURAL_PRIOR

        info = _detect(sd, meta, f"a FrameBridge-Latte {self.kind} model")
        prior = info.name == LATTE_NEURAL_PRIOR
        if prior != (self.kind == "neural-prior"):
            have = "neural prior" if prior else "bridge"
            want = "neural prior" if self.kind == "neural-prior" else "bridge"
            raise CheckpointError(f"--init-from is a FrameBridge-Latte {have} network, which --kind {self.kind} cannot "
                                  f"continue; pass a {want} file.")
        if info.config.learn_sigma:
            raise CheckpointError("--init-from looks like a Latte diffusion checkpoint (learn_sigma output): "
                                  "fine-tune it with --kind saf or plain-finetune.")
        if info.config.prior_concat and self.kind == "bridge":
            raise CheckpointError("--init-from is the 8-channel bridge trained with the neural prior: continue it with "
                                  "--kind bridge-np --neural-prior <file>.")
        return info.config

    def _load_neural_prior(self, path: str):
        from ..families import load_model
        from ..families.latte.checkpoint import LATTE_NEURAL_PRIOR

        net, info = load_model(path)
        if info.name != LATTE_NEURAL_PRIOR:
            raise CheckpointError(f"--neural-prior {path} is a {info.name} model, not a FrameBridge-Latte neural prior "
                                  f"(train one with --kind neural-prior).")
        p, c = info.config, self.config
        if (p.num_frames, p.latent_channels, p.input_size) != (c.num_frames, c.latent_channels, c.input_size) or \
                p.num_classes < c.num_classes:
            raise ShapeError(f"--neural-prior makes [F, C, H] = {(p.num_frames, p.latent_channels, p.input_size)} "
                             f"with {p.num_classes} classes; this bridge needs "
                             f"{(c.num_frames, c.latent_channels, c.input_size)} with {c.num_classes}.")
        return net.requires_grad_(False).eval()

    # -- the task interface ------------------------------------------------------------------------
    def draw(self, n: int, data_gen: torch.Generator, noise_gen: torch.Generator):
        """Clips (rendered per shard) and the noise, indices and label dropout of the whole global batch."""
        from .losses import draw_randomness

        plan = self.dataset.draw_plan(n, data_gen)
        c = self.config
        shape = (n, c.num_frames, c.latent_channels, c.input_size, c.input_size)
        return plan, draw_randomness(self.kind, shape, torch.float32, c.null_class, self.cfg.class_dropout, noise_gen)

    def loss(self, model, step_plan, lo: int, hi: int, device: torch.device) -> torch.Tensor:
        from .networks import _Through
        from .losses import loss_from_draws

        plan, draws = step_plan
        video = self.dataset.render_plan(plan, lo, hi)["latent"].float()
        labels = self.dataset.labels[plan[lo:hi]]
        if device.type != "cpu":
            video, labels, draws = video.to(device), labels.to(device), draws.to(device)
        return loss_from_draws(self.kind, _Through(model, self.net), video, labels, draws.shard(lo, hi), self.sched,
                               neural_prior=self.neural_prior, weighting=self.cfg.loss_weighting)

    def export(self, weights: dict, step: int, seconds: float, path: Path, global_batch: int) -> Path:
        """The EMA weights under the official key names, with the metadata Load FrameBridge reads."""
        from safetensors.torch import save_file

        cfg, c = self.cfg, self.config
        dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[cfg.export_dtype]
        meta = {"family": "latte", "variant": cfg.kind, "latent_space": "sd-vae", "predicts": PREDICTS[cfg.kind],
                "timestep": TIMESTEP[cfg.kind], "loss_weighting": cfg.loss_weighting if cfg.kind in
                ("bridge", "bridge-np") else "uniform", "num_heads": str(c.num_heads),
                "config": json.dumps(c.to_dict()), "classes": json.dumps(list(self.dataset.motions)),
                "class_kind": "label", "data": getattr(self.dataset, "description", ""), "steps": str(step),
                "batch": str(global_batch), "train_minutes": f"{seconds / 60:.1f}",
                "date": _dt.date.today().isoformat(), "seed": str(cfg.seed),
                "init_from": Path(cfg.init_from).name if cfg.init_from else "",
                "default_cfg": "1.0" if cfg.kind == "neural-prior" else "7.0",
                "bridge_schedule": "" if cfg.kind == "neural-prior" else "bridge-tts gmax beta_min=0.01 beta_max=50",
                "diffusion_schedule": "linear 1e-4..0.02" if cfg.kind in ("saf", "plain-finetune") else ""}
        tensors = {k: v.to(dtype).contiguous() for k, v in weights.items()}
        save_file(tensors, str(path), metadata={META + k: v for k, v in meta.items() if v})
        return path


__all__ = ["LATTE_KINDS", "LatteTask", "check_latte_kind", "diffusion_config", "diffusion_to_bridge", "for_kind",
           "official_recipe"]
