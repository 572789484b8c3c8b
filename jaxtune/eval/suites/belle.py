"""The BELLE evaluation: generate answers to ``eval_set.json`` with the model's own template, score them with an LLM
judge (see :mod:`jaxtune.eval.judge`), and report per-class means.

Files (``shared/data/belle_eval``): ``eval_set.json`` (JSON Lines ``{question, std_answer, class}``) and
``eval_prompt.json`` (JSON Lines ``{class, prompt}``). Class names are matched after normalising (NBSP to space,
lower case, collapsed spaces: ``open QA`` = ``open qa``, ``closed\\xa0QA`` = ``closed qa``). The judge message is
reference-free when ``std_answer`` is empty (not by class: 39 rewrite items carry a reference)::

    {prompt} {question}  模型回答： '{answer}'。请针对模型回答给出得分，顺便给出理由：
    {prompt} {question} 标准回答:{std_answer}  模型回答：' {answer}'。请针对模型回答给出得分，顺便给出理由：

An answer's score is the mean of its parsed judgements (``repeats``, 3 by default); a class's score is the mean over
its answers; overall = unweighted mean over classes, and also without math and code (the authors found the judge
unreliable there). Judgements that stay unparseable after the re-asks are left out of the means and reported as the
parse-failure rate; an answer with none left is counted as unscored. Scores are on the judge's 0-1 scale (unit
``fraction``); the judge's identity is recorded with the result. Items the judge gave up on (no answer after
``eval.judge_retries`` retries of ``eval.judge_timeout_s``) are left out of every score: the summary lists them in
``details.judge_failed`` (their ``where``, ``eval_set.json:LINE``) with a note, their items-file records carry
``judge_failed`` (why), and ``jaxtune eval`` then exits 75; a rerun asks the judge only for them (the answers and
the judgements made are kept).

Generation (the ``eval.*`` decoding keys; :data:`MODEL_CARD_DECODING`): each question is one user turn of the
model's template (BELLE's: ``Human: {question}\\n\\nAssistant:``), decoded with the settings of the inference code
released with the study's models, the BelleGroup/BELLE-7B-0.2M ... 2M model cards::

    model.generate(input_ids, max_new_tokens=200, do_sample=True, top_k=30, top_p=0.85, temperature=0.35,
                   repetition_penalty=1.2)

i.e. ``eval.max_new_tokens=200 eval.temperature=0.35 eval.top_k=30 eval.top_p=0.85 eval.repetition_penalty=1.2``
(the BELLE recipes in ``configs/`` set them). The penalty, temperature, top-k and top-p are applied in
transformers' order (:mod:`jaxtune.eval.sampling`); sampling draws from ``eval.seed``. BELLE's repository has other
inference scripts (``train/generate.py`` @ 8234dd3: beam search, 4 beams, at most 512 new tokens;
``train/src/entry_point/inference.py``: temperature 0.9, top-p 0.6); the paper does not say which produced its
figure. Greedy decoding instead: ``eval.temperature=0 eval.repetition_penalty=1.0``. Every summary records the
decoding it was made with (``details.decoding``), named ``model_card``, ``greedy`` or ``custom``.

The generated answers are written before judging (:class:`AnswerStore`, ``belle-answers.jsonl`` in the output
folder), chunk by chunk as they come, so a rerun after a judge failure or a crash takes them from the file and only
generates what is missing. Its first line is ``{"generation": {...}}`` (checkpoint, template, decoding settings);
then one ``{"where", "question", "answer"}`` per item in eval-set order. A file made with other settings or for other
questions is not reused (a warning says which); a torn last line is dropped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
from jax import process_count
from jax.experimental import multihost_utils

from jaxtune.config.schema import EvalConfig
from jaxtune.data import jsonl
from jaxtune.errors import JaxtuneError
from jaxtune.eval.distributed import is_writer
from jaxtune.eval.errors import EvalSetupError
from jaxtune.eval.judge import JUDGE_CACHE_FILE, Judge, JudgeCache, JudgeError, JudgeGaveUp, JudgeSettings
from jaxtune.eval.judge_provenance import judge_provenance
from jaxtune.eval.protocol import ChatCodec, LanguageModel
from jaxtune.eval.suites.belle_figure import write_study_figure
from jaxtune.eval.suites.registry import ReportHooks, Rescoring, Suite, SuiteRun, register
from jaxtune.results import AbilityScore, RunInfo, SuiteResult, ability_score, make_summary

log = logging.getLogger(__name__)

UNRELIABLE_CLASSES = ("math", "code")

MODEL_CARD_DECODING: dict[str, Any] = {
    "max_new_tokens": 200,
    "temperature": 0.35,
    "top_k": 30,
    "top_p": 0.85,
    "repetition_penalty": 1.2,
}
"""Decoding of the BELLE-7B model cards' inference code (``do_sample=True``), as ``eval.*`` settings."""


