"""Helpers of the fault catalogue (tests/host/test_fault_catalogue.py): the bad files it puts in a server's model
folders, the prompts it edits, and a client for ``python main.py`` that queues a prompt and reads back what the
user sees (the validation refusal or the execution error)."""

from __future__ import annotations

import copy
import json
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
API_DIR = REPO / "workflows" / "api"
TINY = "FrameBridge-Tiny-Animate-Image"
TINY_STILL = "FrameBridge-Tiny-Animate-Image-StillPrior"
LATTE_NP = "FrameBridge-Latte-NeuralPrior-I2V"
TINY_MODEL = "framebridge-tiny-motion-np.safetensors"

# bad files written into the server's models/ folders
EMPTY = "empty.safetensors"
NOT_TENSORS = "a-list.pt"
CODE_PT = "runs-code.pt"
CODE_SAFETENSORS = "runs-code.safetensors"
INT8 = "int8-weights.safetensors"
NAN = "nan-weights.safetensors"
SD15 = "v1-5-pruned-emaonly.safetensors"
MODELSCOPE = "zeroscope_v2_576w_unet.safetensors"
MARKER_NAME = "pickle-ran-code"


class RunsCode:
    """Unpickling this runs ``touch <marker>``: a checkpoint that would execute code when loaded unsafely."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def load_api(name: str) -> dict:
    with open(API_DIR / f"{name}.json", encoding="utf-8") as f:
        return copy.deepcopy(json.load(f))


def node_of(prompt: dict, class_type: str) -> str:
    ids = [k for k, v in prompt.items() if v["class_type"] == class_type]
    assert len(ids) == 1, f"expected one {class_type}, found {ids}"
    return ids[0]


def edit(prompt: dict, class_type: str, **inputs) -> dict:
    prompt[node_of(prompt, class_type)]["inputs"].update(inputs)
    return prompt


def good_prompt(seed: int, steps: int = 2, prefix: str = "catalogue/good") -> dict:
    """The bundled Tiny workflow at a few steps; a new seed makes the sampler run again (not served from cache)."""
    prompt = load_api(TINY)
    edit(prompt, "FB_BridgeSampler", steps=steps, seed=seed)
    edit(prompt, "SaveAnimatedWEBP", filename_prefix=prefix)
    return prompt


def _random_like(shapes: dict, seed: int, scale: float) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    return {k: (1 + 0.05 * torch.randn(s, generator=g)) if (len(s) == 1 and k.endswith("weight"))
            else scale * torch.randn(s, generator=g) for k, s in sorted(shapes.items())}


def write_bad_files(base: Path, vae_file: Path) -> Path:
    """The bad and foreign files of the catalogue, in ``base/models``; returns the marker path a pickle would create."""
    import torch
    from safetensors.torch import load_file, save_file

    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from framebridge_core.families.modelscope.unet3d import ModelScopeUNet3D, ModelScopeUNet3DConfig

    fb = base / "models" / "framebridge"
    marker = base / MARKER_NAME
    (fb / EMPTY).write_bytes(b"")
    torch.save([1, 2, 3], fb / NOT_TENSORS)
    (fb / CODE_PT).write_bytes(pickle.dumps({"ema": {"w": RunsCode(marker)}}, protocol=2))
    (fb / CODE_SAFETENSORS).write_bytes(pickle.dumps({"w": RunsCode(marker)}, protocol=0))
    tiny = load_file(str(REPO / "pretrained" / TINY_MODEL))
    from safetensors import safe_open

    with safe_open(str(REPO / "pretrained" / TINY_MODEL), framework="pt") as f:
        meta = f.metadata()
    save_file({k: (v * 100).to(torch.int8) for k, v in tiny.items()}, str(fb / INT8), metadata=meta)
    save_file({k: torch.full_like(v.float(), float("nan")).to(v.dtype) for k, v in tiny.items()}, str(fb / NAN),
              metadata=meta)

    # a tiny SD-1.5 checkpoint (ComfyUI detects it from model_channels 320) with the stand-in TAESD as its VAE
    unet_cfg = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1],
                    channel_mult=[1], transformer_depth=[1], transformer_depth_middle=1, transformer_depth_output=[1, 1],
                    context_dim=768, num_heads=8, num_head_channels=-1, use_linear_in_transformer=False,
                    use_spatial_transformer=True, use_temporal_attention=False, adm_in_channels=None)
    sd15 = UNetModel(**unet_cfg, operations=comfy.ops.disable_weight_init, device="meta")
    ckpt = {"model.diffusion_model." + k: v.half()
            for k, v in _random_like({k: tuple(v.shape) for k, v in sd15.state_dict().items()}, 11, 0.02).items()}
    ckpt.update({"first_stage_model." + k: v for k, v in load_file(str(vae_file)).items()})
    (base / "models" / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_file(ckpt, str(base / "models" / "checkpoints" / SD15))
    save_file(ckpt, str(fb / SD15))  # the same file where FrameBridge models go: a user's mix-up

    video_cfg = ModelScopeUNet3DConfig(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                                       attention_head_dim=16)
    shapes = {k: tuple(v.shape) for k, v in ModelScopeUNet3D(video_cfg, device="meta").state_dict().items()}
    video = _random_like(shapes, 12, 0.05)
    (base / "models" / "diffusion_models").mkdir(parents=True, exist_ok=True)
    save_file(video, str(base / "models" / "diffusion_models" / MODELSCOPE))
    save_file(video, str(fb / MODELSCOPE))
    return marker


def tree(folder: Path) -> set:
    """Every file under ``folder``, relative to it."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()


