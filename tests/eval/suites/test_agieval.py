"""AGIEval's Chinese single-answer subsets in the release's JSON Lines format, zero- and few-shot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from jaxtune.eval.suites.agieval import (
    evaluate_agieval,
    few_shot_messages,
    load_agieval_task,
    load_few_shot_demos,
    zero_shot_messages,
)
from jaxtune.eval.suites.mcq import McqDataError

from ..fakes import ScriptedLM, char_codec


def _line(passage, question, options, label) -> str:
    return json.dumps({"passage": passage, "question": question, "options": options, "label": label,
                       "answer": None, "other": None}, ensure_ascii=False)


OPTS = ["(A)甲", "(B)乙", "(C)丙", "(D)丁"]


def make_root(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "logiqa-zh.jsonl").write_text("\n".join([
        _line("某段落。", "逻辑题1", OPTS, "A"),
        _line(None, "逻辑题2", OPTS, ["B"]),
        _line("", "逻辑题3", OPTS, "C"),
    ]) + "\n", encoding="utf-8")
    (root / "jec-qa-kd.jsonl").write_text("\n".join([
        _line(None, "法律题1", OPTS, ["D"]),
        _line(None, "法律题2", OPTS, ["A", "C"]),  # multi-answer: not in the subset
    ]) + "\n", encoding="utf-8")
    demo = lambda i, label: repr({"passage": None, "question": f"示例{i}", "options": OPTS, "label": label,  # noqa: E731
                                  "answer": None, "other": None})
    with (root / "few_shot_prompts.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "logiqa-zh", "jec-qa-kd"])
        for i in range(1, 6):
            w.writerow([f"sample {i}", demo(i, "ABCDA"[i - 1]), demo(i, ["B", "C"] if i == 2 else ["C"])])
            w.writerow([f"explanation {i}", "解析", "解析"])
    return root


def test_loading_subset_and_zero_shot_text(tmp_path: Path) -> None:
    root = make_root(tmp_path / "agieval")
    task = load_agieval_task(root, "jec-qa-kd")
    assert [q.label for q in task.questions] == ["D"] and task.skipped_multi_answer == 1
    q = load_agieval_task(root, "logiqa-zh").questions[0]
    assert zero_shot_messages(q) == [{"role": "user", "content":
                                      "某段落。问题：逻辑题1 选项：(A)甲 (B)乙 (C)丙 (D)丁\n答案：从A到D, 我们应选择"}]


def test_few_shot_demos_and_budget(tmp_path: Path) -> None:
    root = make_root(tmp_path / "agieval")
    demos = load_few_shot_demos(root / "few_shot_prompts.csv", "jec-qa-kd")
    # exemplar 2 has two answers: left out, but the others keep their positions' numbers
    assert [d[0].split(".")[0] for d in demos] == ["问题 1", "问题 3", "问题 4", "问题 5"]
    assert demos[0] == ("问题 1.    示例1\n从以下选项中选择:    (A)甲 (B)乙 (C)丙 (D)丁\n答案：从A到D, 我们应选择", "C")
    q = load_agieval_task(root, "logiqa-zh").questions[0]
    full, n = few_shot_messages(q, demos, len, max_len=10_000)
    assert n == 4 and len(full) == 9
    assert full[-1]["content"] == ("问题 5.   某段落。 逻辑题1\n从以下选项中选择:    (A)甲 (B)乙 (C)丙 (D)丁\n"
                                   "答案：从A到D, 我们应选择")
    # the budget is max_len - 48 - len(passage + question + options); demos are added while the text fits
    own = len(q.passage + q.question + " ".join(q.options))
    two = len(demos[0][0] + demos[0][1] + demos[1][0] + demos[1][1])
    cut, n = few_shot_messages(q, demos, len, max_len=48 + own + two)
    assert n == 2 and cut[-1]["content"].startswith("问题 3.")


def test_evaluate_zero_and_few_shot(tmp_path: Path) -> None:
    root = make_root(tmp_path / "agieval")
    codec = char_codec()
    lm = ScriptedLM(codec, next_logits={"逻辑题1": {"A": 1.0, "▁D": 9.0}, "逻辑题2": {"C": 1.0},
                                        "逻辑题3": {"C": 1.0}, "法律题1": {"D": 3.0}})
    zero = evaluate_agieval(root, lm, codec, tasks=["logiqa-zh", "jec-qa-kd"])
    s = zero.summary
    assert (s.suite, s.variant) == ("agieval", "zero-shot")
    assert {a.name: a.score for a in s.abilities} == pytest.approx({"logiqa-zh": 200 / 3, "jec-qa-kd": 100.0})
    assert s.overall == pytest.approx(250 / 3)  # macro
    assert s.details["micro_average"] == 75.0
    assert s.details["skipped_multi_answer"] == {"logiqa-zh": 0, "jec-qa-kd": 1}
    few = evaluate_agieval(root, lm, codec, setting="few-shot", tasks=["logiqa-zh"])
    assert few.summary.variant == "few-shot" and {it["n_shots"] for it in few.items} == {5}
    assert few.items[0]["prompt"][1] == {"role": "assistant", "content": "A"}


def test_bad_lines_are_named(tmp_path: Path) -> None:
    root = make_root(tmp_path / "agieval")
    (root / "logiqa-zh.jsonl").write_text(_line(None, "q", OPTS[:3], "A") + "\n", encoding="utf-8")
    with pytest.raises(McqDataError, match=r"logiqa-zh.jsonl:1: a single-answer item needs 'options': a list of 4"):
        load_agieval_task(root, "logiqa-zh")
    (root / "logiqa-zh.jsonl").write_text(_line(None, "q", OPTS, "A") + "\n{oops\n", encoding="utf-8")
    with pytest.raises(McqDataError, match=r"logiqa-zh.jsonl:2: not valid JSON"):
        load_agieval_task(root, "logiqa-zh")
    with pytest.raises(McqDataError, match="header has no column 'gaokao-physics'"):
        load_few_shot_demos(root / "few_shot_prompts.csv", "gaokao-physics")
