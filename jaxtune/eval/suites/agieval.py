"""AGIEval's Chinese single-answer four-option subsets, zero- and few-shot, as the DoIT study ran them
(``evaluate/agieval`` of its code, adapted from AGIEval's own loader).

Data: AGIEval's public release, ``{root}/{task}.jsonl`` (``data/v1`` of the AGIEval repository), one object per line
``{"passage": str|null, "question": str, "options": [4 strings], "label": "A" | ["A", ...], "answer": ...,
"other": ...}``;
few-shot exemplars from ``few_shot_prompts.csv`` (a header of task names; data rows 1, 3, 5, 7, 9 hold the five
exemplars as Python dict literals, the rows between them explanations). Exemplars are numbered ``问题 {i}`` over the
non-empty cells of the task's column, as the study's ``dataset_loader.py`` numbers them (a multi-answer exemplar is
left out but keeps its number).

Items whose label is not exactly one letter are not part of the subset, as the study's loader had it (``if
len(line["label"]) != 1: continue``): multi-answer labels (``"AD"`` in gaokao-mathqa, ``["A", "C"]`` in jec-qa) and
empty ones (``[]``, jec-qa-kd line 212). They are never scored; ``details.skipped_not_one_letter`` counts them per
task, ``details.skipped_examples`` names the first few (file:line and label), and the count is logged and printed
with the table (``details.notes``).

Zero-shot, one user turn: ``{passage}问题：{question} 选项：{options joined by " "}\\n答案：从A到D, 我们应选择``.
Few-shot: exemplar turns (user ``问题 {i}.   {passage} {question}\\n从以下选项中选择:    {options}\\n答案：从A到{last
letter}, 我们应选择``, assistant ``{label}``), added while the running text stays within ``max_len - 48 -`` the
item's own length, then ``问题 {k+1}.   {passage} {question}\\n从以下选项中选择:    {options}\\n答案：从A到D, 我们应选择``.
Scored at the bare pieces ``A``..``D``; overall = mean over tasks (macro), micro average in ``details``.
"""

from __future__ import annotations

import ast
import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jaxtune.data import jsonl
from jaxtune.eval.errors import EvalSetupError
from jaxtune.eval.protocol import ChatCodec, LanguageModel, Message
from jaxtune.eval.suites.mcq import BARE_PIECES, LETTERS, McqDataError, McqItem, evaluate_mcq, rescore_mcq
from jaxtune.eval.suites.registry import Rescoring, Suite, SuiteRun, register
from jaxtune.results import RunInfo, SuiteResult

AGIEVAL_ZH_TASKS = (
    "logiqa-zh",
    "gaokao-chinese",
    "gaokao-geography",
    "gaokao-history",
    "gaokao-biology",
    "gaokao-chemistry",
    "gaokao-mathqa",
    "jec-qa-kd",
    "jec-qa-ca",
    "gaokao-physics",
)
"""The study's ten subsets, in its order."""
FEW_SHOT_ROWS = (0, 2, 4, 6, 8)
"""Data rows (after the header) holding exemplars: the study read file rows 1, 3, 5, 7, 9."""

Setting = Literal["zero-shot", "few-shot"]
SKIPPED_EXAMPLES = 10
"""How many left-out items the summary names."""
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgievalQuestion:
    task: str
    passage: str
    question: str
    options: tuple[str, ...]
    label: str
    where: str
    index: int
    """0-based line index in the task file (the study's ``metadata``)."""


@dataclass(frozen=True)
class AgievalTask:
    name: str
    questions: list[AgievalQuestion]
    skipped: list[str]
    """Items left out because their label is not exactly one letter, as ``file:line (label ...)``."""


def _single_label(label: Any, where: str) -> str | None:
    """The one letter of ``label`` (``"A"`` or ``["A"]``); None when it does not hold exactly one (the study's
    ``len(label) != 1``: ``"AD"``, ``["A", "C"]``, ``[]``), which leaves the item out of the subset."""
    if not isinstance(label, (str, list)):
        raise McqDataError(f"{where}: field 'label' must be a letter or a list of letters, got {label!r}")
    if len(label) != 1:
        return None
    letter = label[0]
    if not isinstance(letter, str):
        raise McqDataError(f"{where}: field 'label' must be a letter or a list of letters, got {label!r}")
    return letter


