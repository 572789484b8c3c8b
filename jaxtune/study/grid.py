"""``jaxtune sweep SWEEP.yaml``: the study's whole grid (model configs x data types), idempotent, with a dry run.

A sweep file is a YAML mapping with the single top-level key ``sweep`` (a run config never has one, which is how
``jaxtune sweep`` tells the two apart)::

    sweep:
      run_dir: runs/doit                 # cells under run_dir/<model>/<selection>; the report in run_dir/report
      models:                            # model label (the report's curve label) -> run config
        7b: ../doit-7b.yaml              # a path, relative to this file
        33b: {config: ../doit-33b.yaml, overrides: [mesh.fsdp=8]}
      data_types: all                    # or a list: curated-10, synthetic-40960, reconstruct, mix-2560, ...
                                         # (a count map such as biology:16,math:64 as one list item)
      eval_epochs: "10"                  # last | all | comma-separated epochs (or a YAML list of integers)
      suites: [doit]                     # eval.suites of every cell (default: each config's own)
      overrides: [train.epochs=15]       # key=value applied to every model's config (before its own)

The file is read as run configs are (:func:`jaxtune.config.loading.load_yaml`): a key repeated in one mapping is an
error naming the file and both lines, where plain YAML would silently keep the last one.

``data_types: all`` is the study's 19 (:data:`DATA_TYPES`, ``make_data.py``'s choices). ``baseline`` is
``curated-10000`` and ``mix-0`` is ``maximum``: such an alias shares its target's run (trained once). One cell is
one (model, selection) run under ``run_dir/<model>/<selection>``, trained and evaluated by
:func:`jaxtune.study.sweep.sweep`, so a cell whose chosen epochs all have summaries is skipped, and an interrupted one
resumes from its checkpoints and keeps the evaluations it already wrote. ``--dry-run`` lists each cell's state
(``done``, ``partial`` with the epochs evaluated and the last checkpoint, ``not started``) and its planned optimizer
steps (steps per epoch, measured by building the cell's data pipeline, x epochs).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaxtune.checkpoint.layout import COMMIT_MARKER, COMPLETED_FILE, train_checkpoint_dir
from jaxtune.config.loading import load_config, load_yaml
from jaxtune.config.schema import Config, ConfigError
from jaxtune.data.mixtures import STUDY_ALIASES, STUDY_DATA_TYPES
from jaxtune.errors import JaxtuneError
from jaxtune.paths import as_path

DATA_TYPES = STUDY_DATA_TYPES
"""The study's 19 data types (the choices of its ``make_data.py``), in its order."""

SWEEP_KEY = "sweep"
_SWEEP_KEYS = ("run_dir", "models", "data_types", "eval_epochs", "suites", "overrides")
_MODEL_KEYS = ("config", "overrides")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class GridError(ConfigError):
    """A sweep file that cannot be run; the message names the file and the key."""


@dataclass(frozen=True)
class GridModel:
    """One model of the grid: its label and the run config (with overrides) its cells train with."""

    label: str
    """Directory name and the report's model-size label (``7b``)."""
    config: Path
    """The run config, resolved against the sweep file's folder."""
    overrides: tuple[str, ...] = ()
    """key=value overrides of this model only (applied after the sweep's own)."""


@dataclass(frozen=True)
class GridSpec:
    """A parsed sweep file."""

    path: Path
    run_dir: Path
    """Root of the grid: ``run_dir/<model>/<selection>`` per cell, ``run_dir/report`` for the report."""
    models: tuple[GridModel, ...]
    data_types: tuple[str, ...]
    """As listed (aliases kept: they are shown, and share their target's run)."""
    eval_epochs: str = "last"
    """``last``, ``all`` or comma-separated epochs (:func:`jaxtune.study.sweep.epochs_to_evaluate`)."""
    suites: tuple[str, ...] | None = None
    """eval.suites of every cell; None keeps each config's own."""
    overrides: tuple[str, ...] = ()
    """key=value overrides applied to every model's config."""


