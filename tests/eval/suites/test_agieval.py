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
    return json.dumps(
        {"passage": passage, "question": question, "options": options, "label": label, "answer": None, "other": None},
        ensure_ascii=False,
    )


OPTS = ["(A)甲", "(B)乙", "(C)丙", "(D)丁"]


def make_root(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "logiqa-zh.jsonl").write_text(
        "\n".join(
            [
                _line("某段落。", "逻辑题1", OPTS, "A"),
                _line(None, "逻辑题2", OPTS, ["B"]),
                _line("", "逻辑题3", OPTS, "C"),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    (root / "jec-qa-kd.jsonl").write_text(
        "\n".join(
            [
                _line(None, "法律题1", OPTS, ["D"]),
                _line(None, "法律题2", OPTS, ["A", "C"]),  # multi-answer: not in the subset
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    demo = lambda i, label: repr(
        {
            "passage": None,
            "question": f"示例{i}",
            "options": OPTS,
            "label": label,  # noqa: E731
            "answer": None,
            "other": None,
        }
    )
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
    assert [q.label for q in task.questions] == ["D"] and len(task.skipped) == 1
    q = load_agieval_task(root, "logiqa-zh").questions[0]
    assert zero_shot_messages(q) == [
        {"role": "user", "content": "某段落。问题：逻辑题1 选项：(A)甲 (B)乙 (C)丙 (D)丁\n答案：从A到D, 我们应选择"}
    ]


def test_few_shot_demos_and_budget(tmp_path: Path) -> None:
    root = make_root(tmp_path / "agieval")
    demos = load_few_shot_demos(root / "few_shot_prompts.csv", "jec-qa-kd")
    # exemplar 2 has two answers: left out, but the others keep their positions' numbers
    assert [d[0].split(".")[0] for d in demos] == ["问题 1", "问题 3", "问题 4", "问题 5"]
    assert demos[0] == ("问题 1.    示例1\n从以下选项中选择:    (A)甲 (B)乙 (C)丙 (D)丁\n答案：从A到D, 我们应选择", "C")
    q = load_agieval_task(root, "logiqa-zh").questions[0]
    full, n = few_shot_messages(q, demos, len, max_len=10_000)
    assert n == 4 and len(full) == 9
    assert full[-1]["content"] == (
        "问题 5.   某段落。 逻辑题1\n从以下选项中选择:    (A)甲 (B)乙 (C)丙 (D)丁\n答案：从A到D, 我们应选择"
    )
    # the budget is max_len - 48 - len(passage + question + options); demos are added while the text fits
    own = len(q.passage + q.question + " ".join(q.options))
    two = len(demos[0][0] + demos[0][1] + demos[1][0] + demos[1][1])
    cut, n = few_shot_messages(q, demos, len, max_len=48 + own + two)
    assert n == 2 and cut[-1]["content"].startswith("问题 3.")


def test_evaluate_zero_and_few_shot(tmp_path: Path) -> None:
    root = make_root(tmp_path / "agieval")
    codec = char_codec()
    lm = ScriptedLM(
        codec,
        next_logits={
            "逻辑题1": {"A": 1.0, "▁D": 9.0},
            "逻辑题2": {"C": 1.0},
            "逻辑题3": {"C": 1.0},
            "法律题1": {"D": 3.0},
        },
    )
    zero = evaluate_agieval(root, lm, codec, tasks=["logiqa-zh", "jec-qa-kd"])
    s = zero.summary
    assert (s.suite, s.variant) == ("agieval", "zero-shot")
    assert {a.name: a.score for a in s.abilities} == pytest.approx({"logiqa-zh": 200 / 3, "jec-qa-kd": 100.0})
    assert s.overall == pytest.approx(250 / 3)  # macro
    assert s.details["micro_average"] == 75.0
    assert s.details["skipped_not_one_letter"] == {"logiqa-zh": 0, "jec-qa-kd": 1}
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


def test_labels_not_exactly_one_letter_are_left_out_counted_and_printed(tmp_path: Path, caplog) -> None:
    """The released files: gaokao-mathqa holds labels like "AD", jec-qa-kd line 212 the label []; the study's loader
    skipped every item with len(label) != 1."""
    from jaxtune.results import format_table

    root = make_root(tmp_path / "agieval")
    (root / "gaokao-mathqa.jsonl").write_text(
        "\n".join(
            [
                _line(None, "数学1", OPTS, "AD"),
                _line(None, "数学2", OPTS, "B"),
                _line(None, "数学3", OPTS, ["C", "D"]),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    (root / "jec-qa-kd.jsonl").write_text(
        "\n".join([_line(None, f"法律{i}", OPTS, "A") for i in range(1, 212)] + [_line(None, "法律212", OPTS, [])])
        + "\n",
        encoding="utf-8",
    )
    task = load_agieval_task(root, "gaokao-mathqa")
    assert [q.question for q in task.questions] == ["数学2"]
    assert task.skipped == [
        f"{root / 'gaokao-mathqa.jsonl'}:1 (label 'AD')",
        f"{root / 'gaokao-mathqa.jsonl'}:3 (label ['C', 'D'])",
    ]
    assert load_agieval_task(root, "jec-qa-kd").skipped == [f"{root / 'jec-qa-kd.jsonl'}:212 (label [])"]
    codec = char_codec()
    lm = ScriptedLM(codec, next_logits={"数学2": {"B": 1.0}, "法律": {"A": 1.0}})
    with caplog.at_level("WARNING"):
        result = evaluate_agieval(root, lm, codec, tasks=["gaokao-mathqa", "jec-qa-kd"])
    s = result.summary
    assert {a.name: a.n for a in s.abilities} == {"gaokao-mathqa": 1, "jec-qa-kd": 211}
    assert s.details["skipped_not_one_letter"] == {"gaokao-mathqa": 2, "jec-qa-kd": 1}
    assert s.details["skipped_examples"][-1].endswith("jec-qa-kd.jsonl:212 (label [])")
    table = format_table(s)
    assert "left out 3 items whose label is not exactly one letter (2 in gaokao-mathqa, 1 in jec-qa-kd)" in table
    assert "left out 3 items" in caplog.text


@pytest.mark.parametrize("label", ["E", None, 3, [1]])
def test_a_kept_label_must_be_a_letter_a_to_d(tmp_path: Path, label) -> None:
    root = make_root(tmp_path / "agieval")
    (root / "logiqa-zh.jsonl").write_text(_line(None, "q", OPTS, label) + "\n", encoding="utf-8")
    with pytest.raises(McqDataError, match=r"logiqa-zh.jsonl:1: field 'label'"):
        load_agieval_task(root, "logiqa-zh")


def test_few_shot_exemplars_are_numbered_over_non_empty_cells(tmp_path: Path) -> None:
    """dataset_loader.py keeps only the non-empty cells (``if line:``) and numbers them with enumerate: an empty
    exemplar cell does not use up a number."""
    root = make_root(tmp_path / "agieval")
    demo = lambda i: repr({"passage": None, "question": f"示例{i}", "options": OPTS, "label": "A"})  # noqa: E731
    with (root / "few_shot_prompts.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "logiqa-zh"])
        for i in range(1, 6):
            w.writerow([f"sample {i}", "" if i in (1, 3) else demo(i)])
            w.writerow([f"explanation {i}", "解析"])
    demos = load_few_shot_demos(root / "few_shot_prompts.csv", "logiqa-zh")
    assert [d[0].split(".")[0] for d in demos] == ["问题 1", "问题 2", "问题 3"]
    assert [d[0].split("\n")[0].split()[-1] for d in demos] == ["示例2", "示例4", "示例5"]