def load_agieval_task(root: str | Path, task: str) -> AgievalTask:
    """Read ``{root}/{task}.jsonl``; every single-answer item must have 4 options and a label in A-D."""
    path = Path(root) / f"{task}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"AGIEval task file {path} does not exist")
    questions: list[AgievalQuestion] = []
    skipped: list[str] = []
    expected = 1
    for lineno, d in jsonl.read_json_lines(path, bad="yield"):
        index = lineno - 1
        if lineno != expected:
            raise McqDataError(f"{path}:{expected}: blank line (the study counted item indices by line)")
        expected = lineno + 1
        where = f"{path}:{lineno}"
        if isinstance(d, jsonl.JsonLinesError):
            raise McqDataError(str(d))
        if not isinstance(d, dict):
            raise McqDataError(f"{where}: expected a JSON object")
        for key in ("question", "options", "label"):
            if key not in d:
                raise McqDataError(f"{where}: missing field '{key}'")
        label = _single_label(d["label"], where)
        if label is None:
            skipped.append(f"{where} (label {d['label']!r})")
            continue
        options = d["options"]
        if not (isinstance(options, list) and len(options) == 4 and all(isinstance(o, str) for o in options)):
            raise McqDataError(f"{where}: a single-answer item needs 'options': a list of 4 strings, got {options!r}")
        if label not in LETTERS:
            raise McqDataError(f"{where}: field 'label' must be one of A-D, got {label!r}")
        if not isinstance(d["question"], str) or not isinstance(d.get("passage") or "", str):
            raise McqDataError(f"{where}: fields 'question' and 'passage' must be strings (passage may be null)")
        questions.append(
            AgievalQuestion(task, d.get("passage") or "", d["question"], tuple(options), label, where, index)
        )
    return AgievalTask(task, questions, skipped)


def load_few_shot_demos(path: str | Path, task: str) -> list[tuple[str, str]]:
    """(user, assistant) exemplar turns of ``task`` from AGIEval's ``few_shot_prompts.csv``; multi-answer
    exemplars are left out but keep their number (the study numbered ``问题 {i}`` by position)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"AGIEval few-shot file {path} does not exist")
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if not rows or task not in rows[0]:
        raise McqDataError(f"{path}: header has no column {task!r}")
    col = rows[0].index(task)
    demos = []
    idx = -1  # the study numbered the exemplars over the non-empty cells only
    for r in FEW_SHOT_ROWS:
        if r + 1 >= len(rows):
            raise McqDataError(f"{path}: expected exemplar rows 1, 3, 5, 7, 9 but the file has {len(rows) - 1} rows")
        cell = rows[r + 1][col] if col < len(rows[r + 1]) else ""
        if not cell:
            continue
        idx += 1
        where = f"{path}: row {r + 1}, column {task!r}"
        try:
            con = ast.literal_eval(cell)
        except (ValueError, SyntaxError) as e:
            raise McqDataError(f"{where}: not a Python dict literal ({e})") from None
        if not isinstance(con, dict) or "question" not in con or "label" not in con:
            raise McqDataError(f"{where}: exemplar needs 'question' and 'label'")
        label = con["label"]
        if label is not None and len(label) > 1:
            continue
        if isinstance(label, list):
            label = label[0]
        options = con.get("options") or ""
        count = len(options) if len(options) != 1 else 4
        user = (
            f"问题 {idx + 1}.   "
            + (con.get("passage") or "")
            + " "
            + con["question"]
            + "\n"
            + "从以下选项中选择:    "
            + " ".join(options)
            + "\n"
            + f"答案：从A到{'ABCDEFG'[count - 1]}, 我们应选择"
        )
        demos.append((user, f"{label if label is not None else ''}"))
    return demos


def zero_shot_messages(q: AgievalQuestion) -> list[Message]:
    """One user turn: passage, question, options, and the answer cue."""
    content = (
        q.passage + "问题：" + q.question + " " + "选项：" + " ".join(q.options) + "\n" + "答案：从A到D, 我们应选择"
    )
    return [{"role": "user", "content": content}]


def few_shot_messages(
    q: AgievalQuestion, demos: Sequence[tuple[str, str]], count_tokens: Callable[[str], int], max_len: int = 2048
) -> tuple[list[Message], int]:
    """Exemplar turns that fit the study's budget, then the numbered question; returns the messages and the number
    of exemplars kept."""
    budget = max_len - 48 - count_tokens(q.passage + q.question + " ".join(q.options))
    messages: list[Message] = []
    text = ""
    for user, assistant in demos:
        text += user + assistant
        if count_tokens(text) > budget:
            break
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    n_shots = len(messages) // 2
    content = (
        f"问题 {n_shots + 1}.   "
        + q.passage
        + " "
        + q.question
        + "\n"
        + "从以下选项中选择:    "
        + " ".join(q.options)
        + "\n"
        + "答案：从A到D, 我们应选择"
    )
    return messages + [{"role": "user", "content": content}], n_shots


def default_few_shot_path(root: str | Path) -> Path:
    """``{root}/few_shot_prompts.csv``, else the release layout's ``{root}/../few_shot_prompts.csv``."""
    root = Path(root)
    inside = root / "few_shot_prompts.csv"
    return inside if inside.is_file() else root.parent / "few_shot_prompts.csv"


