"""Quality benchmark: FrameBridge vs diffusion vs FrameBridge + neural prior vs SAF vs plain fine-tuning.

    python -m framebridge_core bench quality --runs runs --nfe 5,10,25,50 --clips 144

A script, not part of the tests (``benchmarks/train_bench.sh`` trains the models first). It answers
whether the trained variants, above all the bridge against diffusion, differ in quality at equal
sampling cost on clips none of them saw: :func:`_evaluate` gives the protocol, :func:`_score` the
metrics and :func:`main` the outputs.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..errors import ConfigError

#: Variants in the order they are evaluated and listed.
VARIANTS = ("bridge", "diffusion", "bridge-np", "neural-prior", "saf", "plain-finetune", "bridge-x0",
            "bridge-precond", "bridge-x0-linear", "neural-prior-linear")
#: run folders holding a model of another variant: ``bridge-x0`` / ``bridge-precond`` are ``bridge``
#: networks trained with ``--bridge-output x0`` (the output of the bundled tiny models) or
#: ``precond``; optional
VARIANT_OF = {"bridge-x0": "bridge", "bridge-precond": "bridge", "bridge-x0-linear": "bridge",
              "neural-prior-linear": "neural-prior"}
#: The order they are trained in (``benchmarks/train_bench.sh``).
TRAIN_ORDER = ("bridge", "bridge-x0", "diffusion", "neural-prior", "bridge-np", "saf", "plain-finetune",
               "bridge-precond", "bridge-x0-linear", "neural-prior-linear")
LABELS = {
    "bridge": "FrameBridge",
    "diffusion": "diffusion (DDIM)",
    "bridge-np": "FrameBridge + neural prior",
    "neural-prior": "neural prior alone",
    "saf": "SAF (diffusion → bridge)",
    "plain-finetune": "non-SAF fine-tune",
    "bridge-x0": "FrameBridge, x0 output (ours)",
    "bridge-precond": "FrameBridge, precond output",
    "bridge-x0-linear": "FrameBridge, x0 output, linear head (official unpatchify)",
    "neural-prior-linear": "neural prior alone, linear head (official unpatchify)",
    "copy": "copy first frame",
    "real": "ground truth (real-vs-real floor)",
}
RATIO_NFE = 25
DEFAULT_CLASSIFIER = "motion-classifier.safetensors"
CLASSIFIER_FORMAT = "1"


def _parse_nfe(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 or v > 999 for v in values):
        raise argparse.ArgumentTypeError(f"--nfe takes a comma list of integers in 1..999, got {text!r}")
    return sorted(set(values))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m framebridge_core bench quality",
        description="Quality benchmark of the trained variants on held-out camera-motion clips.")
    p.add_argument("--runs", default="runs",
                   help="folder with seed<S>/<variant>/model.safetensors for each training seed, or "
                        "<variant>/model.safetensors for one (default: runs)")
    p.add_argument("--nfe", type=_parse_nfe, default=[5, 10, 25, 50],
                   help="function evaluations to test, comma list (default: 5,10,25,50)")
    p.add_argument("--clips", type=int, default=144,
                   help="held-out evaluation clips, balanced over the 9 motions (default: 144)")
    p.add_argument("--cfg", type=float, default=1.0,
                   help="class guidance scale for every variant (default: 1.0 = no guidance)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the evaluation set (reference set: seed+1), sampler noise and classifier")
    p.add_argument("--method", choices=["sde", "ode", "mixed"], default="sde",
                   help="bridge sampler (default: sde); diffusion always uses DDIM")
    p.add_argument("--batch", type=int, default=16, help="clips per generation batch (default: 16)")
    p.add_argument("--classifier", default=None,
                   help=f"motion classifier cache (default: <runs>/{DEFAULT_CLASSIFIER}); trained if missing")
    p.add_argument("--classifier-steps", type=int, default=800,
                   help="training steps of the classifier when it is trained (default: 800)")
    p.add_argument("--classifier-batch", type=int, default=32, help="classifier training batch (default: 32)")
    p.add_argument("--preset", default=None,
                   help="data size preset when no model is found (default: read from the models)")
    p.add_argument("--sources", default=None,
                   help="comma list of image sources (default: those the models were trained on)")
    p.add_argument("--out", default="benchmarks/RESULTS.md", help="markdown report (default: benchmarks/RESULTS.md)")
    p.add_argument("--json", default=None, help="also write every number as JSON to this file")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: 0 = leave as is)")
    return p


def _log(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


# ----------------------------------------------------------------------------- models


def _train_command(path: Path) -> Optional[str]:
    """The training command of a run, rebuilt from its ``state.pt`` (None when unreadable)."""
    from dataclasses import asdict

    from ..training.loop import STATE_FILE, TrainConfig

    state = path.parent / STATE_FILE
    if not state.is_file():
        return None
    try:
        cfg = torch.load(state, map_location="cpu", weights_only=True)["config"]
    except Exception:  # an unreadable or foreign state file only costs the command line
        return None
    defaults = asdict(TrainConfig())
    parts = ["python -m framebridge_core train", "--kind", str(cfg["kind"]), "--preset", str(cfg["preset"])]
    for key, value in cfg.items():
        if key in ("kind", "preset") or key not in defaults:
            continue
        if key == "sources":
            if tuple(value) != tuple(defaults[key]):
                parts += ["--sources", ",".join(value)]
        elif key == "out" or value != defaults[key]:
            parts += ["--" + key.replace("_", "-"), shlex.quote(str(value))]
    return " ".join(parts)


def _seed_dirs(runs: Path) -> list[tuple[Optional[int], Path]]:
    """The training seeds: ``<runs>/seed<S>/`` folders (``benchmarks/train_bench.sh``), or ``<runs>``
    itself as a single seed when it has none."""
    found = []
    for d in runs.glob("seed*"):
        hit = re.fullmatch(r"seed(\d+)", d.name)
        if hit and d.is_dir():
            found.append((int(hit.group(1)), d))
    return sorted(found) or [(None, runs)]


def _load_models(runs: Path) -> tuple[dict, dict[str, str]]:
    """``<runs>/<variant>/model.safetensors`` of every variant; a missing variant is reported and skipped."""
    from ..tiny.format import EXPORT_FILE, META_PREFIX, load_trained

    models, missing = {}, {}
    for kind in VARIANTS:
        path = runs / kind / EXPORT_FILE
        if not path.is_file():
            missing[kind] = f"{path} not found"
            continue
        net, meta = load_trained(str(path), VARIANT_OF.get(kind, kind))
        meta = {k[len(META_PREFIX):]: v for k, v in meta.items() if k.startswith(META_PREFIX)}
        if meta.get("variant", kind) != VARIANT_OF.get(kind, kind):
            missing[kind] = f"{path} holds a {meta.get('variant')!r} model, not {kind!r}"
            continue
        models[kind] = {"net": net, "meta": meta, "path": path, "command": _train_command(path)}
    if "bridge-np" in models and "neural-prior" not in models:
        del models["bridge-np"]
        missing["bridge-np"] = "needs the neural-prior model, which is missing"
    return models, missing


def _preset_name(config) -> str:
    from ..tiny.format import PRESETS

    for name, p in PRESETS.items():
        if (p["size"], p["frames"], p["patch"], p["hidden"], p["depth"], p["heads"]) == (
                config.input_size, config.num_frames, config.patch_size, config.hidden_size,
                config.depth, config.num_heads):
            return name
    return "custom"


def _geometry(models: dict, preset: Optional[str]) -> tuple[int, int, str]:
    from ..tiny.format import PRESETS

    if not models:
        name = preset or "bench"
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
        return PRESETS[name]["size"], PRESETS[name]["frames"], name
    shapes = {k: (m["net"].config.input_size, m["net"].config.num_frames) for k, m in models.items()}
    if len(set(shapes.values())) > 1:
        raise ConfigError("the models differ in size or frame count: "
                          + ", ".join(f"{k} {s}px x {f} frames" for k, (s, f) in shapes.items())
                          + "; train every variant with the same --preset.")
    size, frames = next(iter(shapes.values()))
    names = {_preset_name(m["net"].config) for k, m in models.items() if not k.startswith("neural-prior")}
    return size, frames, "/".join(sorted(names)) or _preset_name(next(iter(models.values()))["net"].config)


def _sources(models: dict, text: Optional[str]) -> tuple[str, ...]:
    from ..training.data.sources import SOURCE_KINDS

    if text:
        return tuple(s.strip() for s in text.split(",") if s.strip())
    found = set()
    for m in models.values():
        hit = re.search(r"sources ([a-z+]+)\)", m["meta"].get("data", ""))
        if hit:
            found.add(tuple(hit.group(1).split("+")))
    if len(found) > 1:
        raise ConfigError(f"the models were trained on different image sources ({sorted(found)}); "
                          "pass --sources to choose the evaluation sources.")
    return found.pop() if found else tuple(SOURCE_KINDS)


# ----------------------------------------------------------------------------- classifier


def _classifier(path: Path, args, size: int, frames: int, sources: tuple[str, ...], heldout) -> tuple:
    from ..training.data.camera_motion import CameraMotionDataset
    from .metrics import classifier_accuracy, load_classifier, save_classifier, train_motion_classifier

    want = {"size": str(size), "frames": str(frames), "sources": "+".join(sources), "format": CLASSIFIER_FORMAT}
    if path.is_file():
        model, meta = load_classifier(path)
        if all(meta.get(k) == v for k, v in want.items()):
            _log(f"motion classifier: {path} (cached)")
            return model, meta, True
        _log(f"motion classifier: {path} was trained for other data "
             f"({ {k: meta.get(k) for k in want} }); training a new one")
    train_set = CameraMotionDataset("train", size=size, frames=frames, seed=args.seed, include=sources)
    _log(f"motion classifier: training {args.classifier_steps} steps x {args.classifier_batch} clips "
         f"on {train_set.num_sources} TRAIN-split sources")
    t0 = time.time()
    gen = torch.Generator().manual_seed(args.seed * 7919 + 17)
    model = train_motion_classifier(train_set, args.classifier_steps, args.classifier_batch, gen,
                                    log=_log, log_every=max(1, args.classifier_steps // 8),
                                    init_seed=args.seed)
    meta = dict(want, steps=str(args.classifier_steps), batch=str(args.classifier_batch), seed=str(args.seed),
                train_seconds=f"{time.time() - t0:.0f}",
                train_sources=str(train_set.num_sources),
                heldout_accuracy=f"{classifier_accuracy(model, *heldout):.4f}",
                heldout_clips=str(len(heldout[1])))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_classifier(model, path, meta)
    return model, meta, False


# ----------------------------------------------------------------------------- scoring


def _score(video: torch.Tensor, truth: torch.Tensor, labels: torch.Tensor, clf, ref_feats, patch: int) -> dict:
    """The metrics of one set of videos against the ground truth (see :mod:`.metrics`).

    * PSNR and SSIM per frame (frames 1..F−1), the last frame's PSNR, and first-frame fidelity
      (PSNR of generated frame 0 against the conditioning image);
    * a Fréchet distance (FD) in the 64-d features of a small motion classifier trained on
      TRAIN-split ground truth, against a second, disjoint draw of real test clips of the same size
      (``ref_feats``); the real-vs-real FD (the ground truth of the evaluation clips against that
      reference set) is the floor a perfect generator would reach at this sample size;
    * the classifier's accuracy on the videos (is the requested motion recognisable?);
    * the patch grid: :func:`.metrics.blockiness` at the networks' patch size, mean over clips,
      worst frame (the ground truth is the reference, ≈ 1);
    * sharpness: high-frequency energy over the ground truth's, frames 1..F−1 (1 = as sharp;
      below = blurrier, above = noisier).
    """
    from .metrics import (blockiness, classifier_accuracy, extract_features, frechet_distance,
                          high_frequency_energy, psnr, ssim)

    p = psnr(video, truth)  # [N, F]
    s = ssim(video, truth)
    first = psnr(video[:, 0], truth[:, 0])
    return {
        "psnr": float(p[:, 1:].mean()),
        "ssim": float(s[:, 1:].mean()),
        "last_psnr": float(p[:, -1].mean()),
        "first_psnr": float(first.mean()),
        "psnr_by_frame": [round(float(v), 3) for v in p.mean(0)],
        "fd": frechet_distance(extract_features(clf, video), ref_feats),
        "accuracy": classifier_accuracy(clf, video, labels),
        "blockiness": float(blockiness(video, patch).max()),
        "hf_ratio": float((high_frequency_energy(video)[1:] / high_frequency_energy(truth)[1:].clamp_min(1e-12)).mean()),
    }


def _generate_all(kind: str, models: dict, first: torch.Tensor, labels: torch.Tensor, nfe: int,
                  args, sched) -> tuple[torch.Tensor, float, bool]:
    from ..tiny.variants import generate

    net = models[kind]["net"]
    prior_net = models["neural-prior"]["net"] if kind == "bridge-np" else None
    outs, seconds = [], 0.0
    for b, start in enumerate(range(0, first.shape[0], args.batch)):
        sl = slice(start, start + args.batch)
        gen = torch.Generator().manual_seed(args.seed * 100003 + 1009 * b + 7)  # same noise for every variant
        t0 = time.perf_counter()
        with torch.no_grad():
            out = generate(VARIANT_OF.get(kind, kind), net, first[sl], labels[sl], steps=nfe, sched=sched, cfg_scale=args.cfg,
                           generator=gen, neural_prior=prior_net, method=args.method)
        seconds += time.perf_counter() - t0
        outs.append(out.float())
    video = torch.cat(outs)
    finite = bool(torch.isfinite(video).all())
    return torch.nan_to_num(video, 0.0, 1.0, -1.0).clamp(-1.0, 1.0), seconds, finite


# ----------------------------------------------------------------------------- report


def _fmt(v, spec: str) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return format(v, spec)


COLUMNS = ("variant", "NFE", "PSNR 1..F−1 (dB) ↑", "SSIM 1..F−1 ↑", "last-frame PSNR ↑", "first-frame PSNR ↑",
           "FD ↓", "motion acc. ↑", "blockiness (worst frame) →1", "HF / truth →1", "s/clip")
#: the per-row numbers that are averaged over training seeds
METRICS = ("psnr", "ssim", "last_psnr", "first_psnr", "fd", "accuracy", "blockiness", "hf_ratio", "sec_per_clip")


def _pm(r: dict, key: str, spec: str, scale: float = 1.0, unit: str = "") -> str:
    """``mean ± std`` over training seeds (just the value for one seed)."""
    v = r.get(key)
    if v is None:
        return "—"
    text = _fmt(v * scale, spec) + unit
    std = r.get(key + "_std")
    return text if std is None else f"{text} ± {_fmt(std * scale, spec)}{unit}"


def _row_cells(r: dict) -> list[str]:
    return [LABELS[r["variant"]], "—" if r["nfe"] is None else str(r["nfe"]),
            _pm(r, "psnr", ".2f"), _pm(r, "ssim", ".3f"), _pm(r, "last_psnr", ".2f"),
            _pm(r, "first_psnr", ".2f"), _pm(r, "fd", ".4g"), _pm(r, "accuracy", ".1f", 100, "%"),
            _pm(r, "blockiness", ".3f"), _pm(r, "hf_ratio", ".3f"), _pm(r, "sec_per_clip", ".3g")]


def _aggregate(per_seed: Sequence[Sequence[dict]]) -> list[dict]:
    """One row per (variant, NFE): every metric's mean over the training seeds and, with more than
    one seed, its sample standard deviation (``<metric>_std``); ``seeds`` counts them."""
    groups: dict[tuple, list[dict]] = {}
    for rows in per_seed:
        for r in rows:
            groups.setdefault((r["variant"], r["nfe"]), []).append(r)
    out = []
    for (variant, nfe), rs in groups.items():
        agg = {"variant": variant, "nfe": nfe, "seeds": len(rs)}
        for m in METRICS:
            vals = torch.tensor([float(r[m]) for r in rs if r.get(m) is not None], dtype=torch.float64)
            if len(vals):
                agg[m] = float(vals.mean())
                agg[m + "_std"] = float(vals.std()) if len(vals) > 1 else None
        agg["psnr_by_frame"] = [round(float(v), 3) for v in
                                torch.tensor([r["psnr_by_frame"] for r in rs], dtype=torch.float64).mean(0)]
        out.append(agg)
    order = {k: i for i, k in enumerate(("copy",) + VARIANTS + ("real",))}
    return sorted(out, key=lambda r: (order[r["variant"]], r["nfe"] or 0))


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _main_table(rows: list[dict]) -> str:
    return _md_table(COLUMNS, [_row_cells(r) for r in rows])


def _fd_table(rows: list[dict], nfes: list[int], floor: float) -> str:
    kinds = [k for k in VARIANTS if any(r["variant"] == k for r in rows)]
    header = ["FD ↓ by NFE"] + [str(n) for n in nfes]
    body = []
    for k in kinds:
        by = {r["nfe"]: r for r in rows if r["variant"] == k}
        if VARIANT_OF.get(k, k) == "neural-prior":
            body.append([LABELS[k] + " (1 pass)"] + [_pm(by[1], "fd", ".4g") if 1 in by else "—"] * len(nfes))
        else:
            body.append([LABELS[k]] + [_pm(by[n], "fd", ".4g") if n in by else "—" for n in nfes])
    copy = next((r["fd"] for r in rows if r["variant"] == "copy"), None)
    body.append([LABELS["copy"]] + [_fmt(copy, ".4g")] * len(nfes))
    body.append([LABELS["real"]] + [_fmt(floor, ".4g")] * len(nfes))
    return _md_table(header, body)


def _frame_table(rows: list[dict], nfes: list[int], frames: int) -> str:
    """Mean PSNR of every frame index at one NFE (the ratio's, else the largest)."""
    nfe = RATIO_NFE if RATIO_NFE in nfes else max(nfes)
    one_pass = {"neural-prior", "neural-prior-linear"}
    picked = [r for r in rows if r["variant"] == "copy"
              or (r["variant"] in VARIANTS and (r["nfe"] == nfe or r["variant"] in one_pass))]
    header = [f"PSNR (dB) by frame, {nfe} NFE"] + [str(i) for i in range(frames)]
    body = [[LABELS[r["variant"]] + (f" ({r['nfe']} NFE)" if r["variant"] in one_pass else "")]
            + [f"{v:.2f}" for v in r["psnr_by_frame"]] for r in picked]
    return _md_table(header, body)


def _ratio(rows: list[dict]) -> Optional[float]:
    """FrameBridge's FD over the diffusion model's at :data:`RATIO_NFE`, for one training seed."""
    fd = {r["variant"]: r["fd"] for r in rows if r["nfe"] == RATIO_NFE}
    if "bridge" not in fd or "diffusion" not in fd:
        return None
    if fd["diffusion"] == 0:
        return math.inf if fd["bridge"] > 0 else 1.0
    return fd["bridge"] / fd["diffusion"]


def _ratio_stats(per_seed: Sequence[Sequence[dict]]) -> tuple[Optional[float], Optional[float], list[float]]:
    """``(mean, std or None, per-seed ratios)`` of :func:`_ratio` over the training seeds."""
    ratios = [r for r in (_ratio(rows) for rows in per_seed) if r is not None]
    if not ratios:
        return None, None, []
    t = torch.tensor(ratios, dtype=torch.float64)
    return float(t.mean()), (float(t.std()) if len(ratios) > 1 else None), ratios


def _ratio_text(mean: Optional[float], std: Optional[float], ratios: Sequence[float]) -> str:
    if mean is None:
        return "n/a"
    if std is None:
        return f"{mean:.3g}"
    return f"{mean:.3g} ± {std:.2g} (mean ± std over {len(ratios)} training seeds: " + ", ".join(
        f"{r:.3g}" for r in ratios) + ")"


def _reading(rows: list[dict], nfes: list[int], floor: float, ratio: Optional[float]) -> list[str]:
    """Plain statements of who wins, computed from the numbers."""
    out = []
    gen = [r for r in rows if r["variant"] in VARIANTS]
    for n in nfes:
        at = [r for r in gen if r["nfe"] == n or (VARIANT_OF.get(r["variant"], r["variant"]) == "neural-prior")]
        if len(at) < 2:
            continue
        best = min(at, key=lambda r: r["fd"])
        best_psnr = max(at, key=lambda r: r["psnr"])
        out.append(f"At {n} NFE the lowest FD is {LABELS[best['variant']]} ({best['fd']:.4g}; floor {floor:.4g}) "
                   f"and the highest PSNR is {LABELS[best_psnr['variant']]} ({best_psnr['psnr']:.2f} dB).")
    if ratio is not None:
        verdict = "lower (better)" if ratio < 1 else "higher (worse)" if ratio > 1 else "equal"
        out.append(f"At {RATIO_NFE} NFE FrameBridge's FD is {ratio:.3g}x the diffusion model's: {verdict}.")
    copy = next((r for r in rows if r["variant"] == "copy"), None)
    if copy is not None:
        beat = sorted({LABELS[r["variant"]] for r in gen if r["fd"] < copy["fd"]})
        out.append("Variants whose FD beats copying the first frame at some NFE: "
                   + (", ".join(beat) if beat else "none") + ".")
    prior = next((r for r in gen if r["variant"] == "neural-prior"), None)
    if prior is not None:
        for r in gen:
            if r["variant"] == "bridge-np" and r["nfe"] == RATIO_NFE:
                better = [what for what, ok in (("FD", r["fd"] < prior["fd"]),
                                                ("sharpness", abs(r["hf_ratio"] - 1) < abs(prior["hf_ratio"] - 1)))
                          if ok]
                out.append(f"At {RATIO_NFE} NFE FrameBridge + neural prior against the neural prior alone: FD "
                           f"{r['fd']:.4g} vs {prior['fd']:.4g}, HF/truth {r['hf_ratio']:.3f} vs {prior['hf_ratio']:.3f}: "
                           + ("sampling is better on " + " and ".join(better) if better else "sampling does not pay")
                           + ".")
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _write_report(path: Path, *, argv: Sequence[str], args, rows, nfes, floor, seeds, preset, size,
                  frames, sources, test_set, clf_meta, clf_params, clf_cached, heldout_acc, per_class, notes,
                  seconds, ratio_stats) -> None:
    from ..training.data.camera_motion import MOTIONS

    ratio_text = _ratio_text(*ratio_stats)
    bench_cmd = "python -m framebridge_core bench quality " + " ".join(shlex.quote(a) for a in argv)
    L = ["# Quality benchmark results", "",
         f"Written by `{bench_cmd.strip()}` on {_dt.datetime.now().isoformat(timespec='minutes')} "
         f"({seconds / 60:.1f} min; torch {torch.__version__}, torch threads: {torch.get_num_threads()}, CPU: {_cpu_name()}). "
         "The metrics are explained in [README.md](README.md).", "",
         "## Configuration", "",
         f"* Preset: `{preset}` ({size}x{size} px, {frames} frames per clip).",
         f"* Evaluation set: {args.clips} held-out clips from the TEST split "
         f"(`CameraMotionDataset('test', include={'+'.join(sources)}).fixed_set({args.clips}, seed={args.seed})`; "
         f"{test_set.num_sources} source images never seen in training), balanced over the {len(MOTIONS)} motions. "
         f"Each variant animates each clip's first frame with the clip's motion class.",
         f"* FD reference set: a second draw, `fixed_set({args.clips}, seed={args.seed + 1})`, of the same size.",
         f"* Sampling: bridges `{args.method}` on the trailing grid, diffusion DDIM; NFE = sampler steps; "
         f"class guidance scale {args.cfg:g}" + (" (no guidance, the same for every variant)" if args.cfg == 1 else "")
         + f"; sampler noise seeded per batch of {args.batch} from seed {args.seed}, the same for every variant.",
         "* Generated videos are clamped to [-1, 1] before scoring.",
         f"* Training seeds: {len(seeds)}; every number is the mean over them"
         + (" ± the sample standard deviation" if len(seeds) > 1 else "") + ".", ""]
    L += ["## Models", ""]
    mrows = []
    for _, models, missing in seeds:
        for k in VARIANTS:
            if k in models:
                m = models[k]["meta"]
                mrows.append([LABELS[k], f"`{models[k]['path']}`", m.get("steps", "?"), m.get("train_minutes", "?"),
                              m.get("batch", "?"), m.get("seed", "?"), m.get("date", "?")])
            elif not k.endswith("-linear") and k != "bridge-precond":
                mrows.append([LABELS[k], "missing: " + missing.get(k, "?"), "—", "—", "—", "—", "—"])
    L += [_md_table(["variant", "file", "train steps", "train minutes", "batch", "seed", "date"], mrows), ""]
    L += ["## Motion classifier", "",
          f"`MotionClassifier` ({clf_params / 1000:.0f}k parameters, 64-d features), "
          + ("loaded from the cache " if clf_cached else "trained for this run ")
          + f"`{args.classifier or Path(args.runs) / DEFAULT_CLASSIFIER}`: {clf_meta.get('steps', '?')} steps x "
          f"{clf_meta.get('batch', '?')} TRAIN-split ground-truth clips ({clf_meta.get('train_seconds', '?')} s). "
          f"Accuracy on the {2 * args.clips} held-out real clips (evaluation + reference sets): "
          f"**{100 * heldout_acc:.1f}%**.", "",
          _md_table(["motion"] + list(MOTIONS), [["accuracy"] + [f"{100 * a:.0f}%" for a in per_class]]), ""]
    L += ["## Results", "", _main_table(rows), "", _fd_table(rows, nfes, floor), "",
          _frame_table(rows, nfes, frames), "", f"**bridge/diffusion FD ratio at {RATIO_NFE} NFE: {ratio_text}**", ""]
    L += ["Reading (generated from the numbers above):", ""] + [
        f"* {s}" for s in _reading(rows, nfes, floor, ratio_stats[0])] + [""]
    if notes:
        L += ["Notes:", ""] + [f"* {n}" for n in notes] + [""]
    L += ["## Commands", "", "Training (`benchmarks/train_bench.sh`, which adds `--resume`; each run's options as last "
          "invoked, read from its `state.pt`):",
          "", "```sh"]
    for _, models, _ in seeds:
        for k in TRAIN_ORDER:
            if k in models:
                L.append(models[k]["command"] or f"# {k}: no state.pt next to {models[k]['path']}")
    L += ["```", "", "Benchmark:", "", "```sh", bench_cmd.strip(), "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L), encoding="utf-8")


# ----------------------------------------------------------------------------- main


def _patch(models: dict, preset: str) -> int:
    """The networks' patch size (the grid the blockiness column measures)."""
    from ..tiny.format import PRESETS

    sizes = {m["net"].config.patch_size for m in models.values()}
    if len(sizes) == 1:
        return sizes.pop()
    return PRESETS.get(preset, PRESETS["bench"])["patch"] if not sizes else min(sizes)


def _step_notes(seeds) -> list[str]:
    """Say so when the from-scratch variants of a seed were not trained for the same number of steps."""
    notes = []
    for seed, models, _ in seeds:
        steps = {k: models[k]["meta"].get("steps") for k in ("bridge", "diffusion", "neural-prior", "bridge-x0")
                 if k in models}
        if len(set(steps.values())) > 1:
            notes.append(f"{'' if seed is None else f'seed {seed}: '}the from-scratch variants took different "
                         "step counts (" + ", ".join(f"{k} {v}" for k, v in steps.items()) + ").")
    return notes


def _check_classes(models: dict) -> None:
    from ..training.data.camera_motion import MOTIONS

    for k, m in models.items():
        if m["net"].config.num_classes != len(MOTIONS):
            raise ConfigError(f"{m['path']} has {m['net'].config.num_classes} classes; the camera-motion "
                              f"benchmark needs {len(MOTIONS)}.")


def _evaluation_sets(args, models: dict, size: int, frames: int, sources: tuple[str, ...]) -> tuple:
    """``(test_set, (truth, labels), (ref, ref_labels))``: the evaluation set and the FD reference set."""
    from ..training.data.camera_motion import CameraMotionDataset
    from ..training.data.sources import warn_unavailable

    warn_unavailable(sources)
    test_set = CameraMotionDataset("test", size=size, frames=frames, seed=args.seed, include=sources)
    truth, labels, _ = test_set.fixed_set(args.clips, seed=args.seed)
    ref, ref_labels, _ = test_set.fixed_set(args.clips, seed=args.seed + 1)
    _log(f"evaluation: {args.clips} test clips of {size}px x {frames} frames from {test_set.num_sources} "
         f"sources ({'+'.join(sources)}); variants {', '.join(models) or 'none'}")
    return test_set, (truth, labels), (ref, ref_labels)


def _heldout_accuracy(clf, heldout: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, list[float]]:
    """The classifier's accuracy on held-out real clips: overall and per motion class."""
    from ..training.data.camera_motion import MOTIONS
    from .metrics import classifier_accuracy

    heldout_acc = classifier_accuracy(clf, *heldout)
    with torch.no_grad():
        pred = torch.cat([clf(heldout[0][i:i + 64]).argmax(1) for i in range(0, len(heldout[1]), 64)])
    per_class = [float((pred[heldout[1] == c] == c).float().mean()) if (heldout[1] == c).any() else float("nan")
                 for c in range(len(MOTIONS))]
    _log(f"motion classifier accuracy on {len(heldout[1])} held-out real clips: {heldout_acc:.3f}")
    return heldout_acc, per_class


def _baselines(truth: torch.Tensor, labels: torch.Tensor, clf, ref_feats, patch: int) -> tuple[list[dict], float]:
    """The rows that need no model: copying the first frame to every frame, and the ground truth
    itself (its FD against the reference set is the real-vs-real floor)."""
    real = _score(truth, truth, labels, clf, ref_feats, patch)
    floor = real["fd"]
    copy = truth[:, :1].expand_as(truth).contiguous()
    rows = [dict(_score(copy, truth, labels, clf, ref_feats, patch), variant="copy", nfe=0, sec_per_clip=0.0),
            {"variant": "real", "nfe": None, "fd": floor, "accuracy": real["accuracy"],
             "blockiness": real["blockiness"], "hf_ratio": real["hf_ratio"], "psnr_by_frame": real["psnr_by_frame"]}]
    _log(f"real-vs-real FD floor {floor:.4g}; copy-first-frame FD {rows[0]['fd']:.4g}; "
         f"ground-truth blockiness {real['blockiness']:.3f}")
    return rows, floor


def _evaluate(models: dict, args, truth: torch.Tensor, labels: torch.Tensor, clf, ref_feats, patch: int
              ) -> tuple[list[dict], list[str]]:
    """Score every variant of one training seed at every NFE: ``(rows, notes)``.

    The ground truth is held-out clips of the camera-motion dataset (the TEST split's source
    images, balanced over the 9 motions). Every trained variant animates the ground truth's first
    frame with the ground truth's motion class at each number of function evaluations (NFE) and is
    scored against the ground truth by :func:`_score`, with the sampling seconds per clip; the
    baselines are :func:`_baselines`. The neural prior alone is one network pass and is scored once
    (NFE 1). Generated videos are clamped to [-1, 1] before scoring. Class guidance (``--cfg``,
    1 = off by default) is the same for every variant, and so is the sampler noise.
    """
    from ..tiny.variants import Schedules

    rows: list[dict] = []
    notes: list[str] = []
    sched = Schedules.default()
    first = truth[:, 0]
    for kind in VARIANTS:
        if kind not in models:
            continue
        for nfe in ([1] if VARIANT_OF.get(kind, kind) == "neural-prior" else args.nfe):
            video, seconds, finite = _generate_all(kind, models, first, labels, nfe, args, sched)
            row = dict(_score(video, truth, labels, clf, ref_feats, patch), variant=kind, nfe=nfe,
                       sec_per_clip=seconds / args.clips)
            if not finite:
                notes.append(f"{LABELS[kind]} at {nfe} NFE produced non-finite values (replaced by 0 before scoring).")
            rows.append(row)
            _log(f"{kind:>19} NFE {nfe:>3}: PSNR {row['psnr']:.2f} FD {row['fd']:.4g} acc {row['accuracy']:.3f} "
                 f"block {row['blockiness']:.3f} HF {row['hf_ratio']:.3f} ({seconds:.1f} s)")
    return rows, notes


def _write_json(path: Path, *, argv, args, preset, size, frames, sources, floor, heldout_acc, per_class,
                clf_meta, ratio_stats, rows, seeds, per_seed) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "argv": argv, "preset": preset, "size": size, "frames": frames, "sources": list(sources),
        "clips": args.clips, "seed": args.seed, "cfg": args.cfg, "nfe": args.nfe, "method": args.method,
        "fd_floor": floor, "classifier_accuracy": heldout_acc, "classifier_per_class": per_class,
        "classifier": clf_meta, "ratio": ratio_stats[0], "ratio_std": ratio_stats[1], "ratios": ratio_stats[2],
        "rows": rows,
        "training_seeds": [{"seed": seed, "missing": missing, "rows": seed_rows,
                            "models": {k: {"path": str(m["path"]), "meta": m["meta"], "command": m["command"]}
                                       for k, m in models.items()}}
                           for (seed, models, missing), seed_rows in zip(seeds, per_seed)],
    }, indent=1), encoding="utf-8")


