"""``jaxtune score`` (jaxtune/eval/score.py, the DoIT suite's hooks in jaxtune/eval/suites/doit_rescore.py) on pred
files in the study's format, checked against an independent re-implementation of the study's scorer.py + utils.py + parse_utils.py formulas written out in this test (torch's
softmax and numpy's argmax for the letter logits, as parse_utils did)."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from jaxtune.cli import main
from jaxtune.eval.rescoring import ScoreError
from jaxtune.eval.score import score_predictions
from jaxtune.eval.suites.doit_rescore import study_run_info
from jaxtune.results import read_summary

DEMO_TOKENIZER = Path(__file__).parents[2] / "jaxtune" / "demo" / "tokenizer" / "tokenizer.model"
VOCAB = 1000  # the demo tokenizer's size
TRUE_WORDS = ["正确", "对", "T", "√", "V"]
FALSE_WORDS = ["错误", "错", "F", "×", "X"]


def _letter_ids(model: Path) -> list[int]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model))
    return [sp.piece_to_id(p) for p in ("▁A", "▁B", "▁C", "▁D")]


# ------------------------------------------------------------------------------------------------------------------
# The reference: scorer.py's per-file totals, written from the study's code
# ------------------------------------------------------------------------------------------------------------------


def _ref_choice(answer: str, logits: list[float], ids: list[int]) -> str:
    answer = answer.strip()
    if len(answer) != 1:
        probs = torch.nn.functional.softmax(torch.tensor([logits[i] for i in ids]), dim=0).numpy()
        return "ABCD"[int(np.argmax(probs))]
    return answer if answer in "ABCD" else "E"


def _ref_tf(answer: str) -> str:
    answer = answer.strip()
    t = re.findall("(?:{})".format("|".join(TRUE_WORDS)), answer)
    f = re.findall("(?:{})".format("|".join(FALSE_WORDS)), answer)
    return "T" if t and not f else ("F" if f and not t else "E")


def _ref_last_line(s: str) -> str:
    for item in s.split("\n")[::-1]:
        if item.strip() != "":
            return item
    return s


def _ref_item(sample: dict, ids: list[int]) -> tuple[float, float]:
    """(score, score_expected) of one sample, as scorer.py adds them."""
    if sample["question_format"] == 1:
        ppl = sample["generated_ppl"]
        return (1.0 if min(ppl) == ppl[0] else 0.0), 1.0 / 3
    out, label, t = sample["generated_response"], sample["messages"][-1]["content"], sample["type"]
    if t == "ethics":
        gold = set(re.findall(r"\(*([A-F])\)*", _ref_last_line(label)))
        got = set(re.findall(r"\(*([A-F])\)*", _ref_last_line(out)))
        return float(got == gold), 1 / math.comb(4, len(gold))
    if t == "history" and label not in "ABCD":
        return float(_ref_tf(out) == ("T" if label in TRUE_WORDS else "F")), 0.5
    if t == "chinese" and label not in ["A", "B", "C", "D"]:
        m = re.findall(r"[\u4e00-\u9fff]+.*?[^\w\s]*", out.strip())
        return float((m[0].strip() if m else out.strip()) == label), 0.0
    correct = float(_ref_choice(out, sample["generated_score"], ids) == label)
    if t == "understanding":
        four = re.search(r"\nA\..*\nB\..*\nC\..*\nD\.", sample["messages"][-2]["content"])
        return correct, (0.25 if four else 0.33)
    if t.startswith("ceval"):
        return correct / 40 * 100, 0.25 / 40 * 100
    return correct, 0.25


# ------------------------------------------------------------------------------------------------------------------
# Pred files in the study's format
# ------------------------------------------------------------------------------------------------------------------


def _scores(rng: random.Random, ids: list[int]) -> list[float]:
    v = [rng.gauss(0, 3) for _ in range(VOCAB)]
    if rng.random() < 0.3:
        v[rng.randrange(VOCAB)] = math.nan  # NaN away from the letters: read, and of no consequence
    if rng.random() < 0.1:
        v[rng.choice(ids)] = math.nan  # NaN on a letter: the study's softmax went all-NaN, argmax said A
    elif rng.random() < 0.1:
        v[ids[1]] = v[ids[2]] = max(v[i] for i in ids) + 1.0  # a tie between B and C: the first letter wins
    return v


def _sample(rng: random.Random, t: str, i: int, ids: list[int]) -> dict:
    mc_replies = ["A", "B", "C", "D", "a", "Ａ", "E", "1", "A.", "答案是B", "", " C ", "(D)"]
    messages = [{"role": "user", "content": f"{t} 问题 {i}"}]
    if t == "understanding":
        opts = "\nA.一\nB.二\nC.三" + ("\nD.四" if rng.random() < 0.5 else "")
        messages = [
            {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "好"},
            {"role": "user", "content": "选哪个？" + opts},
        ]
    elif t.startswith("ceval"):
        messages = [
            m for k in range(5) for m in ({"role": "user", "content": f"例{k}"}, {"role": "assistant", "content": "A"})
        ] + messages
    d = {"messages": messages, "type": t, "question_format": 0, "choices": [], "idx": i}
    if t == "code":
        d["question_format"] = 1
        d["choices"] = ["ref", "x", "y"]
        ppl = [rng.choice([1.5, 2.0, 3.0, math.nan]) for _ in range(3)]
        if rng.random() < 0.15:
            ppl = [math.nan] * 3
        d["generated_ppl"] = ppl
        label = "ref"
    elif t == "history" and rng.random() < 0.5:
        label = rng.choice(TRUE_WORDS + FALSE_WORDS)
        d["generated_response"] = rng.choice(["正确", "不对", "错", "T", "TRUE or FALSE", "对错", "X", "", "√ 是的"])
        d["generated_score"] = _scores(rng, ids)
    elif t == "chinese" and rng.random() < 0.5:
        label = rng.choice(["春天", "秋天"])
        d["generated_response"] = rng.choice(["春天", "春天。", "是春天", "秋天", "", " 秋天 ", "答：秋天"])
        d["generated_score"] = _scores(rng, ids)
    elif t == "ethics":
        label = rng.choice(["A", "AB", "答案：(A)(C)", "B\nBD"])
        d["generated_response"] = rng.choice(["AB", "All of them", "(A)(C)", "B", "分析\n\nBD", "D"])
    else:
        label = rng.choice("ABCD")
        d["generated_response"] = rng.choice(mc_replies)
        d["generated_score"] = _scores(rng, ids)
    d["messages"].append({"role": "assistant", "content": label})
    return d


STUDY_FILES = {
    "pred_biology_test.json": "biology",
    "pred_history_test.json": "history",
    "pred_chinese_test.json": "chinese",
    "pred_understanding_test.json": "understanding",
    "pred_ethics_test.json": "ethics",
    "pred_code_test.json": "code",
    "pred_reasoning_test.json": "reasoning",
    "pred_ceval_physician.json": "ceval_physician_fshot",
}


def _write_pred_dir(folder: Path, ids: list[int], n: int = 40, seed: int = 0) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, t in STUDY_FILES.items():
        samples = [_sample(rng, t, i, ids) for i in range(n)]
        # json.dumps writes bare NaN, as the study's jsonlines writer did.
        (folder / name).write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8")
        written[name] = samples
    return written


@pytest.fixture()
def pred_dir(tmp_path) -> tuple[Path, dict[str, list[dict]]]:
    folder = tmp_path / "pred-data" / "test" / "7b" / "curated-160" / "checkpoint-30"
    return folder, _write_pred_dir(folder, _letter_ids(DEMO_TOKENIZER))


def test_fixture_holds_nan_the_way_the_study_wrote_it(pred_dir):
    folder, _ = pred_dir
    text = (folder / "pred_code_test.json").read_text()
    assert "NaN" in text and "NaN" in (folder / "pred_biology_test.json").read_text()


def test_study_totals_match_scorer_py(pred_dir, tmp_path):
    folder, samples = pred_dir
    ids = _letter_ids(DEMO_TOKENIZER)
    out = score_predictions(folder, tmp_path / "out", tokenizer=DEMO_TOKENIZER)
    totals = json.loads((tmp_path / "out" / "study_totals.json").read_text())
    expected = {name: sum(_ref_item(s, ids)[0] for s in rows) for name, rows in samples.items()}
    assert totals.keys() == expected.keys()
    for name in expected:
        assert totals[name] == pytest.approx(expected[name], abs=1e-9), name
    assert 0 < expected["pred_ceval_physician.json"] < 100 and expected["pred_ceval_physician.json"] % 2.5 == 0
    assert out.study_totals[tmp_path / "out" / "study_totals.json"] == totals


def test_summary_scores_chance_and_true_mean(pred_dir, tmp_path):
    folder, samples = pred_dir
    ids = _letter_ids(DEMO_TOKENIZER)
    score_predictions(folder, tmp_path / "out", tokenizer=DEMO_TOKENIZER)
    summary = read_summary(tmp_path / "out" / "doit-test.summary.json")
    assert summary.scorer_mode == "study" and summary.variant == "test"
    scores = {}
    for name, rows in samples.items():
        ability = name[len("pred_") :].removesuffix(".json").removesuffix("_test")
        ref = [_ref_item(s, ids) for s in rows]
        weight = 2.5 if ability.startswith("ceval") else 1.0
        a = summary.ability(ability)
        assert a.n == len(rows)
        assert a.score == pytest.approx(100 * sum(r[0] for r in ref) / weight / len(rows))
        assert a.chance == pytest.approx(100 * sum(r[1] for r in ref) / weight / len(rows))
        scores[ability] = a.score
    assert summary.overall == pytest.approx(sum(scores.values()) / len(scores))
    items = (tmp_path / "out" / "doit-test.items.jsonl").read_text().splitlines()
    assert len(items) == sum(len(r) for r in samples.values())


def test_run_info_read_from_pred_py_layout(tmp_path):
    run = study_run_info(tmp_path / "test" / "7b" / "curated-160" / "checkpoint-30")
    # curated-160 has ceil(160/64) = 3 steps per epoch in the study: step 30 closes epoch 10.
    assert (run.model_size, run.data_source, run.data_volume, run.step, run.epoch) == (
        "7b (study)",
        "curated",
        160,
        30,
        10,
    )
    assert study_run_info(tmp_path / "test" / "7b" / "curated-160" / "checkpoint-31").epoch is None


def test_corrected_mode_keeps_study_totals(pred_dir, tmp_path):
    folder, samples = pred_dir
    ids = _letter_ids(DEMO_TOKENIZER)
    score_predictions(folder, tmp_path / "out", tokenizer=DEMO_TOKENIZER, mode="corrected")
    corrected = read_summary(tmp_path / "out" / "doit-test-corrected.summary.json")
    assert corrected.scorer_mode == "corrected"
    totals = json.loads((tmp_path / "out" / "study_totals.json").read_text())
    assert totals["pred_biology_test.json"] == sum(_ref_item(s, ids)[0] for s in samples["pred_biology_test.json"])
    # The corrected scorer reads "a", "Ａ" and "(D)" as letters, so it scores biology differently from the study.
    study_biology = 100 * totals["pred_biology_test.json"] / len(samples["pred_biology_test.json"])
    assert corrected.ability("biology").score != pytest.approx(study_biology)


def test_jaxtune_items_are_rescored_to_the_same_summary(pred_dir, tmp_path):
    folder, _ = pred_dir
    score_predictions(folder, tmp_path / "first", tokenizer=DEMO_TOKENIZER)
    first = read_summary(tmp_path / "first" / "doit-test.summary.json")
    (tmp_path / "first" / "study_totals.json").unlink()
    score_predictions(tmp_path / "first", tmp_path / "again")
    again = read_summary(tmp_path / "again" / "doit-test.summary.json")
    assert [(a.name, a.n, a.correct, a.chance) for a in again.abilities] == [
        (a.name, a.n, a.correct, a.chance) for a in first.abilities
    ]
    assert again.run == first.run
    score_predictions(tmp_path / "first", tmp_path / "corr", mode="corrected")
    score_predictions(folder, tmp_path / "corr-direct", tokenizer=DEMO_TOKENIZER, mode="corrected")
    a = read_summary(tmp_path / "corr" / "doit-test-corrected.summary.json")
    b = read_summary(tmp_path / "corr-direct" / "doit-test-corrected.summary.json")
    assert [(x.name, x.correct) for x in a.abilities] == [(x.name, x.correct) for x in b.abilities]


def test_bad_lines_are_named_by_file_and_line(tmp_path):
    ids = _letter_ids(DEMO_TOKENIZER)
    folder = tmp_path / "p"
    _write_pred_dir(folder, ids, n=3)
    path = folder / "pred_code_test.json"
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:-5]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ScoreError, match=r"pred_code_test\.json:2: not valid JSON"):
        score_predictions(folder, tmp_path / "out", tokenizer=DEMO_TOKENIZER)
    d = json.loads(lines[0])
    del d["generated_ppl"]
    path.write_text(json.dumps(d) + "\n")
    with pytest.raises(ScoreError, match=r"pred_code_test\.json:1: .*'generated_ppl'"):
        score_predictions(folder, tmp_path / "out", tokenizer=DEMO_TOKENIZER)


def test_short_logit_vector_names_the_tokenizer(tmp_path):
    folder = tmp_path / "p"
    _write_pred_dir(folder, _letter_ids(DEMO_TOKENIZER), n=2)
    for f in folder.iterdir():
        if f.name != "pred_biology_test.json":
            f.unlink()
    # LLaMA's ids (319.., the default) fit a 1000-long vector, so shorten it below them.
    rows = [json.loads(line) for line in (folder / "pred_biology_test.json").read_text().splitlines()]
    for r in rows:
        r["generated_score"] = r["generated_score"][:300]
        r["generated_response"] = "long reply"
    (folder / "pred_biology_test.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ScoreError, match=r"pred_biology_test\.json:1: .*300 logits.*--tokenizer"):
        score_predictions(folder, tmp_path / "out")


def test_chinese_llama_plus_answer_pieces(shared_data):
    assert _letter_ids(shared_data / "tokenizers" / "chinese-llama-plus" / "tokenizer.model") == [319, 350, 315, 360]


def test_cli_score_then_report_draws_the_study_curve(pred_dir, tmp_path, capsys):
    folder, _ = pred_dir
    code = main(
        ["score", str(folder.parents[2]), "--out", str(tmp_path / "scored"), "--tokenizer", str(DEMO_TOKENIZER)]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "pred_biology_test.json" in err and "study totals" in out and "overall (mean)" in out
    summary = tmp_path / "scored" / "7b" / "curated-160" / "checkpoint-30" / "doit-test.summary.json"
    assert read_summary(summary).run.model_size == "7b (study)"
    code = main(["report", str(tmp_path / "scored"), "--out", str(tmp_path / "report")])
    assert code == 0, capsys.readouterr().err
    assert "7b (study)" in (tmp_path / "report" / "doit-test.scores.md").read_text()


def test_cli_no_prediction_files(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["score", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert code == 2 and "no prediction files" in capsys.readouterr().err


def test_jaxtune_mcq_items_are_rescored_and_belle_is_listed_as_not_scored(tmp_path):
    """C-Eval/CMMLU/AGIEval items: the argmax of the stored letter logits (ties to A, null read as NaN), run info and
    the suite's details from the summary beside them; BELLE needs a judge and is named, not skipped silently."""
    from jaxtune.results import RunInfo, ability_score, make_summary, write_summary

    folder = tmp_path / "eval"
    folder.mkdir()
    rows = [
        ("law", [0.1, 2.0, 0.3, 0.0], "B"),
        ("law", [1.0, 1.0, 0.0, 0.0], "A"),
        ("law", [None, 5.0, 0.0, 0.0], "B"),
        ("art", [0.0, 0.0, 0.0, 3.0], "C"),
    ]
    (folder / "agieval-zero-shot.items.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "task": t,
                    "where": f"x.jsonl:{i}",
                    "n_shots": 0,
                    "prompt": [],
                    "letter_logits": lg,
                    "parsed": "?",
                    "label": lab,
                    "correct": None,
                }
            )
            + "\n"
            for i, (t, lg, lab) in enumerate(rows)
        )
    )
    old = make_summary(
        "agieval",
        "zero-shot",
        "study",
        [ability_score("law", [1.0])],
        RunInfo(model_size="7b", data_source="curated", data_volume=160, epoch=10),
        skipped_not_one_letter={"law": 2},
        notes=["left out 2 items"],
    )
    write_summary(folder / "agieval-zero-shot.summary.json", old)
    (folder / "belle-judge.items.jsonl").write_text('{"class": "math"}\n')
    out = score_predictions(folder, tmp_path / "out")
    summary = read_summary(tmp_path / "out" / "agieval-zero-shot.summary.json")
    # law: B correct, a tie -> A correct, NaN first -> numpy's argmax picks the NaN (A), wrong; art: D != C
    assert {a.name: a.correct for a in summary.abilities} == {"law": 2.0, "art": 0.0}
    assert summary.details["micro_average"] == 50.0 and summary.details["skipped_not_one_letter"] == {"law": 2}
    assert summary.run.epoch == 10 and summary.run.data_volume == 160
    assert any("belle-judge.items.jsonl" in n and "judge" in n for n in out.not_scored)
    assert "not scored:" in out.summary() and "left out 2 items" in out.summary()


