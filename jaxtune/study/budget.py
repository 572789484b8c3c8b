"""``jaxtune budget``: a data budget chosen by measurement, from the growth curves of a grid.

Per ability it fits a growth curve (score against the ability's records, :mod:`jaxtune.study.growth_fit`) to one
model size and data source of a grid (:mod:`jaxtune.study.budget_data`), with a band from a bootstrap over test
items (each replicate resamples an ability's test items with replacement, the same draw at every volume, and
refits); checks it by fitting without the largest volume and predicting it; chooses the counts that maximise the
predicted (weighted) overall score for the total (:mod:`jaxtune.study.budget_alloc`, exact) with each ability capped
at 4x its largest fitted volume unless its curve is saturated, and given at least its smallest fitted volume; predicts the uniform allocation of the same total
beside it, and keeps the uniform counts unless the optimum's gain clears the bootstrap and the hold-out error
(:mod:`jaxtune.study.budget_guard`: the cap, the guard and why); and writes into ``OUT``:

- ``budget.json`` (schema below), which ``data.selection: budget:OUT/budget.json`` trains on;
- ``rule.json``: the study's ``reconstruct`` rule scaled to the total, as counts (``budget:OUT/rule.json``);
- ``budget.md``: per ability the chance level, the measured points, the hold-out check, the cap, the chosen count
  and its prediction with band; then the optimised and uniform predictions and the decision;
- ``budget.png`` / ``.svg``: one panel per ability: the points, the fitted curve and its band, the chosen count.

``budget.json`` (``schema_version`` 2)::

    {"schema_version": 2, "total": 640, "model_size": "0.66m", "source": "curated", "suite": "doit-test",
     "curve": "logistic in log-volume, chance..100, soft-L1", "bootstrap": 100, "band": [5, 95],
     "weights": {"code": 1.0, ...},
     "chosen": "uniform",                                  # or "optimised"
     "decision": "kept uniform: predicted gain +0.0 is under 0.5 point; ...",
     "counts": {"biology": 64, ...},                      # the chosen counts: what budget:PATH trains on (sum: total)
     "available": {"biology": 1000, ...} | null,
     "predicted": {"overall": 38.1, "overall_band": [35.4, 42.3]},          # of the chosen counts
     "optimised": {"counts": {...}, "overall": 38.1, "overall_band": [...] | null},
     "uniform": {"counts": {...}, "overall": 38.1, "overall_band": [...] | null},
     "gain": {"predicted": 0.0, "band": [-1.2, 1.4] | null},                # optimised minus uniform (paired)
     "abilities": {"biology": {"chance": 25.0, "points": [[1, 26.0], [4, 30.0], ...],
                               "fit": {"chance": ..., "upper": ..., "midpoint_log": ..., "scale": ...},
                               "cap": 64 | null,                             # null: saturated, uncapped
                               "floor": 1,                                   # the least it was given
                               "count": 64, "predicted": 70.1, "band": [66.0, 73.5],
                               "holdout": {"volume": 16, "measured": 71.0, "predicted": 68.2, "error": -2.8},
                               "curve_band": {"volumes": [...], "low": [...], "high": [...]}}},
     "holdout": {"run_volume": 160, "mean_abs_error": 6.1, "overall_measured": 50.2, "overall_predicted": 47.0,
                 "overall_error": -3.2}}

Bands are null without per-item results; a hold-out is null with fewer than three volumes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxtune.paths import as_path, write_text_atomic
from jaxtune.study.budget_alloc import allocate, parse_weights, scaled_rule, weighted_mean
from jaxtune.study.budget_data import AbilityPoints, BudgetError, GridPoints, count_available, load_grid_points
from jaxtune.study.budget_figure import write_budget_figure
from jaxtune.study.budget_guard import extrapolation_caps, extrapolation_floors, guard, uniform_counts
from jaxtune.study.growth_fit import GrowthCurve, fit_growth, holdout_check
from jaxtune.study.report import EpochChoice

SCHEMA_VERSION = 2
BAND = (5.0, 95.0)
CURVE = "logistic in log-volume between chance and 100, soft-L1 loss"


@dataclass
class BudgetOutputs:
    """What :func:`budget` wrote, and the decision itself (the parsed ``budget.json``)."""

    out_dir: Path
    files: list[Path]
    result: dict

    def summary(self) -> str:
        r = self.result
        lines = [(self.out_dir / "budget.md").read_text(encoding="utf-8"), f"budget: {self.out_dir / 'budget.json'}"]
        lines.append(f"train it with data.selection=budget:{self.out_dir / 'budget.json'} (total {r['total']})")
        return "\n".join(lines)


def bootstrap_curves(
    points: dict[str, AbilityPoints], fits: dict[str, GrowthCurve], replicates: int, seed: int
) -> dict[str, list[GrowthCurve]]:
    """Per ability, ``replicates`` curves refitted to test items resampled with replacement (paired across
    volumes); empty lists without per-item results."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[GrowthCurve]] = {}
    for name, p in points.items():
        if p.items is None or replicates <= 0:
            out[name] = []
            continue
        n = len(p.items[0])
        curves = []
        for _ in range(replicates):
            idx = rng.integers(0, n, n)
            scores = [100.0 * float(items[idx].mean()) for items in p.items]
            curves.append(fit_growth(p.volumes, scores, p.chance, initial=fits[name]))
        out[name] = curves
    return out


