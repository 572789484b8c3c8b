"""The DoIT suite scored without a model (``jaxtune score``): the study's own prediction files, and jaxtune's items.

- The study's ``evaluate/pred.py`` output, ``pred_<name>.json`` (``pred_biology_test.json``,
  ``pred_ceval_physician.json``), one folder at a time: JSON Lines of the test records (``messages`` ending with
  the reference, ``type``, ``question_format``, ...) plus ``generated_response`` (the reply) and
  ``generated_score`` (the full last-step logit vector, one value per vocabulary id) for ``question_format`` 0, or
  ``generated_ppl`` (three perplexities) for ``question_format`` 1. Values may be bare ``NaN`` / ``Infinity``
  (Python's ``json`` wrote them) and are read. The letter logits of a multiple-choice item are ``generated_score``
  at the ids of ``▁A``..``▁D`` in the tokenizer given (default: LLaMA's ids 319, 350, 315, 360, which the
  Chinese-LLaMA vocabularies keep). A folder gives one ``doit-{variant}`` result (``variant``: the split the file
  names carry, ``_test`` / ``_valid``, else ``test``) and each file's total as the study's ``scorer.py`` computed it
  (a count of correct items, each C-Eval item counting 100/40), always with the study's scorer. When the folder sits
  where ``pred.py`` puts it, ``.../{split}/{size}/{data type}/checkpoint-{step}``, the result's run says so
  (:func:`study_run_info`): model size ``{size} (study)`` (so ``jaxtune report`` draws the authors' curve beside
  jaxtune's), data source and volume from the data type, the step, and the epoch when the step is a whole number of
  the study's epochs (ceil(N/64) steps).
- jaxtune's own ``doit-*.items.jsonl``: each item re-scored from its reply, letter logits or perplexities and
  reference (a null there is a non-finite value that the strict-JSON items file could not hold, read as NaN).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from jaxtune.eval.rescoring import ItemsFile, PredictionFolder, ScoreError, json_lines, numbers, required, text
from jaxtune.eval.suites.doit_items import (
    MC_PIECES,
    DoitDataError,
    DoitRecord,
    ItemScore,
    ability_of_file,
    needs_letter_logits,
    parse_record,
    score_doit_item,
    study_item_weight,
    summarize_doit,
)
from jaxtune.eval.suites.registry import PredictionFiles
from jaxtune.names import ScorerMode
from jaxtune.results import RunInfo, SuiteResult, parse_selection

STUDY_PREFIX = "pred_"
LLAMA_LETTER_IDS: dict[str, int] = {"▁A": 319, "▁B": 350, "▁C": 315, "▁D": 360}
"""Ids of the answer pieces in LLaMA's vocabulary (kept by Chinese-LLaMA-Plus): the default without a tokenizer."""
STUDY_GLOBAL_BATCH = 64
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_MODEL_SIZE = re.compile(r"^\d+(?:\.\d+)?[bBmM]$")
_SPLIT = re.compile(r"_(test|valid)$")


@functools.lru_cache(maxsize=4)
def letter_ids(tokenizer: Union[str, Path, None]) -> tuple[int, ...]:
    """Ids of ``▁A``..``▁D``: from ``tokenizer`` (a SentencePiece model or tokenizer folder), else LLaMA's."""
    if tokenizer is None:
        return tuple(LLAMA_LETTER_IDS[p] for p in MC_PIECES)
    from jaxtune.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer)
    return tuple(tok.token_id(p) for p in MC_PIECES)


