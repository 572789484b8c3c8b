"""BELLE end to end: generated answers judged by a real local HTTP judge; class-name normalisation, message formats,
per-class means, parse failures, the judge's identity, and the loader's errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxtune.eval.judge import Judge, JudgeSettings
from jaxtune.eval.suites.belle import (
    ANSWERS_FILE,
    AnswerStore,
    BelleDataError,
    evaluate_belle,
    generate_answers,
    judge_message,
    load_belle_eval_set,
    load_belle_prompts,
    normalise_class,
    score_belle,
)
from jaxtune.results import format_table, write_result

from ..fakes import ScriptedLM, char_codec
from ..judge_server import JudgeServer

SHARED = Path(__file__).parents[3] / ".." / "shared" / "data" / "belle_eval"
KEY = "sk-belle-SECRET-99"

PROMPTS = [
    {"class": "open QA", "prompt": "开放问答提示。"},
    {"class": "closed\xa0QA", "prompt": "封闭问答提示。"},
    {"class": "math", "prompt": "数学提示。"},
    {"class": "code", "prompt": "代码提示。"},
    {"class": "generation", "prompt": "生成提示。"},
]
EVAL_SET = [
    {"question": "问1", "std_answer": "答1", "class": "open qa"},
    {"question": "问2", "std_answer": "答2", "class": "open qa"},
    {"question": "问3", "std_answer": "答3", "class": "closed\xa0qa"},
    {"question": "问4", "std_answer": "答4", "class": "math"},
    {"question": "问5", "std_answer": "答5", "class": "code"},
    {"question": "问6", "std_answer": "答6", "class": "code"},
    {"question": "问7", "std_answer": "", "class": "generation"},
]
ANSWERS = {
    "问1": "答1",
    "问2": "不太对",
    "问3": "答3",
    "问4": "错",
    "问5": "答5",
    "问6": "[MALFORMED]",
    "问7": "一首诗",
}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")  # no final newline
    return path


def test_normalise_class_and_messages() -> None:
    assert normalise_class("closed\xa0QA") == normalise_class("closed  qa") == "closed qa"
    assert judge_message("P", "Q", "", "A") == "P Q  模型回答： 'A'。请针对模型回答给出得分，顺便给出理由："
    assert judge_message("P", "Q", "S", "A") == "P Q 标准回答:S  模型回答：' A'。请针对模型回答给出得分，顺便给出理由："


def test_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BELLE_TEST_KEY", KEY)
    prompts = load_belle_prompts(_jsonl(tmp_path / "eval_prompt.json", PROMPTS))
    items = load_belle_eval_set(_jsonl(tmp_path / "eval_set.json", EVAL_SET), prompts)
    assert [it.cls for it in items] == ["open qa", "open qa", "closed qa", "math", "code", "code", "generation"]
    codec = char_codec()
    lm = ScriptedLM(codec, replies={q: (a, {}) for q, a in ANSWERS.items()})
    with JudgeServer() as server:
        s = JudgeSettings(
            base_url=server.url, model="judge-x", api_key_env="BELLE_TEST_KEY", backoff_s=0.01, timeout_s=2.0
        )
        result = evaluate_belle(items, prompts, lm, codec, Judge(s, tmp_path / "judge_cache.jsonl"), max_new_tokens=64)
        asked = len(server.requests)
        # the judge's messages: reference-free only for the empty std_answer
        sent = {r["body"]["messages"][0]["content"] for r in server.requests}
        assert "生成提示。 问7  模型回答： '一首诗'。请针对模型回答给出得分，顺便给出理由：" in sent
        assert "开放问答提示。 问2 标准回答:答2  模型回答：' 不太对'。请针对模型回答给出得分，顺便给出理由：" in sent
        # a rerun after a crash asks nothing twice
        again = score_belle(
            items, [it["reply"] for it in result.items], prompts, Judge(s, tmp_path / "judge_cache.jsonl")
        )
        assert len(server.requests) == asked
    assert asked == 6 * 3 + 3 * 3  # 3 repeats each; the malformed one re-asked twice per repeat
    summary = result.summary
    scores = {a.name: a.score for a in summary.abilities}
    assert scores == pytest.approx({"closed qa": 1.0, "code": 1.0, "generation": 0.8, "math": 0.5, "open qa": 0.75})
    assert summary.unit == "fraction" and summary.scorer_mode == "judge"
    assert summary.overall == pytest.approx(4.05 / 5)
    assert summary.details["overall_without_math_code"] == pytest.approx((1.0 + 0.8 + 0.75) / 3)
    assert summary.details["parse_failure_rate"] == pytest.approx(3 / 21)
    assert summary.ability("code").details == {"n_items": 2, "n_unscored": 1, "failed_judgements": 3}
    assert summary.details["judge"]["model"] == "judge-x" and summary.details["judge"]["repeats"] == 3
    assert again.summary.overall == pytest.approx(summary.overall)
    summary_path, items_path = write_result(tmp_path / "out", result)
    assert summary_path.name == "belle-eval_set.summary.json"
    for path in (summary_path, items_path, tmp_path / "judge_cache.jsonl"):
        assert KEY not in path.read_text(encoding="utf-8")
    first = json.loads(items_path.read_text(encoding="utf-8").splitlines()[0])
    assert first["reply"] == "答1" and first["judgements"] == [1.0, 1.0, 1.0]
    # The printed table shows the judge's failures and unscored answers (before: only the JSON had them).
    table = format_table(summary).splitlines()
    assert table[1].split() == ["ability", "N", "correct", "score", "chance", "unscored"]
    assert table[4].split() == ["code", "1", "1", "1.0000", "-", "1"]
    assert table[-2].split()[-1] == "1"
    assert table[-1] == "judge: 3 of 21 judgements unparseable after re-asks (14.3%); 1 of 7 answers unscored"


def test_an_echoed_key_stays_out_of_the_items_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BELLE_TEST_KEY", KEY)
    prompts = load_belle_prompts(_jsonl(tmp_path / "eval_prompt.json", PROMPTS))
    items = load_belle_eval_set(_jsonl(tmp_path / "eval_set.json", EVAL_SET[:2]), prompts)
    with JudgeServer() as server:
        s = JudgeSettings(base_url=server.url, model="judge-x", api_key_env="BELLE_TEST_KEY", timeout_s=2.0)
        result = score_belle(items, ["[ECHOKEY]", "答2"], prompts, Judge(s, tmp_path / "judge_cache.jsonl"))
    assert KEY in server.requests[0]["auth"]
    _, items_path = write_result(tmp_path / "out", result)
    for path in (items_path, tmp_path / "judge_cache.jsonl"):
        text = path.read_text(encoding="utf-8")
        assert "SECRET" not in text and "Bearer ***" in text


def test_answers_are_kept_as_they_come_and_taken_back_only_when_they_fit(tmp_path: Path) -> None:
    prompts = load_belle_prompts(_jsonl(tmp_path / "eval_prompt.json", PROMPTS))
    items = load_belle_eval_set(_jsonl(tmp_path / "eval_set.json", EVAL_SET), prompts)
    codec = char_codec()
    lm = ScriptedLM(codec, replies={q: (a, {}) for q, a in ANSWERS.items()})
    generation = {"checkpoint": "ckpt", "max_new_tokens": 64}
    store = AnswerStore(tmp_path / ANSWERS_FILE, generation, items)
    assert store.saved() == []
    store.start([])
    answers = generate_answers(items, lm, codec, max_new_tokens=64, chunk_size=3, on_answers=store.append)
    assert answers == [ANSWERS[it.question] for it in items]
    assert AnswerStore(tmp_path / ANSWERS_FILE, generation, items).saved() == answers
    # A crash mid-write leaves a torn last line: the answers before it are kept.
    text = (tmp_path / ANSWERS_FILE).read_text(encoding="utf-8")
    (tmp_path / ANSWERS_FILE).write_text(text[: text.rindex('"answer"')], encoding="utf-8")
    assert AnswerStore(tmp_path / ANSWERS_FILE, generation, items).saved() == answers[:-1]
    # Other settings, or other questions: nothing is taken.
    assert AnswerStore(tmp_path / ANSWERS_FILE, {**generation, "max_new_tokens": 32}, items).saved() == []
    assert AnswerStore(tmp_path / ANSWERS_FILE, generation, items[1:]).saved() == []
    # start() keeps what it is given, and appending goes on after it.
    again = AnswerStore(tmp_path / ANSWERS_FILE, generation, items)
    again.start(answers[:2])
    again.append(items[2:], answers[2:])
    assert AnswerStore(tmp_path / ANSWERS_FILE, generation, items).saved() == answers


def test_loader_names_bad_lines(tmp_path: Path) -> None:
    prompts = load_belle_prompts(_jsonl(tmp_path / "p.json", PROMPTS))
    path = tmp_path / "set.json"
    path.write_text(
        '{"question": "q", "std_answer": "a", "class": "math"}\n'
        '{"question": "q", "std_answer": NaN, "class": "math"}\n'
        '{"question": "\\\'q\\\'", "std_answer": "a", "class": "math"}\n'
        '{"question": "q", "std_answer": "a", "class": "translation"}\n',
        encoding="utf-8",
    )
    with pytest.raises(BelleDataError, match=r"set.json:2: bare NaN is not valid JSON"):
        load_belle_eval_set(path, prompts)
    problems: list[str] = []
    items = load_belle_eval_set(path, prompts, on_error="skip", problems=problems)
    assert len(items) == 1
    assert [p.split(": ")[0].rsplit(":", 1)[1] for p in problems] == ["2", "3", "4"]
    assert "class 'translation' has no judge prompt" in problems[2]
    _jsonl(tmp_path / "p2.json", [*PROMPTS, {"class": "Math", "prompt": "again"}])
    with pytest.raises(BelleDataError, match=r"p2.json:6: a second prompt for class 'math'"):
        load_belle_prompts(tmp_path / "p2.json")


@pytest.mark.skipif(not (SHARED / "eval_set.json").is_file(), reason="shared BELLE eval set not present")
def test_real_eval_set_classes_all_match() -> None:
    prompts = load_belle_prompts(SHARED / "eval_prompt.json")
    items = load_belle_eval_set(SHARED / "eval_set.json", prompts)
    assert len(items) == 1000
    counts = {c: sum(it.cls == c for it in items) for c in {it.cls for it in items}}
    assert counts["open qa"] == 285 and counts["closed qa"] == 52
    rewrite_with_reference = [it for it in items if it.cls == "rewrite" and it.std_answer.strip()]
    assert len(rewrite_with_reference) == 39
    with pytest.raises(BelleDataError, match=r"v0_2023-04-03/eval_set.json:156: "):
        load_belle_eval_set(SHARED / "v0_2023-04-03" / "eval_set.json", prompts)


def test_decoding_settings_are_named() -> None:
    from jaxtune.eval.suites.belle import MODEL_CARD_DECODING, decoding_settings

    card = decoding_settings(seed=7, **MODEL_CARD_DECODING)
    assert card == {"name": "model_card", **MODEL_CARD_DECODING, "seed": 7}
    assert decoding_settings(200, 0.0, 30, 0.85, 1.0, 0)["name"] == "greedy"
    assert decoding_settings(200, 0.0, 30, 0.85, 1.2, 0)["name"] == "custom"  # a penalty applies to greedy too
