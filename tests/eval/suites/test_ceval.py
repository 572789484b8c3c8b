"""C-Eval as a k-shot chat (the study's OOD subjects), scored at the ▁-prefixed letters."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from jaxtune.eval.suites.ceval import (
    STUDY_OOD_SUBJECTS,
    ceval_items,
    evaluate_ceval,
    header,
    load_ceval,
    question_block,
)
from jaxtune.eval.suites.mcq import BARE_PIECES

from ..fakes import ScriptedLM, char_codec

SHARED = Path(__file__).parents[3] / ".." / "shared" / "data"


def make_root(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "subject_mapping.json").write_text(
        json.dumps({"physician": ["Physician", "医师资格", "Other"]}), encoding="utf-8"
    )
    for split, rows in (
        ("dev", [[f"例{i}" + "长" * i, "a", "b", "c", "d", "ABCDA"[i], "1. 解析"] for i in range(5)]),
        ("val", [["医题1\n第二行", "甲", "乙", "丙", "丁", "B"], ["医题2", "甲", "乙", "丙", "丁", "C"]]),
    ):
        path = root / split / f"physician_{split}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, lineterminator="\r\n")
            w.writerow(["id", "question", "A", "B", "C", "D", "answer"] + (["explanation"] if split == "dev" else []))
            w.writerows([[str(i), *r[: 7 if split == "dev" else 6]] for i, r in enumerate(rows)])
    return root


def test_five_shot_chat_shape(tmp_path: Path) -> None:
    (subject,) = load_ceval(make_root(tmp_path / "ceval"), ["physician"])
    assert subject.scored[0].question == "医题1\n第二行"  # embedded newline inside quotes
    codec = char_codec()
    item = ceval_items([subject], codec, 5)[0]
    assert len(item.messages) == 11 and item.n_shots == 5  # 5 shot pairs + the question (+ its answer = 12)
    assert item.messages[0]["content"] == header("医师资格") + "例0\nA. a\nB. b\nC. c\nD. d\n答案："
    assert [m["content"] for m in item.messages[1:10:2]] == list("ABCDA")
    assert item.messages[-1] == {"role": "user", "content": question_block(subject.scored[0])}


def test_shots_dropped_while_too_long(tmp_path: Path) -> None:
    (subject,) = load_ceval(make_root(tmp_path / "ceval"), ["physician"])
    codec = char_codec()
    full = len(codec.prompt_ids(ceval_items([subject], codec, 5)[0].messages))
    item = ceval_items([subject], codec, 5, max_len=full)[0]  # one token too long: the longest shot (例4) goes
    assert item.n_shots == 4 and "例4" not in "".join(m["content"] for m in item.messages)
    assert len(codec.prompt_ids(item.messages)) < full
    zero = ceval_items([subject], codec, 5, max_len=10)[0]
    assert zero.n_shots == 0 and zero.messages[0]["content"].startswith(header("医师资格") + "医题1")


def test_scored_at_prefixed_letters(tmp_path: Path) -> None:
    subjects = load_ceval(make_root(tmp_path / "ceval"), ["physician"])
    codec = char_codec()
    lm = ScriptedLM(codec, next_logits={"医题1": {"▁B": 2.0, "A": 5.0}, "医题2": {"▁A": 1.0}})
    result = evaluate_ceval(subjects, lm, codec)
    assert result.summary.variant == "5-shot" and result.summary.ability("physician").score == 50.0
    bare = evaluate_ceval(subjects, lm, codec, letter_pieces=BARE_PIECES)
    assert [it["parsed"] for it in bare.items] == ["A", "A"]


@pytest.mark.skipif(not (SHARED / "ceval" / "val").is_dir(), reason="shared C-Eval data not present")
def test_real_study_subjects() -> None:
    subjects = load_ceval(SHARED / "ceval")
    assert [s.name for s in subjects] == list(STUDY_OOD_SUBJECTS)
    assert [len(s.scored) for s in subjects] == [49, 44, 46] and all(len(s.dev) == 5 for s in subjects)
    assert [s.name_zh for s in subjects] == ["医师资格", "教师资格", "注册城乡规划师"]
