"""``jaxtune score``: score predictions without a model, with the suites' own scorers.

Inputs, found in ``PRED_DIR`` and every folder below it:

- the study's ``evaluate/pred.py`` output, ``pred_<name>.json`` (``pred_biology_test.json``,
  ``pred_ceval_physician.json``): JSON Lines of the test records (``messages`` ending with the reference, ``type``,
  ``question_format``, ...) plus ``generated_response`` (the reply) and ``generated_score`` (the full last-step
  logit vector, one value per vocabulary id) for ``question_format`` 0, or ``generated_ppl`` (three perplexities)
  for ``question_format`` 1. Values may be bare ``NaN`` / ``Infinity`` (Python's ``json`` wrote them) and are read.
  The letter logits of a multiple-choice item are ``generated_score`` at the ids of ``▁A``..``▁D`` in ``--tokenizer``
  (default: LLaMA's ids 319, 350, 315, 360, which the Chinese-LLaMA vocabularies keep).
- jaxtune's own ``{stem}.items.jsonl`` (``jaxtune eval``): DoIT items are re-scored from their reply, letter logits or
  perplexities and reference; C-Eval, CMMLU and AGIEval items from their letter logits (a null there is a
  non-finite value that the strict-JSON items file could not hold, read as NaN). The run information (and
  the suite's details) come from the ``{stem}.summary.json`` beside them when present. BELLE items need a judge
  model and are listed as not scored.

Outputs, under ``OUT`` (a folder below ``PRED_DIR`` is written to the same relative folder below ``OUT``):

- per folder of study files: ``doit-{variant}[-corrected].summary.json`` and ``.items.jsonl`` (the schema of
  :mod:`jaxtune.results`: per ability the score, the chance level beside it, the true mean over abilities), and
  ``study_totals.json``: ``{pred file name: total}``, each file's total as the study's ``scorer.py`` computed it (a
  count of correct items, each C-Eval item counting 100/40), always with the study's scorer.
  ``variant`` is the split the file names carry (``_test`` / ``_valid``), else ``test``. When the folder sits where
  ``pred.py`` puts it, ``.../{split}/{size}/{data type}/checkpoint-{step}``, the summary's run says so: model size
  ``{size} (study)`` (so ``jaxtune report`` draws the authors' curve beside jaxtune's), data source and volume from
  the data type, the step, and the epoch when the step is a whole number of the study's epochs (ceil(N/64) steps).
- per jaxtune items file: the summary and items under the same stem (``-corrected`` added for DoIT in that mode).

A line that cannot be read or lacks a field stops the run with an error naming file and line.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from jaxtune.data import jsonl
from jaxtune.errors import JaxtuneError
from jaxtune.eval.suites.doit import (
    MC_PIECES,
    DoitDataError,
    DoitRecord,
    ItemScore,
    _needs_letter_logits,
    _record,
    ability_of_file,
    score_doit_item,
    study_item_weight,
    summarize_doit,
)
from jaxtune.eval.suites.mcq import LETTERS, summarize_mcq
from jaxtune.names import SCORER_MODES, ScorerMode
from jaxtune.results import (
    ITEMS_SUFFIX,
    SUMMARY_SUFFIX,
    RunInfo,
    SuiteResult,
    format_table,
    parse_selection,
    read_summary,
    write_result,
)

STUDY_PREFIX = "pred_"
LLAMA_LETTER_IDS: dict[str, int] = {"▁A": 319, "▁B": 350, "▁C": 315, "▁D": 360}
"""Ids of the answer pieces in LLaMA's vocabulary (kept by Chinese-LLaMA-Plus): the default without --tokenizer."""
STUDY_TOTALS = "study_totals.json"
STUDY_GLOBAL_BATCH = 64
MCQ_SUITES = ("ceval", "cmmlu", "agieval")
JUDGE_SUITES = ("belle",)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_MODEL_SIZE = re.compile(r"^\d+(?:\.\d+)?[bBmM]$")
_SPLIT = re.compile(r"_(test|valid)$")