@dataclass(frozen=True)
class Cell:
    """One (model, data type) of the grid."""

    model: GridModel
    data_type: str
    selection: str
    """The run's selection: the data type with ``baseline``/``mix-0`` resolved."""
    run_dir: Path

    @property
    def alias(self) -> bool:
        return self.selection != self.data_type


@dataclass
class CellState:
    """Where a cell stands on disk, and what it will run."""

    cell: Cell
    epochs: list[int]
    """Epochs to evaluate."""
    evaluated: list[int]
    """Of those, the ones with summaries on disk."""
    checkpoint_steps: list[int]
    """Complete checkpoints on disk."""
    completed: bool = False
    """Whether the run wrote RUN_DIR/completed.json (it finished training)."""
    steps_per_epoch: int | None = None
    total_epochs: int = 0
    plan_error: str = ""
    """Why the planned steps could not be measured (e.g. the data is missing)."""

    @property
    def state(self) -> str:
        if self.completed and self.epochs and self.evaluated == self.epochs:
            return "done"
        if self.evaluated or self.checkpoint_steps or (self.cell.run_dir / "manifest.jsonl").exists():
            return "partial"
        return "not started"

    def describe(self) -> str:
        state = self.state
        if state == "partial":
            done = ",".join(map(str, self.evaluated)) or "none"
            last = f"checkpoint at step {self.checkpoint_steps[-1]}" if self.checkpoint_steps else "no checkpoint"
            state = f"partial (epochs evaluated: {done} of {','.join(map(str, self.epochs))}; {last})"
        return state

    def planned(self) -> str:
        if self.steps_per_epoch is None:
            return f"unknown ({self.plan_error})" if self.plan_error else "not measured"
        return f"{self.steps_per_epoch} x {self.total_epochs} = {self.steps_per_epoch * self.total_epochs} steps"


# --------------------------------------------------------------------------------------------------------------------
# The sweep file
# --------------------------------------------------------------------------------------------------------------------


def is_sweep_file(path: str | Path) -> bool:
    """True when ``path`` is a YAML mapping whose only top-level key is ``sweep`` (a run config has no such key).
    Read by the config's strict loader: a file that is not valid YAML or repeats a key raises its ConfigError
    (naming the file, and both lines of a repeated key), since neither a sweep file nor a run config could use it."""
    p = Path(path)
    if not p.is_file():
        return False
    loaded = load_yaml(p)
    return isinstance(loaded, dict) and SWEEP_KEY in loaded


def _strings(value: Any, key: str, where: Path) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list) and all(isinstance(v, (str, int)) for v in value):
        return tuple(str(v) for v in value)
    raise GridError(f"{where}: {key}: expected a list of strings, got {value!r}")


def _model(label: Any, value: Any, where: Path) -> GridModel:
    key = f"sweep.models.{label}"
    if not isinstance(label, str) or not _LABEL.match(label):
        raise GridError(f"{where}: sweep.models: label {label!r} must be a name of letters, digits, '.', '_', '-'")
    if isinstance(value, str):
        value = {"config": value}
    if not isinstance(value, dict):
        raise GridError(f"{where}: {key}: expected a config path or a mapping with 'config' (and 'overrides')")
    unknown = sorted(set(value) - set(_MODEL_KEYS))
    if unknown:
        raise GridError(f"{where}: {key}: unknown key(s) {unknown}; expected {list(_MODEL_KEYS)}")
    if not isinstance(value.get("config"), str):
        raise GridError(f"{where}: {key}.config: expected the path of a run config")
    config = (where.parent / value["config"]).resolve()
    if not config.is_file():
        raise GridError(f"{where}: {key}.config: {config} does not exist (paths are relative to the sweep file)")
    return GridModel(label, config, _strings(value.get("overrides", []), f"{key}.overrides", where))


