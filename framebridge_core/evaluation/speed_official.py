"""Our full-size network forwards against the official thu-ml/FrameBridge code, for ``bench speed``.

Each side runs in its own child process (so the resident-memory peaks do not mix), built with the
same random weights (:func:`~framebridge_core.testing.seeded_random_weights` draws each tensor from
its parameter name; the key layouts are identical; the frozen sin-cos tables keep their own init)
and fed the same inputs. The parent steps the two children in turn, one forward at a time, so both
see the same machine load. The official code is imported only in its child, from the checkout given
on the command line (its folder on that child's ``PYTHONPATH``); nothing of it is in this repository.

* ``videocrafter``: the UNet (``lvdm.modules.networks.openaimodel3d.UNetModel``), 1×8×16×32×32
  (256×256, 16 frames), text + image context of 77 + 256 tokens, frame stride 3, float timestep.
* ``latte``: Latte-S/2 bridge (``models/latte.py``), batch 2 (one CFG step), 17×4×32×32.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Optional, Sequence

from .proc_memory import reset_peak, rss_kb

REPO = Path(__file__).resolve().parents[2]
FAMILIES = ("videocrafter", "latte")
#: where the official network module lives under the given checkout folder
OFFICIAL_MODULE_FILE = {"videocrafter": "lvdm/modules/networks/openaimodel3d.py", "latte": "models/latte.py"}

VC_OFFICIAL_KWARGS = dict(in_channels=8, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
                          num_res_blocks=2, channel_mult=[1, 2, 4, 4], dropout=0.1, num_head_channels=64,
                          transformer_depth=1, context_dim=1024, use_linear=True, use_checkpoint=False,
                          temporal_conv=True, temporal_attention=True, temporal_selfatt_only=True,
                          use_relative_position=False, use_causal_attention=False, temporal_length=16,
                          addition_attention=True, image_cross_attention=True,
                          image_cross_attention_scale_learnable=True, default_fs=3, fs_condition=True)
LATTE_OFFICIAL_KWARGS = dict(input_size=32, num_classes=101, num_frames=16, learn_sigma=False, extras=2,
                             condition_type="concat_pre", attention_mode="math")
SETUP = {"videocrafter": "UNet, 1×8×16×32×32 (256×256, 16 frames), context 77 + 256 tokens, fp32",
         "latte": "Latte-S/2 bridge, batch 2 (one CFG step), 17×4×32×32 (256×256, 16 + 1 frames), fp32"}


# ------------------------------------------------------------------------------------------------
# Child side
# ------------------------------------------------------------------------------------------------


def _random_weights(net):
    """Same values on both sides for the same parameter name; frozen tables keep their init."""
    from ..testing import seeded_random_weights

    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}
    seeded_random_weights(net, seed=0)
    for n, p in net.named_parameters():
        if n in frozen:
            p.data.copy_(frozen[n])
    return net.eval()


def build(family: str, side: str):
    """(network, run) for one side; ``run()`` does one forward on fixed inputs."""
    import torch

    g = torch.Generator().manual_seed(0)
    if family == "videocrafter":
        if side == "ours":
            from ..families.videocrafter.unet3d import UNet3D, UNet3DConfig

            net = UNet3D(UNet3DConfig())
        else:
            if "cv2" not in sys.modules:  # the official utils import cv2 for data loading only
                try:
                    import cv2  # noqa: F401
                except ImportError:
                    sys.modules["cv2"] = types.ModuleType("cv2")
            from lvdm.modules.networks.openaimodel3d import UNetModel

            net = UNetModel(**VC_OFFICIAL_KWARGS)
        _random_weights(net)
        x = torch.randn(1, 8, 16, 32, 32, generator=g)
        t = torch.tensor([802.851])
        ctx = torch.randn(1, 77 + 256, 1024, generator=g)
        fs = torch.tensor([3])
        if side == "ours":
            return net, lambda: net(x, t, ctx, fs)
        return net, lambda: net(x, t, context=ctx, fs=fs)
    if side == "ours":
        from ..families.latte.network import LatteModel, latte_s2_bridge

        net = LatteModel(latte_s2_bridge())
    else:
        from models.latte import Latte_models

        net = Latte_models["Latte-S/2"](**LATTE_OFFICIAL_KWARGS)
    _random_weights(net)
    x = torch.randn(2, 17, 4, 32, 32, generator=g)
    t = torch.tensor([802, 802])
    y = torch.tensor([5, 101])  # a class and the null class, as one CFG step
    return net, lambda: net(x, t, y)


def child(family: str, side: str, out: str) -> None:
    """Load, warm up, then one timed forward per ``run`` line on stdin; ``done`` ends it."""
    import torch

    # stdout carries the replies to the parent; what the official code prints goes to stderr
    replies, sys.stdout = sys.stdout, sys.stderr

    def reply(data: dict) -> None:
        print(json.dumps(data), file=replies, flush=True)

    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    net, run = build(family, side)
    load_s = time.perf_counter() - t0
    reset_peak()
    base = rss_kb("VmRSS")
    y = run()  # warm-up
    reply({"ready": True, "load_s": load_s})
    for line in sys.stdin:
        if line.strip() == "done":
            break
        t0 = time.perf_counter()
        y = run()
        reply({"s": time.perf_counter() - t0})
    torch.save(y.float().cpu(), out)
    reply({"forward_peak_mb": (rss_kb("VmHWM") - base) / 1024, "process_peak_mb": rss_kb("VmHWM") / 1024,
           "threads": torch.get_num_threads(), "torch": torch.__version__})


# ------------------------------------------------------------------------------------------------
# Parent side
# ------------------------------------------------------------------------------------------------


class Child:
    def __init__(self, family: str, side: str, python: str, official_root: Optional[Path], out: Path, threads: int):
        path = [str(REPO)] + ([str(official_root)] if side == "official" else [])
        old = os.environ.get("PYTHONPATH")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path + ([old] if old else [])),
                   OMP_NUM_THREADS=str(threads), PYTHONDONTWRITEBYTECODE="1")
        self.side = side
        self.proc = subprocess.Popen([python, "-m", "framebridge_core.evaluation.speed_official", "--child", family,
                                      side, str(out)], cwd=str(REPO), env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            raise RuntimeError(f"the {self.side} child exited (rc {rc}) before answering; see its error above")
        return json.loads(line)

    def forward(self) -> float:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return float(self._read()["s"])

    def finish(self) -> dict:
        self.proc.stdin.write("done\n")
        self.proc.stdin.flush()
        res = self._read()
        self.proc.wait(timeout=120)
        return res

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def compare(family: str, official_root: Path, repeats: int, threads: int, tmp: Path,
            official_python: Optional[str] = None) -> dict:
    """Both children alive at once, run by the same interpreter (``official_python``, default this one),
    forwards interleaved (ours first in even repeats). Returns the per-pair times, each side's memory
    figures, torch version and thread count, and the largest output difference."""
    import torch

    from .speed_report import interleaved

    outs = {s: tmp / f"{family}-{s}.pt" for s in ("ours", "official")}
    kids: dict = {}
    try:
        python = official_python or sys.executable
        kids["official"] = Child(family, "official", python, official_root, outs["official"], threads)
        kids["ours"] = Child(family, "ours", python, None, outs["ours"], threads)
        ours, official = interleaved(repeats, kids["ours"].forward, kids["official"].forward)
        mem = {s: k.finish() for s, k in kids.items()}
    finally:
        for k in kids.values():
            k.kill()
    a, b = torch.load(outs["ours"]), torch.load(outs["official"])
    return {"ours": ours, "official": official, "memory": mem,
            "load_s": {s: k.ready["load_s"] for s, k in kids.items()},
            "max_abs_diff": float((a - b).abs().max()), "output_scale": float(b.abs().max())}


def check_official_root(family: str, path: Optional[str]) -> Optional[Path]:
    """The checkout folder, or a typed error naming the file that should be there."""
    from ..errors import ConfigError

    if path is None:
        return None
    root = Path(path).expanduser().resolve()
    if not (root / OFFICIAL_MODULE_FILE[family]).is_file():
        sub = "framebridge-videocrafter" if family == "videocrafter" else "framebridge-latte"
        raise ConfigError(f"--official-{family} {path!r}: no {OFFICIAL_MODULE_FILE[family]} there; give the "
                          f"{sub} folder of a thu-ml/FrameBridge checkout.")
    return root


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description="child process of `bench speed` (one side of one family)")
    ap.add_argument("--child", nargs=3, metavar=("FAMILY", "SIDE", "OUT"), required=True)
    a = ap.parse_args(argv)
    family, side, out = a.child
    if family not in FAMILIES or side not in ("ours", "official"):
        ap.error(f"--child {family} {side}: family must be one of {FAMILIES}, side ours or official")
    child(family, side, out)


if __name__ == "__main__":
    main()


__all__ = ["FAMILIES", "SETUP", "check_official_root", "compare"]
