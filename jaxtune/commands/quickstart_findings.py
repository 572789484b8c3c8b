"""The quickstart's last act: the three findings with their numbers, then a data budget chosen from them and tested.

After the grid (:mod:`jaxtune.commands.quickstart`), it prints the study's three findings measured on the grid
(:mod:`jaxtune.study.findings`), then runs ``jaxtune budget`` for the largest model size (its curves carry the most
signal at small volumes: the smaller one was still at or below chance on most abilities at 160 records) at the total
of its largest curated run up to :data:`BUDGET_TOTAL`, from the curves of the smaller curated volumes only (so the
run at the total is not used to choose it), writes ``out/budget/`` (budget.json, budget.md, budget.png), trains and
evaluates that mixture under ``runs/<size>/budget-<total>`` and prints its measured overall beside the prediction
and the uniform curated run of the same total, whichever way it comes out; the report is redrawn with the budget
run tabled (``report/doit-test.budget.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jaxtune.results import read_summary, summary_stem
from jaxtune.study.budget import budget
from jaxtune.study.budget_run import train_and_evaluate_budget
from jaxtune.study.findings import Finding, findings, format_findings, size_number
from jaxtune.study.grid import GridOutputs, GridSpec, model_config
from jaxtune.study.report import report

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
    eval_dir = train_and_evaluate_budget(
        model_config(spec, model), out / "budget" / "budget.json", spec.run_dir / model.label / f"budget-{total}",
        model_size=model.label, print_fn=print_fn,
    )  # fmt: skip
    result["measured_overall"] = read_summary(eval_dir / f"{STEM}.summary.json").overall
    result["uniform_overall"] = read_summary(runs[total] / f"{STEM}.summary.json").overall
    report([*grid.eval_dirs, eval_dir], grid.report_dir)
    lines.append(_budget_lines(result, model.label))
    print_fn(lines[-1])
    return FindingsOutputs(found, "\n".join(lines), result)


def _budget_lines(r: dict, size: str) -> str:
    p, h = r["predicted"], r["holdout"]
    band = "" if p["overall_band"] is None else f" [{p['overall_band'][0]:.1f}, {p['overall_band'][1]:.1f}]"
    counts = ", ".join(f"{a} {n}" for a, n in r["counts"].items())
    lines = [f"budget for {size} at {r['total']} records (curves of the smaller curated volumes): {counts}"]
    if h is not None:
        lines.append(
            f"  fit hold-out (without {h['run_volume']}, predict it): mean |error| {h['mean_abs_error']:.1f} "
            f"points per ability, overall {h['overall_predicted']:.1f} predicted vs {h['overall_measured']:.1f}"
        )
    diff = r["measured_overall"] - r["uniform_overall"]
    lines.append(
        f"  budget run: overall predicted {p['overall']:.1f}{band}, measured {r['measured_overall']:.1f}; "
        f"uniform curated-{r['total']}: {r['uniform_overall']:.1f} (budget {'+' if diff >= 0 else ''}{diff:.1f})"
    )
    return "\n".join(lines)
