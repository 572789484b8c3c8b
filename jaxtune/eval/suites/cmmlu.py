"""CMMLU, 0-shot and k-shot, as the DoIT study ran it (``evaluate/cmmlu`` of its code).

Two layouts of ``eval.data_dir/cmmlu`` are read (:func:`cmmlu_layout`):

- a clone of its repository (https://github.com/haonan-li/CMMLU): ``data/dev/{subject}.csv`` (5 exemplars) and
  ``data/test/{subject}.csv``; the Chinese subject names (``name_en2zh``) and the category tables
  (``subcategories``, ``categories``) read from its ``src/categories.py`` as data (``ast.literal_eval`` of the
  three dict literals; nothing is executed), or the built-in copy (:mod:`jaxtune.eval.suites.cmmlu_subjects`)
  when the clone has no ``src/``;
- a flat folder (``shared/data/cmmlu/SOURCE.md``): ``dev/``, ``test/`` and ``subject_categories.json`` holding
  the three tables as JSON objects.

Every CSV has the header ``,Question,A,B,C,D,Answer``.

Prompt (one user turn, then the assistant opener; answer read at the bare pieces ``A``..``D``)::

    以下是关于{科目}的单项选择题，请直接给出正确答案的选项。\\n\\n
    题目：{q}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案是：{X}\\n\\n      (k dev shots)
    题目：{q}\\nA. ...\\nD. {D}\\n答案是：

Shots are dropped, all of the greatest length at a time, while their tokens reach ``max_len`` minus the tokens of
header and question; if header and question alone exceed ``max_len`` the prompt is the question alone. Token counts
include the BOS that the study's ``tokenizer.encode`` added. Options are read as text (the study's pandas reader
turned all-numeric columns into numbers: ``1`` could print as ``1.0``).
"""

from __future__ import annotations

