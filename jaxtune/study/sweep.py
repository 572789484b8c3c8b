"""The study's grid: fine-tune at several data selections, evaluate the chosen epochs of each run, draw the report.

``jaxtune sweep CONFIG --selections curated-10,curated-40,...`` trains one run per selection under
``run_dir/<selection>``, evaluates its epoch checkpoints (``run_dir/<selection>/epochs/<e>``, params only; without
``checkpoint.keep_epoch_checkpoints`` the train checkpoint that ended the epoch) on ``eval.suites`` into
``run_dir/<selection>/eval/epoch-<e>``, and writes the growth curves and tables of all runs into ``run_dir/report``. A run that already
finished is resumed from its checkpoints (nothing is trained twice) and an evaluation that already wrote its
summaries is read back rather than recomputed, so an interrupted sweep continues where it stopped.

A budget (``--selections budget:OUT/budget.json``, or ``budget:OUT/rule.json``; :mod:`jaxtune.study.budget`) trains
on exactly its counts under ``run_dir/budget-<total>-<digest>`` (:mod:`jaxtune.study.budget_run`), recorded as data source
``budget`` (``reconstruct-scaled`` for a rule) with its total as the data volume, which the report tables beside the
uniform curated run of that total (:mod:`jaxtune.study.budget_report`).

BELLE volumes (``--selections belle-200k+alpaca,belle-600k+alpaca,belle-1m+alpaca,belle-2m+alpaca``, see
:mod:`jaxtune.data.belle_volumes`) are recorded as data source ``belle`` or ``belle+alpaca`` with the BELLE record
count as the data volume (the study's x axis; the Alpaca mix is the same at every volume); ``belle-all`` counts the
BELLE records of the run's manifest.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from jaxtune.checkpoint.epochs import epoch_checkpoint_path
from jaxtune.config.schema import Config, ConfigError
from jaxtune.data.belle_volumes import ALPACA_LABEL, is_belle_selection, parse_belle_selection
from jaxtune.data.mixtures import BUDGET_PREFIX, STUDY_ALIASES, read_manifest
from jaxtune.paths import as_path, write_text_atomic
from jaxtune.results import parse_selection
from jaxtune.study.budget_run import budget_run_label, selection_folder


@dataclass
class SweepRun:
    """One selection of the sweep: where it trained and where each evaluated epoch's results are."""

    selection: str
    run_dir: Path
    eval_dirs: dict[int, Path] = field(default_factory=dict)
    train_summary: str = ""


@dataclass
class SweepOutputs:
    """What a sweep produced."""

    runs: list[SweepRun]
    report_dir: Path
    report_files: list[Path]
    table: str

    def summary(self) -> str:
        figures = [p for p in self.report_files if p.suffix in (".png", ".svg")]
        lines = [self.table, "", f"report: {self.report_dir}"]
        lines += [f"  figure: {p}" for p in figures]
        lines += [f"  table:  {p}" for p in self.report_files if p.suffix in (".csv", ".md")]
        return "\n".join(lines)


def model_size_label(cfg: Config) -> str:
    """``7b``/``13b``/``33b`` for the study's presets, else the preset name, else a parameter-count label."""
    preset = cfg.model.preset or ""
    if preset.startswith(("doit-", "llama2-")):
        return preset.split("-", 1)[1]
    if preset:
        return preset
    from jaxtune.models.stats import count_params

    n, _ = count_params(cfg.model, cfg.model.vocab_size)
    return f"{n / 1e9:.1f}b" if n >= 1e9 else f"{n / 1e6:.0f}m"


def epochs_to_evaluate(spec: str, epochs: int) -> list[int]:
    """``last`` -> [epochs]; ``all`` -> 1..epochs; ``1,5,10`` -> those (each within 1..epochs)."""
    if spec == "last":
        return [epochs]
    if spec == "all":
        return list(range(1, epochs + 1))
    try:
        chosen = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--eval-epochs: expected 'last', 'all' or comma-separated integers, got {spec!r}") from None
    bad = [e for e in chosen if not 1 <= e <= epochs]
    if bad or not chosen:
        raise ConfigError(f"--eval-epochs: epochs {bad or spec} are outside 1..{epochs} (train.epochs={epochs})")
    return chosen


