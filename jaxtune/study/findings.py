"""The study's three findings, measured on a grid's summaries and printed with the figures behind them.

- **pace**: per model size (curated runs), the smallest volume at which each ability reaches 90% of its best score;
  shown when the abilities that rise above chance reach it at different volumes (the latest at least 4x the
  earliest: one step of the study's log-4 axis).
- **data source**: per model size and volume holding both, curated minus synthetic overall; shown when every
  difference is positive.
- **size**: per volume holding both (curated runs), the larger model's overall minus the smaller's (sizes ordered
  by the number in their label, ``0.23m`` < ``0.66m`` < ``7b``); shown when their mean is positive and most are.

Input: summaries of one suite (``doit-test`` by default), the last epoch of each run, runs sharing size, source and
volume averaged (:func:`jaxtune.study.report.curves`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jaxtune.results import find_summaries, read_summary
from jaxtune.study.report import Point, choose_epochs, curves

RISE = 5.0
"""Points above chance an ability's best must reach to count in the pace finding."""


@dataclass
class Finding:
    name: str
    shown: bool
    lines: list[str] = field(default_factory=list)
    numbers: dict = field(default_factory=dict)


def size_number(label: str | None) -> float:
    """``0.23m`` -> 0.23e6, ``7b`` -> 7e9 (unlabelled or unparsable sizes sort last)."""
    m = re.match(r"(\d+(?:\.\d+)?)([kmb]?)", (label or "").lower())
    if not m:
        return float("inf")
    return float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}[m.group(2)]


def _overall(points: list[Point]) -> dict[int, float]:
    return {p.volume: p.scores["overall"] for p in points}


def pace_finding(data: dict[tuple, list[Point]]) -> Finding:
    numbers: dict[str, dict[str, int | None]] = {}
    lines, shown = [], True
    for (size, source), points in data.items():
        if source != "curated":
            continue
        reach: dict[str, int | None] = {}
        for name in sorted(n for n in points[-1].scores if n != "overall"):
            xy = [(p.volume, p.scores[name]) for p in points if name in p.scores]
            best = max(s for _, s in xy)
            chance = points[-1].chances.get(name) or 0.0
            reach[name] = next(v for v, s in xy if s >= 0.9 * best) if best >= chance + RISE else None
        numbers[str(size)] = reach
        risen = [v for v in reach.values() if v is not None]
        shown = shown and len(risen) >= 2 and max(risen) >= 4 * min(risen)
        parts = [f"{n} {v}" if v is not None else f"{n} never above chance+{RISE:g}" for n, v in reach.items()]
        lines.append(f"  {size}: 90% of best at " + ", ".join(parts))
    return Finding("pace", shown and bool(numbers), lines, numbers)


def source_finding(data: dict[tuple, list[Point]]) -> Finding:
    numbers: dict[str, dict[int, float]] = {}
    lines = []
    for size in sorted({k[0] for k in data}, key=size_number):
        cur, syn = _overall(data.get((size, "curated"), [])), _overall(data.get((size, "synthetic"), []))
        diff = {v: cur[v] - syn[v] for v in sorted(set(cur) & set(syn))}
        if diff:
            numbers[str(size)] = diff
            parts = [f"{v}: {cur[v]:.1f} - {syn[v]:.1f} = {d:+.1f}" for v, d in diff.items()]
            lines.append(f"  {size}: curated - synthetic overall at " + "; ".join(parts))
    values = [d for per in numbers.values() for d in per.values()]
    return Finding("data source", bool(values) and all(d > 0 for d in values), lines, numbers)


def size_finding(data: dict[tuple, list[Point]]) -> Finding:
    sizes = sorted({k[0] for k in data if k[1] == "curated"}, key=size_number)
    if len(sizes) < 2:
        return Finding("size", False, ["  one model size only"], {})
    small, large = sizes[0], sizes[-1]
    a, b = _overall(data[(small, "curated")]), _overall(data[(large, "curated")])
    diff = {v: b[v] - a[v] for v in sorted(set(a) & set(b))}
    parts = [f"{v}: {b[v]:.1f} - {a[v]:.1f} = {d:+.1f}" for v, d in diff.items()]
    mean = sum(diff.values()) / len(diff) if diff else 0.0
    shown = bool(diff) and mean > 0 and sum(d > 0 for d in diff.values()) * 2 > len(diff)
    lines = [f"  {large} - {small} overall (curated) at " + "; ".join(parts), f"  mean {mean:+.1f}"]
    return Finding("size", shown, lines, {"larger": large, "smaller": small, "differences": diff, "mean": mean})


def findings(eval_dirs: Sequence[str | Path], stem: str = "doit-test") -> list[Finding]:
    """The three findings over the ``{stem}`` summaries under ``eval_dirs`` (see the module docstring)."""
    summaries = [read_summary(p) for p in find_summaries(eval_dirs) if p.name == f"{stem}.summary.json"]
    summaries = [s for s in summaries if (s.run.data_volume or 0) > 0]
    data = curves(choose_epochs(summaries, "last"))
    return [pace_finding(data), source_finding(data), size_finding(data)]


def format_findings(found: Sequence[Finding]) -> str:
    out = []
    for f in found:
        out.append(f"finding: {f.name}: {'shown' if f.shown else 'NOT shown'}")
        out += f.lines
    return "\n".join(out)