def _band(values: Sequence[float]) -> list[float] | None:
    return [float(np.percentile(values, BAND[0])), float(np.percentile(values, BAND[1]))] if len(values) else None


def _curve_band(curves: list[GrowthCurve], top: float) -> dict | None:
    """The band of the bootstrap curves on 40 volumes from 1 to ``top`` (log-spaced), for the figure."""
    if not curves:
        return None
    xs = np.geomspace(1.0, max(top, 2.0), 40)
    ys = np.stack([c(xs) for c in curves])
    lo, hi = np.percentile(ys, BAND, axis=0)
    return {"volumes": xs.tolist(), "low": lo.tolist(), "high": hi.tolist()}


def holdout_summary(grid: GridPoints) -> tuple[dict[str, dict | None], dict | None]:
    """Per ability the hold-out check, and the overall one: the fits without the largest run volume predict its
    ability scores, and their mean its overall score."""
    per: dict[str, dict | None] = {}
    for name, p in grid.abilities.items():
        h = holdout_check(p.volumes, p.scores, p.chance)
        per[name] = None if h is None else {**vars(h), "error": h.error}
    done = [h for h in per.values() if h is not None]
    if not done or len(done) != len(per):
        return per, None
    largest = grid.run_volumes[-1]
    predicted = float(np.mean([h["predicted"] for h in done]))
    overall = {
        "run_volume": largest,
        "mean_abs_error": float(np.mean([abs(h["error"]) for h in done])),
        "overall_measured": grid.overall[largest],
        "overall_predicted": predicted,
        "overall_error": predicted - grid.overall[largest],
    }
    return per, overall


def _prediction(
    fits: dict[str, GrowthCurve],
    boot: dict[str, list[GrowthCurve]],
    counts: dict[str, int],
    weights: dict[str, float] | None,
    replicates: int,
) -> dict:
    """The predicted overall of ``counts``, its band, and the bootstrap replicates' overall scores (``draws``,
    empty without per-item results)."""
    fitted = {a: float(fits[a](n)) for a, n in counts.items()}
    draws = []
    if any(boot.values()):
        draws = [
            weighted_mean({a: float(boot[a][b](n)) if boot[a] else fitted[a] for a, n in counts.items()}, weights)
            for b in range(replicates)
        ]
    return {"counts": counts, "overall": weighted_mean(fitted, weights), "overall_band": _band(draws), "draws": draws}


def decide(
    grid: GridPoints,
    total: int,
    *,
    available: dict[str, int] | None = None,
    weights: dict[str, float] | None = None,
    replicates: int = 100,
    seed: int = 0,
) -> dict:
    """The contents of ``budget.json`` for ``grid`` (see the module docstring)."""
    names = list(grid.abilities)
    if available is not None:
        missing = [a for a in names if a not in available]
        if missing:
            raise BudgetError(f"--data: no curated/1000 file for the abilities {missing} of the grid")
    fits = {a: fit_growth(p.volumes, p.scores, p.chance) for a, p in grid.abilities.items()}
    volumes = {a: p.volumes for a, p in grid.abilities.items()}
    caps = extrapolation_caps(volumes, fits, total, available)
    floors = extrapolation_floors(volumes, total, available)
    limits = {a: min((available or {}).get(a, total), total if caps[a] is None else caps[a]) for a in names}
    boot = bootstrap_curves(grid.abilities, fits, replicates, seed)
    per_holdout, overall_holdout = holdout_summary(grid)
    opt = _prediction(fits, boot, allocate(fits, total, limits, weights, floors), weights, replicates)
    uni = _prediction(fits, boot, uniform_counts(names, total, available), weights, replicates)
    decision = guard(
        opt["overall"],
        uni["overall"],
        [o - u for o, u in zip(opt.pop("draws"), uni.pop("draws"))],
        None if overall_holdout is None else overall_holdout["overall_error"],
        BAND,
    )
    chosen = opt if decision.chosen == "optimised" else uni
    counts = chosen["counts"]
    abilities = {
        a: {
            "chance": p.chance,
            "points": [[v, s] for v, s in zip(p.volumes, p.scores)],
            "fit": fits[a].to_dict(),
            "cap": caps[a],
            "floor": floors[a],
            "count": counts[a],
            "predicted": float(fits[a](counts[a])),
            "band": _band([float(c(counts[a])) for c in boot[a]]),
            "holdout": per_holdout[a],
            "curve_band": _curve_band(boot[a], max(max(p.volumes), total)),
        }
        for a, p in grid.abilities.items()
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "total": total,
        "model_size": grid.size,
        "source": grid.source,
        "suite": grid.stem,
        "curve": CURVE,
        "bootstrap": replicates if any(boot.values()) else 0,
        "band": list(BAND),
        "weights": {a: float((weights or {}).get(a, 1.0)) for a in names},
        "chosen": decision.chosen,
        "decision": decision.reason,
        "counts": counts,
        "available": available,
        "predicted": {"overall": chosen["overall"], "overall_band": chosen["overall_band"]},
        "optimised": opt,
        "uniform": uni,
        "gain": {"predicted": decision.gain, "band": decision.gain_band},
        "abilities": abilities,
        "holdout": overall_holdout,
    }


