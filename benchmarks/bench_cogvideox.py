r"""FrameBridge-CogVideoX-2B against diffusers: transformer forward and VAE decode/encode (time, peak memory, output
difference), each side in its own child process with the same seeded random weights and inputs; and a full
FrameBridge sampling run (ours only, CUDA). diffusers is imported only in its child, never by this repository.

  python benchmarks/bench_cogvideox.py --part transformer --device cpu --dtype fp32 --repeats 1 \
      --diffusers-python /path/to/venv-with-diffusers/bin/python
  python benchmarks/bench_cogvideox.py --part vae --device cuda --dtype bf16 --encode   # tiled, as the pipeline
  python benchmarks/bench_cogvideox.py --part sample --device cuda --dtype bf16         # 50 steps, CFG 6
  python benchmarks/bench_cogvideox.py --part transformer --tiny                        # quick self-check
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: CogVideoX-2B ``transformer/config.json`` with FrameBridge's 32 input channels (noisy + image-clip latent)
TRANSFORMER_2B = dict(
    num_attention_heads=30, attention_head_dim=64, in_channels=32, out_channels=16, flip_sin_to_cos=True,
    freq_shift=0, time_embed_dim=512, text_embed_dim=4096, num_layers=30, attention_bias=True, sample_width=90,
    sample_height=60, sample_frames=49, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=226,
    activation_fn="gelu-approximate", timestep_activation_fn="silu", norm_elementwise_affine=True, norm_eps=1e-5,
    spatial_interpolation_scale=1.875, temporal_interpolation_scale=1.0, use_rotary_positional_embeddings=False)
TRANSFORMER_TINY = {**TRANSFORMER_2B, **dict(num_attention_heads=2, attention_head_dim=16, time_embed_dim=32,
                                             text_embed_dim=24, num_layers=2, sample_width=8, sample_height=8,
                                             sample_frames=9, max_text_seq_length=8)}
#: CogVideoX-2B ``vae/config.json`` (tiles of 240x360 pixels: a 256x256 clip is tiled in height only)
VAE_2B = dict(in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 512), latent_channels=16,
              layers_per_block=3, act_fn="silu", norm_eps=1e-6, norm_num_groups=32, temporal_compression_ratio=4,
              sample_height=480, sample_width=720, scaling_factor=1.15258426)
VAE_TINY = {**VAE_2B, **dict(block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=4,
                             sample_height=96, sample_width=80)}  # tiles of 48x40 pixels
TIMESTEP = 965.716
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


# ---------------------------------------------------------------------------------------------- memory


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_counters(device: str) -> dict:
    """Zero the peak counters; returns the baselines (resident memory, CUDA memory allocated now)."""
    import torch

    from framebridge_core.evaluation.proc_memory import reset_peak, rss_kb

    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    reset_peak()
    return {"rss_kb": rss_kb("VmRSS"),
            "cuda": torch.cuda.memory_allocated() if device.startswith("cuda") else 0}


def _peaks(device: str, base: dict) -> dict:
    import torch

    from framebridge_core.evaluation.proc_memory import rss_kb

    rec = {"peak_mb": (rss_kb("VmHWM") - base["rss_kb"]) / 1024, "process_peak_mb": rss_kb("VmHWM") / 1024}
    if device.startswith("cuda"):
        rec.update(cuda_peak_mb=torch.cuda.max_memory_allocated() / 2**20,
                   cuda_peak_above_weights_mb=(torch.cuda.max_memory_allocated() - base["cuda"]) / 2**20,
                   cuda_reserved_peak_mb=torch.cuda.max_memory_reserved() / 2**20)
    return rec


def measure(fn, repeats: int, device: str):
    """One warm-up call, then ``repeats`` timed calls; peak memory over all of them, above the level before."""
    base = _reset_counters(device)
    t0 = time.perf_counter()
    out = fn()  # warm-up
    _sync(device)
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        del out
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return out, {"warmup_s": warmup_s, "times": times, "median_s": statistics.median(times), **_peaks(device, base)}


# ---------------------------------------------------------------------------------------------- networks


def build(part: str, side: str, tiny: bool):
    """The network of ``part`` (fp32, CPU, seeded random weights)."""
    from framebridge_core.testing import seeded_random_weights

    cfg = (TRANSFORMER_TINY if tiny else TRANSFORMER_2B) if part == "transformer" else (VAE_TINY if tiny else VAE_2B)
    if side == "ours" and part == "transformer":
        from framebridge_core.families.cogvideox.network import CogVideoXConfig, CogVideoXTransformer

        net = CogVideoXTransformer(CogVideoXConfig.from_dict(cfg))
    elif side == "ours":
        from framebridge_core.families.cogvideox.vae import CogVideoXVAE, CogVideoXVAEConfig

        net = CogVideoXVAE(CogVideoXVAEConfig.from_dict(cfg))
    else:
        import diffusers

        cls = diffusers.CogVideoXTransformer3DModel if part == "transformer" else diffusers.AutoencoderKLCogVideoX
        net = cls(**cfg)
    return seeded_random_weights(net, seed=0).eval().requires_grad_(False)


def make_inputs(part: str, tiny: bool, size: int, frames: int) -> dict:
    """The same inputs on both sides (float32, CPU)."""
    import torch

    g = torch.Generator().manual_seed(0)
    lf, h = (frames - 1) // 4 + 1, size // 8
    if part == "transformer":
        cfg = TRANSFORMER_TINY if tiny else TRANSFORMER_2B
        return {"x": torch.randn(1, lf, cfg["in_channels"], h, h, generator=g),
                "text": torch.randn(1, cfg["max_text_seq_length"], cfg["text_embed_dim"], generator=g),
                "t": torch.tensor([TIMESTEP])}
    cfg = VAE_TINY if tiny else VAE_2B
    still = torch.rand(1, 3, 1, size, size, generator=g) * 2 - 1  # a static clip: one frame repeated
    return {"z": torch.randn(1, cfg["latent_channels"], lf, h, h, generator=g),
            "clip": still.expand(1, 3, frames, size, size).contiguous()}


def calls(part: str, side: str, net, inp: dict, a) -> dict:
    """name -> zero-argument callable returning the output tensor (only ``a.only`` for the VAE)."""
    if part == "transformer":
        if side == "ours":
            return {"forward": lambda: net(inp["x"], inp["text"], inp["t"])}
        return {"forward": lambda: net(hidden_states=inp["x"], encoder_hidden_states=inp["text"],
                                       timestep=inp["t"], return_dict=False)[0]}
    tiled = not a.untiled
    if side == "ours":
        fns = {"decode": lambda: net.decode(inp["z"], tiled=tiled),
               "encode": lambda: net.encode(inp["clip"], tiled=tiled)}
    else:
        if tiled:
            net.enable_tiling()
        fns = {"decode": lambda: net.decode(inp["z"], return_dict=False)[0],
               "encode": lambda: net.encode(inp["clip"]).latent_dist.mode()}
    return {a.only: fns[a.only]}


def _setup(a):
    import torch

    torch.set_grad_enabled(False)
    if a.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 compares fp32 on both sides
        torch.backends.cudnn.allow_tf32 = False
    return getattr(torch, DTYPES[a.dtype])


def _describe(net, side: str, a, load_s: float) -> dict:
    import torch

    rec = {"side": side, "part": a.part, "device": a.device, "dtype": a.dtype, "size": a.size, "frames": a.frames,
           "tiny": a.tiny, "load_s": load_s, "params": sum(p.numel() for p in net.parameters()),
           "weights_mb": sum(p.numel() * p.element_size() for p in net.parameters()) / 2**20,
           "threads": torch.get_num_threads(), "torch": torch.__version__}
    if a.part == "vae":
        rec["tiled"] = not a.untiled
    if side == "diffusers":
        import diffusers

        rec["diffusers"] = diffusers.__version__
    if a.device.startswith("cuda"):
        rec["gpu"] = torch.cuda.get_device_name()
    return rec


def worker(a) -> None:
    """Child process: build one side, run its calls, write the record (JSON) and the outputs (.pt)."""
    import torch

    dtype = _setup(a)
    t0 = time.perf_counter()
    net = build(a.part, a.worker, a.tiny).to(a.device, dtype)
    inp = {k: v.to(a.device, dtype if v.is_floating_point() and k != "t" else v.dtype)
           for k, v in make_inputs(a.part, a.tiny, a.size, a.frames).items()}
    rec = _describe(net, a.worker, a, time.perf_counter() - t0)
    outputs, rec["calls"] = {}, {}
    for name, fn in calls(a.part, a.worker, net, inp, a).items():  # one call per process (clean RSS peaks)
        out, rec["calls"][name] = measure(fn, a.repeats, a.device)
        outputs[name] = out.float().cpu()
        rec["calls"][name]["out_shape"] = list(out.shape)
        del out
    torch.save(outputs, a.worker_out + ".pt")
    Path(a.worker_out).write_text(json.dumps(rec))
    print(json.dumps(rec), flush=True)


# ---------------------------------------------------------------------------------------------- sampling


def _build_sampler(a, dtype):
    """FrameBridge-CogVideoX bridge and VAE (2B layouts, or the tiny ones), seeded random weights."""
    from framebridge_core.families.cogvideox.bridge import CogVideoXBridge
    from framebridge_core.families.cogvideox.network import CogVideoXConfig
    from framebridge_core.families.cogvideox.vae import CogVideoXVAE, CogVideoXVAEConfig
    from framebridge_core.testing import seeded_random_weights

    bridge = CogVideoXBridge(CogVideoXConfig.from_dict(TRANSFORMER_TINY if a.tiny else TRANSFORMER_2B))
    seeded_random_weights(bridge.transformer, seed=0)
    vae = seeded_random_weights(CogVideoXVAE(CogVideoXVAEConfig.from_dict(VAE_TINY if a.tiny else VAE_2B)), seed=0)
    return bridge.eval().requires_grad_(False).to(a.device, dtype), vae.eval().requires_grad_(False).to(a.device, dtype)


def _denoiser(bridge, text, uncond, scale: float, batched: bool):
    """x̂0 with text CFG: two transformer passes per step, or one pass on a batch of two."""
    import torch

    from framebridge_core.bridge.sampling import cfg_combine

    if not batched:
        return lambda x, i, y: bridge.x0(x, i, y, text, uncond, cfg_scale=scale)
    both = torch.cat([text, uncond])

    def denoise(x, i, y):
        out = bridge.x0(torch.cat([x, x]), i, torch.cat([y, y]), both)
        return cfg_combine(out[:1], out[1:], scale)

    return denoise


def _sample_once(bridge, vae, inp: dict, steps: int, a) -> tuple:
    """Encode the static clip (the prior), sample ``steps`` bridge steps, decode; returns (video, timings)."""
    import torch

    from framebridge_core.bridge.sampling import sample_bridge

    tiled, scale, t = not a.untiled, vae.config.scaling_factor, [time.perf_counter()]
    prior = vae.encode(inp["clip"], tiled=tiled).float().permute(0, 2, 1, 3, 4) * scale  # [B, F, C, h, w]
    _sync(a.device)
    t.append(time.perf_counter())
    gen = torch.Generator(a.device).manual_seed(0)
    denoise = _denoiser(bridge, inp["text"], inp["uncond"], a.cfg, a.batched_cfg)
    x0 = sample_bridge(denoise, prior, bridge.schedule, steps, spacing="trailing", generator=gen)
    _sync(a.device)
    t.append(time.perf_counter())
    video = vae.decode((x0.permute(0, 2, 1, 3, 4) / scale).to(inp["clip"].dtype), tiled=tiled)
    _sync(a.device)
    t.append(time.perf_counter())
    return video, {"encode_s": t[1] - t[0], "sample_s": t[2] - t[1], "decode_s": t[3] - t[2], "total_s": t[3] - t[0]}


def sample_worker(a) -> None:
    """Child process: a full FrameBridge-CogVideoX run (encode prior, ``--steps`` steps at ``--cfg``, decode)."""
    import torch

    dtype = _setup(a)
    t0 = time.perf_counter()
    bridge, vae = _build_sampler(a, dtype)
    tcfg = TRANSFORMER_TINY if a.tiny else TRANSFORMER_2B
    g = torch.Generator().manual_seed(0)
    text = torch.randn(2, tcfg["max_text_seq_length"], tcfg["text_embed_dim"], generator=g)  # prompt, empty prompt
    still = torch.rand(1, 3, 1, a.size, a.size, generator=g) * 2 - 1
    inp = {"text": text[:1].to(a.device, dtype), "uncond": text[1:].to(a.device, dtype),
           "clip": still.expand(1, 3, a.frames, a.size, a.size).contiguous().to(a.device, dtype)}
    rec = {"side": "ours", "part": "sample", "device": a.device, "dtype": a.dtype, "size": a.size, "frames": a.frames,
           "tiny": a.tiny, "steps": a.steps, "cfg": a.cfg, "batched_cfg": a.batched_cfg, "tiled": not a.untiled,
           "load_s": time.perf_counter() - t0, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if a.device.startswith("cuda"):
        rec.update(gpu=torch.cuda.get_device_name(), weights_cuda_mb=torch.cuda.memory_allocated() / 2**20)
    _sample_once(bridge, vae, inp, 2, a)  # warm-up (2 steps)
    base, runs = _reset_counters(a.device), []
    for _ in range(a.repeats):
        video, timing = _sample_once(bridge, vae, inp, a.steps, a)
        runs.append(timing)
    rec.update(runs=runs, median_total_s=statistics.median(r["total_s"] for r in runs), out_shape=list(video.shape),
               finite=bool(torch.isfinite(video).all()), **_peaks(a.device, base))
    Path(a.worker_out).write_text(json.dumps(rec))
    print(json.dumps(rec), flush=True)


# ---------------------------------------------------------------------------------------------- parent


def _diffusers_python(a) -> str:
    if a.diffusers_python:
        return a.diffusers_python
    if importlib.util.find_spec("diffusers") is not None:
        return sys.executable
    sys.exit("diffusers is not importable here: give --diffusers-python (an interpreter that has diffusers) "
             "or set FRAMEBRIDGE_DIFFUSERS_PYTHON")


def _child_argv(a, side: str, call: str, out: str) -> list:
    argv = ["--part", a.part, "--device", a.device, "--dtype", a.dtype, "--repeats", str(a.repeats),
            "--size", str(a.size), "--frames", str(a.frames), "--steps", str(a.steps), "--cfg", str(a.cfg),
            "--worker", side, "--worker-out", out, "--only", call]
    flags = {"--tiny": a.tiny, "--untiled": a.untiled, "--encode": a.encode, "--batched-cfg": a.batched_cfg}
    return argv + [f for f, on in flags.items() if on]


def _merge(results: dict, side: str, rec: dict, outputs: dict) -> None:
    if side not in results:
        results[side] = {**rec, "outputs": {}} if "calls" in rec else rec
    if "calls" in rec:
        results[side]["calls"].update(rec["calls"])
        results[side]["outputs"].update(outputs)


def run_sides(a) -> dict:
    """Each side, and each VAE call, in its own child process, one after the other; returns side -> record."""
    import torch

    sides = ["ours"] if a.part == "sample" else [s for s in a.sides.split(",") if s]
    names = {"transformer": ["forward"], "vae": ["decode"] + (["encode"] if a.encode else []), "sample": ["run"]}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names[a.part]:
            for side in sides:
                python = _diffusers_python(a) if side == "diffusers" else (a.python or sys.executable)
                out = os.path.join(tmp, f"{side}-{name}.json")
                subprocess.run([python, str(Path(__file__).resolve())] + _child_argv(a, side, name, out),
                               check=True, env=env, cwd=str(REPO))
                rec = json.loads(Path(out).read_text())
                _merge(results, side, rec, torch.load(out + ".pt") if a.part != "sample" else {})
    return results


def _line(side: str, name: str, r: dict) -> str:
    s = (f"{side:>9} {name:>7}: {r['median_s']:8.3f} s/call (runs {[round(v, 3) for v in r['times']]}), "
         f"peak +{r['peak_mb']:.0f} MB RSS (process {r['process_peak_mb']:.0f} MB)")
    if "cuda_peak_mb" in r:
        s += (f", CUDA peak {r['cuda_peak_mb']:.0f} MB (+{r['cuda_peak_above_weights_mb']:.0f} over weights, "
              f"reserved {r['cuda_reserved_peak_mb']:.0f} MB)")
    return s


def summarize(a, results: dict) -> dict:
    """Print the per-call lines and the ours/diffusers ratios; returns the summary."""
    any_rec = next(iter(results.values()))
    print(f"\n{a.part}: device {a.device}, dtype {a.dtype}, {a.size}x{a.size}x{a.frames} pixels"
          f"{' (tiny config)' if a.tiny else ''}, threads {any_rec['threads']}, params {any_rec['params']:,}"
          + (f", tiled {any_rec['tiled']}" if a.part == "vae" else ""))
    summary = {}
    for name in any_rec["calls"]:
        for side, rec in results.items():
            print(_line(side, name, rec["calls"][name]))
        if len(results) < 2:
            continue
        o, d = results["ours"], results["diffusers"]
        oc, dc = o["calls"][name], d["calls"][name]
        diff = float((o["outputs"][name] - d["outputs"][name]).abs().max())
        scale = float(d["outputs"][name].abs().max())
        s = {"time_ratio": oc["median_s"] / dc["median_s"], "peak_ratio": oc["peak_mb"] / max(dc["peak_mb"], 1e-9),
             "process_peak_ratio": oc["process_peak_mb"] / dc["process_peak_mb"], "max_abs_diff": diff,
             "max_rel_diff": diff / max(scale, 1e-30), "output_abs_max": scale}
        if "cuda_peak_mb" in oc:
            s["cuda_peak_ratio"] = oc["cuda_peak_mb"] / dc["cuda_peak_mb"]
            s["cuda_peak_above_weights_ratio"] = (oc["cuda_peak_above_weights_mb"]
                                                  / max(dc["cuda_peak_above_weights_mb"], 1e-9))
        summary[name] = s
        print(f"{'ratio':>9} {name:>7}: ours/diffusers time {s['time_ratio']:.3f}, peak {s['peak_ratio']:.3f}, "
              f"process peak {s['process_peak_ratio']:.3f}"
              + (f", CUDA peak {s['cuda_peak_ratio']:.3f}" if "cuda_peak_ratio" in s else "")
              + f"; max |ours - diffusers| {diff:.3e} (relative {s['max_rel_diff']:.2e}, output max {scale:.3g})")
    return summary


def summarize_sample(rec: dict) -> None:
    print(f"\nsample: {rec['steps']} steps, CFG {rec['cfg']} ({'batched' if rec['batched_cfg'] else 'two passes'}), "
          f"{rec['size']}x{rec['size']}x{rec['frames']}, {rec['dtype']}, tiled VAE {rec['tiled']}")
    for k, r in enumerate(rec["runs"]):
        print(f"  run {k}: " + ", ".join(f"{n} {v:.2f} s" for n, v in r.items()))
    line = f"  median total {rec['median_total_s']:.2f} s, RSS peak +{rec['peak_mb']:.0f} MB"
    if "cuda_peak_mb" in rec:
        line += (f", CUDA allocated peak {rec['cuda_peak_mb']:.0f} MB (weights {rec['weights_cuda_mb']:.0f} MB), "
                 f"reserved peak {rec['cuda_reserved_peak_mb']:.0f} MB")
    print(line + f", output {rec['out_shape']} finite {rec['finite']}")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["transformer", "vae", "sample"], default="transformer")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up (median reported)")
    ap.add_argument("--size", type=int, help="pixels per side, a multiple of 16 [256; 64 with --tiny]")
    ap.add_argument("--frames", type=int, help="pixel frames, 4k+1 [17; 9 with --tiny]")
    ap.add_argument("--tiny", action="store_true", help="tiny configs: a quick self-check (sides must agree)")
    ap.add_argument("--untiled", action="store_true", help="vae/sample: no spatial tiling (same below 240 px)")
    ap.add_argument("--encode", action="store_true", help="vae: also time encode of the static clip")
    ap.add_argument("--steps", type=int, default=50, help="sample: bridge steps [50]")
    ap.add_argument("--cfg", type=float, default=6.0, help="sample: text CFG scale [6]")
    ap.add_argument("--batched-cfg", action="store_true", help="sample: both CFG branches in one batch of 2")
    ap.add_argument("--sides", default="diffusers,ours", help="transformer/vae: sides to run, in order")
    ap.add_argument("--python", help="interpreter for our side [this one]")
    ap.add_argument("--diffusers-python", default=os.environ.get("FRAMEBRIDGE_DIFFUSERS_PYTHON"),
                    help="interpreter with diffusers [$FRAMEBRIDGE_DIFFUSERS_PYTHON, else this one if it has it]")
    ap.add_argument("--out", help="write all records and the summary to this JSON file")
    ap.add_argument("--worker", choices=["ours", "diffusers"], help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--only", default="forward", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.repeats < 1:
        ap.error("--repeats must be at least 1")
    a.size = a.size or (64 if a.tiny else 256)
    a.frames = a.frames or (9 if a.tiny else 17)
    if a.size % 16 or a.frames < 1 or (a.frames - 1) % 4:
        ap.error("--size must be a multiple of 16 and --frames 4k+1 (1, 5, 9, 13, 17, ...)")
    if a.part == "sample" and not (a.device.startswith("cuda") or a.tiny):
        ap.error("--part sample runs on CUDA (on CPU only with --tiny)")
    return a


def main(argv=None) -> None:
    a = parse_args(argv)
    if a.worker:
        return sample_worker(a) if a.part == "sample" else worker(a)
    results = run_sides(a)
    if a.part == "sample":
        summarize_sample(results["ours"])
        summary = {}
    else:
        summary = summarize(a, results)
    if a.out:
        records = {s: {k: v for k, v in r.items() if k != "outputs"} for s, r in results.items()}
        Path(a.out).write_text(json.dumps({"args": vars(a), "sides": records, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
