"""``jaxtune report``: the study's figures and growth-pace tables from many evaluation summaries.

Input: evaluation summaries (``*.summary.json``, schema in :mod:`jaxtune.results`), each carrying the run's model
size, data source, data volume and epoch. Output, per suite/variant/scorer mode:

- ``{stem}.png`` and ``{stem}.svg``: one panel per ability plus the overall mean, score against training examples
  on a log-4 axis, one colour per model size, curated solid, synthetic dashed (other sources dash-dotted), the
  chance level dotted;
- ``growth_pace.csv`` / ``.md``: per ability and curve, the least-squares slope of score against log4(volume) (score
  points gained per 4x data) and the smallest volume whose score reaches 90% of the curve's best;
- ``{stem}.scores.md`` / ``.csv``: the per-ability table, one row per ability (and the overall mean), one column per
  curve point (model size, source, volume), the chance level beside it;
- ``{stem}.constructions.md`` / ``.csv``: the study's data-construction table, when a run of ``reconstruct``,
  ``maximum`` or ``mix-N`` is among the summaries: one column per model size and construction (``baseline`` =
  curated at 10,000 examples, ``reconstruct``, ``maximum``, ``mix-N``), one row per ability, the overall mean and
  the number of training examples. These constructions are single runs, not volume series, so they are tabled here
  rather than drawn as curves;
- ``best_epochs.csv``: per run (size, source, volume, name; every summary read), the epoch with the best overall
  score beside the last one;
- ``report.md``: an index of the above, and the summaries that could not be placed on a curve;
- a suite's own figure, when its suite registers one (:class:`jaxtune.eval.suites.registry.ReportHooks`): for BELLE
  summaries the study's figure ``{stem}.study.png`` / ``.svg`` / ``.csv``, per use case one bar per data volume
  beside the paper's Figure 1 (:mod:`jaxtune.eval.suites.belle_figure`).

Abilities are titled as their suites register them (DoIT: the study's names), every group alike.

Curves use one epoch per run: the last one evaluated by default, ``epoch=N`` for a fixed epoch (the study evaluated
epoch 10), or ``"best"`` (chosen on the same data it reports, so optimistic). Runs sharing size, source and volume
(e.g. seeds) are averaged.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib.figure import Figure

from jaxtune.errors import JaxtuneError
from jaxtune.eval.suites.registry import load_suites
from jaxtune.paths import as_path
from jaxtune.results import SuiteSummary, find_summaries, read_summary, summary_stem
from jaxtune.study.budget_report import BUDGET_SOURCES, write_budget_comparison

log = logging.getLogger(__name__)

EpochChoice = int | Literal["last", "best"]

CONSTRUCTION_SOURCES = ("reconstruct", "maximum", "mix")
"""Data sources that are one construction each (their volume comes from the data): the construction table, not
curves."""
BASELINE = ("curated", 10000)
"""The study's ``baseline`` construction: curated data at 10,000 examples."""
LINESTYLES = {"curated": "-", "synthetic": "--"}
OTHER_LINESTYLE = "-."


class ReportError(JaxtuneError, ValueError):
    """Inputs that cannot be reported (no summaries, or nothing placeable on a curve)."""


@functools.cache
def _titles() -> dict[str, str]:
    titles: dict[str, str] = {}
    for suite in load_suites().values():
        titles.update(suite.report.titles)
    titles["overall"] = "Overall"
    return titles


def _title(name: str) -> str:
    """An ability's title in figures and tables: as its suite registers it
    (:attr:`jaxtune.eval.suites.registry.ReportHooks.titles`), else its name."""
    return _titles().get(name, name)


@dataclass(frozen=True)
class Point:
    volume: int
    scores: dict[str, float]
    chances: dict[str, float | None]


def _group_key(s: SuiteSummary) -> tuple[str, str, str]:
    return (s.suite, s.variant, s.scorer_mode)


def _stem(key: tuple[str, str, str]) -> str:
    return summary_stem(*key)


