"""The DoIT ability suite's records (``curated/valid`` or ``curated/test``) and how each is scored.

Per item, exactly as the study scored it (``scorer_mode="study"``, the default) or with its errors fixed
(``"corrected"``):

- ``question_format`` 1 (code, creative writing, role-play; checked before ``type``): the perplexity of each of the
  three choices after ``messages[:-1]`` + ``<assistant>``, over the choice tokens and ``<eot>``, the sequence cut to
  its first 2048 tokens; correct when ``choices[0]`` is the least perplexing (ties correct). Chance 1/3.
- ``question_format`` 0: greedy generation after ``messages[:-1]`` + ``<assistant>`` (the prompt never truncated),
  then by ``type``: multiple choice (biology, reasoning, understanding, C-Eval OOD, and history/chinese items whose
  label is A-D), history true/false, chinese cloze, ethics multi-select, math.

Score per ability (one ability per data file) = 100 x correct / N, with the chance level beside it; overall = the
plain mean over abilities (:func:`summarize_doit`). ``details.study_total`` is the study's own per-file number (a
count; each C-Eval item counts 100/40). Running the suite on a model is :mod:`jaxtune.eval.suites.doit`; scoring
saved predictions without one, :mod:`jaxtune.eval.suites.doit_rescore`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jaxtune.data import jsonl
from jaxtune.errors import JaxtuneError
from jaxtune.eval import parsers
from jaxtune.eval.math_answers import extract_math_answer, math_answers_equal
from jaxtune.names import ScorerMode
from jaxtune.results import RunInfo, SuiteResult, ability_score, make_summary

MC_PIECES = ("▁A", "▁B", "▁C", "▁D")
"""The study decided long multiple-choice replies by the last-step logits of these pieces (ids 319, 350, 315, 360
in the DoIT vocabulary), not the bare letters."""
MULTIPLE_CHOICE_TYPES = frozenset({"biology", "reasoning", "understanding"})
FORMAT1_CHANCE = 1.0 / 3.0
CEVAL_ITEM_WEIGHT = 100.0 / 40.0
"""The study added 100/40 per C-Eval OOD item to its per-file total (it assumed 40 items per subject)."""

_FOUR_OPTIONS = re.compile(r"\nA\..*\nB\..*\nC\..*\nD\.")
_THREE_OPTIONS = re.compile(r"\nA\..*\nB\..*\nC\.")


class DoitDataError(JaxtuneError, ValueError):
    """A DoIT record is malformed; the message names file, line and field."""


@dataclass(frozen=True)
class DoitRecord:
    """One evaluation record (extra keys of the file are kept in ``raw``)."""

    ability: str
    where: str
    """``file:line`` of the record."""
    messages: tuple[Mapping[str, str], ...]
    type: str
    question_format: int
    choices: tuple[str, ...] | None
    answer: str | None
    idx: Any
    raw: Mapping[str, Any]

    @property
    def label(self) -> str:
        """The reference reply (content of the last message)."""
        return self.messages[-1]["content"]


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


def ability_of_file(path: Path) -> str:
    """``biology_test.json`` -> ``biology``; ``ceval_physician.json`` -> ``ceval_physician``."""
    return re.sub(r"_(valid|test|train|full|\d+)$", "", path.stem)


def parse_record(d: Any, where: str, ability: str) -> DoitRecord:
    """The record of one parsed line (``where``: its ``file:line``); a :class:`DoitDataError` naming the field."""
    if not isinstance(d, dict):
        raise DoitDataError(f"{where}: expected a JSON object, got {type(d).__name__}")
    for key in ("messages", "type", "question_format"):
        if key not in d:
            raise DoitDataError(f"{where}: missing required field '{key}'")
    messages = d["messages"]
    if not isinstance(messages, list) or len(messages) < 2:
        raise DoitDataError(f"{where}: field 'messages' must be a list of at least 2 turns (prompt and reference)")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise DoitDataError(f"{where}: messages[{i}] must be an object with string 'role' and 'content'")
    if messages[-1]["role"] != "assistant":
        raise DoitDataError(
            f"{where}: the last message must be the reference assistant turn, got role {messages[-1]['role']!r}"
        )
    fmt = d["question_format"]
    if fmt not in (0, 1) or isinstance(fmt, bool):
        raise DoitDataError(f"{where}: field 'question_format' must be 0 or 1, got {fmt!r}")
    if not isinstance(d["type"], str):
        raise DoitDataError(f"{where}: field 'type' must be a string, got {d['type']!r}")
    choices = d.get("choices")
    if fmt == 1:
        if not (isinstance(choices, list) and len(choices) == 3 and all(isinstance(c, str) for c in choices)):
            raise DoitDataError(
                f"{where}: question_format 1 needs field 'choices': a list of 3 strings, reference "
                f"first; got {choices!r}"
            )
    answer = d.get("answer")
    if fmt == 0 and d["type"] == "math" and not isinstance(answer, str):
        raise DoitDataError(f"{where}: a math record needs a string field 'answer', got {answer!r}")
    return DoitRecord(
        ability=ability,
        where=where,
        messages=tuple(messages),
        type=d["type"],
        question_format=fmt,
        choices=tuple(choices) if isinstance(choices, list) else None,
        answer=answer if isinstance(answer, str) else None,
        idx=d.get("idx"),
        raw=d,
    )


def load_doit_file(path: str | Path, ability: str | None = None) -> list[DoitRecord]:
    """Read one JSON Lines file of DoIT records (blank lines ignored; bare NaN refused)."""
    path = Path(path)
    name = ability or ability_of_file(path)
    records = []
    for lineno, d in jsonl.read_json_lines(path, bad="yield"):
        where = f"{path}:{lineno}"
        if isinstance(d, jsonl.JsonLinesError):
            raise DoitDataError(f"{d}; DoIT files are JSON Lines")
        records.append(parse_record(d, where, name))
    if not records:
        raise DoitDataError(f"{path}: no records")
    return records


def load_doit_split(directory: str | Path, abilities: Sequence[str] | None = None) -> dict[str, list[DoitRecord]]:
    """All ``*.json`` files of a DoIT split folder (e.g. ``curated/test``), one ability per file, sorted by name.
    ``abilities`` keeps only those (an unknown name is an error)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"DoIT split folder {directory} does not exist")
    files = sorted(directory.glob("*.json"))
    if not files:
        raise DoitDataError(f"{directory}: no *.json files")
    by_ability = {ability_of_file(f): f for f in files}
    if abilities is not None:
        missing = [a for a in abilities if a not in by_ability]
        if missing:
            raise DoitDataError(f"{directory}: no file for abilities {missing}; found {sorted(by_ability)}")
        by_ability = {a: by_ability[a] for a in abilities}
    return {a: load_doit_file(f, a) for a, f in by_ability.items()}


