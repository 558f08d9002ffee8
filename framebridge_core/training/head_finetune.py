"""Fine-tune only the output head of a trained tiny model (the overlap-add unpatchify and the conv head).

``python -m framebridge_core.training.head_finetune --kind neural-prior --init-from A.safetensors --out B.safetensors``

The transformer stays frozen, so its outputs are computed once for a set of training clips
(``--clips``; bridge variants: one random bridge index per clip, the training loss's draws) and the
head is trained per frame on that cache: a few minutes on a CPU instead of the full network's
3 s per step. The new parts start at zero (:func:`.loop.add_conv_head`), so step 0 is exactly the
input file. The loss is the variant's own (the neural prior's MSE; the bridge's weighted x0 MSE).
docs/notes/tiny-model.md ("Patch grid") has the measurements that chose this.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..bridge import preconditioning
from ..checkpoints import load_weights_strict
from ..errors import ConfigError
from ..families.latte.network import LatteConfig, LatteModel, LatteNeuralPrior
from ..tiny.format import META_PREFIX, load_trained, read_weights
from ..tiny.variants import Schedules
from ..vp import gather
from .loop import add_conv_head

#: parameters the head fine-tune trains (everything else is frozen)
HEAD_PREFIXES = ("head.", "final_layer.overlap.")


def with_overlap(path: str) -> tuple[torch.nn.Module, dict[str, str], str]:
    """The network of ``path`` with the overlap-add unpatchify added at zero: ``(net, metadata, kind)``."""
    sd, meta = read_weights(path)
    kind = meta.get(META_PREFIX + "variant", "bridge")
    cfg = LatteConfig.from_dict({**json.loads(meta[META_PREFIX + "config"]), "head_overlap": True})
    if not cfg.head_width:
        raise ConfigError(f"{path} has no conv head (head_width 0); the head fine-tune needs one: "
                          f"train with `--init-from` first.")
    net = LatteNeuralPrior(cfg) if kind == "neural-prior" else LatteModel(cfg)
    inner = net.nwarp_model if kind == "neural-prior" else net
    load_weights_strict(inner, add_conv_head(sd, inner), f"{kind} network")
    return net, meta, kind


@torch.no_grad()
def trunk(model: LatteModel, x: torch.Tensor, t, y) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen part of ``model(x, t, y)``: modulated final tokens ``[B, F, N, D]`` and the linear
    unpatchify ``[B, F, C_final, S, S]``; :func:`head_forward` finishes the forward pass."""
    cfg = model.config
    B, Fr, C, H, W = x.shape
    c = model.conditioning(t, y, B, x.device, x.dtype)
    if c is None:
        c = torch.zeros(B, cfg.hidden_size, dtype=x.dtype)
    h = model.x_embedder(x.reshape(B * Fr, C, H, W)) + model.pos_embed.to(x.dtype)
    h = h.reshape(B, Fr, cfg.num_patches, cfg.hidden_size)
    for i in range(0, len(model.blocks), 2):
        h = model.blocks[i](h, c).transpose(1, 2)
        if i == 0:
            h = h + model.temp_embed.to(x.dtype)
        h = model.blocks[i + 1](h, c).transpose(1, 2)
    m = model.final_layer.modulated(h, c)
    return m, model.unpatchify(model.final_layer.linear(m))


