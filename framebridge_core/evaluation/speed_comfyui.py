"""A real ComfyUI ``main.py`` server, driven through its HTTP API, for ``bench speed``.

ComfyUI runs as a child process with its own interpreter on a temporary base directory whose
``custom_nodes/`` holds a symlink to this pack (as the host tests set it up), so nothing here
imports ComfyUI. A prompt's time runs from just before it is queued to the ``execution_success``
timestamp ComfyUI records in its history entry (milliseconds, the same wall clock), so the polling
interval does not count.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from ..errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
PACK_DIR_NAME = "ComfyUI-FrameBridge"
TINY_WORKFLOW = REPO / "workflows" / "api" / "FrameBridge-Tiny-Animate-Image.json"


def is_comfyui(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "nodes.py").is_file() and (path / "comfy").is_dir()


def load_workflow(path: Path = TINY_WORKFLOW) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def the_node(prompt: dict, class_type: str) -> dict:
    nodes = [n for n in prompt.values() if n["class_type"] == class_type]
    if len(nodes) != 1:
        raise ConfigError(f"expected one {class_type} node in the workflow, found {len(nodes)}")
    return nodes[0]


def with_settings(prompt: dict, *, seed: int, steps: Optional[int] = None) -> dict:
    """A copy of the API prompt with the sampler's seed (and steps) set."""
    p = copy.deepcopy(prompt)
    sampler = the_node(p, "FB_BridgeSampler")["inputs"]
    sampler["seed"] = int(seed)
    if steps is not None:
        sampler["steps"] = int(steps)
    return p


def make_base_dir(base: Path, image: Path) -> Path:
    """ComfyUI's base directory: this pack linked into custom_nodes, ``image`` as input/example.png."""
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_DIR_NAME
    if not link.exists():
        os.symlink(REPO, link, target_is_directory=True)
    shutil.copyfile(image, base / "input" / "example.png")
    return base


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """``python main.py --cpu`` on a loopback port; a context manager that always stops it."""

    def __init__(self, comfyui: Path, python: str, base: Path, threads: int, start_timeout: float = 180.0):
        self.root, self.python, self.base = Path(comfyui), python, Path(base)
        self.threads, self.start_timeout = int(threads), start_timeout
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.base / "server.log"
        self.proc: Optional[subprocess.Popen] = None
        self.startup_s = float("nan")

    def __enter__(self) -> "ComfyServer":
        cmd = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:",
               "--disable-auto-launch", "--use-pytorch-cross-attention"]
        # same torch thread count as the in-process side; no stray .pyc files in the pack
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), PYTHONDONTWRITEBYTECODE="1")
        t0 = time.perf_counter()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=str(self.root), stdout=log, stderr=subprocess.STDOUT, env=env,
                                         stdin=subprocess.DEVNULL)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - t0
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def _get(self, path: str, timeout: float = 10.0):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read().decode("utf-8"))

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise ConfigError(f"the ComfyUI server exited (rc {self.proc.returncode}); its log ends with:\n"
                              f"{self.log_tail()}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            self._check_alive()
            try:
                if "FB_BridgeSampler" in self._get("/object_info/FB_BridgeSampler", timeout=5.0):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                raise ConfigError(f"ComfyUI did not serve the FrameBridge nodes within {self.start_timeout:.0f} s; "
                                  f"its log ends with:\n{self.log_tail()}")
            time.sleep(0.3)

    def torch_version(self) -> str:
        """The server's torch (``/system_stats``), so the report can say whether both sides share it."""
        try:
            return str(self._get("/system_stats")["system"]["pytorch_version"])
        except (urllib.error.URLError, KeyError, TypeError, json.JSONDecodeError):
            return "unknown"

    def run(self, prompt: dict, timeout: float = 600.0) -> float:
        """Queue ``prompt``; seconds from queueing to ComfyUI's ``execution_success``."""
        body = json.dumps({"prompt": prompt, "client_id": "framebridge-bench"}).encode("utf-8")
        req = urllib.request.Request(self.url + "/prompt", data=body, headers={"Content-Type": "application/json"},
                                     method="POST")
        queued = time.time()
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                prompt_id = json.loads(r.read().decode("utf-8"))["prompt_id"]
        except urllib.error.HTTPError as e:
            raise ConfigError(f"ComfyUI refused the prompt (HTTP {e.code}): {e.read().decode('utf-8', 'replace')}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            entry = self._get(f"/history/{prompt_id}").get(prompt_id)
            status = (entry or {}).get("status", {})
            if status.get("status_str") == "error":
                raise ConfigError(f"the prompt failed in ComfyUI: {json.dumps(status.get('messages'))[:2000]}")
            if status.get("status_str") == "success":
                done = [m[1]["timestamp"] for m in status.get("messages", []) if m[0] == "execution_success"]
                if not done:
                    raise ConfigError(f"ComfyUI's history has no execution_success timestamp: {status}")
                return done[0] / 1000.0 - queued
            time.sleep(0.1)
        raise ConfigError(f"the prompt did not finish within {timeout:.0f} s; the server log ends with:\n"
                          f"{self.log_tail()}")


__all__ = ["ComfyServer", "TINY_WORKFLOW", "is_comfyui", "load_workflow", "make_base_dir", "the_node",
           "with_settings"]
