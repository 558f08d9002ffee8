"""Node help pages: every node of the pack has ``web/docs/<node_id>.md`` and the page matches the node.

The ComfyUI frontend shows ``<WEB_DIRECTORY>/docs/<node_id>.md`` in the node help panel (it asks for
``/extensions/<pack folder>/docs/<node_id>/<locale>.md`` first and falls back to that file). The node
schemas are read from the source with the AST (ComfyUI is not needed): ``nodes/__init__.py``'s
``node_classes()`` names the node classes, and each class's ``define_schema()`` holds an
``io.Schema(...)`` call with the node id, the display name, the inputs and the outputs. Names that are
defined elsewhere in the repository (a default imported from ``framebridge_core``, the inputs that a
helper function returns) are followed through the imports; values only known at run time (the list of
model files) stay unresolved and are not checked.

A page has a ``# <display name>`` title and the sections ``## Inputs`` (a table: name, type, default,
range or options, what it does), ``## Outputs`` (a table: name, type, what it is), ``## Example`` and
``## Used in`` (links to the workflows under ``workflows/`` that contain the node).
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
NODES = ROOT / "nodes"
DOCS = ROOT / "web" / "docs"
WORKFLOWS = ROOT / "workflows"

#: io.<Class> of ComfyUI's V3 API -> the type name the UI shows
IO_TYPES = {
    "Boolean": "BOOLEAN", "Int": "INT", "Float": "FLOAT", "String": "STRING", "Combo": "COMBO",
    "Image": "IMAGE", "Mask": "MASK", "Latent": "LATENT", "Conditioning": "CONDITIONING", "Sampler": "SAMPLER",
    "Sigmas": "SIGMAS", "Noise": "NOISE", "Guider": "GUIDER", "Clip": "CLIP", "ControlNet": "CONTROL_NET",
    "Vae": "VAE", "Model": "MODEL", "ClipVision": "CLIP_VISION", "ClipVisionOutput": "CLIP_VISION_OUTPUT",
}
SECTIONS = ("Inputs", "Outputs", "Example", "Used in")
NO_VALUE = "—"
#: combos with at most this many fixed options list every option on the page
LISTED_OPTIONS = 12


class Unresolved(Exception):
    """An expression whose value is only known when ComfyUI runs (or that this reader does not follow)."""


# ---- reading the schemas from the source ------------------------------------------------------------------


@dataclass
class Module:
    path: Path
    tree: ast.Module
    assigns: dict = field(default_factory=dict)  # name -> expression
    functions: dict = field(default_factory=dict)  # name -> FunctionDef
    classes: dict = field(default_factory=dict)  # name -> ClassDef
    imports: dict = field(default_factory=dict)  # local name -> (module path, name or None for a module)


def _module_path(importer: Path, level: int, dotted: str | None) -> Path | None:
    base = importer.parent
    for _ in range(max(level - 1, 0)):
        base = base.parent
    if level == 0:
        base = ROOT
    parts = dotted.split(".") if dotted else []
    target = base.joinpath(*parts)
    if target.with_suffix(".py").is_file():
        return target.with_suffix(".py")
    if (target / "__init__.py").is_file():
        return target / "__init__.py"
    return None


def _read_imports(importer: Path, statements, into: dict) -> None:
    for node in statements:
        if isinstance(node, ast.ImportFrom):
            origin = _module_path(importer, node.level, node.module)
            if origin is None:
                continue
            for alias in node.names:
                local = alias.asname or alias.name
                sub = _module_path(importer, node.level, f"{node.module}.{alias.name}" if node.module else alias.name)
                into[local] = (sub, None) if sub is not None else (origin, alias.name)


@cache
def module(path: Path) -> Module:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    mod = Module(path, tree)
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    mod.assigns[target.id] = node.value
                elif isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    for t, v in zip(target.elts, node.value.elts):
                        if isinstance(t, ast.Name):
                            mod.assigns[t.id] = v
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            mod.assigns[node.target.id] = node.value
        elif isinstance(node, ast.FunctionDef):
            mod.functions[node.name] = node
        elif isinstance(node, ast.ClassDef):
            mod.classes[node.name] = node
    _read_imports(path, tree.body, mod.imports)
    return mod


def _returned(func: ast.FunctionDef) -> ast.expr:
    returns = [n for n in func.body if isinstance(n, ast.Return) and n.value is not None]
    if len(returns) != 1:
        raise Unresolved(f"{func.name}() has no single return statement")
    return returns[0].value


def _lookup(name: str, mod: Module, imports: dict | None = None):
    """(expression, module) that defines ``name`` as seen from ``mod``."""
    imports = {**mod.imports, **(imports or {})}
    if name in mod.assigns:
        return mod.assigns[name], mod
    if name in imports:
        path, attr = imports[name]
        if attr is None:
            return module(path), None
        return _lookup(attr, module(path))
    raise Unresolved(name)


def value(expr: ast.expr, mod: Module):
    """The value of a constant expression of the source, following names through the imports."""
    if isinstance(expr, ast.Constant):
        return expr.value
    if isinstance(expr, (ast.List, ast.Tuple)):
        out = []
        for e in expr.elts:
            if isinstance(e, ast.Starred):
                out.extend(value(e.value, mod))
            else:
                out.append(value(e, mod))
        return out
    if isinstance(expr, ast.Dict):
        return {value(k, mod): None for k in expr.keys if k is not None}
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.USub):
        return -value(expr.operand, mod)
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        return value(expr.left, mod) + value(expr.right, mod)
    if isinstance(expr, ast.Name):
        found, where = _lookup(expr.id, mod)
        if where is None:
            raise Unresolved(f"{expr.id} is a module")
        return value(found, where)
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
        found, where = _lookup(expr.value.id, mod)
        if where is not None:
            raise Unresolved(ast.unparse(expr))
        return value(*_lookup(expr.attr, found))
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in ("list", "tuple"):
        return list(value(expr.args[0], mod))
    raise Unresolved(ast.unparse(expr))


def _io_type(expr: ast.expr, mod: Module) -> str:
    """The type name of ``io.Model`` / ``PriorNet`` (``= io.Custom("FB_PRIOR_NET")``) in ``io.Model.Input``."""
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id == "io":
        if expr.attr not in IO_TYPES:
            raise AssertionError(f"{mod.path.name}: unknown io type io.{expr.attr}; add it to IO_TYPES")
        return IO_TYPES[expr.attr]
    if isinstance(expr, ast.Name):
        found, where = _lookup(expr.id, mod)
        if (isinstance(found, ast.Call) and isinstance(found.func, ast.Attribute) and found.func.attr == "Custom"):
            return value(found.args[0], where)
    raise AssertionError(f"{mod.path.name}: cannot read the io type of {ast.unparse(expr)}")


def _calls(expr: ast.expr, mod: Module) -> list[tuple[ast.Call, Module]]:
    """The ``X.Input(...)`` / ``X.Output(...)`` calls of an inputs= or outputs= list, with helper
    functions that return such lists (``*_schedule_inputs()``) expanded."""
    if isinstance(expr, (ast.List, ast.Tuple)):
        out = []
        for e in expr.elts:
            out.extend(_calls(e.value if isinstance(e, ast.Starred) else e, mod))
        return out
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.func.attr in ("Input", "Output"):
        return [(expr, mod)]
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in mod.functions:
        return _calls(_returned(mod.functions[expr.func.id]), mod)
    raise AssertionError(f"{mod.path.name}: cannot read the inputs/outputs {ast.unparse(expr)}")


@dataclass
class Port:
    name: str
    type: str
    options: dict  # keyword -> value, or Unresolved for a value known only at run time


@dataclass
class Node:
    node_id: str
    display_name: str
    cls: str
    source: Path
    inputs: list[Port]
    outputs: list[Port]


def _keywords(call: ast.Call, mod: Module) -> dict:
    out = {}
    for kw in call.keywords:
        try:
            out[kw.arg] = value(kw.value, mod)
        except Unresolved:
            out[kw.arg] = Unresolved
    return out


def _schema(cls: ast.ClassDef, mod: Module) -> Node:
    define = next((f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "define_schema"), None)
    assert define is not None, f"{cls.name} has no define_schema()"
    schema = next((c for c in ast.walk(define) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
                   and c.func.attr == "Schema"), None)
    assert schema is not None, f"{cls.name}.define_schema() makes no io.Schema"
    kw = {k.arg: k.value for k in schema.keywords}
    inputs = []
    for call, where in _calls(kw.get("inputs", ast.List(elts=[])), mod):
        inputs.append(Port(value(call.args[0], where), _io_type(call.func.value, where), _keywords(call, where)))
    outputs = []
    for call, where in _calls(kw.get("outputs", ast.List(elts=[])), mod):
        options = _keywords(call, where)
        io_type = _io_type(call.func.value, where)
        outputs.append(Port(options.get("display_name") or io_type, io_type, options))
    return Node(value(kw["node_id"], mod), value(kw["display_name"], mod), cls.name, mod.path, inputs, outputs)


@cache
def pack_nodes() -> tuple[Node, ...]:
    """The nodes ``nodes/__init__.py:node_classes()`` returns, in its order."""
    init = module(NODES / "__init__.py")
    func = init.functions["node_classes"]
    local: dict = {}
    _read_imports(init.path, [n for n in func.body if isinstance(n, ast.ImportFrom)], local)
    found = []
    for e in _returned(func).elts:
        if isinstance(e, ast.Starred):  # *BIVDIFF_NODES: a list in another module
            listed, where = _lookup(e.value.id, init, local)
            found.extend((n.id, where) for n in listed.elts)
        else:
            path, attr = local[e.id]
            found.append((attr, module(path)))
    return tuple(_schema(where.classes[name], where) for name, where in found)


def node_ids() -> list[str]:
    return [n.node_id for n in pack_nodes()]


def node(node_id: str) -> Node:
    return next(n for n in pack_nodes() if n.node_id == node_id)


# ---- reading the pages ------------------------------------------------------------------------------------


def page_path(node_id: str) -> Path:
    return DOCS / f"{node_id}.md"


def sections(text: str) -> dict[str, str]:
    out, name, lines = {}, None, []
    for line in text.splitlines():
        if line.startswith("## "):
            if name is not None:
                out[name] = "\n".join(lines)
            name, lines = line[3:].strip(), []
        elif name is not None:
            lines.append(line)
    if name is not None:
        out[name] = "\n".join(lines)
    return out


def table(section: str) -> list[list[str]]:
    """The body rows of the first Markdown table in a section, as cells."""
    rows = [line.strip() for line in section.splitlines() if line.strip().startswith("|")]
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", row.strip("|"))] for row in rows]
    assert len(cells) >= 2 and set("".join(cells[1])) <= set("-: "), "the section has no Markdown table"
    return cells[2:]


def code(cell: str) -> str:
    """The name in a table cell: `name` -> name."""
    return cell.strip().strip("`").strip()


def numbers(cell: str) -> set[float]:
    return {float(m) for m in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])", cell.replace("`", " "))}


def links(text: str) -> list[tuple[str, str]]:
    """(text, target) of every Markdown link whose target is a file of the repository (not a URL or an anchor)."""
    out = []
    for label, target in re.findall(r"\[([^\]]*)\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        out.append((label, unquote(target.split("#")[0])))
    return out


def workflow_nodes(path: Path) -> set[str]:
    """Node types of a UI-format (litegraph) or API-format workflow."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data.get("nodes"), list):
        return {n["type"] for n in data["nodes"]}
    return {n["class_type"] for n in data.values() if isinstance(n, dict) and "class_type" in n}


