"""The DoIT suite end to end on fixture files of every kind, through the LanguageModel/ChatCodec protocol."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from jaxtune.eval.suites.doit import evaluate_doit
from jaxtune.eval.suites.doit_items import DoitDataError, load_doit_split, score_doit_item
from jaxtune.results import format_table, read_summary, write_result

from ..fakes import ASSISTANT, EOT, ScriptedLM, char_codec


def _u(content: str) -> dict:
    return {"role": "user", "content": content}


def _a(content: str) -> dict:
    return {"role": "assistant", "content": content}


def _mc(q: str) -> str:
    return f"{q}\nA. 甲\nB. 乙\nC. 丙\nD. 丁"


def _rec(type_: str, messages: list[dict], fmt: int = 0, **extra) -> dict:
    return {"messages": messages, "type": type_, "question_format": fmt, **extra}


FIXTURE = {
    "biology_test.json": [
        _rec("biology", [_u(_mc("生物题1")), _a("B")]),
        _rec("biology", [_u(_mc("生物题2")), _a("C")]),
        _rec("biology", [_u(_mc("生物题3")), _a("A")]),
        _rec("biology", [_u(_mc("生物题4")), _a("D")]),
    ],
    "history_test.json": [
        _rec("history", [_u(_mc("历史题1")), _a("A")]),
        _rec("history", [_u("判断：历史题2"), _a("错")]),
        _rec("history", [_u("判断：历史题3"), _a("正确")]),
    ],
    "chinese_test.json": [
        _rec("chinese", [_u(_mc("语文题1")), _a("C")]),
        _rec("chinese", [_u("填空：语文题2"), _a("春天")]),
    ],
    "ethics_test.json": [
        _rec("ethics", [_u("伦理题1"), _a("AB")]),
        _rec("ethics", [_u("伦理题2"), _a("C")]),
    ],
    "math_test.json": [
        _rec("math", [_u("数学题1"), _a("x=1")], answer="1"),
        _rec("math", [_u("数学题2"), _a("1/2")], answer="\\frac{1}{2}"),
    ],
    "understanding_test.json": [
        _rec("understanding", [_u("对话"), _a("好"), _u("理解题1\nA. 甲\nB. 乙\nC. 丙"), _a("C")]),
        _rec("understanding", [_u(_mc("理解题2")), _a("A")]),
    ],
    "code_test.json": [
        _rec("code", [_u("代码题1"), _a("好")], fmt=1, choices=["好1", "坏1", "差1"]),
        _rec("code", [_u("代码题2"), _a("好")], fmt=1, choices=["好2", "坏2", "差2"]),
        _rec("code", [_u("代码题3"), _a("好")], fmt=1, choices=["好3", "坏3", "差3"]),
    ],
    "ceval_physician.json": [
        _rec(
            "ceval_physician_fshot",
            [m for i in range(5) for m in (_u(_mc(f"例{i}")), _a("A"))] + [_u(_mc("医师题")), _a("B")],
        ),
    ],
}

REPLIES = {
    "生物题1": ("B", {}),
    "生物题2": ("我认为是C。", {"▁C": 3.0, "▁A": 1.0}),  # long reply: decided by the last-step logits
    "生物题3": ("a", {"▁A": 5.0}),  # lower case: wrong in the study, A when corrected
    "生物题4": ("E", {"▁D": 5.0}),  # outside A-D: wrong, logits ignored
    "历史题1": ("A.", {"▁B": 2.0}),  # study: logits say B (wrong); corrected: "A." is A
    "历史题2": ("不对", {}),  # study: contains 对 -> True (wrong); corrected: False
    "历史题3": ("正确", {}),
    "语文题1": ("C", {}),
    "语文题2": ("春天。", {}),  # study keeps the 。
    "伦理题1": ("BA", {}),
    "伦理题2": ("All: C", {}),  # study reads A from "All"
    "数学题1": ("所以 x = 1.", {}),
    "数学题2": ("\\fbox{\\frac{1}{2}}", {}),  # study extracts nothing from \fbox
    "理解题1": ("C", {}),
    "理解题2": ("D", {}),
    "医师题": ("B", {}),
}
PERPLEXITY = {
    "好1": 1.0,
    "坏1": 2.0,
    "差1": 3.0,
    "好2": 1.0,
    "坏2": 1.0,
    "差2": 4.0,
    "好3": 3.0,
    "坏3": 2.0,
    "差3": 5.0,
}


def _write(root: Path, files: dict[str, list[dict]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, records in files.items():
        (root / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return root


def _lm(codec):
    return ScriptedLM(
        codec, replies=REPLIES, perplexity=lambda ctx, cont: PERPLEXITY[codec.decode([t for t in cont if t != EOT])]
    )


EXPECTED_STUDY = {
    "biology": 50.0,
    "ceval_physician": 100.0,
    "chinese": 50.0,
    "code": 200 / 3,
    "ethics": 50.0,
    "history": 100 / 3,
    "math": 50.0,
    "understanding": 50.0,
}
EXPECTED_CORRECTED = {
    **EXPECTED_STUDY,
    "biology": 75.0,
    "chinese": 100.0,
    "ethics": 100.0,
    "history": 100.0,
    "math": 100.0,
}
EXPECTED_CHANCE = {
    "biology": 25.0,
    "ceval_physician": 25.0,
    "chinese": 12.5,
    "code": 100 / 3,
    "ethics": 100 * (1 / 6 + 1 / 4) / 2,
    "history": 100 * (0.25 + 0.5 + 0.5) / 3,
    "math": 0.0,
    "understanding": 100 * (0.33 + 0.25) / 2,
}


def test_study_scorer_end_to_end(tmp_path: Path) -> None:
    data = load_doit_split(_write(tmp_path / "test", FIXTURE))
    assert list(data) == sorted(EXPECTED_STUDY)
    codec = char_codec()
    lm = _lm(codec)
    result = evaluate_doit(data, lm, codec, chunk_size=4)
    s = result.summary
    assert (s.suite, s.variant, s.scorer_mode, s.unit) == ("doit", "test", "study", "percent")
    assert {a.name: a.score for a in s.abilities} == pytest.approx(EXPECTED_STUDY)
    assert {a.name: a.chance for a in s.abilities} == pytest.approx(EXPECTED_CHANCE)
    assert s.overall == pytest.approx(sum(EXPECTED_STUDY.values()) / 8)  # the true mean, not the study's half
    assert s.ability("ceval_physician").details["study_total"] == 2.5  # each C-Eval item counted 100/40
    assert s.ability("biology").details["study_total"] == 2

    # prompts: messages[:-1] rendered, then a bare <assistant>; three choices ranked per format-1 item
    gen_prompts = [p for kind, ps in lm.calls if kind == "generate" for p in ps]
    assert len(gen_prompts) == 16 and all(p[-1] == ASSISTANT for p in gen_prompts)
    assert gen_prompts[0] == codec.prompt_ids(FIXTURE["biology_test.json"][0]["messages"][:1])
    pairs = [pair for kind, ps in lm.calls if kind == "perplexities" for pair in ps]
    assert len(pairs) == 9
    assert pairs[0][1] == codec.reply_ids("好1")  # choice tokens + <eot>

    by_prompt = {
        key: item
        for item in result.items
        for key in [*REPLIES, "代码题2", "代码题3"]
        if key in item["prompt"][-1]["content"]
    }
    assert by_prompt["生物题2"]["parsed"] == "C" and by_prompt["生物题2"]["correct"]
    assert by_prompt["生物题3"]["parsed"] == "E"
    assert by_prompt["历史题2"]["parsed"] == "T" and not by_prompt["历史题2"]["correct"]
    assert by_prompt["语文题2"]["parsed"] == "春天。"
    assert by_prompt["伦理题2"]["parsed"] == ["A", "C"]
    assert by_prompt["数学题2"]["parsed"] is None
    assert by_prompt["代码题2"]["correct"] and not by_prompt["代码题3"]["correct"]  # tie counts; 3.0 > 2.0 loses
    assert by_prompt["生物题2"]["letter_logits"] == [1.0, 0.0, 3.0, 0.0]
    assert by_prompt["伦理题1"]["letter_logits"] is None

    summary_path, items_path = write_result(tmp_path / "out", result)
    assert summary_path.name == "doit-test.summary.json"
    back = read_summary(summary_path)
    assert back.overall == pytest.approx(s.overall) and back.abilities[0].name == "biology"
    lines = items_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 19 and {"prompt", "reply", "parsed", "correct"} <= set(json.loads(lines[0]))
    table = format_table(s)
    assert "ceval_physician" in table and "overall (mean)" in table and "25.00" in table


def test_corrected_scorer_is_named_and_fixes_quirks(tmp_path: Path) -> None:
    data = load_doit_split(_write(tmp_path / "test", FIXTURE))
    codec = char_codec()
    result = evaluate_doit(data, _lm(codec), codec, mode="corrected", variant="valid")
    assert result.summary.scorer_mode == "corrected" and result.summary.stem == "doit-valid-corrected"
    assert {a.name: a.score for a in result.summary.abilities} == pytest.approx(EXPECTED_CORRECTED)
    assert result.summary.ability("understanding").chance == pytest.approx(100 * (1 / 3 + 0.25) / 2)


def test_format1_sequence_cut_to_max_len(tmp_path: Path) -> None:
    long_prompt = "长" * 30
    data = load_doit_split(
        _write(
            tmp_path / "t",
            {
                "code_test.json": [
                    _rec("code", [_u("短"), _a("x")], fmt=1, choices=["好好好好好好", "坏", "差"]),
                    _rec("code", [_u(long_prompt), _a("x")], fmt=1, choices=["好", "坏", "差"]),
                ]
            },
        )
    )
    codec = char_codec()
    lm = ScriptedLM(codec, perplexity=lambda ctx, cont: float(len(cont)))
    result = evaluate_doit(data, lm, codec, max_len=8)
    pairs = lm.calls[0][1]
    # "短": context <user>短<eot><assistant> = 4 tokens, so the 7-token reference keeps 4 tokens, no <eot>
    assert [len(c) + len(k) for c, k in pairs[:3]] == [8, 6, 6]
    assert pairs[0][1] == codec.encode("好好好好")
    # the long prompt leaves nothing to score: NaN perplexities, wrong (all-NaN)
    assert all(k == [] and len(c) == 8 for c, k in pairs[3:])
    items = result.items
    assert not items[0]["correct"]  # 4 > 2: the cut reference now looks worse
    assert all(math.isnan(p) for p in items[1]["perplexities"]) and not items[1]["correct"]


def test_data_errors_name_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    _write(bad, {"biology_test.json": [_rec("biology", [_u("q"), _a("B")]), {"messages": [_u("q"), _a("A")]}]})
    with pytest.raises(DoitDataError, match=r"biology_test.json:2: missing required field 'type'"):
        load_doit_split(bad)
    _write(bad, {"biology_test.json": [_rec("biology", [_u("q"), _a("B")], fmt=1, choices=["a", "b"])]})
    with pytest.raises(DoitDataError, match=r":1: question_format 1 needs field 'choices'"):
        load_doit_split(bad)
    _write(bad, {"biology_test.json": [_rec("math", [_u("q"), _a("1")])]})
    with pytest.raises(DoitDataError, match="math record needs a string field 'answer'"):
        load_doit_split(bad)
    (bad / "biology_test.json").write_text('{"messages": [\n', encoding="utf-8")
    with pytest.raises(DoitDataError, match=r"biology_test.json:1: not valid JSON"):
        load_doit_split(bad)

    ok = load_doit_split(
        _write(
            tmp_path / "ok", {"x_test.json": [_rec("poetry", [_u("q"), _a("A")]), _rec("biology", [_u("q"), _a("甲")])]}
        )
    )
    poetry, bio = ok["x"]
    with pytest.raises(DoitDataError, match="no scorer for question_format 0 with type 'poetry'"):
        score_doit_item(poetry, "A")
    with pytest.raises(DoitDataError, match="multiple-choice label must be one of A-D"):
        score_doit_item(bio, "A")
    with pytest.raises(DoitDataError, match="no file for abilities"):
        load_doit_split(tmp_path / "ok", abilities=["biology"])
