"""The BELLE study's figure: judge score per use case against data volume, beside the paper's Figure 1.

The BELLE suite's report hook (:class:`jaxtune.eval.suites.registry.ReportHooks`), which ``jaxtune report``
(:mod:`jaxtune.study.report`) calls for each BELLE group. Input: BELLE summaries (suite ``belle``, unit ``fraction``;
one chosen epoch per run, as the report chooses them), each carrying its run's model size, data source and data
volume. Output, next to the report's other files for the group ``{stem}`` (e.g. ``belle-eval_set``):

- ``{stem}.study.png`` / ``.svg``: one panel per (model size, data source) of the evaluated runs, then one panel of
  the paper's values. In each panel a group of bars per use case (the paper's order), one bar per data volume
  (the same colour for the same volume in every panel), then ``Overall`` (the unweighted mean over use cases) and
  ``Overall w/o math & code``. Runs at the same size, source and volume are averaged.
- ``{stem}.study.csv``: ``panel, use_case, volume, score`` for every bar drawn (the paper's rows included).

The paper's panel is Figure 1 of arXiv 2303.14742 (BELLE-7B-0.2M ... 2M, per use case, read off the vector graphic:
``jaxtune/eval/suites/reference/belle_paper_fig1_scores.csv``, see the README there). It is labelled as what it is: 12 use cases
and 2,210 items judged by gpt-3.5-turbo in March 2023, a different item set and judge from the released 1,000-item
``eval_set.json``, so it stands beside the evaluation's bars as a reference, not on the same axes.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from jaxtune.errors import JaxtuneError
from jaxtune.results import SuiteSummary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PAPER_FIG1 = Path(__file__).resolve().parent / "reference" / "belle_paper_fig1_scores.csv"
OVERALL = "overall"
OVERALL_RELIABLE = "overall w/o math & code"
EXCLUDED_FROM_RELIABLE = ("math", "code")

USE_CASES: dict[str, str] = {
    "math": "Math",
    "code": "Code",
    "cot": "COT",
    "classification": "Classification",
    "extract": "Extraction",
    "rewrite": "Rewrite",
    "open qa": "Open QA",
    "closed qa": "Closed QA",
    "generation": "Generation",
    "brainstorming": "Brainstorming",
    "translation": "Translation",
    "summarization": "Summarization",
    OVERALL: "Overall",
    OVERALL_RELIABLE: "Overall w/o math & code",
}
"""Use-case keys (the evaluation's normalised class names) in the paper's order, with the paper's display names."""

_PAPER_NAMES = {display.lower(): key for key, display in USE_CASES.items()}


class BelleReportError(JaxtuneError, ValueError):
    """The paper's score file cannot be read (the message names file, line and column)."""


@dataclass(frozen=True)
class Panel:
    """The bars of one panel: ``scores[use_case][volume]``."""

    title: str
    scores: dict[str, dict[int, float]]


def volume_label(volume: int) -> str:
    """200000 -> ``0.2M``, 2000000 -> ``2M``, 40000 -> ``40k``, 40 -> ``40`` (the paper's labels for its volumes)."""
    if volume >= 100_000:
        return f"{volume / 1e6:g}M"
    if volume >= 1000:
        return f"{volume / 1e3:g}k"
    return str(volume)


def read_paper_scores(path: str | Path = PAPER_FIG1) -> Panel:
    """The paper's Figure 1 as a panel; ``Overall w/o math & code`` is the mean of its other 10 use cases."""
    path = Path(path)
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise BelleReportError(f"{path}: empty file")
    header = rows[0]
    volumes: dict[int, int] = {}  # column -> volume
    for col, name in enumerate(header):
        if name.startswith("BELLE-7B-"):
            label = name[len("BELLE-7B-") :]
            try:
                volumes[col] = int(round(float(label.rstrip("M")) * 1e6)) if label.endswith("M") else int(label)
            except ValueError:
                raise BelleReportError(f"{path}:1: column {name!r}: expected BELLE-7B-<volume>, e.g. BELLE-7B-0.2M")
    if not volumes or header[0] != "category":
        raise BelleReportError(f"{path}:1: expected a header 'category,BELLE-7B-0.2M,...', got {','.join(header)}")
    scores: dict[str, dict[int, float]] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        key = _PAPER_NAMES.get(row[0].strip().lower())
        if key is None:
            raise BelleReportError(
                f"{path}:{lineno}: unknown use case {row[0]!r} (known: {', '.join(USE_CASES.values())})"
            )
        try:
            scores[key] = {v: float(row[col]) for col, v in volumes.items()}
        except (ValueError, IndexError):
            raise BelleReportError(f"{path}:{lineno}: expected a score in every BELLE-7B column") from None
    reliable = [k for k in scores if k not in (OVERALL, *EXCLUDED_FROM_RELIABLE)]
    scores[OVERALL_RELIABLE] = {v: float(np.mean([scores[k][v] for k in reliable])) for v in volumes.values()}
    return Panel(
        "paper, Figure 1 (arXiv 2303.14742): 12 use cases, 2,210 items, gpt-3.5-turbo judge of March 2023"
        " - a different item set and judge, not comparable score for score",
        scores,
    )


def _summary_scores(s: SuiteSummary) -> dict[str, float]:
    out = {a.name: a.score for a in s.abilities}
    out[OVERALL] = s.overall
    reliable = s.details.get("overall_without_math_code")
    if isinstance(reliable, (int, float)) and math.isfinite(reliable):
        out[OVERALL_RELIABLE] = float(reliable)
    return out


def evaluation_panels(summaries: Sequence[SuiteSummary]) -> list[Panel]:
    """One panel per (model size, data source) of the BELLE summaries; runs at the same volume are averaged."""
    grouped: dict[tuple[str, str], dict[int, list[dict[str, float]]]] = defaultdict(lambda: defaultdict(list))
    judges: dict[tuple[str, str], set[str]] = defaultdict(set)
    for s in summaries:
        if s.run.data_volume is None:
            continue
        key = (s.run.model_size or "?", s.run.data_source or "?")
        grouped[key][s.run.data_volume].append(_summary_scores(s))
        judge = s.details.get("judge")
        if isinstance(judge, dict) and judge.get("model"):
            judges[key].add(str(judge["model"]))
    panels = []
    for key in sorted(grouped):
        scores: dict[str, dict[int, float]] = defaultdict(dict)
        for volume, runs in grouped[key].items():
            for name in set().union(*runs):
                scores[name][volume] = float(np.mean([r[name] for r in runs if name in r]))
        judge = ", ".join(sorted(judges[key])) or "unrecorded"
        panels.append(
            Panel(f"this evaluation: {key[0]} {key[1]} (released eval_set.json, judge {judge})", dict(scores))
        )
    return panels


def _order(names: Sequence[str]) -> list[str]:
    known = [k for k in USE_CASES if k in names and k not in (OVERALL, OVERALL_RELIABLE)]
    extra = sorted(n for n in names if n not in USE_CASES)
    return known + extra + [k for k in (OVERALL, OVERALL_RELIABLE) if k in names]


def draw_study(panels: Sequence[Panel], title: str) -> Figure:
    """Grouped bars, a panel per row: a group per use case, a bar per volume, volumes coloured alike in all rows."""
    # matplotlib only here: every suite module is imported whenever suites are looked up (jaxtune eval too).
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    volumes = sorted({v for p in panels for per in p.scores.values() for v in per})
    cmap = colormaps["viridis"]
    colours = {v: cmap(0.15 + 0.7 * i / max(1, len(volumes) - 1)) for i, v in enumerate(volumes)}
    fig = Figure(figsize=(13, 3.4 * len(panels) + 0.6), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels):
        names = _order(list(panel.scores))
        panel_volumes = sorted({v for per in panel.scores.values() for v in per})
        width = 0.8 / max(1, len(panel_volumes))
        for j, v in enumerate(panel_volumes):
            xs = [i + (j - (len(panel_volumes) - 1) / 2) * width for i, n in enumerate(names) if v in panel.scores[n]]
            ys = [panel.scores[n][v] for n in names if v in panel.scores[n]]
            ax.bar(xs, ys, width=width, color=colours[v], label=volume_label(v))
        ax.set_xticks(range(len(names)), [USE_CASES.get(n, n) for n in names], rotation=20, ha="right", fontsize=8)
        for i, n in enumerate(names):
            if n in (OVERALL, OVERALL_RELIABLE):
                ax.axvspan(i - 0.45, i + 0.45, color="grey", alpha=0.08, linewidth=0)
        ax.set_ylim(0, 1)
        ax.set_ylabel("judge score (0-1)")
        ax.set_title(panel.title, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(title="training data", fontsize=7, title_fontsize=7, ncols=len(panel_volumes), loc="upper left")
    fig.suptitle(title)
    return fig


def write_study_figure(
    summaries: Sequence[SuiteSummary], out_stem: Path, paper_scores: str | Path = PAPER_FIG1
) -> list[Path]:
    """Draw and write ``{out_stem}.study.png``, ``.svg`` and ``.csv`` (see the module docstring); returns them."""
    panels = evaluation_panels(summaries)
    if not panels:
        return []
    paper = read_paper_scores(paper_scores)
    everything = [*panels, paper]
    fig = draw_study(everything, "BELLE: judge score per use case by training data volume")
    written = []
    for ext in ("png", "svg"):
        path = out_stem.parent / f"{out_stem.name}.study.{ext}"
        with path.open("wb") as f:  # an epath: local or gs://
            fig.savefig(f, format=ext, dpi=130)
        written.append(path)
    path = out_stem.parent / f"{out_stem.name}.study.csv"
    buffer = io.StringIO(newline="")
    w = csv.writer(buffer)
    w.writerow(["panel", "use_case", "volume", "score"])
    for panel in everything:
        for name in _order(list(panel.scores)):
            for volume in sorted(panel.scores[name]):
                w.writerow([panel.title, USE_CASES.get(name, name), volume, f"{panel.scores[name][volume]:.4f}"])
    path.write_text(buffer.getvalue(), encoding="utf-8")
    written.append(path)
    return written
