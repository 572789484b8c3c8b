"""The evaluation result schema (one place): per-suite JSON summaries, per-item JSON Lines, printed tables.

A run directory's evaluation writes, per suite, ``{suite}-{variant}.summary.json`` (a :class:`SuiteSummary`) and
``{suite}-{variant}.items.jsonl`` (one object per item: prompt, reply, parsed answer, correctness...).
``jaxtune report`` reads summaries only; each carries a :class:`RunInfo` saying which training run (model size,
data source and volume, epoch) it scores.

Summary JSON (``schema_version`` 1)::

    {"schema_version": 1, "suite": "doit", "variant": "test", "scorer_mode": "study", "unit": "percent",
     "run": {"run_name": ..., "model_size": "7b", "data_source": "curated", "data_volume": 160, "epoch": 10,
             "step": ..., "checkpoint": ..., "mesh": {"data": 2, "fsdp": 2, "tensor": 2}, "device_count": 8,
             "process_count": 2},
     "abilities": [{"name": "biology", "n": 100, "correct": 41, "score": 41.0, "chance": 25.0, "details": {}}, ...],
     "overall": 37.2, "overall_chance": 21.0, "details": {...}, "created": "2025-01-01T00:00:00+00:00"}

``score`` is ``100 * correct / n`` in unit ``percent`` (judge scores: mean in [0, 1], unit ``fraction``);
``overall`` is the plain mean of the ability scores; ``chance`` is the chance level in the same unit, or null.
``run.mesh`` (axis sizes), ``run.device_count`` and ``run.process_count`` say where the evaluation ran; summaries
written before they were recorded lack them and read back with null.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jaxtune.errors import JaxtuneError
from jaxtune.paths import as_path, canonical_path, files_under, is_remote, write_text_atomic

SCHEMA_VERSION = 1
SUMMARY_SUFFIX = ".summary.json"
ITEMS_SUFFIX = ".items.jsonl"

Unit = Literal["percent", "fraction"]


class ResultsError(JaxtuneError, ValueError):
    """A summary file is missing a field or holds a value of the wrong type; the message names file and field."""


@dataclass
class RunInfo:
    """Which training run and checkpoint an evaluation scores (the report groups and plots by these)."""

    run_name: str | None = None
    model_size: str | None = None
    """Model size label, e.g. ``7b``, ``13b``, ``33b`` (one curve per size in the report)."""
    data_source: str | None = None
    """``curated`` (solid lines), ``synthetic`` (dashed), ``mix``, ``maximum``, ``reconstruct``, or any label."""
    data_volume: int | None = None
    """Number of training examples (the report's x axis)."""
    epoch: int | None = None
    step: int | None = None
    checkpoint: str | None = None
    mesh: dict[str, int] | None = None
    """Axis sizes of the device mesh the evaluation ran on (``{"data": 2, "fsdp": 2, "tensor": 2}``); None when it
    ran on one device without a mesh, or for summaries written before it was recorded."""
    device_count: int | None = None
    """Devices the model was spread over."""
    process_count: int | None = None
    """Processes (hosts) the evaluation ran on."""


@dataclass
class AbilityScore:
    """The score of one ability (DoIT), subject (C-Eval, CMMLU), task (AGIEval) or class (BELLE)."""

    name: str
    n: int
    """Items scored."""
    correct: float
    """Correct items (judge suites: the sum of item scores)."""
    score: float
    """100 * correct / n (unit percent) or correct / n (unit fraction)."""
    chance: float | None = None
    """Expected score of random guessing, same unit, or None when undefined."""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class SuiteSummary:
    """One suite's result on one checkpoint."""

    suite: str
    variant: str
    """Split or setting, e.g. ``test``, ``valid``, ``5-shot``, ``zero-shot``."""
    scorer_mode: str
    """``study`` (the original scorer, quirks included) or ``corrected``."""
    unit: Unit
    run: RunInfo
    abilities: list[AbilityScore]
    overall: float
    """Plain mean of the ability scores."""
    overall_chance: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    """Suite-specific extras: micro average, category means, judge identity, parse-failure rate...; ``notes`` (a list
    of strings), when present, is printed under the table."""
    schema_version: int = SCHEMA_VERSION
    created: str = ""

    @property
    def stem(self) -> str:
        """File name stem: ``{suite}-{variant}``, plus ``-corrected`` for the corrected scorer."""
        return summary_stem(self.suite, self.variant, self.scorer_mode)

    def ability(self, name: str) -> AbilityScore:
        for a in self.abilities:
            if a.name == name:
                return a
        names = [a.name for a in self.abilities]
        raise KeyError(f"{self.suite}-{self.variant} has no ability {name!r}; it has {names}")


def summary_stem(suite: str, variant: str, scorer_mode: str) -> str:
    """``{suite}-{variant}``, with ``-{scorer_mode}`` appended unless it is a suite's only scorer (``study`` for the
    benchmark suites, ``judge`` for BELLE)."""
    stem = f"{suite}-{variant}"
    return stem if scorer_mode in ("study", "judge") else f"{stem}-{scorer_mode}"


@dataclass
class SuiteResult:
    """A summary with its per-item records, as a suite returns them."""

    summary: SuiteSummary
    items: list[dict[str, Any]]


# --------------------------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------------------------


def ability_score(
    name: str, correct: Sequence[float], chance: Sequence[float] | None = None, unit: Unit = "percent", **details: Any
) -> AbilityScore:
    """Score one ability from per-item correctness (1/0 or a judge score) and per-item chance levels (0..1)."""
    n = len(correct)
    if n == 0:
        raise ValueError(f"ability {name!r} has no scored items")
    scale = 100.0 if unit == "percent" else 1.0
    total = float(sum(correct))
    chance_level = None if chance is None else scale * float(sum(chance)) / n
    return AbilityScore(name, n, total, scale * total / n, chance_level, dict(details))


def make_summary(
    suite: str,
    variant: str,
    scorer_mode: str,
    abilities: list[AbilityScore],
    run: RunInfo | None = None,
    unit: Unit = "percent",
    **details: Any,
) -> SuiteSummary:
    """A summary whose overall (and overall chance) is the plain mean over ``abilities``."""
    if not abilities:
        raise ValueError(f"{suite}-{variant}: no abilities scored")
    overall = sum(a.score for a in abilities) / len(abilities)
    chances = [a.chance for a in abilities]
    overall_chance = None if any(c is None for c in chances) else sum(chances) / len(chances)  # type: ignore[arg-type]
    return SuiteSummary(
        suite=suite,
        variant=variant,
        scorer_mode=scorer_mode,
        unit=unit,
        run=run or RunInfo(),
        abilities=abilities,
        overall=overall,
        overall_chance=overall_chance,
        details=dict(details),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


_SELECTION = re.compile(r"^(curated|synthetic|mix)-(\d+)$")


def parse_selection(selection: str) -> tuple[str, int | None]:
    """``curated-160`` -> ("curated", 160); ``synthetic-40960`` -> ("synthetic", 40960). For ``mix-N``, ``maximum``
    and ``reconstruct`` the volume depends on the data files, so it is None (take it from the data manifest)."""
    m = _SELECTION.match(selection)
    if m is None:
        return selection, None
    source, n = m.group(1), int(m.group(2))
    return source, (None if source == "mix" else n)


# --------------------------------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------------------------------


def summary_to_dict(summary: SuiteSummary) -> dict[str, Any]:
    return dataclasses.asdict(summary)


def _json_safe(value: Any) -> Any:
    """NaN and infinities become None: summaries must be strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [_json_safe(v) for v in items]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _json_safe(value.item())
    return value


def _field(d: Mapping[str, Any], key: str, types: tuple[type, ...], where: str, optional: bool = False) -> Any:
    if key not in d:
        if optional:
            return None
        raise ResultsError(f"{where}: missing field '{key}'")
    value = d[key]
    if value is None and optional:
        return None
    if isinstance(value, bool) and bool not in types:
        raise ResultsError(f"{where}: field '{key}' must be {'/'.join(t.__name__ for t in types)}, got {value!r}")
    if not isinstance(value, types):
        raise ResultsError(f"{where}: field '{key}' must be {'/'.join(t.__name__ for t in types)}, got {value!r}")
    return value


def _mesh_field(run_d: Mapping[str, Any], where: str) -> dict[str, int] | None:
    mesh = _field(run_d, "mesh", (dict,), where, optional=True)
    if mesh is not None:
        bad = {k: v for k, v in mesh.items() if isinstance(v, bool) or not isinstance(v, int)}
        if bad:
            raise ResultsError(f"{where}: field 'mesh' must map axis names to integer sizes, got {bad}")
    return mesh


def summary_from_dict(d: Mapping[str, Any], where: str = "summary") -> SuiteSummary:
    """Validate and build a summary; errors name ``where`` (a file) and the field."""
    if not isinstance(d, Mapping):
        raise ResultsError(f"{where}: expected a JSON object, got {type(d).__name__}")
    version = _field(d, "schema_version", (int,), where)
    if version != SCHEMA_VERSION:
        raise ResultsError(f"{where}: schema_version {version} is not supported (expected {SCHEMA_VERSION})")
    run_d = _field(d, "run", (dict,), where)
    run_where = f"{where}: run"
    run = RunInfo(
        run_name=_field(run_d, "run_name", (str,), run_where, optional=True),
        model_size=_field(run_d, "model_size", (str,), run_where, optional=True),
        data_source=_field(run_d, "data_source", (str,), run_where, optional=True),
        data_volume=_field(run_d, "data_volume", (int,), run_where, optional=True),
        epoch=_field(run_d, "epoch", (int,), run_where, optional=True),
        step=_field(run_d, "step", (int,), run_where, optional=True),
        checkpoint=_field(run_d, "checkpoint", (str,), run_where, optional=True),
        mesh=_mesh_field(run_d, run_where),
        device_count=_field(run_d, "device_count", (int,), run_where, optional=True),
        process_count=_field(run_d, "process_count", (int,), run_where, optional=True),
    )
    abilities = []
    for i, a in enumerate(_field(d, "abilities", (list,), where)):
        aw = f"{where}: abilities[{i}]"
        if not isinstance(a, dict):
            raise ResultsError(f"{aw}: expected an object")
        abilities.append(
            AbilityScore(
                name=_field(a, "name", (str,), aw),
                n=_field(a, "n", (int,), aw),
                correct=float(_field(a, "correct", (int, float), aw)),
                score=float(_field(a, "score", (int, float), aw)),
                chance=_field(a, "chance", (int, float), aw, optional=True),
                details=_field(a, "details", (dict,), aw, optional=True) or {},
            )
        )
    unit = _field(d, "unit", (str,), where)
    if unit not in ("percent", "fraction"):
        raise ResultsError(f"{where}: field 'unit' must be 'percent' or 'fraction', got {unit!r}")
    overall = _field(d, "overall", (int, float), where, optional=True)
    return SuiteSummary(
        suite=_field(d, "suite", (str,), where),
        variant=_field(d, "variant", (str,), where),
        scorer_mode=_field(d, "scorer_mode", (str,), where),
        unit=unit,
        run=run,
        abilities=abilities,
        overall=math.nan if overall is None else float(overall),
        overall_chance=_field(d, "overall_chance", (int, float), where, optional=True),
        details=_field(d, "details", (dict,), where, optional=True) or {},
        schema_version=version,
        created=_field(d, "created", (str,), where, optional=True) or "",
    )


def write_summary(path: str | Path, summary: SuiteSummary) -> Path:
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_json_safe(summary_to_dict(summary)), ensure_ascii=False, indent=1, allow_nan=False)
    write_text_atomic(path, text + "\n")  # a reader (the sweep, a resumed report) never sees half a summary
    return path


def read_summary(path: str | Path) -> SuiteSummary:
    """Read and validate one summary file."""
    path = as_path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None
    return summary_from_dict(d, str(path))


def write_items(path: str | Path, items: Iterable[Mapping[str, Any]]) -> Path:
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole or not at all: a temporary sibling renamed into place (an object store's upload is whole).
    target = path if is_remote(path) else path.parent / f".{path.name}.partial"
    with target.open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(_json_safe(item), ensure_ascii=False, allow_nan=False) + "\n")
    if target != path:
        os.replace(os.fspath(target), os.fspath(path))
    return path


def write_result(out_dir: str | Path, result: SuiteResult) -> tuple[Path, Path]:
    """Write ``{stem}.items.jsonl``, then ``{stem}.summary.json`` (a summary means its items are complete) under
    ``out_dir``; returns both paths (summary, items)."""
    out = as_path(out_dir)
    stem = result.summary.stem
    items = write_items(out / f"{stem}{ITEMS_SUFFIX}", result.items)
    return write_summary(out / f"{stem}{SUMMARY_SUFFIX}", result.summary), items


def find_summaries(paths: Iterable[str | Path]) -> list[Path]:
    """Summary files named directly or found (recursively) under directories, sorted, without duplicates."""
    found: dict[Path, None] = {}
    for p in map(as_path, paths):
        if p.is_dir():
            for f in files_under(p, SUMMARY_SUFFIX):
                found[canonical_path(f)] = None
        elif p.is_file():
            found[canonical_path(p)] = None
        else:
            raise FileNotFoundError(f"{p} is neither a summary file nor a directory")
    return list(found)


# --------------------------------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------------------------------


def format_table(summary: SuiteSummary) -> str:
    """A fixed-width table: one row per ability (N, correct, score, chance) and the overall mean. A judged suite
    (its details hold ``judgements``) adds an ``unscored`` column and a line with the judge's failure rate."""
    digits = 2 if summary.unit == "percent" else 4
    judged = "judgements" in summary.details
    rows = [
        (a.name, str(a.n), f"{a.correct:g}", f"{a.score:.{digits}f}", _fmt(a.chance, digits))
        + ((str(a.details.get("n_unscored", 0)),) if judged else ())
        for a in summary.abilities
    ]
    rows.append(
        (
            "overall (mean)",
            str(sum(a.n for a in summary.abilities)),
            "",
            f"{summary.overall:.{digits}f}",
            _fmt(summary.overall_chance, digits),
        )
        + ((str(summary.details.get("unscored_answers", "")),) if judged else ())
    )
    header = ("ability", "N", "correct", "score", "chance") + (("unscored",) if judged else ())
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    title = f"{summary.suite} {summary.variant} [{summary.scorer_mode} scorer, {summary.unit}]"

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    sep = "-" * len(line(header))
    out = [title, line(header), sep, *map(line, rows[:-1]), sep, line(rows[-1])]
    out += [f"note: {n}" for n in summary.details.get("notes", ()) if isinstance(n, str)]
    if judged:
        out.append(_judge_line(summary.details))
    return "\n".join(out)


def _judge_line(details: Mapping[str, Any]) -> str:
    """``judge: 3 of 21 judgements unparseable (14.3%); 1 of 7 answers unscored; no class without a score``."""
    total, failed = details.get("judgements", 0), details.get("failed_judgements", 0)
    rate = details.get("parse_failure_rate", failed / total if total else 0.0)
    text = f"judge: {failed} of {total} judgements unparseable after re-asks ({rate:.1%})"
    if "unscored_answers" in details:
        text += f"; {details['unscored_answers']} of {details.get('answers', '?')} answers unscored"
    classes = details.get("unscored_classes") or []
    text += f"; classes with no score (left out of the means): {', '.join(classes)}" if classes else ""
    return text


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