def _data_type(name: str, where: Path) -> str:
    from jaxtune.data.mixtures import parse_count_map

    if name in DATA_TYPES or re.fullmatch(r"(curated|synthetic|mix)-\d+", name) or name == "all":
        return name
    if ":" in name:
        parse_count_map(name)  # a count map (raises naming what is wrong)
        return name
    if name.startswith("belle"):
        from jaxtune.data.belle_volumes import parse_belle_selection

        parse_belle_selection(name)
        return name
    raise GridError(
        f"{where}: sweep.data_types: unknown data type {name!r}; the study's are {', '.join(DATA_TYPES)} "
        f"(or 'all' for those 19)"
    )


def load_grid(path: str | Path) -> GridSpec:
    """Parse and check a sweep file (schema in the module docstring); errors name the file and key."""
    where = Path(path)
    if not where.is_file():
        raise GridError(f"sweep file {where} does not exist")
    try:
        loaded = load_yaml(where)  # strict: a repeated key is an error naming both lines, not the last one kept
    except ConfigError as e:
        raise GridError(e.problems) from None
    if not isinstance(loaded, dict) or SWEEP_KEY not in loaded:
        raise GridError(f"{where}: a sweep file has the top-level key 'sweep'")
    extra = sorted(set(loaded) - {SWEEP_KEY})
    if extra:
        raise GridError(f"{where}: unknown top-level key(s) {extra} beside 'sweep'")
    body = loaded[SWEEP_KEY]
    if not isinstance(body, dict):
        raise GridError(f"{where}: sweep: expected a mapping with keys {list(_SWEEP_KEYS)}")
    unknown = sorted(set(body) - set(_SWEEP_KEYS))
    if unknown:
        raise GridError(f"{where}: sweep: unknown key(s) {unknown}; expected {list(_SWEEP_KEYS)}")
    for required in ("run_dir", "models", "data_types"):
        if required not in body:
            raise GridError(f"{where}: sweep.{required} is required")
    if not isinstance(body["run_dir"], str) or not body["run_dir"]:
        raise GridError(f"{where}: sweep.run_dir: expected a directory path")
    models = body["models"]
    if not isinstance(models, dict) or not models:
        raise GridError(f"{where}: sweep.models: expected a mapping of model label -> run config")
    data_types = _strings(body["data_types"], "sweep.data_types", where)
    if data_types == ("all",):
        data_types = DATA_TYPES
    data_types = tuple(_data_type(d, where) for d in data_types)
    if not data_types or "all" in data_types:
        raise GridError(f"{where}: sweep.data_types: 'all' stands alone; otherwise list the data types")
    dupes = sorted({d for d in data_types if data_types.count(d) > 1})
    if dupes:
        raise GridError(f"{where}: sweep.data_types: {dupes} listed twice")
    epochs = body.get("eval_epochs", "last")
    if isinstance(epochs, list) and all(isinstance(e, int) for e in epochs):
        epochs = ",".join(map(str, epochs))
    elif isinstance(epochs, int):
        epochs = str(epochs)
    if not isinstance(epochs, str):
        raise GridError(f"{where}: sweep.eval_epochs: expected 'last', 'all', or epochs like '5,10' or [5, 10]")
    suites = body.get("suites")
    return GridSpec(
        path=where,
        run_dir=as_path(body["run_dir"]),
        models=tuple(_model(label, value, where) for label, value in models.items()),
        data_types=data_types,
        eval_epochs=epochs,
        suites=None if suites is None else _strings(suites, "sweep.suites", where),
        overrides=_strings(body.get("overrides", []), "sweep.overrides", where),
    )


# --------------------------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------------------------


def cells(spec: GridSpec) -> list[Cell]:
    """Every (model, data type) in the file's order: models outer, data types inner."""
    return [
        Cell(m, d, STUDY_ALIASES.get(d, d), spec.run_dir / m.label / STUDY_ALIASES.get(d, d))
        for m in spec.models
        for d in spec.data_types
    ]


