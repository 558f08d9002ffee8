"""Ratios of paired timings and the markdown of ``benchmarks/SPEED.md`` (no timing happens here).

Absolute times on a shared machine drift with the other work on it, so every comparison is a list
of *paired* samples taken back to back (repeat ``i`` of side A next to repeat ``i`` of side B, the
order alternating between repeats); the report quotes the median of the per-pair ratios and their
spread (min–max), and the medians of the absolute times only as context.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from ..errors import ConfigError


@dataclass
class Comparison:
    """One row: ``a`` vs ``b`` measured in pairs; the ratio is ``a / b``."""

    section: str
    what: str
    a_label: str
    b_label: str
    a: list = field(default_factory=list)
    b: list = field(default_factory=list)
    unit: str = "s"
    note: str = ""

    def ratios(self) -> list:
        if len(self.a) != len(self.b) or not self.a:
            raise ConfigError(f"{self.what}: {len(self.a)} samples of {self.a_label} and {len(self.b)} of "
                              f"{self.b_label}; a ratio needs the same number (at least one) on both sides.")
        bad = [v for v in self.b if not v > 0]
        if bad:
            raise ConfigError(f"{self.what}: {self.b_label} has non-positive samples {bad}; cannot divide by them.")
        return [x / y for x, y in zip(self.a, self.b)]

    def stats(self) -> "RatioStats":
        return ratio_stats(self.ratios())


@dataclass(frozen=True)
class RatioStats:
    median: float
    low: float
    high: float
    n: int


def ratio_stats(ratios: Sequence[float]) -> RatioStats:
    """Median (mean of the two middle values for an even count) and the min–max spread."""
    if not ratios:
        raise ConfigError("no ratios to summarise")
    return RatioStats(statistics.median(ratios), min(ratios), max(ratios), len(ratios))


def interleaved(repeats: int, a: Callable[[], float], b: Callable[[], float]) -> tuple[list, list]:
    """``repeats`` pairs of timings: A then B in even repeats, B then A in odd ones, so a slow drift
    of the machine's load hits both sides alike. Each callable returns its own measured seconds."""
    if repeats < 1:
        raise ConfigError(f"repeats={repeats}: need at least 1")
    ta, tb = [], []
    for i in range(repeats):
        if i % 2 == 0:
            ta.append(a())
            tb.append(b())
        else:
            tb.append(b())
            ta.append(a())
    return ta, tb


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "MB":
        return f"{value:.0f} MB"
    return f"{value:.4g} {unit}"


def table(rows: Sequence[Comparison]) -> list:
    """Markdown table lines, one row per comparison."""
    out = ["| measurement | A | B | median A | median B | ratio A/B (median) | spread (min–max) | pairs |",
           "|---|---|---|---|---|---|---|---|"]
    for c in rows:
        s = c.stats()
        what = c.what + (f" ({c.note})" if c.note else "")
        out.append(f"| {what} | {c.a_label} | {c.b_label} | {_fmt(statistics.median(c.a), c.unit)} | "
                   f"{_fmt(statistics.median(c.b), c.unit)} | **{s.median:.3f}** | {s.low:.3f}–{s.high:.3f} | {s.n} |")
    return out


def render(rows: Sequence[Comparison], *, command: str, machine: Sequence[str], date: str,
           skipped: Sequence[str] = (), notes: Sequence[str] = (), intro: Optional[str] = None) -> str:
    """The whole SPEED.md: how it was made, the machine, one table per section, what was skipped."""
    lines = ["# Speed: ratios measured in one run", ""]
    lines += [intro or ("Written by `" + command + "` on " + date + ". Every row compares two sides measured "
                        "in pairs within this one run (the order alternating between repeats); the ratio column "
                        "is the median of the per-pair ratios A/B and the spread their min–max. The absolute "
                        "medians are context only: they depend on the machine and its load."), ""]
    lines += ["## Machine", ""] + [f"- {m}" for m in machine] + [""]
    sections: dict = {}
    for c in rows:
        sections.setdefault(c.section, []).append(c)
    for name, group in sections.items():
        lines += [f"## {name}", ""] + table(group) + [""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    if skipped:
        lines += ["## Not measured in this run", ""] + [f"- {s}" for s in skipped] + [""]
    return "\n".join(lines)


__all__ = ["Comparison", "RatioStats", "interleaved", "ratio_stats", "render", "table"]
