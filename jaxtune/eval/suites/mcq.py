"""Four-option multiple choice scored by next-token logits (shared by C-Eval, CMMLU and AGIEval).

An item is a chat prompt; the model's logits for the token right after the prompt (which ends with the template's
assistant opener, DoIT: ``<assistant>``) are read at the tokens of the four letters (:func:`letter_token_ids`: the
study's pieces on a SentencePiece vocabulary, the letters as the template encodes an answer on any other), and the argmax (ties to the first
letter) is the answer. Accuracy per task (subject); overall = the plain mean over tasks (macro), the micro average
over all items beside it. :func:`rescore_mcq` scores such a suite's saved items again without a model (each suite
registers it as its rescoring hook).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jaxtune.errors import JaxtuneError
from jaxtune.eval.errors import EvalSetupError
from jaxtune.eval.protocol import ChatCodec, LanguageModel, Message
from jaxtune.eval.rescoring import ItemsFile, ScoreError, numbers, required, text
from jaxtune.results import RunInfo, SuiteResult, SuiteSummary, ability_score, make_summary

log = logging.getLogger(__name__)

LETTERS = ("A", "B", "C", "D")
BARE_PIECES = ("A", "B", "C", "D")
"""The pieces the study's CMMLU and AGIEval scripts read (``convert_tokens_to_ids("A")``, without ``▁``)."""
PREFIXED_PIECES = ("▁A", "▁B", "▁C", "▁D")
"""The pieces an answer ``"A"`` becomes after the DoIT template (SentencePiece's dummy prefix)."""


def letter_token_ids(codec: ChatCodec, pieces: Sequence[str], suite: str) -> list[int]:
    """The ids whose next-token logits score the letters A-D.

    A SentencePiece-style vocabulary (one holding the ``▁``-prefixed letters :data:`PREFIXED_PIECES`, e.g.
    Chinese-LLaMA-Plus) keeps the study's ``pieces`` (bare for CMMLU and AGIEval, prefixed for C-Eval and DoIT), so
    scores stay the study's. Any other vocabulary (byte-level BPE: Qwen2, GPT-2, SmolLM2) reads each letter's token
    as the tokenizer encodes it after the template's answer prefix: the first id of the letter rendered as the
    assistant's reply (``codec.reply_ids``). EvalSetupError, in one line, when the pieces are missing or the
    encodings give no four distinct first tokens (a vocabulary that cannot be scored by letter)."""
    try:
        sentencepiece_style = all(codec.piece_id(p) is not None for p in PREFIXED_PIECES)
    except KeyError:
        sentencepiece_style = False
    if sentencepiece_style:
        try:
            return [codec.piece_id(p) for p in pieces]
        except KeyError as e:
            raise EvalSetupError(f"{suite}: cannot score this tokenizer by letter: {e.args[0]}") from None
    replies = [codec.reply_ids(letter) for letter in LETTERS]
    firsts = [reply[0] if reply else None for reply in replies]
    if None in firsts or len(set(firsts)) != len(LETTERS):
        raise EvalSetupError(
            f"{suite}: cannot score this tokenizer by letter: the answers A-D as the template renders them start "
            f"with the tokens {firsts}, not four distinct ones"
        )
    return [int(i) for i in firsts]


class McqDataError(JaxtuneError, ValueError):
    """A benchmark file is malformed; the message names file, line or row, and field."""


@dataclass(frozen=True)
class Question:
    """One four-option question as stored in a benchmark file."""

    question: str
    options: tuple[str, str, str, str]
    answer: str
    where: str
    """``file:line`` (or row) it came from."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class McqItem:
    """A question rendered as a chat prompt, ready to score."""

    task: str
    messages: tuple[Message, ...]
    label: str
    where: str
    n_shots: int = 0


def read_csv_questions(path: Path, columns: Sequence[str], answer_column: str) -> list[Question]:
    """Rows of a benchmark CSV with ``columns`` = (question, A, B, C, D) and an answer column, checked."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in (*columns, answer_column) if c not in header]
        if missing:
            raise McqDataError(f"{path}: header {header} lacks columns {missing}")
        questions = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:
                raise McqDataError(f"{where}: more fields than the header has")
            values = [row[c] for c in columns]
            if any(v is None for v in values):
                raise McqDataError(f"{where}: fewer fields than the header has")
            answer = (row[answer_column] or "").strip()
            if answer not in LETTERS:
                raise McqDataError(f"{where}: field '{answer_column}' must be one of A-D, got {row[answer_column]!r}")
            questions.append(
                Question(
                    values[0],
                    tuple(values[1:5]),
                    answer,
                    where,  # type: ignore[arg-type]
                    {k: v for k, v in row.items() if k not in (*columns, answer_column)},
                )
            )
    if not questions:
        raise McqDataError(f"{path}: no questions")
    return questions


