"""``jaxtune sweep SWEEP.yaml``: the study's whole grid (model configs x data types), idempotent, with a dry run.

A sweep file is a YAML mapping with the single top-level key ``sweep`` (a run config never has one, which is how
``jaxtune sweep`` tells the two apart)::

    sweep:
      run_dir: runs/doit                 # cells under run_dir/<model>/<selection>; the report in run_dir/report
      models:                            # model label (the report's curve label) -> run config
        7b: ../doit-7b.yaml              # a path, relative to this file
        33b: {config: ../doit-33b.yaml, overrides: [mesh.fsdp=8]}
      data_types: all                    # or a list: curated-10, synthetic-40960, reconstruct, mix-2560, ...
                                         # (a count map such as biology:16,math:64 as one list item;
                                         # budget:PATH, a jaxtune budget's budget.json relative to this file)
      eval_epochs: "10"                  # last | all | comma-separated epochs (or a YAML list of integers)
      suites: [doit]                     # eval.suites of every cell (default: each config's own)
      overrides: [train.epochs=15]       # key=value applied to every model's config (before its own)
      backend: local                     # or ray: `jaxtune sweep SWEEP.yaml` runs the grid on a Ray cluster
      accelerator: v5p-16                # ray: the slice type a cell claims (hardware presets' names; a model's
                                         # own `accelerator:` wins)
      eval_accelerator: v5e-8            # ray: evaluations as their own tasks on such slices (per model too);
                                         # unset: a cell evaluates on the slice that trained it, in the same task
      max_preemptions: 100               # ray: retries of a cell whose slice was lost or that exited 75
      max_failures: 2                    # ray: retries of a cell that exited 1 (exit 2, bad input: none)
      stop_grace_s: 60                   # ray: a slice's other hosts get SIGTERM when one fails, SIGKILL after this

The file is read as run configs are (:func:`jaxtune.config.loading.load_yaml`): a key repeated in one mapping is an
error naming the file and both lines, where plain YAML would silently keep the last one.

``data_types: all`` is the study's 19 (:data:`DATA_TYPES`, ``make_data.py``'s choices). ``baseline`` is
``curated-10000`` and ``mix-0`` is ``maximum``: such an alias shares its target's run (trained once). One cell is
one (model, selection) run under ``run_dir/<model>/<selection>``, trained and evaluated by
:func:`jaxtune.study.sweep.sweep`, so a cell whose chosen epochs all have summaries is skipped, and an interrupted one
resumes from its checkpoints and keeps the evaluations it already wrote. ``--dry-run`` lists each cell's state
(``done``, ``partial`` with the epochs evaluated and the last checkpoint, ``not started``) and its planned optimizer
steps (steps per epoch, measured by building the cell's data pipeline, x epochs).

``jaxtune sweep SWEEP.yaml --cell MODEL/DATA_TYPE [--phase train|eval|all] [key=value ...]`` runs one cell
(:func:`run_cell`: what every host of a Ray slice runs, with the mesh overrides of its slice) and exits with the
statuses of :mod:`jaxtune.errors`; ``backend: ray`` (or ``--ray``) runs the whole grid on a Ray cluster's slices
(:mod:`jaxtune.study.ray_driver`).
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
from jaxtune.data.mixtures import BUDGET_PREFIX, STUDY_ALIASES, STUDY_DATA_TYPES, SelectionError
from jaxtune.errors import JaxtuneError
from jaxtune.paths import as_path
from jaxtune.study.budget_run import selection_folder

DATA_TYPES = STUDY_DATA_TYPES
"""The study's 19 data types (the choices of its ``make_data.py``), in its order."""

SWEEP_KEY = "sweep"
_SWEEP_KEYS = (
    "run_dir",
    "models",
    "data_types",
    "eval_epochs",
    "suites",
    "overrides",
    "backend",
    "accelerator",
    "eval_accelerator",
    "max_preemptions",
    "max_failures",
    "stop_grace_s",
)
_MODEL_KEYS = ("config", "overrides", "accelerator", "eval_accelerator")
BACKENDS = ("local", "ray")
"""``backend:`` of a sweep file: ``local`` runs the cells one after another in this process, ``ray`` on a Ray
cluster's slices (:mod:`jaxtune.study.ray_driver`)."""
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
    accelerator: str | None = None
    """Ray: the slice type its cells claim (its own ``accelerator:``, else the sweep's)."""
    eval_accelerator: str | None = None
    """Ray: the slice type its evaluations claim as tasks of their own; None evaluates in the training task."""


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
    backend: str = "local"
    """``local`` or ``ray`` (:data:`BACKENDS`)."""
    max_preemptions: int = 100
    """Ray: retries of a cell after a lost slice or an exit 75 (resumes from its checkpoint)."""
    max_failures: int = 2
    """Ray: retries of a cell after an exit 1 before it is marked failed."""
    stop_grace_s: int = 60
    """Ray: when one host of a slice ends badly, the others get SIGTERM (save and stop), then SIGKILL after this."""


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

    @property
    def name(self) -> str:
        """``MODEL/DATA_TYPE``, as ``jaxtune sweep SWEEP.yaml --cell`` takes it."""
        return f"{self.model.label}/{self.data_type}"


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


