"""Command line: ``train`` a model, ``generate`` a clip from an image, ``bench quality|motion|speed``,
``vidrd-text-encoder`` (the text encoder of BIVDiff's VidRD ModelT2V.pth as .safetensors for Load CLIP).

    python -m framebridge_core generate --motion zoom-in --out out.webp
    python -m framebridge_core train --kind bridge --preset tiny --minutes 40 --out runs/bridge
    python -m framebridge_core bench quality --runs benchmarks/runs
    python -m framebridge_core bench speed --comfyui /path/to/ComfyUI --python /path/to/comfy-venv/bin/python
    python -m framebridge_core vidrd-text-encoder ModelT2V.pth --out vidrd_text_encoder.safetensors
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields
from typing import Optional, Sequence

from .errors import FrameBridgeError


def _add_train(sub) -> None:
    from .tiny.format import PRESETS
    from .training.loop import TrainConfig
    from .tiny.variants import KINDS

    p = sub.add_parser("train", help="train a bridge, diffusion, neural-prior or SAF model")
    p.add_argument("--kind", choices=KINDS, default="bridge", help="model variant (default: bridge)")
    p.add_argument("--preset", choices=list(PRESETS), default="tiny", help="network and data size")
    p.add_argument("--out", default=None, help="run folder (state.pt, model.safetensors, loss.csv)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/state.pt")
    from .training.loop import FAMILY_NAMES, PRECISIONS

    choices = {"precision": PRECISIONS, "family": FAMILY_NAMES, "device": ("auto", "cpu", "cuda")}
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        if f.name in ("kind", "preset", "out", "sources"):
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = type(getattr(defaults, f.name))
        extra = {"nargs": "?", "const": True} if kind is bool else {}   # --fsdp alone means --fsdp true
        p.add_argument(flag, type=_yes_no if kind is bool else kind, default=None, choices=choices.get(f.name),
                       help=f"default: {getattr(defaults, f.name)!r}", **extra)
    p.add_argument("--sources", default=None, help="comma list of image sources "
                   "(skimage, sklearn, templates, textures)")


def _yes_no(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _train(args) -> int:
    from .training.loop import config_from_args, train

    values = vars(args).copy()
    values["out"] = args.out or f"runs/{args.kind}"
    if args.sources:
        values["sources"] = tuple(s.strip() for s in args.sources.split(","))
    cfg = config_from_args(values)
    t0 = time.time()
    path = train(cfg, resume=args.resume)
    import os

    if os.environ.get("RANK", "0") == "0":   # under torchrun only rank 0 reports (and wrote the file)
        print(f"exported {path} after {(time.time() - t0) / 60:.1f} min")
    return 0


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="animate an image with a camera motion (bundled tiny model)")
    p.add_argument("--image", default=None, help="input image (default: the pack's assets/default-image.png)")
    p.add_argument("--motion", default="zoom-in", help="camera motion, e.g. zoom-in, pan-left, rotate-cw")
    p.add_argument("--out", default="out.webp", help="output animation: .webp, .gif or .mp4")
    p.add_argument("--steps", type=int, default=25, help="sampling steps = network evaluations (default 25)")
    p.add_argument("--cfg", type=float, default=None, help="class guidance scale (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler noise")
    p.add_argument("--neural-prior", action=argparse.BooleanOptionalAction, default=True,
                   help="start the bridge from the neural prior's coarse video (the default: the bundled "
                        "bridge-np model follows the motion best); --no-neural-prior starts it from the "
                        "still image (the plain bundled bridge)")
    p.add_argument("--model", default=None, help="a model file trained by `train` instead of the bundled one")
    p.add_argument("--frames", type=int, default=None,
                   help="clip length (default: the model's 16); longer clips chain segments, each starting "
                        "from the end of the clip so far (e.g. --frames 64)")
    p.add_argument("--overlap", type=int, default=1,
                   help="frames shared by consecutive segments and cross-faded (default 1: the last frame "
                        "starts the next segment)")
    p.add_argument("--scale", type=int, default=4, help="upscaling of the written frames (default 4)")
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")


def _generate(args) -> int:
    import torch

    from .bridge.extend import Extended, seam_report
    from .tiny.clip_file import make_clip_file

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    clip = make_clip_file(args.out, image=args.image, motion=args.motion, steps=args.steps, cfg=args.cfg,
                          seed=args.seed, neural_prior=args.neural_prior, model=args.model, frames=args.frames,
                          overlap=args.overlap, scale=args.scale, fps=args.fps)
    video, extended = clip.video, clip.extended
    print(f"{clip.out} ({video.shape[0]} frames, {video.shape[-1] * args.scale}px, motion {args.motion}); "
          f"contact sheet {clip.sheet}; generation {clip.generation_s:.1f} s, total {time.time() - t0:.1f} s")
    if extended.seams:
        report = seam_report(Extended((video + 1) / 2, extended.seams, extended.overlap, extended.segment_length))
        print(f"{len(extended.seams)} segments chained; " + "; ".join(report.lines()) + " (values in [0, 1])")
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (not part of the tests)")
    p.add_argument("what", choices=["quality", "motion", "speed"],
                   help="quality: bridge vs diffusion vs neural prior vs SAF; motion: do the bundled "
                        "models follow the requested motion on unseen images; speed: ComfyUI vs generate, "
                        "sampler overhead and ours vs the official code, as ratios measured in one run")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the benchmark (see --help)")


def _bench(args) -> int:
    if args.what == "motion":
        from .evaluation.motion import main as motion_main

        return motion_main(args.rest)
    if args.what == "speed":
        from .evaluation.speed import main as speed_main

        return speed_main(args.rest)
    from .evaluation.quality import main as bench_main

    return bench_main(args.rest)


def _add_vidrd(sub) -> None:
    p = sub.add_parser("vidrd-text-encoder", help="write the text_encoder.* of VidRD's ModelT2V.pth as .safetensors "
                                                  "for core Load CLIP (read with weights_only=True)")
    p.add_argument("checkpoint", help="BIVDiff's VidRD ModelT2V.pth")
    p.add_argument("--out", required=True, help="output .safetensors (put it in ComfyUI/models/text_encoders/)")


def _vidrd(args) -> int:
    from pathlib import Path

    from safetensors.torch import save_file

    from .checkpoints import load_state_dict
    from .families.vidrd.checkpoint import text_encoder_state_dict

    sd, _ = load_state_dict(args.checkpoint)
    te = text_encoder_state_dict(sd, f"'{Path(args.checkpoint).name}'")
    save_file(te, args.out)
    print(f"{args.out}: {len(te)} tensors, {sum(v.numel() for v in te.values()) / 1e6:.0f}M parameters "
          f"(load with 'Load CLIP', type stable_diffusion)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m framebridge_core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_generate(sub)
    _add_bench(sub)
    _add_vidrd(sub)
    args = parser.parse_args(argv)
    try:
        return {"train": _train, "generate": _generate, "bench": _bench,
                "vidrd-text-encoder": _vidrd}[args.command](args)
    except FrameBridgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