def drop_longest_shots(shots: list[tuple[Any, int]], fits: Callable[[list[tuple[Any, int]]], bool]) -> list[Any]:
    """The study's rule: while the prompt does not fit, remove every shot of the greatest length (ties all go)."""
    kept = list(shots)
    while kept and not fits(kept):
        longest = max(n for _, n in kept)
        kept = [s for s in kept if s[1] != longest]
    return [s for s, _ in kept]


def evaluate_mcq(
    items: Sequence[McqItem],
    lm: LanguageModel,
    codec: ChatCodec,
    *,
    suite: str,
    variant: str,
    letter_pieces: Sequence[str] = BARE_PIECES,
    run: RunInfo | None = None,
    chunk_size: int = 32,
    on_progress: Callable[[int, int], None] | None = None,
    **details: Any,
) -> SuiteResult:
    """Score every item by the argmax of the next-token logits of ``letter_pieces``; one ability per task."""
    if not items:
        raise ValueError(f"{suite}-{variant}: no items to evaluate")
    candidate_ids = letter_token_ids(codec, letter_pieces, f"{suite}-{variant}")
    records: list[dict[str, Any]] = []
    per_task: dict[str, list[float]] = {}
    for start in range(0, len(items), chunk_size):
        chunk = items[start : start + chunk_size]
        logits = np.asarray(lm.next_token_logits([codec.prompt_ids(it.messages) for it in chunk], candidate_ids))
        if logits.shape != (len(chunk), len(candidate_ids)):
            raise RuntimeError(
                f"next_token_logits returned shape {logits.shape}, expected {(len(chunk), len(candidate_ids))}"
            )
        for it, row in zip(chunk, logits):
            pred = LETTERS[int(np.argmax(row))]
            correct = pred == it.label
            per_task.setdefault(it.task, []).append(1.0 if correct else 0.0)
            records.append(
                {
                    "task": it.task,
                    "where": it.where,
                    "n_shots": it.n_shots,
                    "prompt": list(it.messages),
                    "letter_logits": [float(x) for x in row],
                    "parsed": pred,
                    "label": it.label,
                    "correct": correct,
                }
            )
        if on_progress is not None:
            on_progress(min(start + chunk_size, len(items)), len(items))
    return SuiteResult(
        summarize_mcq(per_task, suite=suite, variant=variant, letter_pieces=letter_pieces, run=run, **details), records
    )


def summarize_mcq(
    per_task: dict[str, list[float]],
    *,
    suite: str,
    variant: str,
    letter_pieces: Sequence[str],
    run: RunInfo | None = None,
    **details: Any,
) -> SuiteSummary:
    """Accuracy per task (chance 25%), overall = macro mean, the micro average over all items in ``details``."""
    abilities = [ability_score(task, flags, [0.25] * len(flags)) for task, flags in per_task.items()]
    all_flags = [f for flags in per_task.values() for f in flags]
    return make_summary(
        suite,
        variant,
        "study",
        abilities,
        run,
        micro_average=100.0 * sum(all_flags) / len(all_flags),
        letter_pieces=list(letter_pieces),
        **details,
    )


def rescore_mcq(f: ItemsFile) -> SuiteResult:
    """Re-score a ``*.items.jsonl`` of a multiple-choice suite from each item's letter logits and label (the argmax,
    ties to the first letter), keeping the recorded details (the letter pieces among them)."""
    per_task: dict[str, list[float]] = {}
    items = []
    for where, d in f.lines():
        row = numbers(required(d, "letter_logits", where), where, "letter_logits", 4, null_is_nan=True)
        label = required(d, "label", where)
        if label not in LETTERS:
            raise ScoreError(f"{where}: field 'label' must be one of A-D, got {label!r}")
        parsed = LETTERS[int(np.argmax(np.asarray(row)))]
        per_task.setdefault(text(required(d, "task", where), where, "task"), []).append(float(parsed == label))
        items.append({**d, "parsed": parsed, "correct": parsed == label})
    details = dict(f.details)
    pieces = details.pop("letter_pieces", list(LETTERS))
    details.pop("micro_average", None)
    summary = summarize_mcq(
        per_task,
        suite=f.suite,
        variant=f.variant,
        letter_pieces=pieces,
        run=f.run,
        rescored_from=str(f.path),
        **details,
    )
    return SuiteResult(summary, items)