def _study_item(where: str, d: dict[str, Any], ability: str, ids: Sequence[int]) -> tuple[DoitRecord, dict]:
    """The record of one line of a pred file and what it is scored from (reply and letter logits, or perplexities);
    the big logit vector is not kept."""
    scores = d.pop("generated_score", None)
    try:
        rec = parse_record(d, where, ability)
    except DoitDataError as e:
        raise ScoreError(str(e)) from None
    if rec.question_format == 1:
        if "generated_ppl" not in d:
            raise ScoreError(f"{where}: question_format 1 needs field 'generated_ppl' (three perplexities)")
        return rec, {"perplexities": numbers(d["generated_ppl"], where, "generated_ppl", 3)}
    if "generated_response" not in d:
        raise ScoreError(f"{where}: question_format 0 needs field 'generated_response'")
    reply = text(d["generated_response"], where, "generated_response")
    logits = None
    if needs_letter_logits(rec):
        if scores is None:
            raise ScoreError(
                f"{where}: a multiple-choice item needs field 'generated_score' (the last-step logits "
                f"over the vocabulary)"
            )
        vector = numbers(scores, where, "generated_score")
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


def score_study_folder(p: PredictionFolder) -> tuple[SuiteResult, dict[str, float]]:
    """Score one folder of pred files: the suite result in ``p.mode``, and the study's totals per file."""
    ids = letter_ids(p.tokenizer)
    scored, totals = [], {}
    for path in sorted(p.files):
        ability = _study_ability(path)
        total, n = 0.0, 0
        for where, d in json_lines(path):
            rec, fields = _study_item(where, d, ability, ids)
            study = _score(rec, fields, "study")
            total += study_item_weight(rec) * (1.0 if study.correct else 0.0)
            scored.append((rec, study if p.mode == "study" else _score(rec, fields, p.mode), fields))
            n += 1
        totals[path.name] = total
        if p.on_file is not None:
            p.on_file(path, n)
    result = summarize_doit(
        scored,
        mode=p.mode,
        variant=_study_variant(p.files),
        run=study_run_info(p.folder),
        predictions="study pred.py",
        letter_ids=list(ids),
    )
    return result, totals


STUDY_PREDICTIONS = PredictionFiles(
    description=f"the study's {STUDY_PREFIX}<name>.json",
    matches=lambda path: path.name.startswith(STUDY_PREFIX) and path.suffix == ".json",
    score_folder=score_study_folder,
)
"""The study's ``pred_*.json`` files, as ``jaxtune score`` finds and scores them."""


def _item_from_jaxtune(where: str, d: dict[str, Any], mode: ScorerMode) -> tuple:
    prompt = required(d, "prompt", where)
    if "reference" not in d:
        raise ScoreError(
            f"{where}: missing field 'reference' (items written before jaxtune recorded the reference "
            f"reply cannot be re-scored; evaluate again)"
        )
    raw = {
        "messages": [*prompt, {"role": "assistant", "content": d["reference"]}],
        "type": required(d, "type", where),
        "question_format": required(d, "question_format", where),
        "answer": d.get("answer"),
        "idx": d.get("idx"),
    }
    if raw["question_format"] == 1:
        raw["choices"] = ["", "", ""]  # the perplexities were measured; the texts are not needed to rank them
    try:
        rec = parse_record(raw, where, text(required(d, "ability", where), where, "ability"))
    except DoitDataError as e:
        raise ScoreError(str(e)) from None
    if rec.question_format == 1:
        fields: dict[str, Any] = {
            "perplexities": numbers(required(d, "perplexities", where), where, "perplexities", 3, null_is_nan=True)
        }
    else:
        logits = d.get("letter_logits")
        fields = {
            "reply": text(required(d, "reply", where), where, "reply"),
            "letter_logits": None if logits is None else numbers(logits, where, "letter_logits", 4, null_is_nan=True),
        }
    return rec, _score(rec, fields, mode), fields


def rescore_doit_items(f: ItemsFile) -> SuiteResult:
    """Re-score a ``doit-*.items.jsonl`` of ``jaxtune eval`` in ``f.mode``, keeping the recorded generation limits."""
    scored = [_item_from_jaxtune(where, d, f.mode) for where, d in f.lines()]
    kept = {k: v for k, v in f.details.items() if k in ("max_new_tokens", "max_len")}
    return summarize_doit(scored, mode=f.mode, variant=f.variant, run=f.run, rescored_from=str(f.path), **kept)
