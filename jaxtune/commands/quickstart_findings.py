"""The quickstart's last act: the three findings with their numbers, then a data budget chosen from them and tested.

After the grid (:mod:`jaxtune.commands.quickstart`), it prints the study's three findings measured on the grid
(:mod:`jaxtune.study.findings`), then runs ``jaxtune budget`` for the largest model size (its curves carry the most
signal at small volumes: the smaller one was still at or below chance on most abilities at 160 records) at the total
of its largest curated run up to :data:`BUDGET_TOTAL`, from the curves of the smaller curated volumes only (so the
run at the total is not used to choose it), writes ``out/budget/`` (budget.json, budget.md, budget.png) and prints
the decision: the optimised and the uniform allocations' predictions and which one the guard kept
(:mod:`jaxtune.study.budget_guard`). An optimised budget is trained and evaluated as a sweep cell
(``runs/<size>/budget-<total>-<digest>``, :mod:`jaxtune.study.budget_run`) and its measured overall printed beside
the prediction and the uniform curated run of the same total, whichever way it comes out; the report is redrawn with
the budget run tabled (``report/doit-test.budget.md``). A budget that keeps the uniform counts trains nothing: they
are ``curated-<total>``'s very records (:mod:`jaxtune.data.mixtures`), so its measurement is that run's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jaxtune.data.mixtures import BUDGET_PREFIX
from jaxtune.results import read_summary, summary_stem
from jaxtune.study.budget import budget
from jaxtune.study.findings import Finding, findings, format_findings, size_number
from jaxtune.study.grid import GridModel, GridOutputs, GridSpec, model_config
from jaxtune.study.report import report
from jaxtune.study.sweep import sweep

BUDGET_TOTAL = 640
STEM = summary_stem("doit", "test", "study")


@dataclass
class FindingsOutputs:
    findings: list[Finding]
    text: str
    budget: dict | None = None
    """budget.json's contents, with ``measured_overall`` and ``uniform_overall`` added; None when skipped."""


def _curated_volume(eval_dir: Path) -> tuple[str, int] | None:
    """(model label, N) of ``run_dir/<label>/curated-N/eval/epoch-E``."""
    run = eval_dir.parent.parent
    if run.name.startswith("curated-") and run.name[len("curated-") :].isdigit():
        return run.parent.name, int(run.name[len("curated-") :])
    return None


def findings_and_budget(
    spec: GridSpec,
    grid: GridOutputs,
    out: Path,
    *,
    total: int = BUDGET_TOTAL,
    print_fn: Callable[[str], None] = print,
) -> FindingsOutputs:
    """Print the findings, then choose, train and measure the budget (see the module docstring)."""
    found = findings(grid.eval_dirs, STEM)
    lines = [format_findings(found)]
    model = max(spec.models, key=lambda m: size_number(m.label))
    runs = {v: d for d in grid.eval_dirs if (lv := _curated_volume(d)) and lv[0] == model.label for v in [lv[1]]}
    totals = [v for v in runs if v <= total and len([u for u in runs if u < v]) >= 2]
    print_fn(lines[0])
    if not totals:
        lines.append(f"budget: skipped (no curated run of {model.label} up to {total} with two smaller volumes)")
        print_fn(lines[-1])
        return FindingsOutputs(found, "\n".join(lines))
    total = max(totals)
    chosen = budget(
        [d for v, d in runs.items() if v < total], total, out / "budget", size=model.label, data_dir=out / "data"
    )
    result = dict(chosen.result)
    eval_dir = runs[total]  # uniform counts are curated-<total>'s very records: that run is the budget's run
    if result["chosen"] == "optimised":
        eval_dir = _train_budget(spec, model, out / "budget" / "budget.json", print_fn)
        report([*grid.eval_dirs, eval_dir], grid.report_dir)
    result["measured_overall"] = read_summary(eval_dir / f"{STEM}.summary.json").overall
    result["uniform_overall"] = read_summary(runs[total] / f"{STEM}.summary.json").overall
    lines.append(budget_lines(result, model.label))
    print_fn(lines[-1])
    return FindingsOutputs(found, "\n".join(lines), result)


def _train_budget(spec: GridSpec, model: GridModel, path: Path, print_fn: Callable[[str], None]) -> Path:
    """Train and evaluate ``budget:path`` as a cell of ``model``; its evaluation folder."""
    run = sweep(
        model_config(spec, model),
        [f"{BUDGET_PREFIX}{path}"],
        spec.eval_epochs,
        print_fn=print_fn,
        model_size=model.label,
        write_report=False,
    ).runs[0]
    return run.eval_dirs[max(run.eval_dirs)]


def budget_lines(r: dict, size: str) -> str:
    """What the quickstart prints of a budget and its run (``r``: budget.json plus ``measured_overall`` and
    ``uniform_overall``, the measured overall of the budget's run and of uniform curated-<total>)."""
    h = r["holdout"]
    lines = [f"budget for {size} at {r['total']} records (curves of the smaller curated volumes):"]
    if h is not None:
        lines.append(
            f"  fit hold-out (without {h['run_volume']}, predict it): mean |error| {h['mean_abs_error']:.1f} "
            f"points per ability, overall {h['overall_predicted']:.1f} predicted vs {h['overall_measured']:.1f}"
        )
    for name in ("optimised", "uniform"):
        a = r[name]
        counts = ", ".join(f"{k} {n}" for k, n in a["counts"].items())
        lines.append(f"  {name}: predicted overall {a['overall']:.1f}{_band(a['overall_band'])} ({counts})")
    lines.append(f"  chosen: {r['chosen']} ({r['decision']})")
    diff = r["measured_overall"] - r["uniform_overall"]
    if r["chosen"] == "uniform":
        lines.append(
            f"  budget run: the uniform counts are curated-{r['total']}'s records, so its run is that run: "
            f"overall predicted {r['predicted']['overall']:.1f}, measured {r['measured_overall']:.1f}"
        )
    else:
        lines.append(
            f"  budget run: overall predicted {r['predicted']['overall']:.1f}{_band(r['predicted']['overall_band'])}, "
            f"measured {r['measured_overall']:.1f}; uniform curated-{r['total']}: {r['uniform_overall']:.1f} "
            f"(budget {diff:+.1f})"
        )
    return "\n".join(lines)


def _band(band: list[float] | None) -> str:
    return "" if band is None else f" [{band[0]:.1f}, {band[1]:.1f}]"
