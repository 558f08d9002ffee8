"""Registry-ready packaging: the LICENSE, the Comfy registry fields, and the bundled models and
default image found whether the pack is a clone, an editable install or a regular install.

The fast tests read pyproject.toml and the checkout. The slow test builds a wheel from a copy of the
repository, installs it (no dependencies) into a fresh virtual environment and runs
``python -m framebridge_core generate`` there from a directory outside the checkout, checking that
the package, the models and the default image all come from the installed copy.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from framebridge_core.errors import ConfigError
from framebridge_core.tiny import animator

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = "https://github.com/framebridge-comfy/ComfyUI-FrameBridge"
BUNDLED_MODELS = [animator.BRIDGE_FILE, animator.BRIDGE_NP_FILE, animator.NEURAL_PRIOR_FILE]
DEFAULT_IMAGE_NAME = "default-image.png"
#: data-only packages of the wheel and the checkout folder each one is built from
DATA_PACKAGES = {"framebridge_core.pretrained": "pretrained", "framebridge_core.assets": "assets"}
#: the accelerator classifiers the Comfy registry accepts (any other "Environment ::" drops them all)
REGISTRY_ACCELERATORS = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend",
                         "GPU :: Apple Metal"}
REGISTRY_OS_PREFIXES = ("Microsoft", "POSIX", "MacOS", "OS Independent")
#: the registry's version constraint syntax (comma-separated [operator]major.minor.patch parts)
REGISTRY_VERSION = re.compile(r"^(?:(==|>=|<=|!=|~=|>|<|<>|=)\s*)?(\d+\.\d+\.\d+(?:-[a-zA-Z0-9]+)?)?$")


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _code_packages() -> list[str]:
    return sorted(".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "framebridge_core").rglob("__init__.py")
                  if "__pycache__" not in p.parts)


# ---------------------------------------------------------------- LICENSE and registry metadata


def test_license_file_is_mit_and_matches_pyproject():
    project = _pyproject()["project"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    assert lines[0] == "MIT License"
    assert lines[1] == "Copyright (c) 2026 ComfyUI-FrameBridge contributors"
    flat = " ".join(text.split())
    assert "Permission is hereby granted, free of charge, to any person obtaining a copy" in flat
    assert "The above copyright notice and this permission notice shall be included in all copies" in flat
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in flat
    # an SPDX expression (PEP 639), which the Comfy registry also reads as the license text
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    # setuptools rejects a "License ::" classifier next to an SPDX license expression
    assert not [c for c in project.get("classifiers", []) if c.startswith("License ::")]


def test_comfy_registry_fields_are_complete_and_valid():
    meta = _pyproject()
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*", project["name"]) and len(project["name"]) < 100
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["description"]
    for key in ("PublisherId", "DisplayName", "Icon", "requires-comfyui"):
        assert isinstance(comfy[key], str) and comfy[key], key
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", comfy["PublisherId"])
    # the icon is served from the repository's main branch: the file must be in the repository
    icon_prefix = REPOSITORY.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    assert comfy["Icon"].startswith(icon_prefix)
    assert (ROOT / comfy["Icon"][len(icon_prefix):]).is_file()
    if "Banner" in comfy:
        assert comfy["Banner"].startswith("https://")
    # the V3 `comfy_api.latest` io API, tested on ComfyUI 0.3.64
    assert comfy["requires-comfyui"] == ">=0.3.64"
    for part in comfy["requires-comfyui"].split(","):
        assert REGISTRY_VERSION.match(part.strip()), part
    # `includes` is for git-ignored folders the registry archive needs; any listed one must exist
    for folder in comfy.get("includes", []):
        assert (ROOT / folder.lstrip("/")).exists(), folder
    urls = project["urls"]
    assert urls["Repository"] == REPOSITORY
    assert urls["Documentation"].startswith(REPOSITORY)
    classifiers = project["classifiers"]
    envs = [c[len("Environment :: "):] for c in classifiers if c.startswith("Environment ::")]
    assert set(envs) <= REGISTRY_ACCELERATORS
    systems = [c[len("Operating System :: "):] for c in classifiers if c.startswith("Operating System :: ")]
    assert systems and all(s.startswith(REGISTRY_OS_PREFIXES) for s in systems)


# ---------------------------------------------------------------- what the wheel holds


def test_pyproject_ships_the_bundled_models_and_default_image_as_package_data():
    st = _pyproject()["tool"]["setuptools"]
    # every code package of the checkout, plus the data-only packages (the list is explicit)
    assert sorted(st["packages"]) == sorted(_code_packages() + list(DATA_PACKAGES))
    assert st["package-dir"] == DATA_PACKAGES
    data = st["package-data"]
    for package, folder in DATA_PACKAGES.items():
        files = sorted(p.name for p in (ROOT / folder).iterdir() if p.is_file()
                       and any(fnmatch.fnmatch(p.name, pat) for pat in data[package]))
        if folder == "pretrained":
            assert files == sorted(p.name for p in (ROOT / folder).glob("*.safetensors"))
            assert set(BUNDLED_MODELS) <= set(files)
        else:
            assert files == [DEFAULT_IMAGE_NAME]


def test_checkout_finds_the_bundled_folders_next_to_the_package():
    """A clone (ComfyUI's custom_nodes; nodes/paths.py lists <pack>/pretrained) and an editable install."""
    assert animator.bundled_dir("pretrained") == ROOT / "pretrained"
    assert animator.bundled_dir("assets") == ROOT / "assets"
    assert animator.PRETRAINED_DIR == ROOT / "pretrained"
    assert animator.DEFAULT_IMAGE == ROOT / "assets" / DEFAULT_IMAGE_NAME
    for name in BUNDLED_MODELS:
        assert animator.bundled(name) == ROOT / "pretrained" / name


def test_bundled_dir_prefers_the_installed_location_and_names_where_it_looked(tmp_path, monkeypatch):
    package = tmp_path / "site-packages" / "framebridge_core"
    package.mkdir(parents=True)
    monkeypatch.setattr(animator, "PACKAGE_DIR", package)
    with pytest.raises(ConfigError) as err:
        animator.bundled_dir("pretrained")
    assert str(package / "pretrained") in str(err.value)
    assert str(package.parent / "pretrained") in str(err.value)
    (package.parent / "pretrained").mkdir()
    assert animator.bundled_dir("pretrained") == package.parent / "pretrained"
    (package / "pretrained").mkdir()
    assert animator.bundled_dir("pretrained") == package / "pretrained"


def test_missing_bundled_model_names_the_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(animator, "PACKAGE_DIR", tmp_path / "framebridge_core")
    monkeypatch.setattr(animator, "PRETRAINED_DIR", tmp_path / "pretrained")
    with pytest.raises(ConfigError, match="--model") as err:
        animator.bundled(animator.BRIDGE_FILE)
    assert str(tmp_path / "framebridge_core" / "pretrained") in str(err.value)


# ---------------------------------------------------------------- a regular install from a built wheel

#: not part of a wheel build: virtual environments, VCS data, earlier build outputs, caches
_COPY_IGNORE = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__",
                                      ".pytest_cache", ".ruff_cache", ".whl", "runs", "*.pyc")