def model_config(spec: GridSpec, model: GridModel, extra: Sequence[str] = ()) -> Config:
    """The run config of a model's cells: its file, the sweep's overrides, its own, then ``extra``; run_dir is the
    model's folder of the grid (:func:`jaxtune.study.sweep.sweep` adds the selection)."""
    overrides = [*spec.overrides, *model.overrides, *extra, f"run_dir={spec.run_dir / model.label}"]
    if spec.suites is not None:
        overrides.append(f"eval.suites={','.join(spec.suites)}")
    try:
        cfg = load_config(model.config, overrides)
    except ConfigError as e:
        raise GridError(f"{spec.path}: sweep.models.{model.label}: {e}") from None
    return cfg


def _check_model_config(spec: GridSpec, model: GridModel, cfg: Config) -> list[int]:
    from jaxtune.study.sweep import epochs_to_evaluate

    where = f"{spec.path}: sweep.models.{model.label} ({model.config})"
    if cfg.train.max_steps is not None:
        raise GridError(
            f"{where}: train.max_steps is set; a grid trains whole epochs (the study evaluates epoch "
            f"checkpoints), unset it"
        )
    try:
        epochs = epochs_to_evaluate(spec.eval_epochs, cfg.train.epochs)
    except ConfigError as e:
        raise GridError(f"{spec.path}: sweep.eval_epochs: {e}") from None
    if epochs != [cfg.train.epochs] and not cfg.checkpoint.keep_epoch_checkpoints:
        raise GridError(
            f"{where}: sweep.eval_epochs {spec.eval_epochs!r} evaluates epochs before the last, so the "
            f"run must keep them: set checkpoint.keep_epoch_checkpoints: true"
        )
    return epochs


def _complete_steps(run_dir: Path) -> list[int]:
    directory = train_checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / COMMIT_MARKER).is_file())


def _evaluated(run_dir: Path, epochs: Sequence[int]) -> list[int]:
    from jaxtune.study.sweep import eval_dir_of, has_summaries

    return [e for e in epochs if has_summaries(eval_dir_of(run_dir, e))]


def _steps_per_epoch(cfg: Config, selection: str) -> int:
    """Global batches per epoch of ``selection`` under ``cfg``: the run's own data pipeline, built once."""
    from jaxtune.data.pipeline import build_train_pipeline

    data_cfg = dataclasses.replace(cfg.data, selection=selection)
    stream = build_train_pipeline(data_cfg, global_batch_size=cfg.train.global_batch_size, epochs=1)
    return stream.info.steps_per_epoch


def cell_states(
    spec: GridSpec,
    *,
    measure: bool = True,
    progress: Callable[[str], None] = lambda _: None,
) -> list[CellState]:
    """The state of every cell; ``measure`` also builds each run's data pipeline for its steps per epoch."""
    out: list[CellState] = []
    configs = {m.label: model_config(spec, m) for m in spec.models}
    epochs_of = {m.label: _check_model_config(spec, m, configs[m.label]) for m in spec.models}
    measured: dict[tuple, tuple[int | None, str]] = {}
    for cell in cells(spec):
        cfg = configs[cell.model.label]
        epochs = epochs_of[cell.model.label]
        state = CellState(
            cell,
            epochs,
            _evaluated(cell.run_dir, epochs),
            _complete_steps(cell.run_dir),
            completed=(as_path(cell.run_dir) / COMPLETED_FILE).is_file(),
            total_epochs=cfg.train.epochs,
        )
        if measure:
            # Models sharing data settings and batch share the measurement.
            key = (repr(cfg.data), cfg.train.global_batch_size, cell.selection)
            if key not in measured:
                progress(f"measuring {cell.model.label} {cell.selection}")
                try:
                    measured[key] = (_steps_per_epoch(cfg, cell.selection), "")
                except (JaxtuneError, FileNotFoundError, ValueError) as e:
                    measured[key] = (None, str(e).splitlines()[0])
            state.steps_per_epoch, state.plan_error = measured[key]
        out.append(state)
    return out


