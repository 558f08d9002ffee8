"""The package layout as rules: no import cycle, no import from a layer above, families kept apart,
and ComfyUI glue that never pulls in training or evaluation code. Read from the source (AST), so
lazy imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: framebridge_core's layers, lowest first: a module may import its own layer or a lower one, and
#: within a layer only its own top-level package (bivdiff and tiny do not import each other).
LAYERS = (
    ("errors", "labels"),
    ("configs", "video_io"),
    ("vp", "checkpoints"),
    ("bridge",),
    ("families",),
    ("bivdiff", "tiny"),
    ("training",),
    ("testing",),  # random stand-in weights: the benchmarks in evaluation build networks with them
    ("evaluation",),
    ("cli",),
    ("__main__",),
)
LAYER_OF = {top: n for n, tops in enumerate(LAYERS) for top in tops}
#: family folders may share only these modules of ``families/``
FAMILY_SHARED = {"families", "families.layers", "families.frames", "families.video_unet_parts"}
NODES_MAY_NOT_IMPORT = ("framebridge_core.training", "framebridge_core.evaluation", "framebridge_core.testing",
                        "framebridge_core.cli")


def _module_name(path: Path, package: str) -> str:
    parts = list(path.relative_to(ROOT / package).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def _modules(package: str) -> dict[str, Path]:
    return {_module_name(p, package): p for p in sorted((ROOT / package).rglob("*.py"))}


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom | ast.Import, known: set[str]) -> list[str]:
    """The modules of the repository an import statement names (the most specific existing module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] in ("framebridge_core", "nodes")]
    if node.level == 0:
        base = node.module or ""
        if base.split(".")[0] not in ("framebridge_core",):
            return []
    else:
        parts = importer.split(".")
        if not is_package:
            parts = parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]  # nodes' ..framebridge_core leaves [] (the pack root)
        base = ".".join(parts + ([node.module] if node.module else []))
    out = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}" if base else alias.name
        out.append(candidate if candidate in known else base)
    return out


def _graph(package: str, known: set[str]) -> dict[str, set[str]]:
    graph = {}
    for name, path in _modules(package).items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _resolve(name, path.name == "__init__.py", node, known):
                    if target in known and target != name:
                        edges.add(target)
        graph[name] = edges
    return graph


KNOWN = set(_modules("framebridge_core")) | set(_modules("nodes"))
CORE = _graph("framebridge_core", KNOWN)
NODES = _graph("nodes", KNOWN)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == "open":
                found.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return found


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_the_graph_sees_the_imports_it_must():
    assert "framebridge_core.families.latte.checkpoint" in CORE["framebridge_core.families"]
    assert "framebridge_core.bridge.schedule" in CORE["framebridge_core.families.videocrafter.bridge"]
    assert "framebridge_core.cli" in CORE["framebridge_core.__main__"]
    assert "framebridge_core.families" in NODES["nodes.common"]
    assert "nodes.families.latte" in NODES["nodes.loaders"]


@pytest.mark.parametrize("graph", [CORE, NODES], ids=["framebridge_core", "nodes"])
def test_no_import_cycle(graph):
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_every_core_module_has_a_layer():
    assert {_top(m) for m in CORE} - {"__init__"} <= set(LAYER_OF)


def test_no_core_module_imports_from_a_layer_above_or_a_sibling_package():
    bad = []
    for src, targets in CORE.items():
        s = _top(src)
        if s == "__init__":
            continue
        for dst in targets:
            d = _top(dst)
            if LAYER_OF[d] > LAYER_OF[s] or (LAYER_OF[d] == LAYER_OF[s] and d != s):
                bad.append(f"{src} -> {dst}")
    assert bad == []


def test_families_do_not_import_each_other():
    bad = []
    for src, targets in CORE.items():
        if not src.startswith("framebridge_core.families."):
            continue
        own = ".".join(src.split(".")[:3])
        for dst in targets:
            rel = dst.removeprefix("framebridge_core.")
            if dst.startswith("framebridge_core.families") and not dst.startswith(own) and rel not in FAMILY_SHARED:
                bad.append(f"{src} -> {dst}")
    assert bad == []


def test_nodes_never_import_training_evaluation_or_test_helpers():
    bad = [f"{src} -> {dst}" for src, targets in NODES.items() for dst in targets if dst.startswith(NODES_MAY_NOT_IMPORT)]
    assert bad == []
    assert any(dst.startswith("framebridge_core.") for targets in NODES.values() for dst in targets)


@pytest.mark.parametrize("family", ["latte", "videocrafter", "modelscope", "vidrd", "cogvideox"])
def test_family_folders_stay_reachable_as_packages(family):
    """``import framebridge_core.families.<family>.<module> as m`` needs the attribute to stay the package."""
    import importlib

    families = importlib.import_module("framebridge_core.families")
    assert hasattr(getattr(families, family), "__path__")
    module = importlib.import_module(f"framebridge_core.families.{family}.checkpoint")
    assert module.DETECTOR in families.FAMILIES