def selection_source_and_volume(selection: str, run_dir: Path) -> tuple[str, int | None]:
    """The data source and volume a run's results are plotted under (``belle-600k+alpaca`` -> ("belle+alpaca",
    600000); ``budget:PATH`` -> ("budget", its total)); a volume that depends on the data (``maximum``,
    ``reconstruct``, ``mix-N``, ``belle-all``) is the number of records in the run's manifest (None before the run
    wrote one)."""
    if selection.startswith(BUDGET_PREFIX):
        source, total, _ = budget_run_label(selection[len(BUDGET_PREFIX) :])
        return source, total
    manifest = run_dir / "manifest.jsonl"
    if not is_belle_selection(selection):
        source, volume = parse_selection(STUDY_ALIASES.get(selection, selection))
        if volume is None and manifest.is_file():
            volume = len(read_manifest(manifest))
        return source, volume
    parsed = parse_belle_selection(selection)
    volume = parsed.belle
    if volume is None and manifest.is_file():
        volume = sum(entry["ability"] != ALPACA_LABEL for entry in read_manifest(manifest))
    return parsed.source_label, volume


def eval_dir_of(run_dir: Path, epoch: int) -> Path:
    """Where the sweep writes (and looks for) the evaluation of a run's epoch checkpoint."""
    return run_dir / "eval" / f"epoch-{epoch}"


EVALUATED_FILE = "evaluated.json"  # {"suites": [stem, ...]}: written once every suite's summary and items are


def has_summaries(eval_dir: Path) -> bool:
    """Whether an evaluation finished there (the sweep then reads it instead of evaluating). A summary alone does
    not count: a sweep killed between suites, or before it marked the evaluation, evaluates the epoch again."""
    return (as_path(eval_dir) / EVALUATED_FILE).is_file()


def mark_evaluated(eval_dir: Path, stems: Sequence[str]) -> None:
    """Record that every suite of the evaluation in ``eval_dir`` wrote its files (see :func:`has_summaries`)."""
    write_text_atomic(as_path(eval_dir) / EVALUATED_FILE, json.dumps({"suites": sorted(stems)}) + "\n")