def workflows_using(node_id: str) -> set[Path]:
    """The UI workflows that contain the node, and the API-only workflows (no UI twin) that do."""
    ui = sorted(WORKFLOWS.glob("*.json"))
    api_only = [p for p in sorted((WORKFLOWS / "api").glob("*.json")) if not (WORKFLOWS / p.name).is_file()]
    return {p.resolve() for p in ui + api_only if node_id in workflow_nodes(p)}


# ---- tests ------------------------------------------------------------------------------------------------


def test_the_schemas_are_read_from_the_source():
    nodes = pack_nodes()
    ids = [n.node_id for n in nodes]
    assert len(ids) >= 17 and len(set(ids)) == len(ids), ids
    assert all(i.startswith(("FB_", "BIV_")) for i in ids), ids
    sampler = node("FB_BridgeSampler")
    assert [p.name for p in sampler.inputs] == ["model", "positive", "negative", "prior", "seed", "steps", "spacing",
                                                "cfg", "method", "eta"]
    assert node("FB_NeuralPrior").inputs[0].type == "FB_PRIOR_NET"
    assert node("BIV_MixedInversion").inputs[6].options["default"] == 50  # followed into framebridge_core
    assert node("FB_LoadFrameBridge").inputs[0].options["options"] is Unresolved  # the model files: run time


