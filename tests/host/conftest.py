"""Host tests: the pack running inside a real ComfyUI, in-process and as a ``main.py`` server.

Run them with an interpreter that has ComfyUI's requirements installed (ComfyUI's own venv),
pointing COMFYUI_PATH at a ComfyUI checkout:

    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m pytest tests/host

ComfyUI is found through COMFYUI_PATH, or because this repository sits at
``ComfyUI/custom_nodes/<name>``. When it is not found, or ComfyUI's dependencies do not import
in the running interpreter, every test in this directory is reported as skipped (so the default
suite, ``python -m pytest`` in the pack's plain venv, shows them as skipped, never as errors).

Nothing is written into the ComfyUI checkout: ComfyUI runs on a temporary base directory
(``args.base_directory`` / ``--base-directory``) whose ``custom_nodes/`` holds a symlink to this
repository, and whose ``models/`` and ``input/`` hold tiny random stand-in weights and a small
PNG written by the fixtures below. ComfyUI runs on the CPU.

Kept lean (the aim is 4 GB; measured 2026-12-05: 3.9 GB peak over the process tree, 2.9 GB of it
this process and 1.0 GB the server, 320-370 s on two cores): ComfyUI boots in this process once,
and at most one ``main.py`` server runs, started by the first test that needs it and shared by the
rest of the session. Both use PyTorch's scaled-dot-product attention: on the CPU ComfyUI otherwise
picks its sub-quadratic attention, which sizes its chunks by the free memory of the machine (one
stand-in video workflow then took over 8 GB). After each test the models it loaded are
unloaded and freed memory goes back to the system.

``.ci/run`` sets FRAMEBRIDGE_REQUIRE_HOST=1: then a missing or broken host fails the run instead of
skipping the tests.
"""

from __future__ import annotations

import asyncio
import copy
import ctypes
import gc
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HOST_DIR = Path(__file__).resolve().parent
REPO = HOST_DIR.parents[1]
WORKFLOWS = REPO / "workflows"
API_DIR = WORKFLOWS / "api"
PACK_DIR_NAME = "ComfyUI-FrameBridge"
SKIP_HINT = "set COMFYUI_PATH to a ComfyUI checkout to run the host tests"
RUN_HINT = "COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m pytest tests/host"

#: What ComfyUI imports at start-up (its requirements.txt, by import name). Checked with
#: find_spec at collection time, so a plain venv skips cleanly without importing anything.
COMFY_MODULES = ("torch", "torchvision", "torchsde", "numpy", "PIL", "safetensors", "einops", "yaml",
                 "aiohttp", "scipy", "tqdm", "psutil", "av", "sqlalchemy", "alembic", "transformers",
                 "tokenizers", "sentencepiece", "kornia", "pydantic")

FB_NODES = ("FB_LoadFrameBridge", "FB_LoadNeuralPrior", "FB_UCF101Class", "FB_CameraMotion", "FB_BridgePriorFromImage",
            "FB_NeuralPrior", "FB_BridgeSampler", "FB_BridgeSamplerSelect", "FB_BridgeSchedule",
            "FB_LoadFrameBridgeCheckpoint", "FB_FrameStride", "FB_LoadCogVideoXVAE", "FB_CogVideoXTextEncode",
            "FB_ExtendVideo", "FB_Prompt2Prompt", "FB_Prompt2PromptSplit")

# Stand-in files. Names match what the shipped workflows load, so the API twins run unchanged.
BRIDGE4 = "framebridge_latte_ucf101.pt"          # 4-channel bridge model (no neural prior)
BRIDGE8 = "framebridge_latte_ucf101_nwarp.pt"    # 8-channel bridge model (trained with the neural prior)
NWARP = "framebridge_latte_nwarp.pt"             # neural prior network
TRUNCATED = "truncated.safetensors"              # a bridge model cut in half
VAE = "sd-vae-ft-ema.safetensors"                # random TAESD (4 latent channels) as the SD VAE
VAE16 = "taesd_16ch.safetensors"                 # random TAESD with 16 latent channels
IMAGE = "example.png"