def test_items_are_rescored_by_their_suites_hook(tmp_path, monkeypatch):
    """score.py names no suite: an items file goes to its suite's registered rescoring hook, with the variant, mode,
    run and details of the summary beside it; a suite without one is listed with what scores it."""
    import dataclasses

    from jaxtune.eval.suites import registry
    from jaxtune.results import RunInfo, SuiteResult, ability_score, make_summary, write_summary

    seen = []

    def rescore(f):
        seen.append((f.suite, f.variant, f.mode, f.run.model_size, dict(f.details), [w for w, _ in f.lines()]))
        return SuiteResult(make_summary(f.suite, f.variant, f.mode, [ability_score("x", [1.0])], f.run), [])

    suites = registry.load_suites()
    monkeypatch.setattr(
        registry,
        "SUITES",
        {
            **registry.SUITES,
            "belle": dataclasses.replace(suites["belle"], score=registry.Rescoring(items=rescore)),
            "cmmlu": dataclasses.replace(suites["cmmlu"], score=registry.Rescoring(scored_by="an oracle")),
        },
    )
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "belle-eval_set.items.jsonl").write_text('{"class": "math"}\n')
    old = make_summary("belle", "eval_set", "judge", [ability_score("math", [0.5])], RunInfo(model_size="7b"), k=1)
    write_summary(folder / "belle-eval_set.summary.json", old)
    (folder / "cmmlu-test.items.jsonl").write_text('{"task": "law"}\n')
    out = score_predictions(folder, tmp_path / "out", mode="corrected")
    assert seen == [("belle", "eval_set", "corrected", "7b", {"k": 1}, [f"{folder / 'belle-eval_set.items.jsonl'}:1"])]
    assert out.not_scored == [f"{folder / 'cmmlu-test.items.jsonl'} (cmmlu is scored by an oracle)"]
