"""``python -m framebridge_core bench speed``: speed ratios measured in one run, written to SPEED.md.

Rows (each a ratio of paired, interleaved timings; :mod:`.speed_report`):

1. the Tiny workflow through a real ComfyUI server (:mod:`.speed_comfyui`) vs ``generate``'s
   own function called in this process, same image, steps, guidance and seeds; first run and warm,
2. the sampler vs the bare network calls it makes (the same recorded inputs), on the bundled tiny model,
3. with ``--official-latte`` / ``--official-videocrafter``: our full-size forwards vs the official
   code's, time and peak memory (:mod:`.speed_official`).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

from ..errors import ConfigError
from .speed_report import Comparison, interleaved, render

PARTS = ("comfyui", "sampler", "official")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m framebridge_core bench speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"),
                   help="ComfyUI checkout whose main.py runs the Tiny workflow (default: $COMFYUI_PATH)")
    p.add_argument("--python", default=os.environ.get("COMFYUI_PYTHON"),
                   help="interpreter of ComfyUI's venv (default: $COMFYUI_PYTHON); needed with --comfyui")
    p.add_argument("--official-latte", default=None,
                   help="the framebridge-latte folder of a thu-ml/FrameBridge checkout (adds the Latte rows)")
    p.add_argument("--official-videocrafter", default=None,
                   help="the framebridge-videocrafter folder of a thu-ml/FrameBridge checkout (adds the "
                        "VideoCrafter rows; two full-size UNets in memory at once, about 15 GB)")
    p.add_argument("--official-python", default=None,
                   help="interpreter for both children of the official comparison (the official Latte code "
                        "needs timm); default: this one")
    p.add_argument("--parts", default=",".join(PARTS),
                   help="comma list of comfyui, sampler, official (default: all; a part without its paths is "
                        "listed as not measured)")
    p.add_argument("--repeats", type=int, default=5, help="warm pairs per comparison (default 5)")
    p.add_argument("--official-repeats", type=int, default=3,
                   help="pairs of full-size forwards per official family (default 3)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the Tiny workflow's)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads on every side (0: this process's default, passed on to the children)")
    p.add_argument("--out", default="benchmarks/SPEED.md", help="the markdown report")
    return p


def parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parsed options with every path checked; errors name the value and the fix (exit status 2)."""
    from .speed_comfyui import is_comfyui
    from .speed_official import check_official_root

    p = build_parser()
    a = p.parse_args(argv)
    parts = [s.strip() for s in a.parts.split(",") if s.strip()]
    unknown = [s for s in parts if s not in PARTS]
    if unknown or not parts:
        p.error(f"--parts {a.parts!r}: choose from {', '.join(PARTS)} (comma list)")
    a.parts = parts
    for name in ("repeats", "official_repeats"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(a, name)}: need at least 1 pair")
    if a.steps is not None and a.steps < 1:
        p.error(f"--steps {a.steps}: need at least 1 sampler step")
    if a.threads < 0:
        p.error(f"--threads {a.threads}: use 0 (default) or a positive count")
    if a.comfyui:
        root = Path(a.comfyui).expanduser()
        if not is_comfyui(root):
            p.error(f"--comfyui {a.comfyui!r} is not a ComfyUI checkout (no main.py, nodes.py and comfy/ there)")
        a.comfyui = root.resolve()
        if not a.python:
            p.error("--comfyui needs --python: the interpreter of ComfyUI's venv (or set COMFYUI_PYTHON)")
        if shutil.which(a.python) is None:
            p.error(f"--python {a.python!r} is not an executable interpreter")
    for fam in ("latte", "videocrafter"):
        try:
            setattr(a, f"official_{fam}", check_official_root(fam, getattr(a, f"official_{fam}")))
        except ConfigError as e:
            p.error(str(e))
    if a.official_python and shutil.which(a.official_python) is None:
        p.error(f"--official-python {a.official_python!r} is not an executable interpreter")
    return a


# ------------------------------------------------------------------------------------------------
# 1. ComfyUI server vs generate
# ------------------------------------------------------------------------------------------------


def time_generate(out: Path, steps: int, cfg: float, seed: int) -> float:
    """One ``generate`` as the command runs it (model load, sampling, the animation and sheet written)."""
    from ..tiny.clip_file import make_clip_file

    t0 = time.perf_counter()
    make_clip_file(out, steps=steps, cfg=cfg, seed=seed)
    return time.perf_counter() - t0


