"""C-Eval, k-shot as a chat: the DoIT study's out-of-domain subjects (physician, teacher qualification, urban and
rural planner; 5-shot) or any subject.

Layout of the data root (see ``shared/data/ceval/SOURCE.md``): ``dev/{subject}_dev.csv`` (5 exemplars with an
explanation column), ``val/{subject}_val.csv`` (scored; the test split has no answers), header
``id,question,A,B,C,D,answer``; ``subject_mapping.json`` maps a subject to ``[English, Chinese, category]``.

The study's OOD files held 12 messages: five shots as user/assistant turns, then the question. jaxtune renders the
same shape (the study's exact wording of the turns could not be read)::

    user:      以下是中国关于{科目}考试的单项选择题，请选出其中的正确答案。\\n\\n{shot 1 question block}
    assistant: {letter}
    ...        (shots 2..k)
    user:      {question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案：

and reads the next-token logits of ``▁A``..``▁D`` (how an answer ``"A"`` is tokenized after ``<assistant>``; pass
``letter_pieces=BARE_PIECES`` for the bare letters). Shots are dropped, longest first, while the rendered prompt is
``max_len`` tokens or more.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from jaxtune.eval.protocol import ChatCodec, LanguageModel, Message
from jaxtune.eval.suites.mcq import (
    PREFIXED_PIECES,
    McqDataError,
    McqItem,
    Question,
    drop_longest_shots,
    evaluate_mcq,
    read_csv_questions,
    rescore_mcq,
)
from jaxtune.eval.suites.registry import Rescoring, Suite, SuiteRun, register
from jaxtune.results import RunInfo, SuiteResult

STUDY_OOD_SUBJECTS = ("physician", "teacher_qualification", "urban_and_rural_planner")
_COLUMNS = ("question", "A", "B", "C", "D")


@dataclass(frozen=True)
class CevalSubject:
    name: str
    name_zh: str
    category: str
    dev: list[Question]
    scored: list[Question]


def load_ceval(
    root: str | Path, subjects: Sequence[str] | None = STUDY_OOD_SUBJECTS, split: str = "val"
) -> list[CevalSubject]:
    """C-Eval subjects (the study's three by default; None for every subject with a ``{split}`` file)."""
    root = Path(root)
    mapping_path = root / "subject_mapping.json"
    if not mapping_path.is_file():
        raise FileNotFoundError(f"{mapping_path} does not exist (C-Eval root {root} needs it for subject names)")
    mapping = json.loads(mapping_path.read_text(encoding="utf-8"))
    available = sorted(p.name[: -len(f"_{split}.csv")] for p in (root / split).glob(f"*_{split}.csv"))
    chosen = list(subjects) if subjects is not None else available
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise McqDataError(f"{root / split}: no file for subjects {unknown}")
    out = []
    for s in chosen:
        entry = mapping.get(s)
        if not (isinstance(entry, list) and len(entry) == 3):
            raise McqDataError(f"{mapping_path}: subject {s!r} needs [English name, Chinese name, category]")
        out.append(
            CevalSubject(
                name=s,
                name_zh=entry[1],
                category=entry[2],
                dev=read_csv_questions(root / "dev" / f"{s}_dev.csv", _COLUMNS, "answer"),
                scored=read_csv_questions(root / split / f"{s}_{split}.csv", _COLUMNS, "answer"),
            )
        )
    return out


def question_block(q: Question) -> str:
    """``{question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案：``"""
    return q.question + "".join(f"\n{letter}. {opt}" for letter, opt in zip("ABCD", q.options)) + "\n答案："


def header(name_zh: str) -> str:
    """The instruction opening the first user turn."""
    return f"以下是中国关于{name_zh}考试的单项选择题，请选出其中的正确答案。\n\n"


def build_messages(subject: CevalSubject, q: Question, shots: Sequence[Question]) -> list[Message]:
    """Shot turns (question block, then the answer letter as the assistant), the question last, the header first."""
    messages: list[Message] = []
    for shot in shots:
        messages.append({"role": "user", "content": question_block(shot)})
        messages.append({"role": "assistant", "content": shot.answer})
    messages.append({"role": "user", "content": question_block(q)})
    first = messages[0]
    messages[0] = {"role": "user", "content": header(subject.name_zh) + first["content"]}
    return messages


def ceval_items(
    subjects: Sequence[CevalSubject], codec: ChatCodec, num_shots: int = 5, max_len: int = 2048
) -> list[McqItem]:
    """One chat item per scored question, with up to ``num_shots`` dev exemplars as earlier turns."""
    items = []
    for subject in subjects:
        if num_shots > len(subject.dev):
            raise McqDataError(f"{subject.name}: {num_shots} shots requested but its dev file has {len(subject.dev)}")
        pool = subject.dev[:num_shots]
        shots = [(shot, len(codec.prompt_ids(build_messages(subject, shot, [])))) for shot in pool]
        for q in subject.scored:
            kept = drop_longest_shots(  # keeps the shots' order
                shots, lambda s: len(codec.prompt_ids(build_messages(subject, q, [x for x, _ in s]))) < max_len
            )
            messages = build_messages(subject, q, kept)
            items.append(McqItem(subject.name, tuple(messages), q.answer, q.where, len(kept)))
    return items


def evaluate_ceval(
    subjects: Sequence[CevalSubject],
    lm: LanguageModel,
    codec: ChatCodec,
    *,
    num_shots: int = 5,
    max_len: int = 2048,
    letter_pieces: Sequence[str] = PREFIXED_PIECES,
    run: RunInfo | None = None,
    chunk_size: int = 32,
    on_progress: Callable[[int, int], None] | None = None,
) -> SuiteResult:
    """Accuracy per subject; overall = mean over subjects."""
    return evaluate_mcq(
        ceval_items(subjects, codec, num_shots, max_len),
        lm,
        codec,
        suite="ceval",
        variant=f"{num_shots}-shot",
        letter_pieces=letter_pieces,
        run=run,
        chunk_size=chunk_size,
        on_progress=on_progress,
        num_shots=num_shots,
    )


def _run(r: SuiteRun) -> SuiteResult:
    cfg = r.eval_cfg
    return evaluate_ceval(
        load_ceval(r.root, subjects=None),
        r.lm,
        r.codec,
        num_shots=cfg.num_shots,
        max_len=cfg.max_prompt_len,
        **r.common(),
    )


register(
    Suite(
        "ceval",
        folders=("ceval",),
        looks_like=lambda root, split: (root / "subject_mapping.json").is_file(),
        run=_run,
        score=Rescoring(items=rescore_mcq),
    )
)