def _run_key(s: SuiteSummary) -> tuple:
    r = s.run
    return (*_group_key(s), r.model_size, r.data_source, r.data_volume, r.run_name)


def _size_order(size: str | None) -> tuple[float, str]:
    m = re.match(r"(\d+(?:\.\d+)?)", size or "")
    return (float(m.group(1)) if m else math.inf, size or "")


def _scores(s: SuiteSummary) -> dict[str, float]:
    out = {a.name: a.score for a in s.abilities}
    out["overall"] = s.overall
    return out


def choose_epochs(summaries: Sequence[SuiteSummary], epoch: EpochChoice = "last") -> list[SuiteSummary]:
    """One summary per run: its last epoch, the given epoch (runs without it are left out), or its best overall."""
    by_run: dict[tuple, list[SuiteSummary]] = defaultdict(list)
    for s in summaries:
        by_run[_run_key(s)].append(s)
    chosen = []
    for runs in by_run.values():
        if epoch == "last":
            chosen.append(max(runs, key=lambda s: -1 if s.run.epoch is None else s.run.epoch))
        elif epoch == "best":
            chosen.append(max(runs, key=lambda s: s.overall))
        else:
            match = [s for s in runs if s.run.epoch == epoch]
            if match:
                chosen.append(match[0])
    return chosen


def curves(summaries: Sequence[SuiteSummary]) -> dict[tuple[str | None, str | None], list[Point]]:
    """(model size, source) -> points sorted by volume; runs at the same volume are averaged."""
    grouped: dict[tuple[str | None, str | None], dict[int, list[SuiteSummary]]] = defaultdict(lambda: defaultdict(list))
    for s in summaries:
        assert s.run.data_volume is not None
        grouped[(s.run.model_size, s.run.data_source)][s.run.data_volume].append(s)
    out = {}
    for key, by_volume in grouped.items():
        points = []
        for volume in sorted(by_volume):
            runs = by_volume[volume]
            names = set().union(*(_scores(s) for s in runs))
            scores = {n: float(np.mean([_scores(s)[n] for s in runs if n in _scores(s)])) for n in names}
            chances: dict[str, float | None] = {a.name: a.chance for s in runs for a in s.abilities}
            chances["overall"] = runs[0].overall_chance
            points.append(Point(volume, scores, chances))
        out[key] = points
    return dict(sorted(out.items(), key=lambda kv: (_size_order(kv[0][0]), str(kv[0][1]))))


def score_table(summaries: Sequence[SuiteSummary]) -> tuple[str, list[list[str]]]:
    """The per-ability table of one suite: rows are abilities (then ``overall``), columns the curve points ordered by
    model size, source and volume, then the chance level. Returns (Markdown text, CSV rows with a header row)."""
    columns: list[tuple[str, Point]] = []
    for (size, source), points in curves(summaries).items():
        for p in points:
            label = " ".join(x for x in (size, source, _volume_label(p.volume)) if x)
            columns.append((label, p))
    abilities: list[str] = []
    for s in summaries:  # the suites' own order (the study's ability order), not a set's
        abilities += [a.name for a in s.abilities if a.name not in abilities]
    rows = abilities + ["overall"]
    header = ["ability"] + [label for label, _ in columns] + ["chance"]
    body = []
    for name in rows:
        chance = next((p.chances.get(name) for _, p in columns if p.chances.get(name) is not None), None)
        body.append([_title(name)] + [_fmt(p.scores.get(name), 1) for _, p in columns] + [_fmt(chance, 1)])
    md = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    md += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(md) + "\n", [header] + body


def construction_name(s: SuiteSummary) -> str | None:
    """``baseline``, ``reconstruct``, ``maximum`` or ``mix-N`` (from the run name) for a construction's run."""
    r = s.run
    if (r.data_source, r.data_volume) == BASELINE:
        return "baseline"
    if r.data_source == "mix":
        return r.run_name if r.run_name and re.fullmatch(r"mix-\d+", r.run_name) else f"mix ({r.data_volume:,})"
    return r.data_source if r.data_source in CONSTRUCTION_SOURCES else None