class ScoreError(JaxtuneError, ValueError):
    """A prediction file cannot be scored; the message names file and line."""


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


# --------------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------------


def _json_lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(file:line, object)`` for every non-blank line, one at a time (a pred file's logit vectors are large); NaN
    and Infinity are read as Python's json reads them."""
    empty = True
    for lineno, value in jsonl.read_json_lines(path, allow_nan=True, bad="yield"):
        where = f"{path}:{lineno}"
        if isinstance(value, jsonl.JsonLinesError):
            raise ScoreError(str(value))
        if not isinstance(value, dict):
            raise ScoreError(f"{where}: expected a JSON object, got {type(value).__name__}")
        empty = False
        yield where, value
    if empty:
        raise ScoreError(f"{path}: no records")


def _numbers(value: Any, where: str, key: str, length: int | None = None, null_is_nan: bool = False) -> list[float]:
    """A list of numbers; ``null_is_nan`` reads null as NaN (jaxtune's strict-JSON items store non-finite values so)."""
    if not isinstance(value, list):
        raise ScoreError(f"{where}: field '{key}' must be a list of numbers, got {type(value).__name__}")
    out = []
    for i, v in enumerate(value):
        if v is None and null_is_nan:
            v = math.nan
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ScoreError(f"{where}: field '{key}'[{i}] must be a number, got {v!r}")
        out.append(float(v))
    if length is not None and len(out) != length:
        raise ScoreError(f"{where}: field '{key}' must hold {length} numbers, got {len(out)}")
    return out


def _text(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise ScoreError(f"{where}: field '{key}' must be a string, got {value!r}")
    return value


def letter_ids(tokenizer: Union[str, Path, None]) -> list[int]:
    """Ids of ``▁A``..``▁D``: from ``tokenizer`` (a SentencePiece model or tokenizer folder), else LLaMA's."""
    if tokenizer is None:
        return [LLAMA_LETTER_IDS[p] for p in MC_PIECES]
    from jaxtune.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    return [tok.token_id(p) for p in MC_PIECES]


def _study_item(where: str, d: dict[str, Any], ability: str, ids: Sequence[int]) -> tuple[DoitRecord, dict]:
    """The record of one line of a pred file and what it is scored from (reply and letter logits, or perplexities);
    the big logit vector is not kept."""
    scores = d.pop("generated_score", None)
    try:
        rec = _record(d, where, ability)
    except DoitDataError as e:
        raise ScoreError(str(e)) from None
    if rec.question_format == 1:
        if "generated_ppl" not in d:
            raise ScoreError(f"{where}: question_format 1 needs field 'generated_ppl' (three perplexities)")
        return rec, {"perplexities": _numbers(d["generated_ppl"], where, "generated_ppl", 3)}
    if "generated_response" not in d:
        raise ScoreError(f"{where}: question_format 0 needs field 'generated_response'")
    reply = _text(d["generated_response"], where, "generated_response")
    logits = None
    if _needs_letter_logits(rec):
        if scores is None:
            raise ScoreError(
                f"{where}: a multiple-choice item needs field 'generated_score' (the last-step logits "
                f"over the vocabulary)"
            )
        vector = _numbers(scores, where, "generated_score")
        if max(ids) >= len(vector):
            raise ScoreError(
                f"{where}: field 'generated_score' holds {len(vector)} logits, but the answer pieces "
                f"have ids {list(ids)} (give the tokenizer of the run with --tokenizer)"
            )
        logits = [vector[i] for i in ids]
    return rec, {"reply": reply, "letter_logits": logits}


def _score(rec: DoitRecord, fields: Mapping[str, Any], mode: ScorerMode) -> ItemScore:
    try:
        if rec.question_format == 1:
            return score_doit_item(rec, perplexities=fields["perplexities"], mode=mode)
        return score_doit_item(rec, fields["reply"], fields["letter_logits"], mode=mode)
    except (DoitDataError, ValueError) as e:
        message = str(e)
        raise ScoreError(message if message.startswith(rec.where) else f"{rec.where}: {message}") from None


def _study_ability(path: Path) -> str:
    """``pred_biology_test.json`` -> ``biology``; ``pred_ceval_physician.json`` -> ``ceval_physician``."""
    return ability_of_file(path.with_name(path.name[len(STUDY_PREFIX) :]))


def _study_variant(files: Sequence[Path]) -> str:
    splits = {m.group(1) for f in files if (m := _SPLIT.search(f.stem[len(STUDY_PREFIX) :]))}
    if len(splits) > 1:
        raise ScoreError(f"{files[0].parent}: pred files of several splits ({', '.join(sorted(splits))}) in one folder")
    return splits.pop() if splits else "test"


def study_run_info(folder: Path) -> RunInfo:
    """What ``pred.py``'s output path says: ``.../{split}/{size}/{data type}/checkpoint-{step}``."""
    parts = folder.resolve().parts
    if len(parts) < 3 or not _MODEL_SIZE.match(parts[-3]):
        return RunInfo(run_name=str(folder))
    ckpt, data_type, size = parts[-1], parts[-2], parts[-3]
    source, volume = parse_selection({"baseline": "curated-10000", "mix-0": "maximum"}.get(data_type, data_type))
    step_match = _CHECKPOINT.match(ckpt)
    step = int(step_match.group(1)) if step_match else None
    epoch = None
    if step is not None and volume:
        per_epoch = math.ceil(volume / STUDY_GLOBAL_BATCH)
        epoch = step // per_epoch if step % per_epoch == 0 else None
    return RunInfo(
        run_name=f"study {size} {data_type}",
        model_size=f"{size} (study)",
        data_source=source,
        data_volume=volume,
        epoch=epoch,
        step=step,
        checkpoint=str(folder),
    )


def score_study_folder(
    folder: Path,
    files: Sequence[Path],
    ids: Sequence[int],
    mode: ScorerMode,
    on_file: Callable[[Path, int], None] | None = None,
) -> tuple[SuiteResult, dict[str, float]]:
    """Score one folder of pred files: the suite result in ``mode``, and the study's totals per file."""
    scored, totals = [], {}
    for path in sorted(files):
        ability = _study_ability(path)
        total, n = 0.0, 0
        for where, d in _json_lines(path):
            rec, fields = _study_item(where, d, ability, ids)
            study = _score(rec, fields, "study")
            total += study_item_weight(rec) * (1.0 if study.correct else 0.0)
            scored.append((rec, study if mode == "study" else _score(rec, fields, mode), fields))
            n += 1
        totals[path.name] = total
        if on_file is not None:
            on_file(path, n)
    result = summarize_doit(
        scored,
        mode=mode,
        variant=_study_variant(files),
        run=study_run_info(folder),
        predictions="study pred.py",
        letter_ids=list(ids),
    )
    return result, totals


# --------------------------------------------------------------------------------------------------------------------
# jaxtune's own items
# --------------------------------------------------------------------------------------------------------------------


def _field(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise ScoreError(f"{where}: missing field '{key}'")
    return d[key]


def _doit_item_from_jaxtune(where: str, d: dict[str, Any], mode: ScorerMode) -> tuple:
    prompt = _field(d, "prompt", where)
    if "reference" not in d:
        raise ScoreError(
            f"{where}: missing field 'reference' (items written before jaxtune recorded the reference "
            f"reply cannot be re-scored; evaluate again)"
        )
    raw = {
        "messages": [*prompt, {"role": "assistant", "content": d["reference"]}],
        "type": _field(d, "type", where),
        "question_format": _field(d, "question_format", where),
        "answer": d.get("answer"),
        "idx": d.get("idx"),
    }
    if raw["question_format"] == 1:
        raw["choices"] = ["", "", ""]  # the perplexities were measured; the texts are not needed to rank them
    try:
        rec = _record(raw, where, _text(_field(d, "ability", where), where, "ability"))
    except DoitDataError as e:
        raise ScoreError(str(e)) from None
    if rec.question_format == 1:
        fields: dict[str, Any] = {
            "perplexities": _numbers(_field(d, "perplexities", where), where, "perplexities", 3, null_is_nan=True)
        }
    else:
        logits = d.get("letter_logits")
        fields = {
            "reply": _text(_field(d, "reply", where), where, "reply"),
            "letter_logits": None if logits is None else _numbers(logits, where, "letter_logits", 4, null_is_nan=True),
        }
    return rec, _score(rec, fields, mode), fields


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
    """Re-score one ``*.items.jsonl`` written by ``jaxtune eval``."""
    suite, variant = _items_stem(path)
    sibling = path.with_name(path.name[: -len(ITEMS_SUFFIX)] + SUMMARY_SUFFIX)
    previous = read_summary(sibling) if sibling.is_file() else None
    run = previous.run if previous is not None else RunInfo(run_name=str(path.parent))
    if suite == "doit":
        scored = [_doit_item_from_jaxtune(where, d, mode) for where, d in _json_lines(path)]
        kept = {k: v for k, v in (previous.details if previous else {}).items() if k in ("max_new_tokens", "max_len")}
        return summarize_doit(scored, mode=mode, variant=variant, run=run, rescored_from=str(path), **kept)
    if suite in MCQ_SUITES:
        per_task: dict[str, list[float]] = {}
        items = []
        for where, d in _json_lines(path):
            row = _numbers(_field(d, "letter_logits", where), where, "letter_logits", 4, null_is_nan=True)
            label = _field(d, "label", where)
            if label not in LETTERS:
                raise ScoreError(f"{where}: field 'label' must be one of A-D, got {label!r}")
            parsed = LETTERS[int(np.argmax(np.asarray(row)))]
            per_task.setdefault(_text(_field(d, "task", where), where, "task"), []).append(float(parsed == label))
            items.append({**d, "parsed": parsed, "correct": parsed == label})
        details = dict(previous.details) if previous is not None else {}
        pieces = details.pop("letter_pieces", list(LETTERS))
        details.pop("micro_average", None)
        summary = summarize_mcq(
            per_task, suite=suite, variant=variant, letter_pieces=pieces, run=run, rescored_from=str(path), **details
        )
        return SuiteResult(summary, items)
    raise ScoreError(
        f"{path}: suite {suite!r} cannot be scored without a model (scorable: doit, {', '.join(MCQ_SUITES)})"
    )


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
    study_files: dict[Path, list[Path]] = {}
    item_files: list[Path] = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or out.resolve() in path.resolve().parents:
            continue
        if path.name.startswith(STUDY_PREFIX) and path.suffix == ".json":
            study_files.setdefault(path.parent, []).append(path)
        elif path.name.endswith(ITEMS_SUFFIX):
            item_files.append(path)
    if not study_files and not item_files:
        raise ScoreError(
            f"{root}: no prediction files (expected the study's {STUDY_PREFIX}<name>.json or "
            f"jaxtune's *{ITEMS_SUFFIX}, in this folder or below it)"
        )
    outputs = ScoreOutputs()
    ids = letter_ids(tokenizer) if study_files else []
    for folder, files in study_files.items():
        result, totals = score_study_folder(folder, files, ids, mode, on_file)
        target = out / folder.relative_to(root)
        summary_path, _ = write_result(target, result)
        outputs.results.append((summary_path, result))
        target.mkdir(parents=True, exist_ok=True)
        totals_path = target / STUDY_TOTALS
        totals_path.write_text(json.dumps(totals, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        outputs.study_totals[totals_path] = totals
    for path in item_files:
        suite, variant = _items_stem(path)
        if suite in JUDGE_SUITES:
            outputs.not_scored.append(f"{path} ({suite} is scored by a judge model)")
            continue
        result = score_jaxtune_items(path, mode if suite == "doit" else "study")
        summary_path, _ = write_result(out / path.parent.relative_to(root), result)
        outputs.results.append((summary_path, result))
        if on_file is not None:
            on_file(path, len(result.items))
    return outputs
