"""``jaxtune score``: score predictions without a model, each suite with its own scorers.

Inputs, found in ``PRED_DIR`` and every folder below it:

- another tool's prediction files that a suite registers (:class:`~jaxtune.eval.suites.registry.PredictionFiles`:
  the DoIT study's ``evaluate/pred.py`` output, ``pred_<name>.json``, see :mod:`jaxtune.eval.suites.doit_rescore`),
  scored folder by folder (``--tokenizer``: the tokenizer they were made with);
- jaxtune's own ``{stem}.items.jsonl`` (``jaxtune eval``), each re-scored by its suite's rescoring hook
  (:class:`~jaxtune.eval.suites.registry.Rescoring`; DoIT from each item's reply, letter logits or perplexities and
  reference, C-Eval, CMMLU and AGIEval from the letter logits). The run information (and the suite's details) come
  from the ``{stem}.summary.json`` beside them when present. A suite without that hook (BELLE: it needs a judge
  model) is listed as not scored.

Outputs, under ``OUT`` (a folder below ``PRED_DIR`` is written to the same relative folder below ``OUT``):

- per folder of prediction files: the suite's ``{stem}.summary.json`` and ``.items.jsonl`` (the schema of
  :mod:`jaxtune.results`; DoIT: ``doit-{variant}[-corrected]``, per ability the score, the chance level beside it,
  the true mean over abilities), and ``study_totals.json``: ``{pred file name: total}``, each file's total as the
  study's own scorer computed it (DoIT: ``scorer.py``'s count of correct items, each C-Eval item counting 100/40).
- per jaxtune items file: the summary and items under the same stem (``-corrected`` added in that mode by a suite
  with scorer modes, DoIT).

A line that cannot be read or lacks a field stops the run with an error naming file and line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from jaxtune.eval.rescoring import ItemsFile, PredictionFolder, ScoreError
from jaxtune.eval.suites.registry import PredictionFiles, load_suites
from jaxtune.names import SCORER_MODES, ScorerMode
from jaxtune.results import (
    ITEMS_SUFFIX,
    SUMMARY_SUFFIX,
    RunInfo,
    SuiteResult,
    format_table,
    read_summary,
    write_result,
)

STUDY_TOTALS = "study_totals.json"


@dataclass
class ScoreOutputs:
    """What ``score_predictions`` wrote."""

    results: list[tuple[Path, SuiteResult]] = field(default_factory=list)
    """(summary path, result) per summary written."""
    study_totals: dict[Path, dict[str, float]] = field(default_factory=dict)
    """study_totals.json path -> its content."""
    not_scored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = []
        for path, result in self.results:
            lines += [format_table(result.summary), f"  -> {path}", ""]
        for path, totals in self.study_totals.items():
            width = max(len(k) for k in totals)
            lines.append(f"study totals (the study's scorer.py) -> {path}")
            lines += [f"  {name.ljust(width)}  {total:g}" for name, total in totals.items()]
            lines.append("")
        lines += [f"not scored: {n}" for n in self.not_scored]
        return "\n".join(lines).rstrip()


def _items_stem(path: Path) -> tuple[str, str]:
    """``doit-test-corrected.items.jsonl`` -> ("doit", "test"); the scorer mode suffix is dropped."""
    stem = path.name[: -len(ITEMS_SUFFIX)]
    suite, _, variant = stem.partition("-")
    if not variant:
        raise ScoreError(f"{path}: expected a name {{suite}}-{{variant}}{ITEMS_SUFFIX}")
    if variant.endswith("-corrected"):
        variant = variant[: -len("-corrected")]
    return suite, variant


def score_jaxtune_items(path: Path, mode: ScorerMode) -> SuiteResult:
    """Re-score one ``*.items.jsonl`` written by ``jaxtune eval`` with its suite's rescoring hook."""
    suite, variant = _items_stem(path)
    suites = load_suites()
    rescore = suites[suite].score.items if suite in suites else None
    if rescore is None:
        scorable = [name for name, s in suites.items() if s.score.items is not None]
        raise ScoreError(f"{path}: suite {suite!r} cannot be scored without a model (scorable: {', '.join(scorable)})")
    sibling = path.with_name(path.name[: -len(ITEMS_SUFFIX)] + SUMMARY_SUFFIX)
    previous = read_summary(sibling) if sibling.is_file() else None
    run = previous.run if previous is not None else RunInfo(run_name=str(path.parent))
    details = dict(previous.details) if previous is not None else {}
    return rescore(ItemsFile(path, suite, variant, mode, run, details))


def _find(root: Path, out: Path, kinds: list[PredictionFiles]) -> tuple[dict[tuple[int, Path], list[Path]], list[Path]]:
    """Prediction files by (kind, folder), in path order, and jaxtune's items files; nothing under ``out``."""
    folders: dict[tuple[int, Path], list[Path]] = {}
    item_files: list[Path] = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or out.resolve() in path.resolve().parents:
            continue
        kind = next((k for k, files in enumerate(kinds) if files.matches(path)), None)
        if kind is not None:
            folders.setdefault((kind, path.parent), []).append(path)
        elif path.name.endswith(ITEMS_SUFFIX):
            item_files.append(path)
    return folders, item_files


# --------------------------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------------------------


def score_predictions(
    pred_dir: Union[str, Path],
    out_dir: Union[str, Path],
    *,
    tokenizer: Union[str, Path, None] = None,
    mode: ScorerMode = "study",
    on_file: Callable[[Path, int], None] | None = None,
) -> ScoreOutputs:
    """Score every prediction file under ``pred_dir`` into ``out_dir`` (see the module docstring)."""
    if mode not in SCORER_MODES:
        raise ScoreError(f"scorer mode must be one of {', '.join(SCORER_MODES)}, got {mode!r}")
    root = Path(pred_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"prediction folder {root} does not exist")
    out = Path(out_dir)
    suites = load_suites()
    kinds = [s.score.predictions for s in suites.values() if s.score.predictions is not None]
    prediction_folders, item_files = _find(root, out, kinds)
    if not prediction_folders and not item_files:
        expected = "".join(f"{k.description} or " for k in kinds)
        raise ScoreError(
            f"{root}: no prediction files (expected {expected}jaxtune's *{ITEMS_SUFFIX}, in this folder or below it)"
        )
    outputs = ScoreOutputs()
    for (kind, folder), files in prediction_folders.items():
        result, totals = kinds[kind].score_folder(PredictionFolder(folder, files, mode, tokenizer, on_file))
        target = out / folder.relative_to(root)
        summary_path, _ = write_result(target, result)
        outputs.results.append((summary_path, result))
        target.mkdir(parents=True, exist_ok=True)
        totals_path = target / STUDY_TOTALS
        totals_path.write_text(json.dumps(totals, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        outputs.study_totals[totals_path] = totals
    for path in item_files:
        suite, _ = _items_stem(path)
        if suite in suites and suites[suite].score.items is None:
            outputs.not_scored.append(f"{path} ({suite} is scored by {suites[suite].score.scored_by})")
            continue
        result = score_jaxtune_items(path, mode)
        summary_path, _ = write_result(out / path.parent.relative_to(root), result)
        outputs.results.append((summary_path, result))
        if on_file is not None:
            on_file(path, len(result.items))
    return outputs