# --------------------------------------------------------------------------------------------------------------------
# Scoring one item
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemScore:
    kind: str
    """``ranking``, ``choice``, ``true_false``, ``cloze``, ``multi_select`` or ``math``."""
    parsed: Any
    label: Any
    correct: bool
    chance: float


def _is_ceval(record_type: str) -> bool:
    return record_type.startswith("ceval")


def needs_letter_logits(record: DoitRecord) -> bool:
    """Whether the record is scored as multiple choice from a generation, so the letters' last-step logits are kept
    (the study's fallback for long replies)."""
    return record.question_format == 0 and (
        record.type in MULTIPLE_CHOICE_TYPES
        or _is_ceval(record.type)
        or (record.type in ("history", "chinese") and record.label in parsers.CHOICE_LETTERS)
    )


def _choice(
    record: DoitRecord, reply: str, letter_logits: Sequence[float] | None, mode: ScorerMode, chance: float
) -> ItemScore:
    label = record.label
    if label not in parsers.CHOICE_LETTERS:
        raise DoitDataError(f"{record.where}: multiple-choice label must be one of A-D, got {label!r}")
    parsed = parsers.parse_single_choice(reply, letter_logits, mode)
    return ItemScore("choice", parsed, label, parsed == label, chance)


def score_doit_item(
    record: DoitRecord,
    reply: str | None = None,
    letter_logits: Sequence[float] | None = None,
    perplexities: Sequence[float] | None = None,
    mode: ScorerMode = "study",
) -> ItemScore:
    """Score one record from its generated ``reply`` and the last-step logits of ``▁A``..``▁D`` (format 0) or the
    perplexities of its three choices (format 1)."""
    if record.question_format == 1:
        if perplexities is None or len(perplexities) != 3:
            raise ValueError(f"{record.where}: format 1 needs 3 perplexities, got {perplexities!r}")
        values = [float(p) for p in perplexities]
        finite = [v if np.isfinite(v) else np.inf for v in values]
        return ItemScore(
            "ranking", int(np.argmin(finite)), 0, parsers.reference_ranked_first(values, mode), FORMAT1_CHANCE
        )
    if reply is None:
        raise ValueError(f"{record.where}: format 0 needs the generated reply")
    t = record.type
    label = record.label
    if t == "math":
        parsed = extract_math_answer(reply, mode)
        return ItemScore("math", parsed, record.answer, math_answers_equal(parsed, record.answer, mode), 0.0)
    if t == "ethics":
        gold = parsers.parse_multi_select(label, mode)
        got = parsers.parse_multi_select(reply, mode)
        return ItemScore("multi_select", sorted(got), sorted(gold), got == gold, parsers.multi_select_chance(gold))
    if t == "understanding":
        prompt = record.messages[-2]["content"]
        if not _THREE_OPTIONS.search(prompt):
            raise DoitDataError(
                f"{record.where}: understanding prompt lists no 'A.', 'B.', 'C.' options on their own lines"
            )
        chance = 0.25 if _FOUR_OPTIONS.search(prompt) else (0.33 if mode == "study" else 1.0 / 3.0)
        return _choice(record, reply, letter_logits, mode, chance)
    if t in ("biology", "reasoning") or _is_ceval(t):
        return _choice(record, reply, letter_logits, mode, 0.25)
    if t == "history":
        if label in parsers.CHOICE_LETTERS:
            return _choice(record, reply, letter_logits, mode, 0.25)
        try:
            gold_tf = parsers.true_false_label(label)
        except ValueError as e:
            raise DoitDataError(f"{record.where}: {e}") from None
        parsed_tf = parsers.parse_true_false(reply, mode)
        return ItemScore("true_false", parsed_tf, gold_tf, parsed_tf == gold_tf, 0.5)
    if t == "chinese":
        if label in parsers.CHOICE_LETTERS:
            return _choice(record, reply, letter_logits, mode, 0.25)
        parsed_cloze = parsers.parse_cloze(reply, mode)
        return ItemScore("cloze", parsed_cloze, label, parsers.cloze_matches(parsed_cloze, label, mode), 0.0)
    raise DoitDataError(
        f"{record.where}: no scorer for question_format 0 with type {t!r} (format-0 types: math, "
        f"ethics, understanding, reasoning, history, biology, chinese, ceval_*)"
    )


