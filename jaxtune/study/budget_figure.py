"""``budget.png`` / ``budget.svg``: per ability, the measured points, the fitted growth curve and its bootstrap band,
and the count the budget chose (a vertical line, its predicted score a star; a count of 0 is written in the
title). Input: the decision (``budget.json``'s contents,
:mod:`jaxtune.study.budget`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from jaxtune.data.mixtures import DISPLAY_NAMES
from jaxtune.study.growth_fit import GrowthCurve


def draw_budget(result: dict) -> Figure:
    names = list(result["abilities"])
    ncols = min(5, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(3.0 * ncols, 2.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, name in zip(axes.flat, names):
        r = result["abilities"][name]
        fit = r["fit"]
        curve = GrowthCurve(fit["chance"], fit["upper"], fit["midpoint_log"], fit["scale"])
        top = max(max(v for v, _ in r["points"]), r["count"], 2)
        xs = np.geomspace(1.0, top * 1.5, 80)
        band = r.get("curve_band")
        if band:
            ax.fill_between(band["volumes"], band["low"], band["high"], color="C0", alpha=0.2, label="band")
        ax.plot(xs, curve(xs), color="C0", linewidth=1.3, label="fit")
        ax.plot(
            [v for v, _ in r["points"]], [s for _, s in r["points"]], "o", color="k", markersize=3, label="measured"
        )
        ax.axhline(r["chance"], color="grey", linestyle=":", linewidth=1.2, label="chance")
        if r["count"] > 0:
            ax.axvline(r["count"], color="C3", linestyle="--", linewidth=1.0)
            ax.plot([r["count"]], [r["predicted"]], "*", color="C3", markersize=9, label="chosen")
        ax.set_xscale("log", base=4)
        ax.set_title(f"{DISPLAY_NAMES.get(name, name)}: {r['count']}", fontsize=9)
        ax.set_ylim(-2, 102)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    for ax in axes[-1, :]:
        ax.set_xlabel("records of the ability")
    for ax in axes[:, 0]:
        ax.set_ylabel("score (%)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8)
    p = result["predicted"]
    fig.suptitle(
        f"budget of {result['total']} ({result['model_size']}, {result['source']} curves): "
        f"predicted overall {p['overall']:.1f}"
    )
    return fig


def write_budget_figure(result: dict, out_stem: Path) -> list[Path]:
    fig = draw_budget(result)
    paths = []
    for ext in ("png", "svg"):
        path = out_stem.parent / f"{out_stem.name}.{ext}"
        with path.open("wb") as f:  # a file object: the output may be on gs://
            fig.savefig(f, format=ext, dpi=110)
        paths.append(path)
    return paths