def construction_table(summaries: Sequence[SuiteSummary]) -> tuple[str, list[list[str]]] | None:
    """The data-construction table of one suite (see the module docstring); None when no summary is a
    ``reconstruct``, ``maximum`` or ``mix-N`` run. Runs sharing size and construction are averaged."""
    if not any(s.run.data_source in CONSTRUCTION_SOURCES for s in summaries):
        return None
    cells: dict[tuple[str | None, str], list[SuiteSummary]] = defaultdict(list)
    for s in summaries:
        name = construction_name(s)
        if name is not None:
            cells[(s.run.model_size, name)].append(s)
    rank = {"baseline": 0, "reconstruct": 1, "maximum": 2}
    keys = sorted(cells, key=lambda k: (_size_order(k[0]), rank.get(k[1], 3), cells[k][0].run.data_volume or 0))
    abilities: list[str] = []
    for s in summaries:
        abilities += [a.name for a in s.abilities if a.name not in abilities]
    header = ["ability"] + [" ".join(x for x in k if x) for k in keys]
    body = [["training examples"] + [f"{cells[k][0].run.data_volume or 0:,}" for k in keys]]
    for name in [*abilities, "overall"]:
        row = [_title(name)]
        for k in keys:
            values = [_scores(s)[name] for s in cells[k] if name in _scores(s)]
            row.append(_fmt(float(np.mean(values)), 1) if values else "")
        body.append(row)
    md = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    md += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(md) + "\n", [header] + body


def _volume_label(v: int) -> str:
    if v >= 10000:
        return f"{v / 1000:.0f}k" if v % 1000 == 0 or v >= 20000 else f"{v:,}"
    return f"{v:,}"


def draw_group(summaries: Sequence[SuiteSummary], title: str) -> Figure:
    """One figure for the summaries of one suite/variant/mode: a panel per ability and one for the overall mean."""
    data = curves(summaries)
    abilities: list[str] = []
    for s in summaries:
        abilities += [a.name for a in s.abilities if a.name not in abilities]
    panels = [*abilities, "overall"]
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(3.4 * ncols, 2.9 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    sizes = sorted({k[0] for k in data}, key=_size_order)
    colours = {size: f"C{i % 10}" for i, size in enumerate(sizes)}
    volumes = sorted({p.volume for pts in data.values() for p in pts})
    unit = summaries[0].unit
    for ax, name in zip(axes.flat, panels):
        chance = None
        for (size, source), pts in data.items():
            xs = [p.volume for p in pts if name in p.scores]
            ys = [p.scores[name] for p in pts if name in p.scores]
            if not xs:
                continue
            ax.plot(
                xs,
                ys,
                color=colours[size],
                linestyle=LINESTYLES.get(source or "", OTHER_LINESTYLE),
                marker="o",
                markersize=3,
                linewidth=1.3,
                label=f"{size or '?'} {source or '?'}",
            )
            chance = (
                chance
                if chance is not None
                else next((p.chances.get(name) for p in pts if p.chances.get(name) is not None), None)
            )
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle=":", linewidth=1.5, label="chance")
        ax.set_xscale("log", base=4)
        ax.set_xticks(volumes, [_volume_label(v) for v in volumes], fontsize=7)
        ax.minorticks_off()
        ax.set_title(_title(name), fontsize=10)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("score (%)" if unit == "percent" else "score")
    for ax in axes[-1, :]:
        ax.set_xlabel("training examples")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(6, len(labels)), fontsize=8)
    fig.suptitle(f"{title} ({summaries[0].scorer_mode} scorer)")
    return fig