def test_every_page_belongs_to_a_node():
    stray = sorted(p.name for p in DOCS.glob("*.md") if p.name != "README.md" and p.stem not in node_ids())
    assert stray == [], f"help pages for no node of the pack: {stray}"


@pytest.mark.parametrize("node_id", node_ids())
def test_the_node_has_a_help_page(node_id):
    assert page_path(node_id).is_file(), f"{node_id} has no help page: write web/docs/{node_id}.md"


@pytest.fixture
def page(node_id):
    path = page_path(node_id)
    if not path.is_file():
        pytest.skip(f"{node_id} has no help page (test_the_node_has_a_help_page fails)")
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("node_id", node_ids())
def test_the_page_has_the_title_and_sections(node_id, page):
    n = node(node_id)
    first = page.lstrip().splitlines()[0]
    assert first == f"# {n.display_name}", f"{node_id}: the title must be '# {n.display_name}', not {first!r}"
    found = [s for s in sections(page) if s in SECTIONS]
    assert found == list(SECTIONS), f"{node_id}: sections {found}, want {list(SECTIONS)} in this order"


@pytest.mark.parametrize("node_id", node_ids())
def test_the_inputs_table_names_exactly_the_node_inputs(node_id, page):
    n = node(node_id)
    rows = table(sections(page)["Inputs"]) if n.inputs else []
    named = [code(r[0]) for r in rows]
    have = [p.name for p in n.inputs]
    unknown = [x for x in named if x not in have]
    missing = [x for x in have if x not in named]
    assert not unknown, f"{node_id}: the page names inputs the node does not have: {unknown} (it has {have})"
    assert not missing, f"{node_id}: the page does not describe the inputs {missing}"
    assert named == have, f"{node_id}: list the inputs in the node's order {have}, not {named}"


