"""What ``jaxtune budget`` fits: per ability, the score at each volume of one model size and data source, and the
per-item correctness behind each score (for the bootstrap over test items).

Input: the evaluation folders of a grid (what ``jaxtune report`` reads): ``{stem}.summary.json`` (schema in
:mod:`jaxtune.results`) and, beside it, ``{stem}.items.jsonl`` (one object per test item, with ``ability`` and
``correct``). The x axis is the records of the ability trained on: a uniform curated run of N records holds N / A of
each of its A abilities (``curated-N``: N/10), so that is what a point's volume is. Runs sharing a volume (seeds)
are averaged, scores and per-item correctness alike.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jaxtune.errors import JaxtuneError
from jaxtune.paths import as_path
from jaxtune.results import ITEMS_SUFFIX, SUMMARY_SUFFIX, SuiteSummary, find_summaries, read_summary
from jaxtune.study.report import EpochChoice, choose_epochs


class BudgetError(JaxtuneError, ValueError):
    """Inputs ``jaxtune budget`` cannot use; the message names the file, flag or key."""


@dataclass
class AbilityPoints:
    """One ability's curve points (volumes = records of this ability, ascending)."""

    name: str
    chance: float
    volumes: list[float] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    items: list[np.ndarray] | None = None
    """Per volume, the mean correctness (0..1) of each test item in file order; None when an items file is missing."""


@dataclass
class GridPoints:
    """The points of one (model size, data source) of a grid."""

    size: str
    source: str
    stem: str
    abilities: dict[str, AbilityPoints]
    run_volumes: list[int]
    """The runs' total volumes (the summaries' ``data_volume``), ascending."""
    overall: dict[int, float]
    """Total volume -> measured overall score."""


def _items(summary_path: Path, stem: str) -> dict[str, np.ndarray] | None:
    path = summary_path.parent / f"{stem}{ITEMS_SUFFIX}"
    if not path.is_file():
        return None
    per: dict[str, list[float]] = defaultdict(list)
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            item = json.loads(line)
            if "ability" not in item or "correct" not in item:
                raise BudgetError(f"{path}:{number}: an item needs the keys 'ability' and 'correct'")
            per[item["ability"]].append(float(item["correct"]))
    return {a: np.asarray(v) for a, v in per.items()}


def _select(paths: Sequence[Path], stem: str) -> list[tuple[Path, SuiteSummary]]:
    out = []
    for p in paths:
        if p.name == f"{stem}{SUMMARY_SUFFIX}":
            out.append((p, read_summary(p)))
    return out


def load_grid_points(
    eval_dirs: Sequence[str | Path],
    *,
    size: str | None = None,
    source: str = "curated",
    stem: str = "doit-test",
    epoch: EpochChoice = "last",
) -> GridPoints:
    """The points of ``size`` (may be omitted when the grid has one size of ``source``) and ``source``."""
    files = find_summaries([as_path(d) for d in eval_dirs])
    found = _select(files, stem)
    if not found:
        raise BudgetError(f"no {stem}{SUMMARY_SUFFIX} under {[str(d) for d in eval_dirs]}")
    of_source = [(p, s) for p, s in found if s.run.data_source == source and (s.run.data_volume or 0) > 0]
    sizes = sorted({s.run.model_size or "" for _, s in of_source})
    if not sizes:
        have = sorted({str(s.run.data_source) for _, s in found})
        raise BudgetError(f"--source {source}: no {stem} summary of that data source (sources found: {have})")
    if size is None:
        if len(sizes) > 1:
            raise BudgetError(f"--size: the grid has several model sizes of source {source} ({sizes}); choose one")
        size = sizes[0]
    if size not in sizes:
        raise BudgetError(f"--size {size}: no {stem} summary of that size and source {source} (sizes: {sizes})")
    chosen_summaries = choose_epochs([s for _, s in of_source if (s.run.model_size or "") == size], epoch)
    if not chosen_summaries:
        raise BudgetError(f"--epoch {epoch}: no run of size {size} and source {source} has that epoch")
    path_of = {id(s): p for p, s in of_source}
    by_volume: dict[int, list[tuple[Path, SuiteSummary]]] = defaultdict(list)
    for s in chosen_summaries:
        by_volume[int(s.run.data_volume)].append((path_of[id(s)], s))
    return _points(size, source, stem, by_volume)


def _points(size: str, source: str, stem: str, by_volume: dict[int, list[tuple[Path, SuiteSummary]]]) -> GridPoints:
    abilities: dict[str, AbilityPoints] = {}
    with_items = True
    overall = {}
    for volume in sorted(by_volume):
        runs = by_volume[volume]
        overall[volume] = float(np.mean([s.overall for _, s in runs]))
        names = [a.name for a in runs[0][1].abilities]
        items = [_items(p, stem) for p, _ in runs]
        with_items = with_items and all(i is not None for i in items)
        for name in names:
            point = abilities.setdefault(name, AbilityPoints(name, float(runs[0][1].ability(name).chance or 0.0)))
            point.volumes.append(volume / len(names))
            point.scores.append(float(np.mean([s.ability(name).score for _, s in runs])))
            if with_items:
                arrays = [i[name] for i in items if name in i]  # type: ignore[index]
                if len(arrays) != len(runs) or len({len(a) for a in arrays}) != 1:
                    raise BudgetError(
                        f"{runs[0][0].parent}: the {stem} items of {name!r} differ in number between runs of "
                        f"volume {volume}; the bootstrap pairs test items across volumes"
                    )
                point.items = (point.items or []) + [np.mean(arrays, axis=0)]
    lengths = {a: {len(x) for x in p.items or []} for a, p in abilities.items()}
    if not with_items or any(len(v) > 1 for v in lengths.values()):
        for p in abilities.values():
            p.items = None
    return GridPoints(size, source, stem, abilities, sorted(by_volume), overall)


def count_available(data_dir: str | Path) -> dict[str, int]:
    """Records per ability in ``curated/1000`` of a DoIT dataset root (the pool ``budget:PATH`` draws from)."""
    from jaxtune.data.formats import ability_from_file_name, is_data_file_name, read_raw_entries
    from jaxtune.data.mixtures import find_doit_root

    folder = find_doit_root(data_dir) / "curated" / "1000"
    if not folder.is_dir():
        raise BudgetError(f"--data {data_dir}: no curated/1000 folder")
    return {
        ability_from_file_name(f): sum(1 for _ in read_raw_entries(f))
        for f in sorted(folder.iterdir())
        if f.is_file() and is_data_file_name(f)
    }
