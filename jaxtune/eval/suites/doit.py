"""The DoIT ability suite run on a model: perplexity ranking of the format-1 items, generation for the format-0 ones,
each item scored as the study did (:mod:`jaxtune.eval.suites.doit_items`), and the suite's registration (with its
rescoring hooks, :mod:`jaxtune.eval.suites.doit_rescore`, and the study's ability titles for the report).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxtune.data.mixtures import DISPLAY_NAMES
from jaxtune.eval.protocol import ChatCodec, LanguageModel
from jaxtune.eval.suites.doit_items import (
    MC_PIECES,
    DoitRecord,
    ItemScore,
    load_doit_split,
    needs_letter_logits,
    score_doit_item,
    summarize_doit,
)
from jaxtune.eval.suites.doit_rescore import STUDY_PREDICTIONS, rescore_doit_items
from jaxtune.eval.suites.mcq import letter_token_ids
from jaxtune.eval.suites.registry import ReportHooks, Rescoring, Suite, SuiteRun, register
from jaxtune.names import ScorerMode
from jaxtune.results import RunInfo, SuiteResult

TITLES = {
    **DISPLAY_NAMES,
    "ceval_physician": "Physician Qualification",
    "ceval_teacher_qualification": "Teacher Qualification",
    "ceval_urban_and_rural_planner": "Urban & Rural Planner",
}
"""The study's title of each ability (and of its C-Eval OOD subjects) in its tables and figures."""


# --------------------------------------------------------------------------------------------------------------------
# Running a split
# --------------------------------------------------------------------------------------------------------------------


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def truncate_pair(context: list[int], continuation: list[int], max_len: int) -> tuple[list[int], list[int]]:
    """Cut ``context + continuation`` to its first ``max_len`` tokens, keeping the split point."""
    if len(context) >= max_len:
        return context[:max_len], []
    return context, continuation[: max_len - len(context)]


def evaluate_doit(
    data: Mapping[str, Sequence[DoitRecord]],
    lm: LanguageModel,
    codec: ChatCodec,
    *,
    mode: ScorerMode = "study",
    variant: str = "test",
    run: RunInfo | None = None,
    max_new_tokens: int = 1024,
    max_len: int = 2048,
    chunk_size: int = 32,
    on_progress: Callable[[int, int], None] | None = None,
) -> SuiteResult:
    """Run and score every record of ``data`` (ability -> records, e.g. from :func:`load_doit_split`)."""
    records = [r for ability in data for r in data[ability]]
    if not records:
        raise ValueError("no DoIT records to evaluate")
    letter_ids = letter_token_ids(codec, MC_PIECES, "doit")
    done = 0

    def progress(k: int) -> None:
        nonlocal done
        done += k
        if on_progress is not None:
            on_progress(done, len(records))

    ranked = [i for i, r in enumerate(records) if r.question_format == 1]
    ppls: dict[int, list[float]] = {}
    for chunk in _chunks(len(ranked), chunk_size):
        contexts, continuations = [], []
        for k in chunk:
            rec = records[ranked[k]]
            ctx = codec.prompt_ids(rec.messages[:-1])
            for choice in rec.choices or ():
                c, cont = truncate_pair(ctx, codec.reply_ids(choice), max_len)
                contexts.append(c)
                continuations.append(cont)
        values = lm.continuation_perplexities(contexts, continuations)
        if len(values) != len(contexts):
            raise RuntimeError(f"continuation_perplexities returned {len(values)} values for {len(contexts)} inputs")
        for j, k in enumerate(chunk):
            ppls[ranked[k]] = [float(v) for v in values[3 * j : 3 * j + 3]]
        progress(len(chunk))

    generated = [i for i, r in enumerate(records) if r.question_format == 0]
    replies: dict[int, tuple[str, list[float] | None]] = {}
    for chunk in _chunks(len(generated), chunk_size):
        prompts = [codec.prompt_ids(records[generated[k]].messages[:-1]) for k in chunk]
        outputs = lm.generate(prompts, max_new_tokens, codec.stop_ids)
        if len(outputs) != len(prompts):
            raise RuntimeError(f"generate returned {len(outputs)} results for {len(prompts)} prompts")
        for k, out in zip(chunk, outputs):
            rec = records[generated[k]]
            reply = codec.decode([t for t in out.tokens if t not in codec.stop_ids]).strip()
            logits = [float(out.last_logits[j]) for j in letter_ids] if needs_letter_logits(rec) else None
            replies[generated[k]] = (reply, logits)
        progress(len(chunk))

    scored: list[tuple[DoitRecord, ItemScore, dict[str, Any]]] = []
    for pos, rec in enumerate(records):
        if rec.question_format == 1:
            score = score_doit_item(rec, perplexities=ppls[pos], mode=mode)
            reply_fields: dict[str, Any] = {"perplexities": ppls[pos]}
        else:
            reply, logits = replies[pos]
            score = score_doit_item(rec, reply, logits, mode=mode)
            reply_fields = {"reply": reply, "letter_logits": logits}
        scored.append((rec, score, reply_fields))
    return summarize_doit(
        scored,
        mode=mode,
        variant=variant,
        run=run,
        abilities=list(data),
        max_new_tokens=max_new_tokens,
        max_len=max_len,
    )


# --------------------------------------------------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------------------------------------------------


def _looks_like(root: Path, split: str) -> bool:
    return (root / "curated" / split).is_dir() or (root / split).is_dir() or any(root.glob("*.json"))


def _split_folder(root: Path, split: str) -> Path:
    """The folder with the ability files: ``curated/<split>`` or ``<split>`` inside the DoIT folder, else itself."""
    for sub in (root / "curated" / split, root / split):
        if sub.is_dir():
            return sub
    return root


def _run(r: SuiteRun) -> SuiteResult:
    cfg = r.eval_cfg
    return evaluate_doit(
        load_doit_split(r.root),
        r.lm,
        r.codec,
        mode=cfg.scorer_mode,
        variant=cfg.split,
        max_new_tokens=cfg.max_new_tokens,
        max_len=cfg.max_prompt_len,
        **r.common(),
    )


register(
    Suite(
        "doit",
        folders=("doit", "curated"),
        looks_like=_looks_like,
        data_folder=_split_folder,
        run=_run,
        score=Rescoring(items=rescore_doit_items, predictions=STUDY_PREDICTIONS),
        report=ReportHooks(titles=TITLES),
    )
)