def plot_group(summaries: Sequence[SuiteSummary], out_stem: Path) -> list[Path]:
    """Draw and save one figure as ``{out_stem}.png`` and ``{out_stem}.svg``."""
    fig = draw_group(summaries, out_stem.name)
    paths = []
    for ext in ("png", "svg"):
        path = out_stem.parent / f"{out_stem.name}.{ext}"
        with path.open("wb") as f:  # a file object: the report may go to gs://
            fig.savefig(f, format=ext, dpi=130)
        paths.append(path)
    return paths


@dataclass(frozen=True)
class Pace:
    group: str
    model_size: str | None
    source: str | None
    ability: str
    n_points: int
    slope_per_log4: float | None
    """Score gained per 4x data (least squares on log4 volume); None with fewer than two volumes."""
    volume_at_90: int | None
    """Smallest volume whose score reaches 90% of the best score of the curve (None when the best is <= 0)."""
    best_score: float
    best_volume: int


def growth_pace(summaries: Sequence[SuiteSummary], group: str) -> list[Pace]:
    rows = []
    for (size, source), pts in curves(summaries).items():
        names = sorted({n for p in pts for n in p.scores}, key=lambda n: (n == "overall", n))
        for name in names:
            xy = [(p.volume, p.scores[name]) for p in pts if name in p.scores and math.isfinite(p.scores[name])]
            if not xy:
                continue
            xs = np.array([x for x, _ in xy], dtype=float)
            ys = np.array([y for _, y in xy], dtype=float)
            slope = float(np.polyfit(np.log(xs) / np.log(4), ys, 1)[0]) if len(set(xs)) >= 2 else None
            best_i = int(np.argmax(ys))
            best = float(ys[best_i])
            reach = next((int(x) for x, y in xy if y >= 0.9 * best), None) if best > 0 else None
            rows.append(Pace(group, size, source, name, len(xy), slope, reach, best, int(xs[best_i])))
    return rows


def _fmt(v: float | int | None, digits: int = 2) -> str:
    if v is None:
        return ""
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    buffer = io.StringIO(newline="")
    w = csv.writer(buffer)
    w.writerow(header)
    w.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def _read(files: Sequence[Path]) -> tuple[list[SuiteSummary], list[SuiteSummary], list[str]]:
    """(every summary, those placeable on a curve, the unplaced ones' reasons)."""
    summaries, unplaced, everything = [], [], []
    for f in files:
        s = read_summary(f)
        everything.append(s)
        if s.run.data_volume is None or s.run.data_volume <= 0:
            unplaced.append(f"{f}: no positive run.data_volume")
            log.warning("not plotting %s: it has no positive run.data_volume", f)
            continue
        summaries.append(s)
    if not summaries:
        raise ReportError("no summary carries a data volume; nothing to plot:\n" + "\n".join(unplaced))
    return everything, summaries, unplaced


def _write_group(out: Path, key: tuple[str, str, str], chosen: list[SuiteSummary]) -> tuple[list[Path], list[Pace]]:
    """The files of one suite/variant/mode group (its chosen epochs): construction table, curves, the suite's own
    figure, score table; and its growth-pace rows."""
    written: list[Path] = []
    stem = _stem(key)
    constructions = construction_table(chosen)
    if constructions is not None:
        (out / f"{stem}.constructions.md").write_text(constructions[0], encoding="utf-8")
        written.append(out / f"{stem}.constructions.md")
        written.append(_write_csv(out / f"{stem}.constructions.csv", constructions[1][0], constructions[1][1:]))
    written += write_budget_comparison(chosen, out / stem)
    chosen = [s for s in chosen if s.run.data_source not in (*CONSTRUCTION_SOURCES, *BUDGET_SOURCES)]
    if not chosen:
        return written, []
    written += plot_group(chosen, out / stem)
    suite = load_suites().get(key[0])
    if suite is not None and suite.report.figure is not None:
        written += suite.report.figure(chosen, out / stem)
    pace = growth_pace(chosen, stem)
    table_md, table_csv = score_table(chosen)
    (out / f"{stem}.scores.md").write_text(table_md, encoding="utf-8")
    written.append(out / f"{stem}.scores.md")
    written.append(_write_csv(out / f"{stem}.scores.csv", table_csv[0], table_csv[1:]))
    return written, pace


