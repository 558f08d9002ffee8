"""Does the bundled tiny FrameBridge follow the requested camera motion on unseen images?

``python -m framebridge_core bench motion`` animates the first frame of held-out clips (TEST
split: source photographs never seen in training) with each clip's motion class, using the
bundled models exactly as ``generate`` does, and scores whether the result moves the requested
way (:func:`_score_row`). It writes a markdown report and a contact sheet (the held-out default
image, every motion, frames 0/5/10/15 side by side, with the default pipeline: the bridge from
the neural prior).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

OPPOSITE = {"pan-left": "pan-right", "pan-right": "pan-left", "pan-up": "pan-down", "pan-down": "pan-up",
            "zoom-in": "zoom-out", "zoom-out": "zoom-in", "rotate-cw": "rotate-ccw", "rotate-ccw": "rotate-cw"}
VARIANTS = {"bridge": "FrameBridge (bundled)", "bridge-np": "FrameBridge + neural prior (bundled)",
            "neural-prior": "neural prior alone (bundled)"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m framebridge_core bench motion",
                                description="Motion following of the bundled tiny models on held-out images.")
    p.add_argument("--clips", type=int, default=72, help="held-out clips, balanced over the motions (default 72)")
    p.add_argument("--steps", type=int, default=25, help="sampling steps (default 25, as generate)")
    p.add_argument("--cfg", type=float, default=None, help="class guidance (default: each model's own)")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation set and sampler noise")
    p.add_argument("--classifier", default="runs/motion-classifier.safetensors",
                   help="motion classifier of `bench quality` (32x32, 8 frames); trained there if missing")
    p.add_argument("--model", default=None, help="a bridge file instead of the bundled one")
    p.add_argument("--np-model", default=None, help="a bridge-np file instead of the bundled one")
    p.add_argument("--prior-model", default=None, help="a neural-prior file instead of the bundled one")
    p.add_argument("--out", default="benchmarks/TINY-MOTION.md", help="markdown report")
    p.add_argument("--sheet", default="benchmarks/tiny-motion-sheet.png", help="contact sheet PNG")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma list of the pipelines to score (default: all of {', '.join(VARIANTS)})")
    return p


def _variants(text: str) -> list[str]:
    from ..errors import ConfigError

    picked = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in picked if v not in VARIANTS]
    if bad or not picked:
        raise ConfigError(f"--variants {text!r}: choose from {', '.join(VARIANTS)} (comma list).")
    return picked


def _log(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def classifier_view(video: torch.Tensor) -> torch.Tensor:
    """``[B, 16, 3, 64, 64]`` → ``[B, 8, 3, 32, 32]``: the benchmark classifier's size and speed."""
    b, f, c, h, w = video.shape
    small = F.avg_pool2d(video[:, ::2].reshape(-1, c, h, w), 2)
    return small.reshape(b, -1, c, h // 2, w // 2)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of ``[B, C, H, W]`` in [-1, 1]; identical images give 100 dB ("exact")."""
    from .metrics import psnr

    return psnr(a, b, min_mse=1e-10)


def _animators(args):
    from ..tiny.animator import TinyAnimator

    return {"bridge": TinyAnimator(args.model),
            "bridge-np": TinyAnimator(args.np_model, neural_prior=True, neural_prior_model=args.prior_model)}


def _generate(animator, first: torch.Tensor, names: list[str], args, prior_only: bool) -> tuple[torch.Tensor, float]:
    from ..tiny.animator import motion_label

    t0 = time.time()
    clips = []
    for i, (frame, motion) in enumerate(zip(first, names)):
        if prior_only:
            label = torch.tensor([motion_label(animator.meta, motion)])
            with torch.no_grad():
                clips.append(animator.prior_net(frame[None], label).float()[0].clamp(-1, 1))
        else:
            clips.append(animator.animate(frame, motion, steps=args.steps, cfg=args.cfg, seed=args.seed + i))
    return torch.stack(clips), (time.time() - t0) / len(names)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    variants = _variants(args.variants)
    if args.threads:
        torch.set_num_threads(args.threads)
    from . import quality as bench_quality
    from ..training.data.camera_motion import MOTIONS, CameraMotionDataset, motion_index
    from ..training.data.sources import SOURCE_KINDS
    from ..video_io import contact_sheet

    t_start = time.time()
    animators = _animators(args)
    ref = animators["bridge"]
    size, frames = ref.size, ref.frames
    from ..training.data.sources import warn_unavailable

    warn_unavailable()
    test = CameraMotionDataset("test", size=size, frames=frames, seed=args.seed)
    truth, labels, _ = test.fixed_set(args.clips, seed=args.seed)
    names = [MOTIONS[int(i)] for i in labels]
    # the same views (same frame 0) moving the opposite way
    opposite, _, _ = test.fixed_set(args.clips, seed=args.seed,
                                    render_as=[motion_index(OPPOSITE.get(n, n)) for n in names])

    small_truth = classifier_view(truth)
    heldout = (small_truth, labels)
    # the classifier options of `bench quality` (its defaults), so its cache is shared
    clf_args = SimpleNamespace(seed=args.seed, classifier_steps=800, classifier_batch=32)
    clf, clf_meta, _ = bench_quality._classifier(Path(args.classifier), clf_args, size // 2, frames // 2,
                                                 SOURCE_KINDS, heldout)
    # FD reference: a second, disjoint draw of real test clips (as `bench quality`)
    from .metrics import extract_features

    reference, _, _ = test.fixed_set(args.clips, seed=args.seed + 1)
    scoring = SimpleNamespace(clf=clf, ref_feats=extract_features(clf, classifier_view(reference)),
                              patch=ref.net.config.patch_size)
    rows = [("ground truth", truth, 0.0), ("copy first frame", truth[:, :1].expand_as(truth).contiguous(), 0.0)]
    for kind in ("bridge", "bridge-np"):
        if kind in variants:
            _log(f"generating {len(names)} clips with {kind} ...")
            video, spc = _generate(animators[kind], truth[:, 0], names, args, prior_only=False)
            rows.append((VARIANTS[kind], video, spc))
    if "neural-prior" in variants:
        video, spc = _generate(animators["bridge-np"], truth[:, 0], names, args, prior_only=True)
        rows.append((VARIANTS["neural-prior"], video, spc))

    moving = torch.tensor([n != "static" for n in names])
    lines = _report(args, rows, truth, opposite, labels, moving, scoring, clf_meta, names, time.time() - t_start)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    _sheet(args, animators["bridge-np"], contact_sheet)
    print("\n".join(lines))
    return 0


def _db(value: float, fmt: str) -> str:
    return "exact" if abs(value) > 90 else format(value, fmt)


def _score_row(name: str, video: torch.Tensor, spc: float, truth: torch.Tensor, opposite: torch.Tensor,
               labels: torch.Tensor, moving: torch.Tensor, scoring, num_motions: int) -> tuple[str, str]:
    """One model's line in the main table and in the per-motion accuracy table.

    * **motion accuracy**: the share of generated clips in which the benchmark's motion classifier
      (trained on ground-truth TRAIN clips) recognises the requested motion. The classifier works
      at the benchmark size, so clips are scored at 32×32 px and every second frame (8 of 16
      frames, the same total motion); its accuracy on the real held-out clips is the ceiling;
    * **direction**: the last frame's PSNR to the true last frame of the requested motion against
      its PSNR to the true last frame of the *opposite* motion (pan-left vs pan-right, zoom-in vs
      zoom-out, ...), rendered from the same source view: a model that follows the motion is
      closer to the requested one;
    * **FD**: Fréchet distance of the classifier's features (same view) to a second, disjoint draw
      of real test clips, as in ``bench quality``;
    * **blockiness**: the patch grid at the networks' patch size (:func:`.metrics.blockiness`, mean
      over clips), worst frame; natural video ≈ 1;
    * **HF / truth**: high-frequency energy over the ground truth's, frames 1..F−1 (below 1 =
      blurrier, above = noisier);
    * last-frame and first-frame PSNR, and seconds per clip.
    """
    from .metrics import blockiness, extract_features, frechet_distance, high_frequency_energy

    clf = scoring.clf
    with torch.no_grad():
        pred = clf.eval()(classifier_view(video)).argmax(1)
    fd = frechet_distance(extract_features(clf, classifier_view(video)), scoring.ref_feats)
    block = float(blockiness(video, scoring.patch).max())
    hf = float((high_frequency_energy(video)[1:] / high_frequency_energy(truth)[1:].clamp_min(1e-12)).mean())
    acc = float((pred == labels).float().mean())
    req = _psnr(video[:, -1], truth[:, -1])
    opp = _psnr(video[:, -1], opposite[:, -1])
    closer = float((req[moving] > opp[moving]).float().mean())
    gap = float((req[moving] - opp[moving]).mean())
    line = (f"| {name} | {100 * acc:.1f}% | {_db(gap, '+.2f')} | {100 * closer:.0f}% | "
            f"{_db(float(_psnr(video[:, 0], truth[:, 0]).mean()), '.1f')} | "
            f"{_db(float(req.mean()), '.2f')} | {fd:.4g} | {block:.3f} | {hf:.3f} | {spc:.2f} |")
    cells = []
    for m in range(num_motions):
        sel = labels == m
        cells.append(f"{100 * float((pred[sel] == m).float().mean()):.0f}%" if sel.any() else "–")
    return line, f"| {name} | " + " | ".join(cells) + " |"


def _report(args, rows, truth, opposite, labels, moving, scoring, clf_meta, names, seconds) -> list[str]:
    from ..training.data.camera_motion import MOTIONS

    motions = list(MOTIONS)
    head = ["| model | motion accuracy | requested vs opposite motion, last frame (dB) | closer to the requested motion | "
            "frame 0 PSNR (dB) | last frame PSNR (dB) | FD ↓ | blockiness (worst frame) →1 | HF / truth →1 | s/clip |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    per_motion = ["| model | " + " | ".join(motions) + " |", "|---|" + "---|" * len(motions)]
    for name, video, spc in rows:
        line, motion_line = _score_row(name, video, spc, truth, opposite, labels, moving, scoring, len(motions))
        head.append(line)
        per_motion.append(motion_line)
    cmd = "python -m framebridge_core bench motion " + " ".join(sys.argv[3:] if sys.argv[1:3] == ["bench", "motion"] else [])
    return [
        "# Does the bundled tiny FrameBridge follow the requested motion on unseen images?",
        "",
        f"Written by `{cmd.strip()}` in {seconds / 60:.1f} min (torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}).",
        "",
        f"* {len(names)} held-out clips (TEST split: source images never seen in training), balanced over the "
        f"9 motions; each model animates the clip's first frame with the clip's motion class, "
        f"{args.steps} sampling steps, each model's default guidance, as `generate` does.",
        f"* Motion accuracy: the `bench quality` motion classifier ({clf_meta.get('steps')} steps on TRAIN clips) "
        f"scores every generated clip at 32×32 px, every second frame. Chance is 11%.",
        "* Requested vs opposite: last-frame PSNR to the true last frame of the requested motion minus the "
        "PSNR to the true last frame of the opposite motion (pan-left vs pan-right, zoom-in vs zoom-out, "
        "rotate-cw vs rotate-ccw, ...) of the same view; moving clips only. Positive = the clip moves the "
        "requested way; \"closer\" is the share of clips where it does.",
        f"* FD: Fréchet distance of the same classifier's features to {len(names)} other held-out real clips "
        "(the ground truth's row is the real-vs-real floor). Blockiness: the patch-grid ratio at the networks' "
        "patch size, worst frame (1 = no grid). HF / truth: high-frequency energy over the ground truth's "
        "(below 1 = blurrier, above = noisier).",
        "",
        *head,
        "",
        "Motion accuracy per requested motion:",
        "",
        *per_motion,
        "",
        f"Contact sheet: `{args.sheet}` (the default image, held out; one row per motion in the order above; "
        f"frames 0 / 5 / 10 / 15; FrameBridge + neural prior, the default of `generate`).",
    ]


def _sheet(args, animator, contact_sheet) -> None:
    from ..training.data.camera_motion import MOTIONS
    from ..tiny.animator import DEFAULT_IMAGE
    from ..video_io import load_image

    frame = load_image(DEFAULT_IMAGE, animator.size)
    clips = [animator.animate(frame, m, steps=args.steps, cfg=args.cfg, seed=args.seed)[[0, 5, 10, 15]]
             for m in MOTIONS]
    contact_sheet(clips, args.sheet, scale=2)


__all__ = ["main", "build_parser", "classifier_view", "OPPOSITE"]