TINY = dict(input_size=4, patch_size=2, hidden_size=32, depth=2, num_heads=2, num_frames=16, num_classes=101)
FRAMES, LATENT_CH, LATENT_SIZE, PIXELS = 16, 4, 4, 32


# ------------------------------------------------------------------------------------------------
# Finding ComfyUI and skipping
# ------------------------------------------------------------------------------------------------


def _is_comfyui(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "nodes.py").is_file() and (path / "comfy").is_dir()


def find_comfyui() -> tuple[Path | None, str]:
    """(ComfyUI root, "") or (None, why not)."""
    env = os.environ.get("COMFYUI_PATH")
    if env:
        path = Path(env).expanduser().resolve()
        if _is_comfyui(path):
            return path, ""
        return None, f"COMFYUI_PATH={env!r} is not a ComfyUI checkout (no main.py, nodes.py, comfy/); {SKIP_HINT}"
    if REPO.parent.name == "custom_nodes" and _is_comfyui(REPO.parent.parent):
        return REPO.parent.parent, ""
    return None, SKIP_HINT


def _skip_reason() -> str:
    root, reason = find_comfyui()
    if root is None:
        return reason
    missing = [m for m in COMFY_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return (f"ComfyUI's dependencies do not import in {sys.executable} (missing: {', '.join(missing)}); "
                f"run the host tests with ComfyUI's venv: {RUN_HINT}")
    return ""


def host_required() -> bool:
    """FRAMEBRIDGE_REQUIRE_HOST=1 (set by .ci/run when it prepared a host): no skipping."""
    return os.environ.get("FRAMEBRIDGE_REQUIRE_HOST", "") not in ("", "0")


def skip_or_fail(reason: str):
    if host_required():
        pytest.fail(f"FRAMEBRIDGE_REQUIRE_HOST is set but {reason}", pytrace=False)
    pytest.skip(reason)


def pytest_collection_modifyitems(config, items):
    ours = [item for item in items if HOST_DIR in Path(item.path).resolve().parents]
    if not ours:
        return
    reason = _skip_reason()
    if reason and host_required():
        raise pytest.UsageError(f"FRAMEBRIDGE_REQUIRE_HOST is set but the host tests cannot run: {reason}")
    for item in ours:
        item.add_marker(pytest.mark.host)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


# ------------------------------------------------------------------------------------------------
# In-process ComfyUI
# ------------------------------------------------------------------------------------------------


class FakeServer:
    """What execution.PromptExecutor needs of server.PromptServer."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass

    def send_progress_text(self, text, node_id, sid=None):
        self.messages.append(("progress_text", {"node": node_id, "text": text}))


@dataclass
class Run:
    """The result of one prompt: validation, events, and the raw node outputs."""

    prompt: dict
    valid: bool
    validation_error: dict | None
    node_errors: dict
    success: bool = False
    messages: list = field(default_factory=list)
    ui: dict = field(default_factory=dict)
    executor: object = None

    @property
    def error(self) -> dict | None:
        """The execution_error event's data (node_id, node_type, exception_type, exception_message)."""
        for event, data in self.messages:
            if event == "execution_error":
                return data
        return None

    def describe(self) -> str:
        if not self.valid:
            return f"validation failed: {self.validation_error} {self.node_errors}"
        err = self.error
        if err:
            return f"{err['node_type']} raised {err['exception_type']}: {err['exception_message']}"
        return "success" if self.success else f"failed; events {[e for e, _ in self.messages]}"

    def output(self, node_id: str, slot: int = 0):
        """The first list item of an output slot of a node (as the next node receives it)."""
        entry = self.executor.caches.outputs.get(str(node_id))
        assert entry is not None, f"node {node_id} produced no output ({self.describe()})"
        outputs = getattr(entry, "outputs", entry)
        return outputs[slot][0]


class Host:
    """An in-process ComfyUI with the pack loaded, on a temporary base directory."""

    def __init__(self, root: Path, base: Path, modules: dict):
        self.root, self.base = root, base
        self.nodes = modules["nodes"]
        self.execution = modules["execution"]
        self.server = modules["server"]
        self.folder_paths = modules["folder_paths"]
        self._count = 0

    # ---- schema ------------------------------------------------------------------------------
    def node_class(self, class_type: str):
        return self.nodes.NODE_CLASS_MAPPINGS[class_type]

    def node_info(self, class_type: str) -> dict:
        """What GET /object_info/<class_type> returns (same code path as server.py)."""
        from comfy_api.internal import _ComfyNodeInternal

        cls = self.node_class(class_type)
        if issubclass(cls, _ComfyNodeInternal):
            return cls.GET_NODE_INFO_V1()
        inputs = cls.INPUT_TYPES()
        return {
            "input": inputs,
            "input_order": {k: list(v) for k, v in inputs.items()},
            "output": list(cls.RETURN_TYPES),
            "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
            "category": getattr(cls, "CATEGORY", "sd"),
        }

    # ---- prompts -----------------------------------------------------------------------------
    @staticmethod
    def load_api(name: str) -> dict:
        """A fresh copy of workflows/api/<name>.json."""
        with open(API_DIR / f"{name}.json", encoding="utf-8") as f:
            return copy.deepcopy(json.load(f))

    def run(self, prompt: dict, prompt_id: str | None = None) -> Run:
        """Validate and execute an API-format prompt with a fresh executor (empty caches)."""
        self._count += 1
        prompt_id = prompt_id or f"host-{self._count}"
        ok, err, outputs, node_errors = asyncio.run(self.execution.validate_prompt(prompt_id, prompt, None))
        run = Run(prompt=prompt, valid=ok, validation_error=err, node_errors=node_errors)
        if not ok:
            return run
        fake = FakeServer()
        fake.last_prompt_id = prompt_id
        self.server.PromptServer.instance = fake
        executor = self.execution.PromptExecutor(fake, cache_type=self.execution.CacheType.CLASSIC)
        executor.execute(prompt, prompt_id, {}, outputs)
        run.executor = executor
        run.success = bool(executor.success)
        run.messages = list(executor.status_messages) + fake.messages
        run.ui = dict(executor.history_result.get("outputs", {}))
        return run


def lower_steps(prompt: dict, steps: int = 4) -> dict:
    """Set every literal ``steps`` input (Bridge Sampler, Bridge Schedule) to ``steps``."""
    for node in prompt.values():
        if isinstance(node["inputs"].get("steps"), int):
            node["inputs"]["steps"] = steps
    return prompt


def set_seed(prompt: dict, seed: int) -> dict:
    for node in prompt.values():
        for key in ("seed", "noise_seed"):
            if isinstance(node["inputs"].get(key), int):
                node["inputs"][key] = seed
    return prompt


def node_id(prompt: dict, class_type: str) -> str:
    ids = [nid for nid, node in prompt.items() if node["class_type"] == class_type]
    assert len(ids) == 1, f"expected one {class_type} in the prompt, found {ids}"
    return ids[0]


# helpers the tests reach through the ``host`` fixture (tests do not import conftest)
Host.lower_steps = staticmethod(lower_steps)
Host.set_seed = staticmethod(set_seed)
Host.node_id = staticmethod(node_id)
Host.files = dict(bridge4=BRIDGE4, bridge8=BRIDGE8, nwarp=NWARP, truncated=TRUNCATED, vae=VAE, vae16=VAE16,
                  image=IMAGE)
Host.shape = dict(frames=FRAMES, latent_channels=LATENT_CH, latent_size=LATENT_SIZE, pixels=PIXELS)
Host.fb_nodes = FB_NODES


def _randomize(module, generator, scale=0.05, keep=lambda name: False):
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            if not keep(name):
                p.copy_(torch.randn(p.shape, generator=generator) * scale)
    return module


def write_stand_in_files(base: Path) -> None:
    """Tiny random weights under the names the workflows load, a truncated file, a PNG."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    import comfy.taesd.taesd as taesd
    from framebridge_core.families.latte.network import LatteConfig, LatteModel, LatteNeuralPrior

    g = torch.Generator().manual_seed(1234)
    fixed = lambda name: name.endswith(("pos_embed", "temp_embed"))  # the fixed sin-cos tables
    meta = {"framebridge.num_heads": str(TINY["num_heads"])}
    models = base / "models" / "framebridge"
    models.mkdir(parents=True, exist_ok=True)

    def save(module, path):
        # safetensors content under a .pt name: the loader sniffs the format from the bytes, and
        # only safetensors carries the head count (hidden 32 is no official Latte size)
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path), metadata=meta)

    save(_randomize(LatteModel(LatteConfig(in_channels=4, out_channels=4, **TINY)), g, keep=fixed), models / BRIDGE4)
    save(_randomize(LatteModel(LatteConfig(in_channels=8, out_channels=4, **TINY)), g, keep=fixed), models / BRIDGE8)
    prior_cfg = LatteConfig(in_channels=4, out_channels=4, condition_type=None, has_timestep=False, **TINY)
    save(_randomize(LatteNeuralPrior(prior_cfg), g, keep=fixed), models / NWARP)
    data = (models / BRIDGE4).read_bytes()
    (models / TRUNCATED).write_bytes(data[: len(data) // 2])

    vae_dir = base / "models" / "vae"
    vae_dir.mkdir(parents=True, exist_ok=True)
    for name, channels in ((VAE, 4), (VAE16, 16)):
        # comfy.ops leaves TAESD's weights uninitialised: fill them with seeded random values
        vae = _randomize(taesd.TAESD(latent_channels=channels), g, keep=lambda n: n in ("vae_scale", "vae_shift"))
        save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(vae_dir / name))

    pixels = (np.random.RandomState(0).rand(48, 40, 3) * 255).astype("uint8")  # not square: gets cropped
    Image.fromarray(pixels).save(base / "input" / IMAGE)


def make_base_dir(base: Path) -> Path:
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_DIR_NAME
    if not link.exists():
        os.symlink(REPO, link, target_is_directory=True)
    return base


@pytest.fixture(scope="session")
def comfy_root() -> Path:
    root, reason = find_comfyui()
    if root is None:
        skip_or_fail(reason)
    return root


@pytest.fixture(scope="session")
def host(comfy_root, tmp_path_factory) -> Host:
    """Boot ComfyUI in this process once: args, imports, stand-in files, then our pack."""
    base = make_base_dir(tmp_path_factory.mktemp("comfy_base"))
    # ComfyUI's top-level modules (nodes, execution, folder_paths, server, comfy, utils, ...) are
    # imported from the checkout root, which is how ComfyUI itself runs (main.py from its own
    # directory). Putting COMFYUI_PATH on sys.path is that host import mechanism; it is done here
    # only, for the host tests.
    if str(comfy_root) not in sys.path:
        sys.path.insert(0, str(comfy_root))
    sys.dont_write_bytecode = True  # leave no __pycache__ in the ComfyUI checkout
    stale = sys.modules.get("nodes")
    if stale is not None and Path(getattr(stale, "__file__", "") or "").resolve() != comfy_root / "nodes.py":
        pytest.fail(f"a module named 'nodes' ({stale!r}) was imported before ComfyUI's nodes.py; run the "
                    f"host tests on their own: {RUN_HINT}")
    try:
        import comfy.options

        comfy.options.enable_args_parsing(False)  # else cli_args would parse pytest's argv
        from comfy.cli_args import args

        args.cpu = True  # before comfy.model_management is imported
        args.use_pytorch_cross_attention = True  # see the module docstring: memory-bounded attention on the CPU
        args.base_directory = str(base)  # read by folder_paths at import time
        args.disable_auto_launch = True
        import folder_paths
        import utils.extra_config  # noqa: F401  must precede `import nodes` (as in main.py)
        import comfy.model_management  # noqa: F401
        import execution
        import nodes
        import server
    except ImportError as exc:
        skip_or_fail(f"ComfyUI at {comfy_root} does not import in {sys.executable}: {exc}. Use ComfyUI's venv: {RUN_HINT}")
    assert Path(folder_paths.base_path).resolve() == base.resolve(), "ComfyUI was imported before the host fixture"
    write_stand_in_files(base)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    loaded = [n for n in FB_NODES if n in nodes.NODE_CLASS_MAPPINGS]
    if len(loaded) != len(FB_NODES):
        pytest.fail(f"ComfyUI did not register the pack's nodes (got {loaded}); see the "
                    f"'IMPORT FAILED' lines in the log")
    yield Host(comfy_root, base, {"nodes": nodes, "execution": execution, "server": server,
                                  "folder_paths": folder_paths})
    comfy.model_management.unload_all_models()


def release_memory() -> None:
    """Unload what ComfyUI holds in this process, collect, and hand freed heap back to the system."""
    mm = sys.modules.get("comfy.model_management")
    if mm is not None:
        mm.unload_all_models()
        mm.soft_empty_cache()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed tensor memory otherwise
    except (OSError, AttributeError):
        pass


@pytest.fixture(autouse=True)
def _release_memory_after_each_test():
    """What a test's runs loaded goes when the test ends: ComfyUI keeps every loaded model while memory
    is free, so without this a module's peak was the sum of its tests' models (bivdiff_control: 3.7 GB
    against 2.8 GB at its worst test, measured); costs nothing measurable in time."""
    yield
    release_memory()


@pytest.fixture(scope="session")
def workflow_table():
    """tests/test_workflows.py, loaded by path (it holds the static widget table of our nodes)."""
    spec = importlib.util.spec_from_file_location("framebridge_test_workflows", REPO / "tests" / "test_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------
# A real server (python main.py) on 127.0.0.1
# ------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    base: Path
    log: Path

    def get(self, path: str, timeout: float = 10.0):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read().decode("utf-8"))

    def post(self, path: str, body: dict, timeout: float = 10.0):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode("utf-8"),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read().decode("utf-8") or "null")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def wait_history(self, prompt_id: str, timeout: float = 60.0) -> dict:
        """Poll /history/<id> until the prompt has finished (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the server exited (rc {self.proc.returncode}):\n{self.log_tail()}"
            hist = self.get(f"/history/{prompt_id}")
            entry = hist.get(prompt_id)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            time.sleep(0.2)
        raise AssertionError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")


@pytest.fixture(scope="session")
def comfy_server(host, tmp_path_factory):
    """``python main.py --cpu`` on a free loopback port, with the pack and the stand-in files; one per
    test session (started by the first test that asks for it). Always terminated at teardown.
    The stand-in files are copied from the in-process host's base directory when it starts."""
    base = make_base_dir(tmp_path_factory.mktemp("comfy_server_base"))
    shutil.copytree(host.base / "models", base / "models", dirs_exist_ok=True)
    shutil.copytree(host.base / "input", base / "input", dirs_exist_ok=True)
    port = _free_port()
    log_path = base / "server.log"
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(base), "--database-url", "sqlite:///:memory:", "--disable-auto-launch",
           "--use-pytorch-cross-attention"]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=str(host.root), stdout=log, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL)
    server = Server(url=f"http://127.0.0.1:{port}", proc=proc, base=base, log=log_path)
    try:
        deadline = time.monotonic() + 120.0
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited during start-up (rc {proc.returncode}):\n{server.log_tail()}")
            try:
                if "FB_BridgeSampler" in server.get("/object_info/FB_BridgeSampler", timeout=5.0):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"ComfyUI did not serve /object_info/FB_BridgeSampler within 120 s:\n"
                                     f"{server.log_tail()}")
            time.sleep(0.3)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