def comfyui_vs_generate(a, tmp: Path) -> tuple[list, list]:
    from ..tiny.animator import DEFAULT_IMAGE
    from .speed_comfyui import ComfyServer, load_workflow, make_base_dir, the_node, with_settings

    workflow = load_workflow()
    sampler = the_node(workflow, "FB_BridgeSampler")["inputs"]
    steps = a.steps or int(sampler["steps"])
    cfg, method = float(sampler["cfg"]), sampler["method"]
    if method != "sde":
        raise ConfigError(f"the Tiny workflow's sampler method is {method!r}; generate samples with 'sde' only")
    base = make_base_dir(tmp / "comfy-base", DEFAULT_IMAGE)
    gen = lambda i: time_generate(tmp / f"gen-{i}.webp", steps, cfg, i)
    print(f"starting ComfyUI ({a.comfyui}) ...", file=sys.stderr)
    with ComfyServer(a.comfyui, a.python, base, a.threads) as server:
        comfy = lambda i: server.run(with_settings(workflow, seed=i, steps=steps))
        first_c = comfy(0)  # loads the models, as generate's first call does
        first_g = gen(0)
        seeds = iter(range(1, 2 * a.repeats + 1))
        warm_c, warm_g = interleaved(a.repeats, lambda: comfy(next(seeds)), lambda: gen(next(seeds)))
        startup, server_torch = server.startup_s, server.torch_version()
    size = "64×64, 16 frames"
    what = f"Tiny workflow, {steps} steps, CFG {cfg:g}, {size}"
    rows = [Comparison("ComfyUI server vs generate", f"{what}: first run", "ComfyUI (queue → done)",
                       "generate (in-process)", [first_c], [first_g],
                       note="ComfyUI: first prompt after start-up; generate: first call in this process"),
            Comparison("ComfyUI server vs generate", f"{what}: warm", "ComfyUI (queue → done)",
                       "generate (in-process)", warm_c, warm_g, note="new seed each run")]
    import torch

    same = server_torch == torch.__version__
    notes = [f"The ComfyUI server (`main.py --cpu --use-pytorch-cross-attention`, OMP_NUM_THREADS = the "
             f"torch threads under Machine, torch {server_torch}) started in {startup:.1f} s (not in the table); generate ran "
             f"in this process (torch {torch.__version__})"
             + ("." if same else " — different torch builds, so the ratio includes their difference; run the "
                "benchmark with ComfyUI's interpreter to compare like with like.")
             + " Warm ComfyUI runs re-execute "
             "only the sampler and what follows it (model loads, prior and neural prior are cached for an "
             "unchanged input); every generate call loads the two models again, samples, writes the .webp "
             "animation and a contact sheet. Both run the bridge from the neural prior on the default image."]
    return rows, notes


# ------------------------------------------------------------------------------------------------
# 2. sampler vs the bare network calls
# ------------------------------------------------------------------------------------------------


def sampler_vs_forwards(repeats: int, steps: int, cfg: Optional[float] = None) -> tuple[list, list]:
    """The bundled bridge-np sampling (neural prior + ``steps`` CFG network passes) vs the same
    network calls replayed on the recorded inputs, with nothing around them."""
    import torch

    from ..tiny.animator import DEFAULT_IMAGE, TinyAnimator
    from ..video_io import load_image

    animator = TinyAnimator(neural_prior=True)
    frame = load_image(DEFAULT_IMAGE, animator.size)
    cfg = animator.default_cfg if cfg is None else cfg
    calls = []

    def record(module, args, kwargs):
        calls.append((module, [x.clone() if torch.is_tensor(x) else x for x in args], dict(kwargs)))

    modules = [m for m in (animator.prior_net, animator.net) if m is not None]
    hooks = [m.register_forward_pre_hook(record, with_kwargs=True) for m in modules]
    try:
        animator.animate(frame, "zoom-in", steps=steps, cfg=cfg, seed=0)
    finally:
        for h in hooks:
            h.remove()

    def sampler() -> float:
        t0 = time.perf_counter()
        animator.animate(frame, "zoom-in", steps=steps, cfg=cfg, seed=0)
        return time.perf_counter() - t0

    @torch.no_grad()
    def forwards() -> float:
        t0 = time.perf_counter()
        for module, args, kwargs in calls:
            module(*args, **kwargs)
        return time.perf_counter() - t0

    sampler(), forwards()  # warm-up (allocator, first-call paths) outside the pairs
    ts, tf = interleaved(repeats, sampler, forwards)
    row = Comparison("Sampler overhead (in-process, bundled tiny model)",
                     f"bridge from the neural prior, {steps} steps, CFG {cfg:g}", "sampler (TinyAnimator.animate)",
                     f"its {len(calls)} network calls alone", ts, tf)
    note = (f"The tiny network is a pixel-space Latte (the FrameBridge-Latte code at a small size): "
            f"{len(calls) - 1} batched CFG passes of the bridge and one neural-prior pass, replayed with the inputs "
            "recorded from the sampler; the difference is the sampler's own work (bridge-SDE updates, noise, "
            "input assembly, the CFG mix, frame-0 replacement).")
    return [row], [note]