import ast
import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from jaxtune.eval.protocol import ChatCodec, LanguageModel
from jaxtune.eval.suites import cmmlu_subjects
from jaxtune.eval.suites.mcq import (
    BARE_PIECES,
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

_COLUMNS = ("Question", "A", "B", "C", "D")


@dataclass(frozen=True)
class CmmluSubject:
    name: str
    name_zh: str
    dev: list[Question]
    test: list[Question]
    categories: tuple[str, ...]
    """Top-level categories (STEM, Humanities, Social Science, Other, China specific) the subject belongs to."""


def _categories(meta: dict, subject: str) -> tuple[str, ...]:
    subcats = meta.get("subcategories", {}).get(subject, [])
    return tuple(cat for cat, members in meta.get("categories", {}).items() if any(s in members for s in subcats))


def categories_py_tables(path: Path) -> dict:
    """The dict literals ``name_en2zh``, ``subcategories`` and ``categories`` of CMMLU's ``src/categories.py``, read
    with ``ast.literal_eval`` (the file is parsed, never run)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except SyntaxError as e:
        raise McqDataError(f"{path}: not Python: {e}") from None
    tables = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in cmmlu_subjects.TABLES:
                try:
                    tables[name] = ast.literal_eval(node.value)
                except ValueError:
                    raise McqDataError(f"{path}:{node.lineno}: {name} is not a literal") from None
    return tables


def cmmlu_layout(root: Path) -> tuple[Path, dict, str]:
    """(the folder holding ``dev/`` and ``test/``, the subject tables, where the tables came from) of a CMMLU root
    in either layout (see the module docstring); McqDataError naming what the root lacks."""
    if (root / "data" / "test").is_dir():
        source = root / "src" / "categories.py"
        if source.is_file():
            return root / "data", categories_py_tables(source), str(source)
        return root / "data", cmmlu_subjects.TABLES, "jaxtune.eval.suites.cmmlu_subjects"
    meta_path = root / "subject_categories.json"
    if (root / "test").is_dir() and meta_path.is_file():
        return root, json.loads(meta_path.read_text(encoding="utf-8")), str(meta_path)
    raise McqDataError(
        f"{root}: not a CMMLU folder: expected a clone of its repository (data/dev/*.csv, data/test/*.csv, "
        "src/categories.py) or dev/*.csv, test/*.csv and subject_categories.json"
    )


def looks_like_cmmlu(root: Path) -> bool:
    """Whether ``root`` holds CMMLU in either layout."""
    return (root / "data" / "test").is_dir() or (root / "subject_categories.json").is_file()


def load_cmmlu(root: str | Path, subjects: Sequence[str] | None = None) -> list[CmmluSubject]:
    """Subjects of a CMMLU root in either layout (all ``test/*.csv`` sorted by name, or ``subjects``)."""
    root, meta, meta_path = cmmlu_layout(Path(root))
    names = meta.get("name_en2zh")
    if not isinstance(names, dict):
        raise McqDataError(f"{meta_path}: missing object 'name_en2zh'")
    available = sorted(p.stem for p in (root / "test").glob("*.csv"))
    if not available:
        raise FileNotFoundError(f"{root / 'test'}: no CMMLU test CSVs")
    chosen = list(subjects) if subjects is not None else available
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise McqDataError(f"{root}: no test file for subjects {unknown}")
    out = []
    for s in chosen:
        if s not in names:
            raise McqDataError(f"{meta_path}: 'name_en2zh' has no Chinese name for subject {s!r}")
        out.append(
            CmmluSubject(
                name=s,
                name_zh=names[s],
                dev=read_csv_questions(root / "dev" / f"{s}.csv", _COLUMNS, "Answer"),
                test=read_csv_questions(root / "test" / f"{s}.csv", _COLUMNS, "Answer"),
                categories=_categories(meta, s),
            )
        )
    return out


def format_question(q: Question, with_answer: bool) -> str:
    """``题目：{q}\\nA. ...\\nD. {D}\\n答案是：`` and, for a shot, ``{X}\\n\\n``."""
    text = "题目：" + q.question + "".join(f"\n{letter}. {opt}" for letter, opt in zip("ABCD", q.options))
    text += "\n答案是："
    return (text + f"{q.answer}\n\n") if with_answer else text


def header(name_zh: str) -> str:
    """The instruction line that opens every prompt."""
    return f"以下是关于{name_zh}的单项选择题，请直接给出正确答案的选项。\n\n"


def build_prompt(
    subject: CmmluSubject, q: Question, num_shots: int, count_tokens: Callable[[str], int], max_len: int = 2048
) -> tuple[str, int]:
    """The prompt text for ``q`` and the number of shots kept."""
    if num_shots > len(subject.dev):
        raise McqDataError(f"{subject.name}: {num_shots} shots requested but its dev file has {len(subject.dev)}")
    head, end = header(subject.name_zh), format_question(q, with_answer=False)
    start_end = count_tokens(head) + count_tokens(end)
    if start_end > max_len:
        return end, 0
    shots = [(text, count_tokens(text)) for text in (format_question(d, True) for d in subject.dev[:num_shots])]
    kept = drop_longest_shots(shots, lambda s: sum(n for _, n in s) < max_len - start_end)
    return head + "".join(kept) + end, len(kept)


def cmmlu_items(
    subjects: Sequence[CmmluSubject], codec: ChatCodec, num_shots: int, max_len: int = 2048
) -> list[McqItem]:
    """One single-turn chat item per test question."""

    @functools.lru_cache(maxsize=4096)  # every question of a subject counts the same shots
    def count_tokens(text: str) -> int:
        return len(codec.encode(text)) + 1  # + the BOS the study's tokenizer.encode prepended

    items = []
    for subject in subjects:
        for q in subject.test:
            text, n = build_prompt(subject, q, num_shots, count_tokens, max_len)
            items.append(McqItem(subject.name, ({"role": "user", "content": text},), q.answer, q.where, n))
    return items


def evaluate_cmmlu(
    subjects: Sequence[CmmluSubject],
    lm: LanguageModel,
    codec: ChatCodec,
    *,
    num_shots: int = 0,
    max_len: int = 2048,
    run: RunInfo | None = None,
    chunk_size: int = 32,
    on_progress: Callable[[int, int], None] | None = None,
) -> SuiteResult:
    """Accuracy per subject (overall = mean over subjects), with per-category means in ``details``."""
    result = evaluate_mcq(
        cmmlu_items(subjects, codec, num_shots, max_len),
        lm,
        codec,
        suite="cmmlu",
        variant=f"{num_shots}-shot",
        letter_pieces=BARE_PIECES,
        run=run,
        chunk_size=chunk_size,
        on_progress=on_progress,
        num_shots=num_shots,
    )
    scores = {a.name: a.score for a in result.summary.abilities}
    by_category: dict[str, list[float]] = {}
    for s in subjects:
        for cat in s.categories:
            by_category.setdefault(cat, []).append(scores[s.name])
    result.summary.details["category_means"] = {c: sum(v) / len(v) for c, v in sorted(by_category.items())}
    return result


def _run(r: SuiteRun) -> SuiteResult:
    cfg = r.eval_cfg
    return evaluate_cmmlu(
        load_cmmlu(r.root), r.lm, r.codec, num_shots=cfg.num_shots, max_len=cfg.max_prompt_len, **r.common()
    )


register(
    Suite(
        "cmmlu",
        folders=("cmmlu",),
        looks_like=lambda root, split: looks_like_cmmlu(root),
        run=_run,
        score=Rescoring(items=rescore_mcq),
    )
)