def _run(cmd, **kw):
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False, **kw)
    assert res.returncode == 0, f"{cmd}\nstdout:\n{res.stdout[-4000:]}\nstderr:\n{res.stderr[-4000:]}"
    return res


def _child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.mark.slow
def test_wheel_install_runs_generate_with_the_installed_models(tmp_path):
    # 1. build the wheel from a copy of the repository (a stale build/ in the checkout cannot leak in,
    #    and the checkout gets no build outputs)
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=_COPY_IGNORE)
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-w", wheels, "."], cwd=src, timeout=600)
    (wheel,) = wheels.glob("comfyui_framebridge-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    for name in BUNDLED_MODELS:
        assert f"framebridge_core/pretrained/{name}" in names
    assert f"framebridge_core/assets/{DEFAULT_IMAGE_NAME}" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    code = {p.relative_to(ROOT).as_posix() for p in (ROOT / "framebridge_core").rglob("*.py")
            if "__pycache__" not in p.parts}
    assert code <= names, sorted(code - names)
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"framebridge_core"}

    # 2. a fresh environment with the wheel installed, no dependencies. `--system-site-packages` would
    #    only add the base interpreter's packages (this interpreter is usually a virtual environment
    #    itself), so torch and the other dependencies come from this interpreter's site-packages
    #    through a .pth file, appended after the environment's own site-packages. A plain path in a
    #    .pth is not a site directory, so the .pth files there (an editable install's finder) never run.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], timeout=300)
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    _run([py, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", wheel],
         cwd=tmp_path, env=_child_env(), timeout=300)
    purelib = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        env=_child_env()).stdout.strip())
    installed = purelib / "framebridge_core"
    for name in BUNDLED_MODELS:
        assert (installed / "pretrained" / name).stat().st_size == (ROOT / "pretrained" / name).stat().st_size
    assert (installed / "assets" / DEFAULT_IMAGE_NAME).is_file()
    deps = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
    deps = [d for d in dict.fromkeys(deps) if Path(d).is_dir()]
    (purelib / "zz-test-dependencies.pth").write_text("\n".join(deps) + "\n", encoding="utf-8")

    # 3. from a directory outside the checkout: the package, the models and the image are the installed ones
    work = tmp_path / "work"
    work.mkdir()
    probe = ("import json, sys, framebridge_core; from framebridge_core.tiny import animator as a; "
             "print(json.dumps({'core': framebridge_core.__file__, 'pretrained': str(a.PRETRAINED_DIR), "
             "'image': str(a.DEFAULT_IMAGE), 'models': [str(a.bundled(n)) for n in "
             "(a.BRIDGE_FILE, a.BRIDGE_NP_FILE, a.NEURAL_PRIOR_FILE)], 'path': sys.path}))")
    seen = json.loads(_run([py, "-c", probe], cwd=work, env=_child_env(), timeout=300).stdout.strip().splitlines()[-1])
    assert Path(seen["core"]).resolve().is_relative_to(installed.resolve())
    assert Path(seen["pretrained"]) == (installed / "pretrained").resolve()
    assert Path(seen["image"]) == (installed / "assets" / DEFAULT_IMAGE_NAME).resolve()
    assert all(Path(m).parent == (installed / "pretrained").resolve() for m in seen["models"])
    assert not [p for p in seen["path"] if p and Path(p).resolve() == ROOT]

    # the default image (no --image) and the default bundled models, from the installed package
    out = tmp_path / "out.gif"
    res = _run([py, "-m", "framebridge_core", "generate", "--motion", "zoom-in", "--out", out, "--steps", "2"],
               cwd=work, env=_child_env(), timeout=600)
    assert out.is_file() and out.stat().st_size > 0, res.stdout
    assert (tmp_path / "out-sheet.png").is_file()