def head_forward(model: LatteModel, m: torch.Tensor, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-frame rest of the forward pass: ``m [n, N, D]``, ``o [n, C_final, S, S]``, ``x [n, C_in, S, S]``."""
    cfg = model.config
    out = o + model.final_layer.paint(m[:, None], cfg.grid_size)[:, 0]
    return out[:, : cfg.out_channels] + model.head(torch.cat([out, x], dim=1))


def build_cache(kind: str, net, dataset, clips: int, gen: torch.Generator, prior=None, sched=None,
                class_dropout: float = 0.1) -> dict[str, torch.Tensor]:
    """Frozen-trunk outputs of ``clips`` training clips, one entry per video frame (fp16 on the CPU)."""
    inner = net.nwarp_model if kind == "neural-prior" else net
    cfg = inner.config
    parts: dict[str, list] = {k: [] for k in ("m", "o", "x", "target", "w")}
    for lo in range(0, clips, 8):
        video, labels = dataset.sample_batch(min(8, clips - lo), gen)
        B, Fr = video.shape[:2]
        drop = torch.rand((B,), generator=gen) < class_dropout
        labels = torch.where(drop, torch.full_like(labels, cfg.null_class), labels)
        cond = video[:, :1]
        if kind == "neural-prior":
            x = cond.expand(-1, Fr, -1, -1, -1).contiguous()
            m, o = trunk(inner, x, None, labels)
            target, w = video, torch.ones(B, Fr)
        else:
            noise = torch.randn(video.shape, generator=gen)
            t = torch.randint(0, 1000, (B,), generator=gen)
            with torch.no_grad():
                y = prior(cond, labels).float() if kind == "bridge-np" else cond.expand(-1, Fr, -1, -1, -1)
            x_t = sched.bridge.add_noise(video, y, t, noise)
            x = inner.build_bridge_input(x_t, cond, y if kind == "bridge-np" else None)
            m, o = trunk(inner, x, t, labels)
            m, o, x = m[:, 1:], o[:, 1:], x[:, 1:]            # the prepended condition slot is dropped
            sigma = gather(sched.bridge.sigma, t, video)
            target = preconditioning.target(video, x_t, y, sigma, cfg.output)
            w = preconditioning.loss_weight(sigma.float(), cfg.output).reshape(B, 1).expand(B, Fr)
        parts["m"].append(m.reshape(B * Fr, *m.shape[2:]).half())
        parts["o"].append(o.reshape(B * Fr, *o.shape[2:]).half())
        parts["x"].append(x.reshape(B * Fr, *x.shape[2:]).half())
        parts["target"].append(target.reshape(B * Fr, *target.shape[2:]).half())
        parts["w"].append(w.reshape(-1).float())
    return {k: torch.cat(v) for k, v in parts.items()}


def train_head(model: LatteModel, cache: dict[str, torch.Tensor], steps: int, gen: torch.Generator, *,
               batch: int = 32, lr: float = 1e-3, log=None) -> list[float]:
    """AdamW on the head parameters only, ``batch`` random cached frames per step; returns the losses."""
    params = [p for n, p in model.named_parameters() if n.startswith(HEAD_PREFIXES)]
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith(HEAD_PREFIXES))
    opt = torch.optim.AdamW(params, lr=lr)
    losses = []
    n = cache["m"].shape[0]
    for step in range(1, steps + 1):
        idx = torch.randint(n, (batch,), generator=gen)
        out = head_forward(model, cache["m"][idx].float(), cache["o"][idx].float(), cache["x"][idx].float())
        err = (out - cache["target"][idx].float()).pow(2).mean(dim=(1, 2, 3))
        loss = (cache["w"][idx] * err).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if log is not None and step % 50 == 0:
            log(f"head step {step}/{steps} loss {sum(losses[-50:]) / 50:.4f}")
    return losses


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m framebridge_core.training.head_finetune", description=__doc__.split("\n")[0])
    p.add_argument("--init-from", required=True, help="a trained tiny model file (with a conv head)")
    p.add_argument("--neural-prior", default="", help="the neural prior file (bridge-np)")
    p.add_argument("--out", required=True, help="the new safetensors file")
    p.add_argument("--clips", type=int, default=128, help="training clips in the cache (default 128)")
    p.add_argument("--steps", type=int, default=400, help="head optimiser steps (default 400)")
    p.add_argument("--batch", type=int, default=32, help="cached frames per step (default 32)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from safetensors.torch import save_file

    from .data.camera_motion import CameraMotionDataset
    from .data.sources import warn_unavailable

    def log(msg: str) -> None:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()

    t0 = time.time()
    net, meta, kind = with_overlap(args.init_from)
    inner = net.nwarp_model if kind == "neural-prior" else net
    prior = None
    if kind == "bridge-np":
        if not args.neural_prior:
            raise ConfigError("--init-from is a bridge-np model: pass --neural-prior <neural prior file>.")
        prior, _ = load_trained(args.neural_prior, "neural-prior")
    cfg = inner.config
    warn_unavailable()
    data = CameraMotionDataset("train", size=cfg.input_size, frames=cfg.num_frames, seed=0)
    gen = torch.Generator().manual_seed(args.seed)
    cache = build_cache(kind, net, data, args.clips, gen, prior, Schedules.default())
    log(f"cache: {cache['m'].shape[0]} frames in {time.time() - t0:.0f} s")
    losses = train_head(inner, cache, args.steps, gen, batch=args.batch, lr=args.lr, log=log)
    minutes = (time.time() - t0) / 60
    tensors = {k: v.detach().half().contiguous() for k, v in inner.state_dict().items()}
    new = dict(meta)
    new.update({META_PREFIX + "config": json.dumps(cfg.to_dict()),
                META_PREFIX + "head_finetune": json.dumps({"from": str(args.init_from).split("/")[-1],
                                                           "trained": list(HEAD_PREFIXES), "clips": args.clips,
                                                           "steps": args.steps, "batch_frames": args.batch,
                                                           "lr": args.lr, "seed": args.seed,
                                                           "minutes": round(minutes, 1),
                                                           "final_loss": round(sum(losses[-50:]) / 50, 5)}),
                META_PREFIX + "date": _dt.date.today().isoformat()})
    save_file(tensors, args.out, metadata=new)
    log(f"wrote {args.out} ({minutes:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
