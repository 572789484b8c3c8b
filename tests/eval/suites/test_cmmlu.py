"""CMMLU prompts (0/5-shot, the study's shot dropping) and scoring by next-token logits at the bare letters."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from jaxtune.data.templates import make_template
from jaxtune.data.tokenizer import load_tokenizer
from jaxtune.eval.suites.cmmlu import build_prompt, cmmlu_items, evaluate_cmmlu, format_question, header, load_cmmlu
from jaxtune.eval.suites.mcq import McqDataError, Question
from jaxtune.eval.template_codec import TemplateChatCodec

from ..fakes import ASSISTANT, EOT, USER, ScriptedLM, char_codec

SHARED = Path(__file__).parents[3] / ".." / "shared" / "data"


def _csv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "Question", "A", "B", "C", "D", "Answer"])
        w.writerows([[str(i), *r] for i, r in enumerate(rows)])


def make_root(root: Path) -> Path:
    meta = {
        "name_en2zh": {"agronomy": "农学", "anatomy": "解剖学"},
        "subcategories": {"agronomy": ["other"], "anatomy": ["biology", "china specific"]},
        "categories": {"STEM": ["biology"], "Other": ["other"], "China specific": ["china specific"]},
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "subject_categories.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    for subject in ("agronomy", "anatomy"):
        _csv(
            root / "dev" / f"{subject}.csv",
            [[f"{subject}例{i}" + "长" * (3 * i), "a", "b", "c", "d", "ABCDA"[i]] for i in range(5)],
        )
    _csv(root / "test" / "agronomy.csv", [["农题1", "土地", "水", "风", "火", "A"], ["农题2", "1", "2", "3", "4", "D"]])
    _csv(root / "test" / "anatomy.csv", [["解题1", "骨", "肉", "血", "皮", "B"]])
    return root


def test_prompt_text_zero_and_five_shot(tmp_path: Path) -> None:
    agronomy, anatomy = load_cmmlu(make_root(tmp_path / "cmmlu"))
    assert (agronomy.name, agronomy.name_zh, len(agronomy.dev), len(agronomy.test)) == ("agronomy", "农学", 5, 2)
    assert agronomy.categories == ("Other",) and anatomy.categories == ("STEM", "China specific")
    q = agronomy.test[0]
    zero, n = build_prompt(agronomy, q, 0, len)
    assert n == 0
    assert (
        zero
        == "以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n题目：农题1\nA. 土地\nB. 水\nC. 风\nD. 火\n答案是："
    )
    five, n = build_prompt(agronomy, q, 5, len)
    assert n == 5
    assert five.startswith(header("农学") + "题目：agronomy例0\nA. a\nB. b\nC. c\nD. d\n答案是：A\n\n题目：agronomy例1")
    assert five.endswith("答案是：A\n\n" + format_question(q, with_answer=False))


def test_shots_dropped_longest_first_ties_together() -> None:
    def shot(qtext: str) -> Question:
        return Question(qtext, ("a", "b", "c", "d"), "A", "x")

    dev = [shot("x" * 1), shot("x" * 9), shot("x" * 9), shot("x" * 2), shot("x" * 3)]
    from jaxtune.eval.suites.cmmlu import CmmluSubject

    subject = CmmluSubject("s", "某科", dev, [], ())
    q = shot("问")
    start_end = len(header("某科")) + len(format_question(q, False))
    lengths = [len(format_question(d, True)) for d in dev]
    kept_sum = lengths[0] + lengths[3] + lengths[4]
    # both 9-character shots go at once; the other three fit
    text, n = build_prompt(subject, q, 5, len, max_len=start_end + kept_sum + 1)
    assert n == 3 and text.count("答案是：A") == 3 and "x" * 9 not in text
    # one more token short: the next longest goes too
    text, n = build_prompt(subject, q, 5, len, max_len=start_end + kept_sum)
    assert n == 2 and "xxx\n" not in text
    # header and question alone too long: the question alone, no header
    text, n = build_prompt(subject, q, 5, len, max_len=start_end - 1)
    assert (text, n) == (format_question(q, False), 0)
    with pytest.raises(McqDataError, match="6 shots requested but its dev file has 5"):
        build_prompt(subject, q, 6, len)


def test_token_counts_include_the_study_bos(tmp_path: Path) -> None:
    subjects = load_cmmlu(make_root(tmp_path / "cmmlu"), ["anatomy"])
    codec = char_codec()
    q = subjects[0].test[0]
    start_end = len(header("解剖学")) + len(format_question(q, False))
    # each encode counted one BOS: header + question cost start_end + 2
    item = cmmlu_items(subjects, codec, 5, max_len=start_end + 2)[0]
    assert item.n_shots == 0 and item.messages[0]["content"].startswith(header("解剖学"))
    item = cmmlu_items(subjects, codec, 5, max_len=start_end + 1)[0]
    assert item.messages[0]["content"] == format_question(q, False)


def test_evaluate_reads_bare_letter_logits(tmp_path: Path) -> None:
    subjects = load_cmmlu(make_root(tmp_path / "cmmlu"))
    codec = char_codec()
    # ▁-prefixed pieces must be ignored: CMMLU reads the bare pieces A..D
    lm = ScriptedLM(
        codec, next_logits={"农题1": {"A": 2.0, "▁B": 9.0}, "农题2": {"C": 1.0}, "解题1": {"B": 1.0, "D": 1.0}}
    )
    result = evaluate_cmmlu(subjects, lm, codec, num_shots=5)
    s = result.summary
    assert (s.suite, s.variant) == ("cmmlu", "5-shot")
    assert {a.name: a.score for a in s.abilities} == {"agronomy": 50.0, "anatomy": 100.0}
    assert s.overall == 75.0 and s.details["micro_average"] == pytest.approx(200 / 3)
    assert s.details["category_means"] == {"China specific": 100.0, "Other": 50.0, "STEM": 100.0}
    assert s.abilities[0].chance == 25.0
    assert [it["parsed"] for it in result.items] == ["A", "C", "B"]  # ties to the first letter
    prompt = lm.calls[0][1][0]
    assert prompt[0] == USER and prompt[-2:] == [EOT, ASSISTANT]


def test_bad_files(tmp_path: Path) -> None:
    root = make_root(tmp_path / "cmmlu")
    _csv(root / "test" / "agronomy.csv", [["q", "a", "b", "c", "d", "E"]])
    with pytest.raises(McqDataError, match=r"agronomy.csv:2: field 'Answer' must be one of A-D"):
        load_cmmlu(root)
    with pytest.raises(McqDataError, match="no test file for subjects"):
        load_cmmlu(root, ["virology"])


@pytest.mark.skipif(
    not (SHARED / "cmmlu" / "test").is_dir()
    or not (SHARED / "tokenizers" / "chinese-llama-plus" / "tokenizer.model").is_file(),
    reason="shared CMMLU data or tokenizer not present",
)
def test_real_cmmlu_five_shot_prompts_fit() -> None:
    subjects = load_cmmlu(SHARED / "cmmlu", ["agronomy", "chinese_teacher_qualification"])
    assert [len(s.test) for s in subjects] == [169, 179] and all(len(s.dev) == 5 for s in subjects)
    tokenizer = load_tokenizer(SHARED / "tokenizers" / "chinese-llama-plus" / "tokenizer.model")
    codec = TemplateChatCodec(make_template("doit", tokenizer))
    items = cmmlu_items([subjects[0]], codec, 5)[:3]
    for item in items:
        assert item.n_shots == 5 and len(codec.prompt_ids(item.messages)) < 2048
    assert items[0].messages[0]["content"].startswith("以下是关于农学的单项选择题")


def make_clone(root: Path, categories_py: bool = True) -> Path:
    """The flat root of :func:`make_root` laid out as a clone of CMMLU's repository: data/dev, data/test and (unless
    ``categories_py`` is false) src/categories.py declaring the tables as upstream does (with code around them)."""
    flat = make_root(root / "flat")
    meta = json.loads((flat / "subject_categories.json").read_text(encoding="utf-8"))
    for split in ("dev", "test"):
        (root / "clone" / "data" / split).mkdir(parents=True)
        for f in (flat / split).glob("*.csv"):
            (root / "clone" / "data" / split / f.name).write_bytes(f.read_bytes())
    if categories_py:
        (root / "clone" / "src").mkdir()
        source = "import os\n\n" + "".join(f"{k} = {v!r}\n\n" for k, v in meta.items())
        source += "def get_subcategories():\n    raise SystemExit('categories.py must never run')\n"
        (root / "clone" / "src" / "categories.py").write_text(source, encoding="utf-8")
    return root / "clone"


def content(subjects: list) -> list:
    """The subjects without the file paths their questions were read from."""
    questions = lambda qs: [(q.question, q.options, q.answer) for q in qs]  # noqa: E731
    return [(s.name, s.name_zh, s.categories, questions(s.dev), questions(s.test)) for s in subjects]


def test_a_clone_of_the_repository_reads_as_the_flat_layout(tmp_path: Path) -> None:
    clone = make_clone(tmp_path)
    flat = content(load_cmmlu(tmp_path / "flat"))
    assert content(load_cmmlu(clone)) == flat and flat[1][2] == ("STEM", "China specific")
    from jaxtune.eval.suites.registry import suite_data_root

    data_dir = tmp_path / "data_dir"
    data_dir.mkdir()
    clone.rename(data_dir / "cmmlu")
    assert content(load_cmmlu(suite_data_root("cmmlu", data_dir))) == flat


def test_a_clone_without_src_uses_the_built_in_subject_tables(tmp_path: Path) -> None:
    agronomy, anatomy = load_cmmlu(make_clone(tmp_path, categories_py=False))
    assert (agronomy.name_zh, agronomy.categories) == ("农学", ("Other",))
    assert (anatomy.name_zh, anatomy.categories) == ("解剖学", ("STEM",))


def test_a_folder_in_neither_layout_is_named(tmp_path: Path) -> None:
    (tmp_path / "test").mkdir()
    with pytest.raises(McqDataError, match="not a CMMLU folder: expected a clone of its repository"):
        load_cmmlu(tmp_path)


@pytest.mark.skipif(not (SHARED / "cmmlu" / "subject_categories.json").is_file(), reason="shared CMMLU not present")
def test_the_built_in_tables_are_the_released_ones() -> None:
    from jaxtune.eval.suites.cmmlu_subjects import TABLES

    released = json.loads((SHARED / "cmmlu" / "subject_categories.json").read_text(encoding="utf-8"))
    assert TABLES == released and len(TABLES["name_en2zh"]) == 67