def _accelerator(value: Any, key: str, where: Path) -> str | None:
    """A slice type of the hardware presets (``v5p-16``), checked by :func:`jaxtune.hardware.parse_accelerator`."""
    from jaxtune.hardware import AcceleratorError, parse_accelerator

    if value is None:
        return None
    if not isinstance(value, str):
        raise GridError(f"{where}: {key}: expected a slice type such as v5p-16, got {value!r}")
    try:
        return parse_accelerator(value).name
    except AcceleratorError as e:
        raise GridError(f"{where}: {key}: {e}") from None


def _count(body: dict, key: str, default: int, where: Path) -> int:
    value = body.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise GridError(f"{where}: sweep.{key}: expected a count (an integer >= 0), got {value!r}")
    return value


def _model(label: Any, value: Any, where: Path, defaults: dict[str, str | None]) -> GridModel:
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
    slices = {k: _accelerator(value.get(k), f"{key}.{k}", where) or defaults[k] for k in defaults}
    return GridModel(label, config, _strings(value.get("overrides", []), f"{key}.overrides", where), **slices)


def _data_type(name: str, where: Path) -> str:
    from jaxtune.data.mixtures import parse_count_map

    if name in DATA_TYPES or re.fullmatch(r"(curated|synthetic|mix)-\d+", name) or name == "all":
        return name
    if name.startswith(BUDGET_PREFIX):  # budget:PATH, PATH relative to the sweep file
        resolved = f"{BUDGET_PREFIX}{where.parent / name[len(BUDGET_PREFIX) :]}"
        try:
            selection_folder(resolved)
        except SelectionError as e:
            raise GridError(f"{where}: sweep.data_types: {e}") from None
        return resolved
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
    backend = body.get("backend", "local")
    if backend not in BACKENDS:
        raise GridError(f"{where}: sweep.backend: expected one of {list(BACKENDS)}, got {backend!r}")
    defaults = {k: _accelerator(body.get(k), f"sweep.{k}", where) for k in ("accelerator", "eval_accelerator")}
    return GridSpec(
        path=where,
        run_dir=as_path(body["run_dir"]),
        models=tuple(_model(label, value, where, defaults) for label, value in models.items()),
        data_types=data_types,
        eval_epochs=epochs,
        suites=None if suites is None else _strings(suites, "sweep.suites", where),
        overrides=_strings(body.get("overrides", []), "sweep.overrides", where),
        backend=backend,
        max_preemptions=_count(body, "max_preemptions", 100, where),
        max_failures=_count(body, "max_failures", 2, where),
        stop_grace_s=_count(body, "stop_grace_s", 60, where),
    )


# --------------------------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------------------------