def _print_summary(rows: list[dict], nfes: list[int], floor: float, heldout_acc: float,
                   missing: dict[str, str], ratio_text: str) -> None:
    """The tables on stdout; the last line is ``bridge/diffusion FD ratio at 25 NFE: <x>`` (with
    ``± <std> (...)`` after it when there are several training seeds)."""
    print(_main_table(rows))
    print()
    print(_fd_table(rows, nfes, floor))
    print()
    print(f"classifier accuracy on held-out real clips: {100 * heldout_acc:.1f}%; real-vs-real FD floor: {floor:.4g}")
    for k, why in missing.items():
        print(f"missing: {k} ({why})")
    print(f"bridge/diffusion FD ratio at {RATIO_NFE} NFE: {ratio_text}")
    sys.stdout.flush()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; returns 0.

    Progress goes to stderr; stdout gets the tables and ends with the line
    ``bridge/diffusion FD ratio at 25 NFE: <x>``. The tables, the configuration and the exact
    commands are written to ``--out`` (``benchmarks/RESULTS.md``), every number also to ``--json``.
    """
    from .metrics import extract_features

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.clips < 2 or args.batch < 1:
        raise ConfigError(f"--clips must be >= 2 and --batch >= 1, got {args.clips} and {args.batch}.")
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.time()
    runs = Path(args.runs)
    seeds = []   # (training seed, models, missing)
    for seed, folder in _seed_dirs(runs):
        models, missing = _load_models(folder)
        for k, why in missing.items():
            _log(f"skipping {k}{'' if seed is None else f' (seed {seed})'}: {why}")
        seeds.append((seed, models, missing))
    every = {f"{k}@{seed}": m for seed, models, _ in seeds for k, m in models.items()}
    size, frames, preset = _geometry(every, args.preset)
    _check_classes(every)
    sources = _sources(every, args.sources)
    patch = _patch(every, preset)
    test_set, (truth, labels), (ref, ref_labels) = _evaluation_sets(args, every, size, frames, sources)

    clf_path = Path(args.classifier) if args.classifier else runs / DEFAULT_CLASSIFIER
    heldout = (torch.cat([truth, ref]), torch.cat([labels, ref_labels]))
    clf, clf_meta, cached = _classifier(clf_path, args, size, frames, sources, heldout)
    heldout_acc, per_class = _heldout_accuracy(clf, heldout)
    ref_feats = extract_features(clf, ref)

    base_rows, floor = _baselines(truth, labels, clf, ref_feats, patch)
    per_seed, notes = [], []
    for seed, models, _ in seeds:
        if len(seeds) > 1:
            _log(f"training seed {seed}")
        seed_rows, seed_notes = _evaluate(models, args, truth, labels, clf, ref_feats, patch)
        per_seed.append(seed_rows)
        notes += [n if seed is None else f"seed {seed}: {n}" for n in seed_notes]
    rows = _aggregate([base_rows] + per_seed)
    stats = _ratio_stats(per_seed)
    ratio_text = _ratio_text(*stats)
    if stats[0] is None:
        notes.append(f"The FD ratio needs both the bridge and the diffusion model evaluated at {RATIO_NFE} NFE.")
    notes += _step_notes(seeds)
    missing = {k: why for _, _, miss in seeds for k, why in miss.items()
               if not any(k in models for _, models, _ in seeds)}
    out = Path(args.out)
    _write_report(out, argv=argv, args=args, rows=rows, nfes=args.nfe, floor=floor, seeds=seeds,
                  preset=preset, size=size, frames=frames, sources=sources, test_set=test_set, clf_meta=clf_meta,
                  clf_params=sum(p.numel() for p in clf.parameters()), clf_cached=cached,
                  heldout_acc=heldout_acc, per_class=per_class, notes=notes, seconds=time.time() - t_start,
                  ratio_stats=stats)
    if args.json:
        _write_json(Path(args.json), argv=argv, args=args, preset=preset, size=size, frames=frames,
                    sources=sources, floor=floor, heldout_acc=heldout_acc, per_class=per_class,
                    clf_meta=clf_meta, ratio_stats=stats, rows=rows, seeds=seeds, per_seed=per_seed)
    _log(f"wrote {out} ({(time.time() - t_start) / 60:.1f} min)")
    _print_summary(rows, args.nfe, floor, heldout_acc, missing, ratio_text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
