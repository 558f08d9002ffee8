"""Packaging rules: light imports, no hard torch dependency, a core that never imports ComfyUI."""

import importlib.util
import inspect
import re
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


def test_ci_installs_the_cpu_torch_build_only():
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    installs = re.findall(r"pip install[^\n]*", script)
    assert any("torch==2.13.0" in line for line in installs)
    assert not any(re.search(r"\btorch\b(?!==)", line.replace("torch==2.13.0", "")) for line in installs)