def format_states(spec: GridSpec, states: Sequence[CellState]) -> str:
    """The dry run's listing: one line per cell (state and planned steps), then the totals."""
    runs = {s.cell.run_dir for s in states}
    header = (
        f"grid {spec.path}: {len(spec.models)} models x {len(spec.data_types)} data types = {len(states)} cells "
        f"({len(runs)} runs), evaluating epochs {spec.eval_epochs}, suites "
        f"{','.join(spec.suites) if spec.suites else 'from each config'}; runs under {spec.run_dir}"
    )
    rows = [("model", "data type", "state", "planned steps")]
    for s in states:
        if s.cell.alias:
            rows.append((s.cell.model.label, s.cell.data_type, f"= {s.cell.selection} (same run)", ""))
        else:
            rows.append((s.cell.model.label, s.cell.data_type, s.describe(), s.planned()))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [header, ""] + [("  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3]).rstrip() for r in rows]
    unique = [s for s in states if not s.cell.alias]
    counts = {k: sum(s.state == k for s in unique) for k in ("done", "partial", "not started")}
    total = sum(s.steps_per_epoch * s.total_epochs for s in unique if s.steps_per_epoch is not None)
    lines += [
        "",
        f"{counts['done']} done, {counts['partial']} partial, {counts['not started']} not started; "
        f"{total} optimizer steps planned in all"
        + (" (some cells unmeasured)" if any(s.steps_per_epoch is None for s in unique) else ""),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class GridOutputs:
    """What a grid produced: the evaluation folders of every run, and the report over all of them."""

    eval_dirs: list[Path]
    report_dir: Path
    report_files: list[Path]
    skipped: list[str]
    """Cells already done on entry (nothing run for them)."""

    def summary(self) -> str:
        from jaxtune.study.sweep import final_table

        lines = [final_table(self.report_dir), "", f"report: {self.report_dir}"]
        if self.skipped:
            lines.append(f"{len(self.skipped)} cells were already done: {', '.join(self.skipped)}")
        lines += [f"  figure: {p}" for p in self.report_files if p.suffix in (".png", ".svg")]
        lines += [f"  table:  {p}" for p in self.report_files if p.suffix in (".csv", ".md")]
        return "\n".join(lines)


def run_grid(spec: GridSpec, *, print_fn: Callable[[str], None] = print) -> GridOutputs:
    """Train and evaluate every cell not yet done (each run once, aliases sharing it), then report on all cells."""
    from jaxtune.study.report import report
    from jaxtune.study.sweep import eval_dir_of, sweep

    states = cell_states(spec, measure=False)
    runs = [s for s in states if not s.cell.alias]
    skipped = [f"{s.cell.model.label}/{s.cell.selection}" for s in runs if s.state == "done"]
    todo = [s for s in runs if s.state != "done"]
    print_fn(f"grid {spec.path}: {len(runs)} runs, {len(skipped)} already done, {len(todo)} to run")
    started = time.time()
    for i, s in enumerate(todo):
        eta = "" if i == 0 else f", ETA {(time.time() - started) / i * (len(todo) - i) / 60:.1f} min"
        print_fn(f"[grid {i + 1}/{len(todo)}{eta}] {s.cell.model.label} {s.cell.selection}: {s.describe()}")
        sweep(
            model_config(spec, s.cell.model),
            [s.cell.selection],
            spec.eval_epochs,
            print_fn=print_fn,
            model_size=s.cell.model.label,
            write_report=False,
        )
    eval_dirs = [eval_dir_of(s.cell.run_dir, e) for s in runs for e in s.epochs]
    report_dir = spec.run_dir / "report"
    files = report(eval_dirs, report_dir)
    return GridOutputs(eval_dirs=eval_dirs, report_dir=report_dir, report_files=list(files), skipped=skipped)
