"""Packaging rules: light imports, no hard torch dependency, a core that never imports ComfyUI."""

import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_pack(name="framebridge_pack_under_test"):
    spec = importlib.util.spec_from_file_location(
        name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_pack_imports_without_comfyui_and_exposes_the_v3_entrypoint():
    had_comfy = "comfy" in sys.modules
    had_torch = "torch" in sys.modules
    pack = _load_pack()
    assert inspect.iscoroutinefunction(pack.comfy_entrypoint)
    assert pack.WEB_DIRECTORY == "./web"
    nodes = importlib.import_module(pack.__name__ + ".nodes")
    assert callable(nodes.create_extension)
    assert ("comfy" in sys.modules) == had_comfy
    if not had_torch:
        assert "torch" not in sys.modules


def test_core_never_imports_comfyui():
    forbidden = re.compile(r"^\s*(from|import)\s+(comfy|comfy_api|comfy_extras|folder_paths|nodes|server|node_helpers|latent_preview)\b", re.M)
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "framebridge_core").rglob("*.py")
        if forbidden.search(p.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_no_hard_torch_requirement():
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project = meta["project"]
    assert project["name"] == "comfyui-framebridge"
    deps = [re.split(r"[<>=!~ ;\[]", d)[0].lower() for d in project["dependencies"]]
    assert {"safetensors", "einops", "kornia"} <= set(deps)
    assert not {"torch", "torchvision", "torchaudio"} & set(deps)
    assert "test" in project["optional-dependencies"]
    comfy = meta["tool"]["comfy"]
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert comfy[key]
    reqs = [
        re.split(r"[<>=!~ ;\[]", line)[0].lower()
        for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "torch" not in reqs and "torchvision" not in reqs
    assert set(reqs) == set(deps)


STUB_PYTHON = """#!/usr/bin/env bash
# a venv's python that logs its arguments; "import torch" works once torch was pip-installed
echo "$*" >> "$(dirname "$0")/calls.log"
if [ "$1" = "-c" ]; then grep -q "install.*torch==" "$(dirname "$0")/calls.log"; exit $?; fi
exit 0
"""


def _setup_venv_calls(tmp_path, **env) -> list[str]:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    stub = venv / "bin" / "python"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("FRAMEBRIDGE_TORCH")}
    run_env.update(env)
    subprocess.run(["bash", str(ROOT / ".ci" / "setup_venv.sh"), str(venv), "test"], cwd=ROOT, env=run_env,
                   check=True, capture_output=True, text=True)
    return (venv / "bin" / "calls.log").read_text().splitlines()


def test_ci_and_demo_set_up_torch_through_one_script_that_never_installs_a_bare_torch(tmp_path):
    for script in (ROOT / ".ci" / "run", ROOT / "demo.sh"):
        text = script.read_text(encoding="utf-8")
        assert ".ci/setup_venv.sh" in text and not re.findall(r"pip install[^\n]*torch", text), script.name
    installs = [c for c in _setup_venv_calls(tmp_path) if "pip install" in c]
    assert installs[0].endswith("torch==2.13.0") and "--index-url" not in installs[0]
    assert installs[1].endswith("-e .[test]")
    cpu = "https://download.pytorch.org/whl/cpu"
    (tmp_path / "b").mkdir()
    installs = [c for c in _setup_venv_calls(tmp_path / "b", FRAMEBRIDGE_TORCH_INDEX=cpu,
                                             FRAMEBRIDGE_TORCH_VERSION="2.12.1") if "pip install" in c]
    assert installs[0].endswith(f"torch==2.12.1 --index-url {cpu}")