def evaluate_agieval(
    root: str | Path,
    lm: LanguageModel,
    codec: ChatCodec,
    *,
    setting: Setting = "zero-shot",
    tasks: Sequence[str] = AGIEVAL_ZH_TASKS,
    few_shot_path: str | Path | None = None,
    max_len: int = 2048,
    run: RunInfo | None = None,
    chunk_size: int = 32,
    on_progress: Callable[[int, int], None] | None = None,
) -> SuiteResult:
    """Accuracy per task (overall = macro mean); the micro average and the items left out (label not exactly one
    letter) in ``details``."""
    if setting not in ("zero-shot", "few-shot"):
        raise ValueError(f"AGIEval setting must be 'zero-shot' or 'few-shot', got {setting!r}")

    def count_tokens(text: str) -> int:
        return len(codec.encode(text)) + 1  # + the BOS the study's tokenizer.encode prepended

    items, skipped, examples = [], {}, []
    shots_path = Path(few_shot_path) if few_shot_path is not None else default_few_shot_path(root)
    for name in tasks:
        task = load_agieval_task(root, name)
        skipped[name] = len(task.skipped)
        examples += task.skipped[: max(0, SKIPPED_EXAMPLES - len(examples))]
        demos = load_few_shot_demos(shots_path, name) if setting == "few-shot" else []
        for q in task.questions:
            if setting == "zero-shot":
                messages, n = zero_shot_messages(q), 0
            else:
                messages, n = few_shot_messages(q, demos, count_tokens, max_len)
            items.append(McqItem(name, tuple(messages), q.label, q.where, n))
    notes = []
    if sum(skipped.values()):
        counts = ", ".join(f"{n} in {task}" for task, n in skipped.items() if n)
        notes.append(
            f"left out {sum(skipped.values())} items whose label is not exactly one letter ({counts}), as "
            f"the study's loader did"
        )
        log.warning("AGIEval: %s; first: %s", notes[0], "; ".join(examples))
    return evaluate_mcq(
        items,
        lm,
        codec,
        suite="agieval",
        variant=setting,
        letter_pieces=BARE_PIECES,
        run=run,
        chunk_size=chunk_size,
        on_progress=on_progress,
        skipped_not_one_letter=skipped,
        skipped_examples=examples,
        notes=notes,
    )


def _run(r: SuiteRun) -> SuiteResult:
    tasks = [t for t in AGIEVAL_ZH_TASKS if (r.root / f"{t}.jsonl").is_file()]
    if not tasks:
        raise EvalSetupError(f"{r.root}: none of the AGIEval tasks {', '.join(AGIEVAL_ZH_TASKS)} (as <task>.jsonl)")
    setting = "zero-shot" if r.eval_cfg.num_shots == 0 else "few-shot"
    return evaluate_agieval(
        r.root, r.lm, r.codec, setting=setting, tasks=tasks, max_len=r.eval_cfg.max_prompt_len, **r.common()
    )


register(
    Suite(
        "agieval",
        folders=("agieval",),
        looks_like=lambda root, split: any(root.glob("*.jsonl")),
        run=_run,
        score=Rescoring(items=rescore_mcq),
    )
)