def study_item_weight(record: DoitRecord) -> float:
    """What one correct item adds to the study's per-file total (``scorer.py``): 100/40 for a C-Eval item, else 1."""
    return CEVAL_ITEM_WEIGHT if record.question_format == 0 and _is_ceval(record.type) else 1.0


def summarize_doit(
    scored: Sequence[tuple[DoitRecord, ItemScore, Mapping[str, Any]]],
    *,
    mode: ScorerMode,
    variant: str,
    run: RunInfo | None = None,
    abilities: Sequence[str] | None = None,
    **details: Any,
) -> SuiteResult:
    """The summary (one ability per data file, in ``abilities`` order or first-seen order) and per-item records of
    scored items; ``reply_fields`` (the third element) are what the item was scored from (reply and letter logits,
    or perplexities)."""
    items: list[dict[str, Any]] = []
    per_ability: dict[str, list[tuple[ItemScore, DoitRecord]]] = {a: [] for a in abilities or ()}
    for rec, score, reply_fields in scored:
        per_ability.setdefault(rec.ability, []).append((score, rec))
        items.append(
            {
                "ability": rec.ability,
                "where": rec.where,
                "idx": rec.idx,
                "type": rec.type,
                "question_format": rec.question_format,
                "prompt": list(rec.messages[:-1]),
                "reference": rec.label,
                "answer": rec.answer,
                **reply_fields,
                "kind": score.kind,
                "parsed": score.parsed,
                "label": score.label,
                "correct": score.correct,
                "chance": score.chance,
            }
        )

    results = []
    for name, pairs in per_ability.items():
        if not pairs:
            continue
        correct = [1.0 if s.correct else 0.0 for s, _ in pairs]
        chances = [s.chance for s, _ in pairs]
        results.append(
            ability_score(
                name,
                correct,
                chances,
                study_total=sum(study_item_weight(r) * c for (_, r), c in zip(pairs, correct)),
                study_expected_total=sum(study_item_weight(r) * c for (_, r), c in zip(pairs, chances)),
            )
        )
    summary = make_summary("doit", variant, mode, results, run, **details)
    return SuiteResult(summary, items)
