"""The report's place for budget runs: a run trained on ``budget:PATH`` beside the uniform curated run of the same
total and the study's rule scaled to it.

A budget run's summaries carry ``run.data_source`` :data:`BUDGET_SOURCE` (``budget``) and the scaled rule's
(``budget:OUT/rule.json`` of :mod:`jaxtune.study.budget`, told apart by its ``rule`` key) :data:`RULE_SOURCE`
(``reconstruct-scaled``), each with its total as ``data_volume`` (:func:`jaxtune.study.budget_run.budget_run_label`, which
the sweep labels such a run with). Neither is a point of a volume series, so the report leaves them off the curves and writes
``{stem}.budget.md`` / ``.csv``: per model size and total holding a budget run, one column for the budget run, one
for ``curated`` at the same total and one for the scaled rule when they exist; rows are the abilities and the overall
mean. Runs sharing a column are averaged.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxtune.results import SuiteSummary

BUDGET_SOURCE = "budget"
RULE_SOURCE = "reconstruct-scaled"
BUDGET_SOURCES = (BUDGET_SOURCE, RULE_SOURCE)
"""Data sources the report tables beside the uniform run instead of drawing as curves."""
_COLUMNS = (BUDGET_SOURCE, "curated", RULE_SOURCE)


def budget_comparison(summaries: Sequence[SuiteSummary]) -> list[list[str]] | None:
    """The table's rows (a header first), or None when no summary is of a budget run."""
    cells: dict[tuple[str, int, str], list[SuiteSummary]] = defaultdict(list)
    for s in summaries:
        if s.run.data_source in _COLUMNS and s.run.data_volume:
            cells[(s.run.model_size or "", s.run.data_volume, s.run.data_source)].append(s)
    keys = [
        (size, volume, source)
        for size, volume, _ in sorted(k for k in cells if k[2] == BUDGET_SOURCE)
        for source in _COLUMNS
        if (size, volume, source) in cells
    ]
    if not keys:
        return None
    abilities: list[str] = []
    for s in summaries:
        abilities += [a.name for a in s.abilities if a.name not in abilities]
    rows = [["ability"] + [f"{size} {source}-{volume}".strip() for size, volume, source in keys]]
    for name in [*abilities, "overall"]:
        row = [name]
        for k in keys:
            values = [
                s.overall if name == "overall" else s.ability(name).score
                for s in cells[k]
                if name == "overall" or name in {a.name for a in s.abilities}
            ]
            row.append(f"{float(np.mean(values)):.1f}" if values else "")
        rows.append(row)
    return rows


def write_budget_comparison(summaries: Sequence[SuiteSummary], out_stem: Path) -> list[Path]:
    """Write ``{out_stem}.budget.md`` and ``.csv`` when a budget run is among ``summaries``; the paths written."""
    rows = budget_comparison(summaries)
    if rows is None:
        return []
    md = ["| " + " | ".join(rows[0]) + " |", "|---|" + "---:|" * (len(rows[0]) - 1)]
    md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    md_path = out_stem.parent / f"{out_stem.name}.budget.md"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(rows)
    csv_path = out_stem.parent / f"{out_stem.name}.budget.csv"
    csv_path.write_text(buffer.getvalue(), encoding="utf-8")
    return [md_path, csv_path]