@pytest.mark.parametrize("node_id", node_ids())
def test_the_inputs_table_gives_the_types_defaults_and_ranges(node_id, page):
    n = node(node_id)
    if not n.inputs:
        return
    rows = {code(r[0]): r for r in table(sections(page)["Inputs"])}
    for port in n.inputs:
        row = rows.get(port.name)
        if row is None:  # reported by test_the_inputs_table_names_exactly_the_node_inputs
            continue
        assert len(row) == 5, f"{node_id}.{port.name}: want 5 cells (name, type, default, range, what it does)"
        _, typ, default, rng, what = row
        assert code(typ) == port.type, f"{node_id}.{port.name}: type {code(typ)!r}, the node says {port.type!r}"
        assert what, f"{node_id}.{port.name}: say what the input does"
        want = port.options.get("default", Unresolved)
        if want is Unresolved:
            continue
        shown = code(default.split("(")[0])
        if isinstance(want, bool):
            assert shown.lower() == str(want).lower(), f"{node_id}.{port.name}: default {shown!r}, node: {want}"
        elif isinstance(want, (int, float)):
            assert numbers(shown) == {float(want)}, f"{node_id}.{port.name}: default {shown!r}, node: {want}"
        else:
            assert shown == str(want), f"{node_id}.{port.name}: default {shown!r}, node: {want!r}"
        for bound in ("min", "max"):
            limit = port.options.get(bound, Unresolved)
            if limit is not Unresolved and isinstance(limit, (int, float)):
                assert float(limit) in numbers(rng), f"{node_id}.{port.name}: the range must show {bound} {limit}"
        options = port.options.get("options", Unresolved)
        if options is not Unresolved and len(options) <= LISTED_OPTIONS:
            listed = set(re.findall(r"`([^`]+)`", rng))
            assert set(options) <= listed, f"{node_id}.{port.name}: list the options {sorted(set(options) - listed)}"


@pytest.mark.parametrize("node_id", node_ids())
def test_the_outputs_table_matches_the_node(node_id, page):
    n = node(node_id)
    rows = table(sections(page)["Outputs"])
    got = [(code(r[0]), code(r[1])) for r in rows]
    want = [(p.name, p.type) for p in n.outputs]
    assert got == want, f"{node_id}: outputs {got}, the node has {want} (name, type)"


@pytest.mark.parametrize("node_id", node_ids())
def test_the_page_links_only_files_that_exist(node_id, page):
    for label, target in links(page):
        path = (DOCS / target).resolve()
        assert path.exists(), f"{node_id}: the link [{label}]({target}) points to no file"


@pytest.mark.parametrize("node_id", node_ids())
def test_used_in_lists_the_workflows_that_contain_the_node(node_id, page):
    listed = set()
    for label, target in links(sections(page)["Used in"]):
        path = (DOCS / target).resolve()
        assert path.is_file(), f"{node_id}: the workflow link {target} points to no file"
        assert path.suffix == ".json" and WORKFLOWS.resolve() in path.parents, \
            f"{node_id}: 'Used in' links {target}, which is not a workflow under workflows/"
        assert node_id in workflow_nodes(path), f"{node_id}: 'Used in' names {path.name}, which has no {node_id}"
        listed.add(path)
    missing = sorted(p.relative_to(WORKFLOWS.resolve()).as_posix() for p in workflows_using(node_id) - listed)
    assert missing == [], f"{node_id}: 'Used in' does not link the workflows that contain the node: {missing}"