@dataclass
class Outcome:
    """What the user sees for one queued prompt."""

    refused: bool                      # refused when queued (validation), nothing ran
    status: str = ""                   # 'success' or 'error' for a queued prompt
    node_type: str = ""                # the node that failed
    exception: str = ""                # its exception class (short name)
    message: str = ""                  # the text the user reads
    prompt_id: str = ""
    outputs: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.refused and self.status == "success"


def queue(server, prompt: dict, timeout: float = 600.0, wait: bool = True) -> Outcome:
    """POST /prompt and, unless refused, wait for the prompt to finish; what the user would read."""
    start = time.monotonic()
    code, body = server.post("/prompt", {"prompt": prompt})
    if code != 200:
        errors = body.get("node_errors") or {}
        parts = [body.get("error", {}).get("message", ""), body.get("error", {}).get("details", "")]
        node_type = ""
        for nid, entry in errors.items():
            node_type = entry.get("class_type", "")
            # ComfyUI files a validate_inputs refusal under every input of the node ('<input> - <message>'): once
            parts += [f"{e.get('message', '')} {str(e.get('details', '')).split(' - ', 1)[-1]}"
                      for e in entry.get("errors", [])]
        return Outcome(refused=True, node_type=node_type, exception="validation", message=" ".join(dict.fromkeys(parts)),
                       seconds=time.monotonic() - start)
    pid = body["prompt_id"]
    if not wait:
        return Outcome(refused=False, prompt_id=pid)
    return finish(server, pid, timeout, start)


def finish(server, prompt_id: str, timeout: float = 600.0, start: float | None = None) -> Outcome:
    start = time.monotonic() if start is None else start
    entry = server.wait_history(prompt_id, timeout=timeout)
    out = Outcome(refused=False, status=entry["status"]["status_str"], prompt_id=prompt_id,
                  outputs=entry.get("outputs", {}))
    for event, data in entry["status"].get("messages", []):
        if event == "execution_error":
            out.node_type = data.get("node_type", "")
            out.exception = str(data.get("exception_type", "")).rsplit(".", 1)[-1]
            out.message = data.get("exception_message", "")
        elif event == "execution_interrupted":
            out.node_type = data.get("node_type", "")
            out.exception = "interrupted"
    out.seconds = time.monotonic() - start
    return out


def output_files(server, outcome: Outcome) -> list[Path]:
    """The files a finished prompt saved (its ``images`` entries), as paths under the server's output folder."""
    files = []
    for node_out in outcome.outputs.values():
        for item in node_out.get("images", []):
            if isinstance(item, dict) and item.get("type") == "output":
                files.append(server.base / "output" / item.get("subfolder", "") / item["filename"])
    return files


# ------------------------------------------------------------------------------------------------
# A server of its own: conftest's comfy_server gives start-up 120 s, which a busy 2-core machine can exceed
# (ComfyUI imports every comfy_extras module first); the catalogue waits up to START_TIMEOUT.
# ------------------------------------------------------------------------------------------------

START_TIMEOUT = float(os.environ.get("FB_SERVER_START_TIMEOUT", "900"))


@dataclass
class CatalogueServer:
    url: str
    proc: object
    base: Path
    log: Path

    def get(self, path: str, timeout: float = 30.0):
        import urllib.request

        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read().decode("utf-8"))

    def post(self, path: str, body: dict, timeout: float = 30.0):
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode("utf-8"),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                text = r.read().decode("utf-8")
                return r.status, json.loads(text) if text.strip() else None
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read().decode("utf-8") or "null")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def wait_history(self, prompt_id: str, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the server exited (rc {self.proc.returncode}):\n{self.log_tail()}"
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            time.sleep(0.2)
        raise AssertionError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")


def start_server(comfy_root: Path, base: Path):
    """``python main.py --cpu`` on a free loopback port with ``base`` as its base directory (a generator: yields the
    server once it serves the pack's nodes, terminates it afterwards)."""
    import socket
    import subprocess
    import sys
    import urllib.error

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = base / "server.log"
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory",
           str(base), "--database-url", "sqlite:///:memory:", "--disable-auto-launch"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=str(comfy_root), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    server = CatalogueServer(url=f"http://127.0.0.1:{port}", proc=proc, base=base, log=log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited during start-up (rc {proc.returncode}):\n{server.log_tail()}")
            try:
                if "FB_BridgeSampler" in server.get("/object_info/FB_BridgeSampler", timeout=10.0):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"ComfyUI did not start within {START_TIMEOUT:.0f} s:\n{server.log_tail()}")
            time.sleep(0.5)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
