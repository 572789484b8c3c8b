from __future__ import annotations

import json

from jaxtune.data.mixtures import STUDY_ABILITIES
from jaxtune.demo.abilities import write_demo_dataset


def _read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_layout_and_schema_match_the_study(tmp_path):
    root = write_demo_dataset(tmp_path / "demo", per_ability=30, eval_per_ability=5, synthetic=12)
    for ability in STUDY_ABILITIES:
        train = _read(root / "curated" / "1000" / f"{ability}_1000.json")
        assert len(train) == 30
        assert len(_read(root / "curated" / "test" / f"{ability}_test.json")) == 5
        assert len(_read(root / "curated" / "valid" / f"{ability}_valid.json")) == 5
        for r in train:
            assert r["type"] == ability
            assert r["messages"][-1]["role"] == "assistant" and r["messages"][-1]["content"]
            if ability in ("code", "creative_writing", "role_play"):
                # format 1: the reference reply is choices[0], with two distinct distractors
                assert r["question_format"] == 1 and r["choices"][0] == r["messages"][-1]["content"]
                assert len(set(r["choices"])) == 3
            else:
                assert r["question_format"] == 0
        if ability == "math":
            assert all(r["messages"][-1]["content"].endswith("答案：" + r["answer"]) for r in train)
    assert len(_read(root / "synthetic" / "40960" / "general_instruction_gpt4_41k.json")) == 12


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = write_demo_dataset(tmp_path / "a", per_ability=8, eval_per_ability=2, synthetic=4, seed=1)
    b = write_demo_dataset(tmp_path / "b", per_ability=8, eval_per_ability=2, synthetic=4, seed=1)
    c = write_demo_dataset(tmp_path / "c", per_ability=8, eval_per_ability=2, synthetic=4, seed=2)
    name = "curated/1000/math_1000.json"
    assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / name).read_bytes() != (c / name).read_bytes()


def test_multiple_choice_letters_point_at_the_right_option(tmp_path):
    from jaxtune.demo.abilities import ANIMALS

    root = write_demo_dataset(tmp_path / "d", per_ability=50, eval_per_ability=1, synthetic=1)
    for r in _read(root / "curated" / "1000" / "biology_1000.json"):
        question, reply = r["messages"][0]["content"], r["messages"][-1]["content"]
        category = question[len("下列哪种动物属于") : question.index("？")]
        options = dict(line.split(". ", 1) for line in question.splitlines()[1:])
        assert reply in "ABCD" and options[reply] in ANIMALS[category]
        assert sum(o in ANIMALS[category] for o in options.values()) == 1
    for r in _read(root / "curated" / "1000" / "reasoning_1000.json"):
        question, reply = r["messages"][0]["content"], r["messages"][-1]["content"]
        tallest = question.split("比", 1)[0]
        options = dict(line.split(". ", 1) for line in question.splitlines()[1:])
        assert options[reply] == tallest
