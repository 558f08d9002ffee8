"""Full-size FrameBridge-VideoCrafter UNet forward at 256x256x16: ours vs the official lvdm code.

Both networks get the same random weights (``seeded_random_weights`` draws each tensor from its
parameter name, and the key layouts are identical), the same input and the same float timestep.
Each side runs in its own child process, so the peak-memory figures do not mix:

* time per forward (median of ``--repeats`` after one warm-up; one sampling step at CFG != 1 is two),
* peak resident memory during the forwards (``VmHWM`` reset after loading, Linux) and overall,
* the largest output difference between the two.

Usage (CPU; be nice to other jobs)::

    OMP_NUM_THREADS=2 nice -n 19 python benchmarks/bench_videocrafter.py \
        --official-root /path/to/FrameBridge/framebridge-videocrafter [--device cuda] [--repeats 3]

The official code is imported from ``--official-root`` through PYTHONPATH of its child process;
nothing of it is part of this repository.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from proc_memory import reset_peak, rss_kb

REPO = Path(__file__).resolve().parents[1]

OFFICIAL_KWARGS = dict(in_channels=8, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
                       num_res_blocks=2, channel_mult=[1, 2, 4, 4], dropout=0.1, num_head_channels=64,
                       transformer_depth=1, context_dim=1024, use_linear=True, use_checkpoint=False,
                       temporal_conv=True, temporal_attention=True, temporal_selfatt_only=True,
                       use_relative_position=False, use_causal_attention=False, temporal_length=16,
                       addition_attention=True, image_cross_attention=True,
                       image_cross_attention_scale_learnable=True, default_fs=3, fs_condition=True)


def worker(side: str, device: str, repeats: int, out_path: str) -> None:
    import torch

    from framebridge_core.testing import seeded_random_weights

    torch.set_grad_enabled(False)
    if side == "ours":
        from framebridge_core.families.videocrafter.unet3d import UNet3D, UNet3DConfig

        net = UNet3D(UNet3DConfig())
    else:
        try:
            import cv2  # noqa: F401
        except ImportError:  # the official utils module imports cv2 for data loading only
            import types

            sys.modules["cv2"] = types.ModuleType("cv2")
        from lvdm.modules.networks.openaimodel3d import UNetModel

        net = UNetModel(**OFFICIAL_KWARGS)
    seeded_random_weights(net, seed=0).eval().to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 16, 32, 32, generator=g).to(device)
    t = torch.tensor([802.851]).to(device)
    ctx = torch.randn(1, 77 + 256, 1024, generator=g).to(device)
    fs = torch.tensor([3]).to(device)

    def run():
        out = net(x, t, ctx, fs) if side == "ours" else net(x, t, context=ctx, fs=fs)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    reset_peak()
    base = rss_kb("VmRSS")
    out = run()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
    res = {"side": side, "times": times, "median_s": sorted(times)[len(times) // 2],
           "forward_peak_mb": (rss_kb("VmHWM") - base) / 1024, "process_peak_mb": rss_kb("VmHWM") / 1024,
           "threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        res["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    torch.save(out.float().cpu(), out_path + ".pt")
    with open(out_path, "w") as f:
        json.dump(res, f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official-root", default=os.environ.get("FRAMEBRIDGE_VC_OFFICIAL"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", choices=["ours", "official"])
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker, a.device, a.repeats, a.out)
    if not a.official_root:
        ap.error("give --official-root (the framebridge-videocrafter folder of the official repository)")
    import torch

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for side in ("official", "ours"):
            out = os.path.join(tmp, side + ".json")
            path = [str(REPO)] + ([a.official_root] if side == "official" else [])
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(path + [os.environ.get("PYTHONPATH", "")]))
            subprocess.run([sys.executable, __file__, "--worker", side, "--device", a.device, "--repeats",
                            str(a.repeats), "--out", out], check=True, env=env, cwd=str(REPO))
            with open(out) as f:
                results[side] = json.load(f)
            results[side]["output"] = torch.load(out + ".pt")
    o, u = results["official"], results["ours"]
    diff = float((o["output"] - u["output"]).abs().max())
    print(f"device {a.device}, threads {u['threads']}, input 1x8x16x32x32 (256x256, 16 frames), fp32")
    for r in (o, u):
        line = (f"{r['side']:>8}: {r['median_s']:.2f} s/forward (runs {[round(v, 2) for v in r['times']]}), "
                f"peak during forward +{r['forward_peak_mb']:.0f} MB, process peak {r['process_peak_mb']:.0f} MB")
        if "cuda_peak_mb" in r:
            line += f", CUDA peak {r['cuda_peak_mb']:.0f} MB"
        print(line)
    print(f"ratio ours/official: time {u['median_s'] / o['median_s']:.3f}, "
          f"forward peak memory {u['forward_peak_mb'] / max(o['forward_peak_mb'], 1e-9):.3f}, "
          f"process peak {u['process_peak_mb'] / o['process_peak_mb']:.3f}"
          + (f", CUDA peak {u['cuda_peak_mb'] / o['cuda_peak_mb']:.3f}" if "cuda_peak_mb" in u else ""))
    print(f"max |ours - official| = {diff:.3e} (output scale {float(o['output'].abs().max()):.3g})")


if __name__ == "__main__":
    main()
