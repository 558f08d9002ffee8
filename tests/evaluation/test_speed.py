"""``bench speed``: the ratio math and the report on fake timings, the argument errors, and (``slow``,
it times things) a one-repeat end-to-end run whose file structure is checked."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from framebridge_core.cli import main as cli_main
from framebridge_core.errors import ConfigError
from framebridge_core.evaluation import speed
from framebridge_core.evaluation.speed_comfyui import TINY_WORKFLOW, load_workflow, the_node, with_settings
from framebridge_core.evaluation.speed_official import check_official_root
from framebridge_core.evaluation.speed_report import Comparison, interleaved, ratio_stats, render, table


# ------------------------------------------------------------------------------ ratios and spread


def test_ratio_stats_median_and_spread():
    s = ratio_stats([1.2, 0.8, 1.0])
    assert (s.median, s.low, s.high, s.n) == (1.0, 0.8, 1.2, 3)
    # even count: mean of the two middle ratios
    assert ratio_stats([1.0, 4.0, 2.0, 3.0]).median == pytest.approx(2.5)
    with pytest.raises(ConfigError, match="no ratios"):
        ratio_stats([])


def test_comparison_ratios_are_per_pair_not_ratio_of_medians():
    c = Comparison("s", "w", "A", "B", a=[2.0, 3.0, 10.0], b=[1.0, 3.0, 2.0])
    assert c.ratios() == [2.0, 1.0, 5.0]
    assert c.stats().median == 2.0  # the median of medians would give 3 / 2 = 1.5


def test_comparison_refuses_unpaired_or_zero_samples():
    with pytest.raises(ConfigError, match="2 samples of A and 1 of B"):
        Comparison("s", "w", "A", "B", a=[1.0, 2.0], b=[1.0]).ratios()
    with pytest.raises(ConfigError, match="non-positive"):
        Comparison("s", "w", "A", "B", a=[1.0], b=[0.0]).ratios()


def test_interleaved_alternates_the_order():
    order = []
    ta, tb = interleaved(4, lambda: order.append("a") or 1.0, lambda: order.append("b") or 2.0)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert ta == [1.0] * 4 and tb == [2.0] * 4
    with pytest.raises(ConfigError, match="repeats=0"):
        interleaved(0, lambda: 1.0, lambda: 1.0)


# ------------------------------------------------------------------------------ markdown


def test_table_row_holds_medians_ratio_and_spread():
    c = Comparison("S", "forward", "ours", "official", a=[3.0, 2.0, 4.5], b=[2.0, 2.0, 1.5], note="fp32")
    lines = table([c])
    assert lines[0].startswith("| measurement | A | B | median A | median B | ratio A/B (median) |")
    assert lines[2] == "| forward (fp32) | ours | official | 3.000 s | 2.000 s | **1.500** | 1.000–3.000 | 3 |"
    mem = Comparison("S", "peak", "ours", "official", a=[660.4], b=[1000.0], unit="MB")
    assert table([mem])[2] == "| peak | ours | official | 660 MB | 1000 MB | **0.660** | 0.660–0.660 | 1 |"


def test_render_groups_sections_and_lists_machine_notes_and_skips():
    rows = [Comparison("One", "x", "A", "B", [1.0], [2.0]), Comparison("Two", "y", "A", "B", [3.0], [1.0]),
            Comparison("One", "z", "A", "B", [1.0], [1.0])]
    text = render(rows, command="python -m framebridge_core bench speed --repeats 1", machine=["CPU: test"],
                  date="2026-01-01 00:00 UTC", skipped=["Latte: no path"], notes=["a note"])
    heads = [ln for ln in text.splitlines() if ln.startswith("## ")]
    assert heads == ["## Machine", "## One", "## Two", "## Notes", "## Not measured in this run"]
    one = text.split("## One")[1].split("## Two")[0]
    assert "| x |" in one and "| z |" in one and "| y |" not in one
    assert "`python -m framebridge_core bench speed --repeats 1`" in text and "2026-01-01" in text
    assert "- CPU: test" in text and "- Latte: no path" in text and "**0.500**" in text and "**3.000**" in text


def test_machine_lines_name_threads_torch_and_load():
    import torch

    lines = speed.machine_lines(3, (0.0, 0.0, 0.0), (99.0, 1.0, 1.0))
    assert "torch threads on every side: 3" in lines[0]
    assert torch.__version__ in lines[1]
    assert "before: 0.00/0.00/0.00, after: 99.00/1.00/1.00 — measured with other work" in lines[2]
    assert "other work" not in speed.machine_lines(1, (0.0,) * 3, (0.0,) * 3)[2]


# ------------------------------------------------------------------------------ the workflow prompt


def test_workflow_prompt_gets_seed_and_steps_without_touching_the_file():
    wf = load_workflow(TINY_WORKFLOW)
    p = with_settings(wf, seed=7, steps=3)
    assert the_node(p, "FB_BridgeSampler")["inputs"]["seed"] == 7
    assert the_node(p, "FB_BridgeSampler")["inputs"]["steps"] == 3
    assert the_node(wf, "FB_BridgeSampler")["inputs"]["steps"] == 25  # the loaded original is unchanged
    with pytest.raises(ConfigError, match="expected one KSampler"):
        the_node(wf, "KSampler")


# ------------------------------------------------------------------------------ argument errors


def _fake_comfyui(tmp_path: Path) -> Path:
    root = tmp_path / "ComfyUI"
    (root / "comfy").mkdir(parents=True)
    (root / "main.py").write_text("")
    (root / "nodes.py").write_text("")
    return root


@pytest.mark.parametrize("argv, message", [
    (["--repeats", "0"], "--repeats 0: need at least 1 pair"),
    (["--official-repeats", "-1"], "--official-repeats -1: need at least 1 pair"),
    (["--steps", "0"], "--steps 0: need at least 1 sampler step"),
    (["--threads", "-2"], "--threads -2"),
    (["--parts", "sampler,fast"], "--parts 'sampler,fast': choose from comfyui, sampler, official"),
    (["--comfyui", "/nonexistent/ComfyUI"], "is not a ComfyUI checkout"),
    (["--official-videocrafter", "/nonexistent"], "no lvdm/modules/networks/openaimodel3d.py there"),
    (["--official-latte", "/nonexistent"], "no models/latte.py there; give the framebridge-latte folder"),
    (["--official-python", "/nonexistent/python"], "--official-python '/nonexistent/python' is not an executable"),
])
def test_argument_errors_name_the_value(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    with pytest.raises(SystemExit) as e:
        speed.parse(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_comfyui_needs_its_python(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("COMFYUI_PYTHON", raising=False)
    root = _fake_comfyui(tmp_path)
    with pytest.raises(SystemExit):
        speed.parse(["--comfyui", str(root)])
    assert "--comfyui needs --python" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        speed.parse(["--comfyui", str(root), "--python", str(tmp_path / "nope")])
    assert "is not an executable interpreter" in capsys.readouterr().err
    a = speed.parse(["--comfyui", str(root), "--python", shutil.which("python3") or "python3", "--parts", "comfyui"])
    assert a.comfyui == root.resolve() and a.parts == ["comfyui"]


def test_official_root_is_checked_for_the_network_file(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "latte.py").write_text("")
    assert check_official_root("latte", str(tmp_path)) == tmp_path.resolve()
    with pytest.raises(ConfigError, match="framebridge-videocrafter folder"):
        check_official_root("videocrafter", str(tmp_path))


def test_cli_reaches_bench_speed(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["bench", "speed", "--repeats", "0"])
    assert e.value.code == 2
    assert "bench speed" in capsys.readouterr().err


# ------------------------------------------------------------------------------ end to end (timed)


def _comfy_paths():
    root, python = os.environ.get("COMFYUI_PATH"), os.environ.get("COMFYUI_PYTHON")
    if not root or not python:
        pytest.skip("set COMFYUI_PATH and COMFYUI_PYTHON (ComfyUI's venv interpreter) for the end-to-end run")
    return root, python


@pytest.mark.slow
def test_bench_speed_end_to_end_writes_the_report(tmp_path):
    root, python = _comfy_paths()
    out = tmp_path / "SPEED.md"
    rc = speed.main(["--comfyui", root, "--python", python, "--parts", "comfyui,sampler", "--repeats", "1",
                     "--steps", "2", "--threads", "1", "--out", str(out)])
    assert rc == 0
    text = out.read_text()
    heads = [ln for ln in text.splitlines() if ln.startswith("## ")]
    assert heads[:3] == ["## Machine", "## ComfyUI server vs generate", "## Sampler overhead (in-process, bundled tiny model)"]
    assert "torch threads on every side: 1" in text
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "**" in ln]
    assert len(rows) == 3  # first run, warm, sampler overhead
    assert "first run" in rows[0] and "warm" in rows[1] and "2 network calls" not in rows[2]
    for ln in rows:
        ratio = float(re.search(r"\*\*([0-9.]+)\*\*", ln).group(1))
        assert 0.05 < ratio < 20, ln
        assert ln.rstrip().endswith("| 1 |")
    assert "3 network calls alone" in rows[2]  # 2 CFG passes + the neural prior
