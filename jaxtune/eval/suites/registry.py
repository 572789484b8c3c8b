"""The evaluation suites, each registered by its own file of :mod:`jaxtune.eval.suites`.

A suite is a :class:`Suite`: where its data lives under ``eval.data_dir`` and how to recognise it, the checks it
makes before any model is loaded, how to run and score it on a loaded model, and two hooks for the commands above
evaluation: :class:`Rescoring` (how ``jaxtune score`` scores its saved predictions without a model) and
:class:`ReportHooks` (its abilities' titles and a figure of its own in ``jaxtune report``). Each suite module ends
with ``register(Suite(...))``; :func:`load_suites` imports every module of the package, so adding a suite is one new
file (and its name in :data:`jaxtune.names.EvalSuite`). The runner (:mod:`jaxtune.eval.runner`), the score command
(:mod:`jaxtune.eval.score`) and the report (:mod:`jaxtune.study.report`) know no suite by name.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from jaxtune.config.schema import EvalConfig
from jaxtune.data.remote import local_input
from jaxtune.eval.errors import EvalSetupError
from jaxtune.eval.rescoring import ItemsFile, PredictionFolder
from jaxtune.names import EVAL_SUITES
from jaxtune.results import RunInfo, SuiteResult, SuiteSummary


@dataclass(frozen=True)
class SuiteRun:
    """Everything a suite's ``run`` gets: its data folder, the model and what to record."""

    root: Path
    """The suite's data folder (from :meth:`Suite.data_folder`)."""
    lm: Any
    """The :class:`jaxtune.eval.language_model.JaxLanguageModel` under evaluation."""
    codec: Any
    """The :class:`jaxtune.eval.template_codec.TemplateChatCodec` of the model's chat template."""
    eval_cfg: EvalConfig
    run: RunInfo
    chunk_size: int
    """Items handed to the model per call (several batches, so that length bucketing has room to work)."""
    progress: Optional[Callable[[int, int], None]] = None
    """``progress(done, total)`` hears of finished items."""
    judge_cache: Optional[Path] = None
    """Where a judged suite keeps its judge's answers (None: in memory only)."""
    answers_dir: Optional[Path] = None
    """Where a generating suite keeps its answers before scoring them (None: not kept)."""

    def common(self) -> dict[str, Any]:
        """The keyword arguments every suite's ``evaluate_*`` takes."""
        return dict(run=self.run, chunk_size=self.chunk_size, on_progress=self.progress)


def _no_check(eval_cfg: EvalConfig, out_dir: Optional[Path]) -> None:
    return None


def _the_folder(root: Path, split: str) -> Path:
    return root


@dataclass(frozen=True)
class PredictionFiles:
    """Another tool's prediction files of a suite that ``jaxtune score`` finds and scores folder by folder."""

    description: str
    """What they are, for the message when no prediction file is found (``the study's pred_<name>.json``)."""
    matches: Callable[[Path], bool]
    """``matches(path)``: whether a file is one of them."""
    score_folder: Callable[[PredictionFolder], tuple[SuiteResult, dict[str, float]]]
    """The suite's result of one folder of them, and the study's own total per file (``study_totals.json``)."""


@dataclass(frozen=True)
class Rescoring:
    """How ``jaxtune score`` (:mod:`jaxtune.eval.score`) scores a suite's saved predictions without a model."""

    items: Optional[Callable[[ItemsFile], SuiteResult]] = None
    """The result of one ``*.items.jsonl`` of ``jaxtune eval`` scored again; None: listed as not scored."""
    scored_by: str = "a model"
    """What scores the suite when ``items`` is None (said beside its items files in the not-scored list)."""
    predictions: Optional[PredictionFiles] = None
    """Another tool's prediction files of the suite, if ``jaxtune score`` reads any."""


@dataclass(frozen=True)
class ReportHooks:
    """What a suite adds to ``jaxtune report`` (:mod:`jaxtune.study.report`) beside the growth curves and tables."""

    titles: Mapping[str, str] = field(default_factory=dict)
    """Ability name -> its title in figures and tables (applied to every group of the report)."""
    figure: Optional[Callable[[Sequence[SuiteSummary], Path], list[Path]]] = None
    """``figure(summaries, out_stem)``: a figure of the suite's study drawn from one group's chosen summaries
    (one epoch per run) next to ``out_stem`` (an epath: local or gs://); returns the files it wrote."""