def budget_table(result: dict) -> str:
    """``budget.md``: one row per ability, then the overall, the two allocations' predictions and the decision."""
    header = "| ability | chance | measured (records: score) | hold-out pred / meas | cap | count | predicted [band] |"
    lines = [
        f"Budget of {result['total']} records for {result['model_size']} ({result['source']} curves, "
        f"{result['suite']}; {result['curve']})",
        "",
        header,
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for a, r in result["abilities"].items():
        pts = ", ".join(f"{v:g}: {s:.1f}" for v, s in r["points"])
        h = r["holdout"]
        hold = "" if h is None else f"{h['predicted']:.1f} / {h['measured']:.1f}"
        cap = "none" if r["cap"] is None else str(r["cap"])
        lines.append(
            f"| {a} | {r['chance']:.1f} | {pts} | {hold} | {cap} | {r['count']} | {r['predicted']:.1f}"
            f"{_band_text(r['band'])} |"
        )
    p = result["predicted"]
    h = result["holdout"]
    hold = "" if h is None else f"{h['overall_predicted']:.1f} / {h['overall_measured']:.1f}"
    overall = f"{p['overall']:.1f}{_band_text(p['overall_band'])}"
    lines += [f"| **overall** | | | {hold} | | {result['total']} | {overall} |", ""]
    for name in ("optimised", "uniform"):
        a = result[name]
        counts = ", ".join(f"{k} {n}" for k, n in a["counts"].items())
        lines.append(f"{name}: predicted overall {a['overall']:.1f}{_band_text(a['overall_band'])} ({counts})")
    g = result["gain"]
    lines.append(f"gain optimised - uniform: {g['predicted']:+.1f}{_band_text(g['band'], sign=True)}")
    lines.append(f"chosen: {result['chosen']} ({result['decision']})")
    if h is not None:
        lines.append(
            f"hold-out (fit without the run of {h['run_volume']} records, predict it): mean |error| per ability "
            f"{h['mean_abs_error']:.1f} points, overall error {h['overall_error']:+.1f}"
        )
    return "\n".join(lines) + "\n"


def _band_text(band: list[float] | None, sign: bool = False) -> str:
    if band is None:
        return ""
    f = "+.1f" if sign else ".1f"
    return f" [{band[0]:{f}}, {band[1]:{f}}]"


def budget(
    eval_dirs: Sequence[str | Path],
    total: int,
    out_dir: str | Path,
    *,
    size: str | None = None,
    source: str = "curated",
    weights: str | None = None,
    epoch: EpochChoice = "last",
    data_dir: str | Path | None = None,
    stem: str = "doit-test",
    replicates: int = 100,
    seed: int = 0,
) -> BudgetOutputs:
    """Fit, check, allocate and write (see the module docstring); ``data_dir`` (a DoIT dataset root) caps each
    ability at the records of its ``curated/1000`` file."""
    if total <= 0:
        raise BudgetError(f"--total must be positive, got {total}")
    grid = load_grid_points(eval_dirs, size=size, source=source, stem=stem, epoch=epoch)
    available = count_available(data_dir) if data_dir is not None else None
    parsed = parse_weights(weights, list(grid.abilities))
    result = decide(grid, total, available=available, weights=parsed, replicates=replicates, seed=seed)
    out = as_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "budget.json", out / "rule.json", out / "budget.md"]
    write_text_atomic(files[0], json.dumps(result, indent=1, allow_nan=False) + "\n")
    rule = {"total": total, "rule": "reconstruct", "counts": scaled_rule(list(grid.abilities), total, available)}
    write_text_atomic(files[1], json.dumps(rule, indent=1) + "\n")
    files[2].write_text(budget_table(result), encoding="utf-8")
    files += write_budget_figure(result, out / "budget")
    return BudgetOutputs(out, files, result)