def sweep(
    cfg: Config,
    selections: Sequence[str],
    epochs_to_eval: str = "last",
    *,
    print_fn: Callable[[str], None] = print,
    model_size: str | None = None,
    write_report: bool = True,
) -> SweepOutputs:
    """Train, evaluate and report every selection; see the module docstring. Evaluation runs on ``eval.mesh`` (or
    the training ``mesh``) over every process; process 0 writes the results and the report. ``model_size`` labels
    the results (default :func:`model_size_label`); ``write_report=False`` leaves the report to the caller (the grid
    draws one over all its models)."""
    from jaxtune.eval.distributed import agree, eval_mesh_config, is_writer
    from jaxtune.eval.runner import evaluate
    from jaxtune.runtime.compiles import run_cache_dir
    from jaxtune.study.report import report
    from jaxtune.train.heartbeat import Heartbeat
    from jaxtune.train.trainer import RunStoppedEarly, train

    if cfg.train.max_steps is not None:
        raise ConfigError(
            "train.max_steps: a sweep trains whole epochs (the study evaluates epoch checkpoints); "
            "unset it and choose train.epochs"
        )
    epochs = epochs_to_evaluate(epochs_to_eval, cfg.train.epochs)
    for selection in selections:  # a misspelt volume (or a missing budget file) fails now, not after the runs before it
        if is_belle_selection(selection):
            parse_belle_selection(selection)
        selection_folder(selection)
    root = as_path(cfg.run_dir)
    size = model_size or model_size_label(cfg)
    runs: list[SweepRun] = []
    gave_up: list[tuple[str, dict]] = []  # (where, items by suite) of evaluations the judge gave up on items of
    started = time.time()
    # Every cell compiles the same programs: one persistent cache serves them all (the second cell compiles nothing).
    cell_train = dataclasses.replace(
        cfg.train, compilation_cache_dir=run_cache_dir(cfg.train.compilation_cache_dir, str(root))
    )
    for i, selection in enumerate(selections):
        run_dir = root / selection_folder(selection)
        data = dataclasses.replace(cfg.data, selection=selection)
        run_cfg = dataclasses.replace(cfg, run_dir=str(run_dir), data=data, train=cell_train)
        print_fn(f"[{i + 1}/{len(selections)}] {selection}: training ({_eta(started, i, len(selections))})")
        result = train(run_cfg, print_fn=print_fn)
        if result.stopped != "completed":
            raise RunStoppedEarly(f"run {run_dir} stopped early ({result.stopped}); rerun the sweep to resume it")
        steps_per_epoch = result.total_steps // cfg.train.epochs
        source, volume = selection_source_and_volume(selection, run_dir)
        run = SweepRun(selection, run_dir, train_summary=result.summary())
        heartbeat = Heartbeat(run_dir, result.total_steps, enabled=is_writer())
        for epoch in epochs:
            step = epoch * steps_per_epoch
            eval_dir = eval_dir_of(run_dir, epoch)
            # Process 0's filesystem decides, so that every process enters the same (collective) evaluations.
            if not agree(has_summaries(eval_dir)):
                heartbeat.beat("evaluating", step)
                print_fn(f"[{i + 1}/{len(selections)}] {selection}: evaluating epoch {epoch} (step {step})")
                evaluation = evaluate(
                    epoch_checkpoint_path(run_dir, epoch, step),
                    cfg.eval,
                    out_dir=eval_dir,
                    metadata=_eval_metadata(selection_folder(selection), size, source, volume, epoch, step),
                    mesh=eval_mesh_config(cfg),
                )
                print_fn(evaluation.table())
                if agree(bool(evaluation.judge_failed())):  # not marked: the sweep's next run judges the rest
                    gave_up.append((f"{run_dir} epoch {epoch}", evaluation.judge_failed()))
                elif is_writer():
                    mark_evaluated(eval_dir, list(evaluation.files))
            run.eval_dirs[epoch] = eval_dir
        heartbeat.close("done" if heartbeat.phase else None)  # evaluated now: done again
        runs.append(run)
    report_dir = root / "report"
    outputs = SweepOutputs(runs=runs, report_dir=report_dir, report_files=[], table="")
    if write_report and is_writer():  # the evaluations' files and the report are process 0's
        files = report([d for r in runs for d in r.eval_dirs.values()], report_dir)
        outputs = dataclasses.replace(outputs, report_files=list(files), table=final_table(report_dir))
    judge_gave_up(gave_up)  # every cell done and reported first
    return outputs


def judge_gave_up(gave_up: Sequence[tuple[str, dict]]) -> None:
    """:class:`jaxtune.eval.judge.JudgeGaveUp` (exit 75) naming each evaluation (``where``) and its items the judge
    gave up on (by suite), if any: the sweep's next run judges only those items."""
    from jaxtune.eval.judge import JudgeGaveUp

    if gave_up:
        raise JudgeGaveUp(
            f"the judge gave up on items of {len(gave_up)} evaluations ("
            + "; ".join(f"{where}: " + ", ".join(f"{len(v)} in {k}" for k, v in by.items()) for where, by in gave_up)
            + "; listed in each summary's judge_failed, left out of the scores): run the sweep again to judge them"
        )


def _eval_metadata(run_name: str, size: str, source: str, volume: int | None, epoch: int, step: int) -> dict:
    """The run metadata an epoch's evaluation records (the report's labels and x axis)."""
    metadata = {
        "run_name": run_name,
        "model_size": size,
        "data_source": source,
        "epoch": str(epoch),
        "step": str(step),
    }
    if volume is not None:
        metadata["data_volume"] = str(volume)
    return metadata


def _eta(started: float, done: int, total: int) -> str:
    if done == 0:
        return "ETA after the first run"
    per_run = (time.time() - started) / done
    return f"ETA {per_run * (total - done) / 60:.1f} min"


def final_table(report_dir: Path) -> str:
    """The report's per-ability tables (Markdown), one per suite, for printing at the end."""
    parts = []
    for path in sorted(report_dir.glob("*.scores.md")):
        parts.append(f"{path.name[: -len('.scores.md')]}:\n{path.read_text(encoding='utf-8')}")
    return "\n".join(parts)