@dataclass(frozen=True)
class Suite:
    """One evaluation suite, as the runner and ``jaxtune validate`` use it."""

    name: str
    """Its name in ``eval.suites`` (one of :data:`jaxtune.names.EVAL_SUITES`)."""
    folders: tuple[str, ...]
    """Sub-folders of ``eval.data_dir`` that may hold its data, tried in order before ``eval.data_dir`` itself."""
    looks_like: Callable[[Path, str], bool]
    """``looks_like(folder, split)``: whether the folder holds this suite's data."""
    run: Callable[[SuiteRun], Optional[SuiteResult]]
    """Run and score the suite; None on processes that take part without producing the result."""
    data_folder: Callable[[Path, str], Path] = _the_folder
    """``data_folder(folder, split)``: the folder ``run`` reads, inside a folder that ``looks_like`` the suite's."""
    check: Callable[[EvalConfig, Optional[Path]], None] = _no_check
    """``check(eval_cfg, out_dir)``: raise :class:`~jaxtune.eval.errors.EvalSetupError` for settings the suite
    cannot run with (checked before the model is loaded; ``out_dir`` is None when nothing will be written)."""
    score: Rescoring = Rescoring()
    """How ``jaxtune score`` scores its predictions without a model."""
    report: ReportHooks = ReportHooks()
    """What it adds to ``jaxtune report``."""


SUITES: dict[str, Suite] = {}
"""Suite name -> suite, filled by the suite modules (see :func:`load_suites`)."""


def register(suite: Suite) -> Suite:
    """Add a suite; its name must be declared in :data:`jaxtune.names.EVAL_SUITES` and registered once."""
    if suite.name not in EVAL_SUITES:
        raise ValueError(
            f"suite {suite.name!r} is not declared in jaxtune.names.EvalSuite (declared: {', '.join(EVAL_SUITES)})"
        )
    if suite.name in SUITES and SUITES[suite.name] != suite:
        raise ValueError(f"suite {suite.name!r} is registered twice")
    SUITES[suite.name] = suite
    return suite


def load_suites() -> dict[str, Suite]:
    """Every registered suite, in the order of :data:`jaxtune.names.EVAL_SUITES`, after importing each module of
    :mod:`jaxtune.eval.suites`."""
    package = importlib.import_module("jaxtune.eval.suites")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    return {name: SUITES[name] for name in EVAL_SUITES if name in SUITES}


def get_suite(name: str) -> Suite:
    """The suite named ``name``; an EvalSetupError listing the known ones for an unknown name."""
    suites = load_suites()
    if name not in suites:
        raise EvalSetupError(f"eval.suites: unknown suite {name!r} (known: {', '.join(suites)})")
    return suites[name]


def unknown_suites_problem(names: list[str]) -> Optional[str]:
    """The problem of ``eval.suites`` naming suites that do not exist, if it does."""
    suites = load_suites()
    unknown = [s for s in names if s not in suites]
    if unknown:
        return f"eval.suites: unknown suite(s) {unknown} (known: {', '.join(suites)})"
    return None


def suite_data_root(suite: str, data_dir: Optional[str | Path], split: str = "test") -> Path:
    """The folder holding ``suite``'s data: ``data_dir/<suite folder>`` or ``data_dir`` itself (see
    :attr:`jaxtune.config.schema.EvalConfig.data_dir`), as :meth:`Suite.data_folder` narrows it (DoIT: the split folder
    with the ability files)."""
    if data_dir is None:
        raise EvalSetupError(f"eval.data_dir is not set: suite {suite!r} needs its data folder")
    try:
        base = local_input(data_dir)  # gs://: this host's cached copy
    except FileNotFoundError:
        raise EvalSetupError(f"eval.data_dir: {data_dir} does not exist") from None
    if not base.is_dir():
        raise EvalSetupError(f"eval.data_dir: {base} is not a directory")
    spec = get_suite(suite)
    candidates = [base / name for name in spec.folders] + [base]
    for root in candidates:
        if root.is_dir() and spec.looks_like(root, split):
            return spec.data_folder(root, split)
    tried = ", ".join(str(c) for c in candidates)
    raise EvalSetupError(f"eval.data_dir: no {suite} data found (looked in {tried})")