def decoding_settings(
    max_new_tokens: int, temperature: float, top_k: int, top_p: float, repetition_penalty: float, seed: int
) -> dict[str, Any]:
    """The decoding a BELLE result was generated with, named ``model_card`` (:data:`MODEL_CARD_DECODING`),
    ``greedy`` (temperature 0, no penalty) or ``custom``."""
    values = {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "repetition_penalty": repetition_penalty,
    }
    if values == MODEL_CARD_DECODING:
        name = "model_card"
    elif temperature == 0 and repetition_penalty == 1.0:
        name = "greedy"
    else:
        name = "custom"
    return {"name": name, **values, "seed": seed}


class BelleDataError(JaxtuneError, ValueError):
    """A BELLE evaluation file is malformed; the message names file and line."""


@dataclass(frozen=True)
class BelleItem:
    question: str
    std_answer: str
    cls: str
    """Normalised class name."""
    where: str


def normalise_class(name: str) -> str:
    """``"closed\\xa0QA"`` -> ``"closed qa"``: NBSP to space, lower case, runs of whitespace collapsed."""
    return re.sub(r"\s+", " ", name.replace("\xa0", " ")).strip().lower()


def read_json_lines(
    path: str | Path,
    required: Sequence[str],
    on_error: Literal["raise", "skip"] = "raise",
    problems: list[str] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """``(file:line, object)`` for each line holding a JSON object with string ``required`` fields. Invalid JSON
    (including bare NaN) or a missing field raises naming file and line, or with ``on_error="skip"`` is appended to
    ``problems`` and left out."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    out = []
    for lineno, d in jsonl.read_json_lines(path, bad="yield"):
        where = f"{path}:{lineno}"
        try:
            if isinstance(d, jsonl.JsonLinesError):
                raise ValueError(d.problem)
            if not isinstance(d, dict):
                raise ValueError(f"expected a JSON object, got {type(d).__name__}")
            for key in required:
                if not isinstance(d.get(key), str):
                    raise ValueError(f"field '{key}' must be a string, got {d.get(key)!r}")
        except ValueError as e:
            message = f"{where}: {e}"
            if on_error == "raise":
                raise BelleDataError(message) from None
            log.warning("skipping %s", message)
            if problems is not None:
                problems.append(message)
            continue
        out.append((where, d))
    return out


def load_belle_prompts(path: str | Path) -> dict[str, str]:
    """Judge prompt per normalised class."""
    prompts: dict[str, str] = {}
    for where, d in read_json_lines(path, ("class", "prompt")):
        cls = normalise_class(d["class"])
        if cls in prompts:
            raise BelleDataError(f"{where}: a second prompt for class {cls!r}")
        prompts[cls] = d["prompt"]
    return prompts


def load_belle_eval_set(
    path: str | Path,
    prompts: dict[str, str],
    on_error: Literal["raise", "skip"] = "raise",
    problems: list[str] | None = None,
) -> list[BelleItem]:
    """The evaluation questions; each class must have a judge prompt."""
    items = []
    for where, d in read_json_lines(path, ("question", "std_answer", "class"), on_error, problems):
        cls = normalise_class(d["class"])
        if cls not in prompts:
            message = f"{where}: class {d['class']!r} has no judge prompt (known: {sorted(prompts)})"
            if on_error == "raise":
                raise BelleDataError(message)
            if problems is not None:
                problems.append(message)
            continue
        items.append(BelleItem(d["question"], d["std_answer"], cls, where))
    if not items:
        raise BelleDataError(f"{path}: no evaluation items")
    return items


def judge_message(prompt: str, question: str, std_answer: str, answer: str) -> str:
    """The one user message sent to the judge (spacing and colon widths exactly as BELLE's page wrote them)."""
    if std_answer.strip() == "":
        return f"{prompt} {question}  模型回答： '{answer}'。请针对模型回答给出得分，顺便给出理由："
    return f"{prompt} {question} 标准回答:{std_answer}  模型回答：' {answer}'。请针对模型回答给出得分，顺便给出理由："


ANSWERS_FILE = "belle-answers.jsonl"


class AnswerStore:
    """The generated answers of one evaluation on disk (see the module docstring), written as they come."""

    def __init__(self, path: str | Path, generation: dict[str, Any], items: Sequence[BelleItem]):
        self.path = Path(path)
        self.generation = json.loads(json.dumps(generation))  # as it reads back
        self.items = list(items)

    def saved(self) -> list[str]:
        """The answers already on disk for the first items, in order (empty when none or made otherwise)."""
        if not self.path.is_file():
            return []
        lines = self.path.read_text(encoding="utf-8").split("\n")
        try:
            header = json.loads(lines[0])
        except ValueError:
            log.warning("%s:1: not an answers file header; generating every answer again", self.path)
            return []
        if not isinstance(header, dict) or header.get("generation") != self.generation:
            old = header.get("generation") if isinstance(header, dict) else None
            changed = sorted(
                k for k in {**(old or {}), **self.generation} if (old or {}).get(k) != self.generation.get(k)
            )
            log.warning(
                "%s was made with other settings (%s differ); generating every answer again",
                self.path,
                ", ".join(changed) or "header",
            )
            return []
        answers: list[str] = []
        for lineno, line in enumerate(lines[1:], 2):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                answer = entry["answer"]
                if not isinstance(answer, str):
                    raise TypeError("answer is not a string")
            except (ValueError, KeyError, TypeError) as e:
                log.warning(
                    "%s:%d: unreadable answer line (%s); generating from item %d on",
                    self.path,
                    lineno,
                    e,
                    len(answers) + 1,
                )
                break
            if len(answers) >= len(self.items):
                break
            item = self.items[len(answers)]
            if entry.get("where") != item.where or entry.get("question") != item.question:
                log.warning(
                    "%s:%d: answers a different question than %s; generating from there on",
                    self.path,
                    lineno,
                    item.where,
                )
                break
            answers.append(answer)
        return answers

    def start(self, kept: Sequence[str]) -> None:
        """Rewrite the file (atomically) with the header and the first ``len(kept)`` answers."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.write(json.dumps({"generation": self.generation}, ensure_ascii=False) + "\n")
            f.writelines(self._line(it, a) for it, a in zip(self.items, kept))
        tmp.replace(self.path)

    def append(self, items: Sequence[BelleItem], answers: Sequence[str]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.writelines(self._line(it, a) for it, a in zip(items, answers))
            f.flush()
            os.fsync(f.fileno())

    @staticmethod
    def _line(item: BelleItem, answer: str) -> str:
        return json.dumps({"where": item.where, "question": item.question, "answer": answer}, ensure_ascii=False) + "\n"


def generate_answers(
    items: Sequence[BelleItem],
    lm: LanguageModel,
    codec: ChatCodec,
    *,
    max_new_tokens: int = 1024,
    chunk_size: int = 32,
    on_progress: Callable[[int, int], None] | None = None,
    on_answers: Callable[[Sequence[BelleItem], Sequence[str]], None] | None = None,
) -> list[str]:
    """Answers decoded by ``lm`` (greedy or sampled, as it is set up), each question as one user turn in the
    model's template; ``on_answers`` gets each chunk's items and answers as soon as they exist (e.g.
    :meth:`AnswerStore.append`)."""
    answers: list[str] = []
    for start in range(0, len(items), chunk_size):
        chunk = items[start : start + chunk_size]
        outs = lm.generate(
            [codec.prompt_ids([{"role": "user", "content": it.question}]) for it in chunk],
            max_new_tokens,
            codec.stop_ids,
        )
        new = [codec.decode([t for t in o.tokens if t not in codec.stop_ids]).strip() for o in outs]
        answers += new
        if on_answers is not None:
            on_answers(chunk, new)
        if on_progress is not None:
            on_progress(len(answers), len(items))
    return answers


def class_scores(per_class: dict[str, list[tuple[float | None, int]]]) -> tuple[list[AbilityScore], list[str]]:
    """Per class (sorted), its ability score over its scored answers (``per_class``: (answer score or None, failed
    judgements) per answer); and the classes none of whose answers was scored."""
    abilities, unscored = [], []
    for cls in sorted(per_class):
        rows = per_class[cls]
        scored = [s for s, _ in rows if s is not None]
        if not scored:
            unscored.append(cls)
            continue
        abilities.append(
            ability_score(
                cls,
                scored,
                unit="fraction",
                n_items=len(rows),
                n_unscored=len(rows) - len(scored),
                failed_judgements=sum(f for _, f in rows),
            )
        )
    return abilities, unscored


def _judge_failed_note(failed: Sequence[str], total: int) -> str:
    return (
        f"the judge gave up on {len(failed)} of {total} items (no answer after every retry): they are left out of "
        f"every score and listed in judge_failed; run the same command again to judge only them (the answers and "
        f"the judgements already made are kept)"
    )


def score_belle(
    items: Sequence[BelleItem],
    answers: Sequence[str],
    prompts: dict[str, str],
    judge: Judge,
    *,
    run: RunInfo | None = None,
    variant: str = "eval_set",
    **details: Any,
) -> SuiteResult:
    """Judge every answer ``judge.settings.repeats`` times and aggregate per class. Items the judge gave up on (a
    judgement without an answer after every retry) are left out of every score and named in the summary's
    ``judge_failed`` (their ``where``), with a note; :class:`JudgeGaveUp` when it gave up on every item."""
    if len(items) != len(answers):
        raise ValueError(f"{len(items)} items but {len(answers)} answers")
    messages = [judge_message(prompts[it.cls], it.question, it.std_answer, a) for it, a in zip(items, answers)]
    judgements = judge.judge_all(messages, labels=[f"item {it.where}" for it in items])

    records, per_class, gave_up = [], {}, []
    total = failed = asks = 0
    for it, answer, message, js in zip(items, answers, messages, judgements):
        record = {
            "class": it.cls,
            "where": it.where,
            "prompt": it.question,
            "reply": answer,
            "judge_message": message,
            "judgements": [j.score for j in js],
            "judge_replies": [list(j.replies) for j in js],
        }
        why = next((j.gave_up for j in js if j.gave_up is not None), None)
        if why is not None:
            gave_up.append(it.where)
            records.append({**record, "parsed": None, "correct": None, "judge_failed": why})
            continue
        scores = [j.score for j in js if j.score is not None]
        total += len(js)
        failed += sum(j.failed for j in js)
        asks += sum(len(j.replies) for j in js)
        item_score = sum(scores) / len(scores) if scores else None
        per_class.setdefault(it.cls, []).append((item_score, sum(j.failed for j in js)))
        records.append({**record, "parsed": item_score, "correct": item_score})

    if gave_up and len(gave_up) == len(items):
        raise JudgeGaveUp(
            f"the judge gave up on all {len(items)} items (no answer after every retry); the answers are kept: run "
            f"the same command again once the judge answers"
        )
    abilities, unscored = class_scores(per_class)
    if not abilities:
        raise JudgeError(
            f"the judge produced no parseable score for any of the {len(items)} answers "
            f"({failed} of {total} judgements unparseable); its replies are in the judge cache"
        )
    if gave_up:
        notes = [*details.pop("notes", []), _judge_failed_note(gave_up, len(items))]
        details.update(judge_failed=gave_up, notes=notes)
    reliable = [a.score for a in abilities if a.name not in UNRELIABLE_CLASSES]
    summary = make_summary(
        "belle",
        variant,
        "judge",
        abilities,
        run,
        unit="fraction",
        overall_without_math_code=sum(reliable) / len(reliable) if reliable else math.nan,
        judge=judge.settings.identity(),
        judgements=total,
        failed_judgements=failed,
        parse_failure_rate=failed / total if total else 0.0,
        judge_requests_per_judgement=asks / total if total else 0.0,
        unscored_classes=unscored,
        answers=len(items),
        unscored_answers=sum(1 for rows in per_class.values() for s, _ in rows if s is None),
        **details,
    )
    return SuiteResult(summary, records)


def evaluate_belle(
    items: Sequence[BelleItem],
    prompts: dict[str, str],
    lm: LanguageModel,
    codec: ChatCodec,
    judge: Judge,
    *,
    max_new_tokens: int = 1024,
    run: RunInfo | None = None,
    chunk_size: int = 32,
    **details: Any,
) -> SuiteResult:
    """Generate and judge: the whole BELLE evaluation of one checkpoint."""
    answers = generate_answers(items, lm, codec, max_new_tokens=max_new_tokens, chunk_size=chunk_size)
    return score_belle(items, answers, prompts, judge, run=run, max_new_tokens=max_new_tokens, **details)


# --------------------------------------------------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------------------------------------------------

# The eval.* keys an answer kept in belle-answers.jsonl was generated with (with the checkpoint and the template).
_GENERATION_KEYS = (
    "max_new_tokens",
    "max_prompt_len",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "seed",
    "compute_dtype",
    "tokenizer",
)


def judge_settings(eval_cfg: EvalConfig) -> JudgeSettings:
    """The BELLE judge of an EvalConfig; an error naming the missing field when it is not configured."""
    missing = [name for name in ("judge_base_url", "judge_model") if getattr(eval_cfg, name) is None]
    if missing:
        raise EvalSetupError(f"suite 'belle' needs an LLM judge: set {', '.join('eval.' + m for m in missing)}")
    try:
        return JudgeSettings(
            base_url=eval_cfg.judge_base_url,
            model=eval_cfg.judge_model,
            api_key_env=eval_cfg.judge_api_key_env,
            repeats=eval_cfg.judge_repeats,
            concurrency=eval_cfg.judge_concurrency,
            max_tokens=eval_cfg.judge_max_tokens,
            timeout_s=eval_cfg.judge_timeout_s,
            max_retries=eval_cfg.judge_retries,
        )
    except ValueError as e:
        raise EvalSetupError(f"eval.judge_*: {e}") from None


def _check(eval_cfg: EvalConfig, out_dir: Optional[Path]) -> None:
    judge_settings(eval_cfg)
    if out_dir is not None and is_writer():
        JudgeCache(Path(out_dir) / JUDGE_CACHE_FILE)  # a corrupt line is named before anything is loaded


def _run(r: SuiteRun) -> Optional[SuiteResult]:
    """Generate on every process (sharded), keeping the answers in ``answers_dir`` and taking those already there;
    judge on process 0 only (None elsewhere)."""
    cfg = r.eval_cfg
    prompts = load_belle_prompts(r.root / "eval_prompt.json")
    items = load_belle_eval_set(r.root / "eval_set.json", prompts)
    first = is_writer()
    # Opened before generating, so that a corrupt cache line is reported before the long part.
    judge = Judge(judge_settings(cfg), cache=r.judge_cache) if first else None
    generation = {
        "checkpoint": r.run.checkpoint,
        "template": cfg.template,
        **{k: getattr(cfg, k) for k in _GENERATION_KEYS},
    }
    store = AnswerStore(r.answers_dir / ANSWERS_FILE, generation, items) if first and r.answers_dir else None
    kept = store.saved() if store is not None else []
    start = len(kept)
    if process_count() > 1:  # every process takes part in generating the rest: agree on where it starts
        start = int(multihost_utils.broadcast_one_to_all(np.int32(start)))
    if store is not None:
        if kept:
            log.info("belle: %d of %d answers taken from %s", start, len(items), store.path)
        store.start(kept)
    answers = kept + generate_answers(
        items[start:],
        r.lm,
        r.codec,
        max_new_tokens=cfg.max_new_tokens,
        chunk_size=r.chunk_size,
        on_progress=r.progress,
        on_answers=store.append if store is not None else None,
    )
    if judge is None:
        return None
    decoding = decoding_settings(
        cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty, cfg.seed
    )
    provenance = judge_provenance(judge.settings, prompts)
    return score_belle(
        items, answers, prompts, judge, run=r.run, max_new_tokens=cfg.max_new_tokens, decoding=decoding,
        judge_provenance=provenance,
    )  # fmt: skip


register(
    Suite(
        "belle",
        folders=("belle_eval", "belle"),
        looks_like=lambda root, split: (root / "eval_set.json").is_file() and (root / "eval_prompt.json").is_file(),
        run=_run,
        check=_check,
        score=Rescoring(scored_by="a judge model"),
        report=ReportHooks(figure=write_study_figure),
    )
)