# ------------------------------------------------------------------------------------------------
# 3. ours vs the official code
# ------------------------------------------------------------------------------------------------


def official_rows(a, tmp: Path) -> tuple[list, list]:
    from .speed_official import SETUP, compare

    rows, notes = [], []
    for fam, root in (("latte", a.official_latte), ("videocrafter", a.official_videocrafter)):
        if root is None:
            continue
        print(f"{fam}: ours vs official ({root}) ...", file=sys.stderr)
        r = compare(fam, root, a.official_repeats, _threads(a), tmp, a.official_python)
        name = {"latte": "FrameBridge-Latte", "videocrafter": "FrameBridge-VideoCrafter"}[fam]
        sec = "Ours vs the official code (full-size networks, same random weights and inputs)"
        rows.append(Comparison(sec, f"{name} forward time ({SETUP[fam]})", "ours", "official", r["ours"], r["official"]))
        mo, mf = r["memory"]["ours"], r["memory"]["official"]
        rows.append(Comparison(sec, f"{name} peak memory during the forwards", "ours", "official",
                               [mo["forward_peak_mb"]], [mf["forward_peak_mb"]], unit="MB",
                               note="resident-set high-water mark above the loaded model"))
        rows.append(Comparison(sec, f"{name} process peak memory", "ours", "official",
                               [mo["process_peak_mb"]], [mf["process_peak_mb"]], unit="MB",
                               note="includes each interpreter's imports"))
        notes.append(f"{name}: both sides in `{a.official_python or sys.executable}` (torch {mo['torch']}, "
                     f"{mo['threads']} threads); max |ours − official| = {r['max_abs_diff']:.2e} on outputs up to "
                     f"{r['output_scale']:.3g}; model build + random weights took {r['load_s']['ours']:.1f} s (ours) "
                     f"and {r['load_s']['official']:.1f} s (official), outside the table.")
    return rows, notes


# ------------------------------------------------------------------------------------------------


def _threads(a) -> int:
    import torch

    return a.threads or torch.get_num_threads()


def machine_lines(threads: int, load_before: tuple, load_after: tuple) -> list:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    busy = max(load_before[0], load_after[0]) > 0.5 * (os.cpu_count() or 1)
    return [f"CPU: {cpu}, {os.cpu_count()} logical cores; torch threads on every side: {threads}",
            f"torch {torch.__version__}, Python {platform.python_version()}, {platform.system()} {platform.machine()}",
            f"load average (1/5/15 min) before: {'/'.join(f'{v:.2f}' for v in load_before)}, after: "
            f"{'/'.join(f'{v:.2f}' for v in load_after)}"
            + (" — measured with other work on the machine" if busy else "")]


def main(argv: Optional[Sequence[str]] = None) -> int:
    import torch

    a = parse(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    threads = _threads(a)
    a.threads = threads
    command = "python -m framebridge_core bench speed " + " ".join(argv if argv is not None else sys.argv[2:])
    load_before = os.getloadavg()
    rows, notes, skipped = [], [], []
    with tempfile.TemporaryDirectory(prefix="fb-speed-") as tmp_name:
        tmp = Path(tmp_name)
        if "comfyui" in a.parts:
            if a.comfyui is None:
                skipped.append("ComfyUI server vs generate: no --comfyui / COMFYUI_PATH given")
            else:
                r, n = comfyui_vs_generate(a, tmp)
                rows += r
                notes += n
        if "sampler" in a.parts:  # after ComfyUI vs generate, whose first run must be this process's first
            r, n = sampler_vs_forwards(a.repeats, a.steps or 25)
            rows += r
            notes += n
        if "official" in a.parts:
            for fam, root in (("Latte", a.official_latte), ("VideoCrafter", a.official_videocrafter)):
                if root is None:
                    skipped.append(f"{fam} vs the official code: no --official-{fam.lower()} given")
            r, n = official_rows(a, tmp)
            rows += r
            notes += n
    load_after = os.getloadavg()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = render(rows, command=command, machine=machine_lines(threads, load_before, load_after), date=date,
                  skipped=skipped, notes=notes)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    for c in rows:
        s = c.stats()
        print(f"{c.what}: {c.a_label} / {c.b_label} = {s.median:.3f} ({s.low:.3f}–{s.high:.3f}, {s.n} pairs)")
    print(f"wrote {out}")
    return 0


__all__ = ["PARTS", "build_parser", "comfyui_vs_generate", "main", "official_rows", "parse", "sampler_vs_forwards"]