def _write_pace(out: Path, pace_rows: Sequence[Pace]) -> list[Path]:
    """``growth_pace.csv`` and ``growth_pace.md``."""
    header = [
        "group",
        "model_size",
        "source",
        "ability",
        "points",
        "slope_per_4x_data",
        "volume_at_90pct_of_best",
        "best_score",
        "best_volume",
    ]
    table = [
        [
            p.group,
            p.model_size or "",
            p.source or "",
            p.ability,
            p.n_points,
            _fmt(p.slope_per_log4),
            _fmt(p.volume_at_90),
            _fmt(p.best_score),
            p.best_volume,
        ]
        for p in pace_rows
    ]
    csv_path = _write_csv(out / "growth_pace.csv", header, table)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(str(c) for c in row) + " |" for row in table]
    (out / "growth_pace.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return [csv_path, out / "growth_pace.md"]


def _write_best_epochs(out: Path, everything: Sequence[SuiteSummary]) -> Path:
    """``best_epochs.csv``: per run, its best epoch beside its last."""
    best_rows = []
    by_run: dict[tuple, list[SuiteSummary]] = defaultdict(list)
    for s in everything:
        by_run[_run_key(s)].append(s)
    for key in sorted(by_run, key=lambda k: tuple(str(x) for x in k)):
        runs = sorted(by_run[key], key=lambda s: -1 if s.run.epoch is None else s.run.epoch)
        best = max(runs, key=lambda s: s.overall)
        last = runs[-1]
        best_rows.append(
            [
                _stem(key[:3]),
                key[3] or "",
                key[4] or "",
                _fmt(key[5]),
                key[6] or "",
                _fmt(best.run.epoch),
                _fmt(best.overall),
                _fmt(last.run.epoch),
                _fmt(last.overall),
                len(runs),
            ]
        )
    header = [
        "group",
        "model_size",
        "source",
        "data_volume",
        "run_name",
        "best_epoch",
        "best_overall",
        "last_epoch",
        "last_overall",
        "epochs_evaluated",
    ]
    return _write_csv(out / "best_epochs.csv", header, best_rows)


def report(run_paths: Sequence[str | Path], out_dir: str | Path, epoch: EpochChoice = "last") -> list[Path]:
    """Read every summary under ``run_paths`` (files or directories), draw the figures and write the tables into
    ``out_dir``; returns the written paths."""
    files = find_summaries(run_paths)
    if not files:
        raise ReportError(f"no *.summary.json under {[str(p) for p in run_paths]}")
    out = as_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    everything, summaries, unplaced = _read(files)
    written: list[Path] = []
    pace_rows: list[Pace] = []
    groups: dict[tuple[str, str, str], list[SuiteSummary]] = defaultdict(list)
    for s in summaries:
        groups[_group_key(s)].append(s)
    for key in sorted(groups):
        chosen = choose_epochs(groups[key], epoch)
        if not chosen:
            unplaced.append(f"{_stem(key)}: no run has epoch {epoch}")
            continue
        group_files, pace = _write_group(out, key, chosen)
        written += group_files
        pace_rows += pace
    written += _write_pace(out, pace_rows)
    written.append(_write_best_epochs(out, everything))

    index = [
        "# jaxtune report",
        "",
        f"{len(files)} summaries read, {len(summaries)} placed on curves (epoch choice: {epoch}).",
        "",
        "## Files",
        "",
    ]
    index += [f"- {p.name}" for p in written]
    if unplaced:
        index += ["", "## Not plotted", ""] + [f"- {u}" for u in unplaced]
    written.append(out / "report.md")
    written[-1].write_text("\n".join(index) + "\n", encoding="utf-8")
    return written