def cells(spec: GridSpec) -> list[Cell]:
    """Every (model, data type) in the file's order: models outer, data types inner."""
    return [
        Cell(m, d, STUDY_ALIASES.get(d, d), spec.run_dir / m.label / selection_folder(STUDY_ALIASES.get(d, d)))
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
    from jaxtune.study.sweep import sweep

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
    return report_grid(spec, skipped)


def report_grid(spec: GridSpec, skipped: Sequence[str] = ()) -> GridOutputs:
    """The report over every cell's evaluated epochs, in ``run_dir/report`` (the grid's cells must be done)."""
    from jaxtune.study.report import report
    from jaxtune.study.sweep import eval_dir_of

    runs = [s for s in cell_states(spec, measure=False) if not s.cell.alias]
    eval_dirs = [eval_dir_of(s.cell.run_dir, e) for s in runs for e in s.epochs]
    report_dir = spec.run_dir / "report"
    files = report(eval_dirs, report_dir)
    return GridOutputs(eval_dirs=eval_dirs, report_dir=report_dir, report_files=list(files), skipped=list(skipped))


# --------------------------------------------------------------------------------------------------------------------
# One cell (what each host of a Ray slice runs: `jaxtune sweep SWEEP.yaml --cell MODEL/DATA_TYPE --phase P`)
# --------------------------------------------------------------------------------------------------------------------

PHASES = ("all", "train", "eval")
"""``--phase`` of ``--cell``: ``train`` trains the run, ``eval`` evaluates its chosen epochs (training must be
complete), ``all`` both, as the local grid does."""
EVAL_LOCK_DIR = "eval"
"""RUN_DIR/eval/lock: the lease of a cell's evaluations (:mod:`jaxtune.checkpoint.lease`), held by ``--phase eval``
and ``--phase all`` so that two drivers never evaluate one cell at once (training holds RUN_DIR/lock)."""


def find_cell(spec: GridSpec, name: str) -> Cell:
    """The cell named ``MODEL/DATA_TYPE``; an alias (``mix-0``) names its target's run."""
    for cell in cells(spec):
        if name in (cell.name, f"{cell.model.label}/{cell.selection}"):
            return cell
    names = ", ".join(c.name for c in cells(spec) if not c.alias)
    raise GridError(f"{spec.path}: no cell {name!r}; the grid's cells are {names}")


def cell_config(spec: GridSpec, cell: Cell, extra: Sequence[str] = ()) -> Config:
    """The run config of one cell: its model's config (:func:`model_config`) trained on the cell's selection in
    the cell's run folder, sharing the grid's compilation cache as :func:`jaxtune.study.sweep.sweep` does."""
    from jaxtune.runtime.compiles import run_cache_dir

    cfg = model_config(spec, cell.model, extra)
    train = dataclasses.replace(
        cfg.train, compilation_cache_dir=run_cache_dir(cfg.train.compilation_cache_dir, str(cfg.run_dir))
    )
    data = dataclasses.replace(cfg.data, selection=cell.selection)
    return dataclasses.replace(cfg, run_dir=str(cell.run_dir), data=data, train=train)


def run_cell(
    spec: GridSpec, name: str, phase: str, overrides: Sequence[str] = (), print_fn: Callable[[str], None] = print
) -> int:
    """Run one cell's ``phase`` (:data:`PHASES`) and return the exit status of :mod:`jaxtune.errors`: 0 done, 75
    stopped early with its state saved (run it again). Bad input (a RunLeaseError too: another writer holds the
    run) raises JaxtuneError (exit 2); anything else is a failure (exit 1)."""
    from jaxtune.checkpoint.lease import hold_run_lease
    from jaxtune.errors import EXIT_OK, EXIT_RESUMABLE
    from jaxtune.sharding import initialize_distributed
    from jaxtune.study.sweep import sweep
    from jaxtune.train.trainer import train

    if phase not in PHASES:
        raise GridError(f"--phase: expected one of {list(PHASES)}, got {phase!r}")
    cell = find_cell(spec, name)
    cfg = model_config(spec, cell.model, overrides)
    if cell_done(spec, cell, phase, cfg):
        print_fn(f"cell {cell.name}: {phase} {ALREADY_DONE}")
        return EXIT_OK
    if phase in ("train", "all"):
        result = train(cell_config(spec, cell, overrides), print_fn=print_fn)
        print_fn(result.summary())  # "resumed from step N": the driver's timeline quotes it
        if result.stopped != "completed" or phase == "train":
            return EXIT_OK if result.stopped == "completed" else EXIT_RESUMABLE
    initialize_distributed(cfg.mesh)  # every process takes part in the lease's agreement
    with hold_run_lease(cell.run_dir / EVAL_LOCK_DIR, cfg.checkpoint, command=f"jaxtune sweep --cell {name}"):
        # sweep() trains first: the run is complete by now (the driver runs --phase eval after train), so it only
        # reports it, then evaluates the epochs that have no summaries yet.
        sweep(
            cfg, [cell.selection], spec.eval_epochs, print_fn=print_fn, model_size=cell.model.label, write_report=False
        )
    return EXIT_OK


ALREADY_DONE = "already done, nothing run"
"""What ``--cell`` prints when the run directory says its phase is finished (a second driver's late attempt)."""


def cell_done(spec: GridSpec, cell: Cell, phase: str, cfg: Config) -> bool:
    """Whether ``phase`` of ``cell`` is finished on disk: training by completed.json, evaluations by the summaries
    of every chosen epoch."""
    if phase == "train":
        return train_done(cell.run_dir)
    epochs = _check_model_config(spec, cell.model, cfg)
    return _evaluated(cell.run_dir, epochs) == epochs


def train_done(run_dir: Path) -> bool:
    """Whether a cell's training completed: RUN_DIR/completed.json (written last by a completed run)."""
    from jaxtune.checkpoint.layout import COMPLETED_FILE

    return (as_path(run_dir) / COMPLETED_FILE).is_file()
