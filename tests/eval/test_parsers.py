"""DoIT answer parsers against hand-worked cases (spec: "Evaluation, per ability" and "Fidelity details")."""

from __future__ import annotations

import math

import pytest

from jaxtune.eval import parsers

NAN = math.nan


# ---- multiple choice ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "logits", "study", "corrected"),
    [
        ("A", [0, 0, 0, 9], "A", "A"),  # one character: taken as is, logits ignored
        (" C \n", [9, 0, 0, 0], "C", "C"),  # stripped first
        ("E", [9, 0, 0, 0], "E", "E"),  # a letter outside A-D is wrong
        ("1", [9, 0, 0, 0], "E", "E"),
        ("a", [0, 9, 0, 0], "E", "A"),  # lower case: wrong in the study
        ("Ａ", [0, 9, 0, 0], "E", "A"),  # full width: wrong in the study
        ("A.", [0, 9, 0, 0], "B", "A"),  # longer replies go to the logits in the study
        ("(D)", [0, 9, 0, 0], "B", "D"),
        ("", [0, 0, 9, 0], "C", "C"),  # empty reply: logits
        ("答案是A", [0, 0, 0, 9], "D", "D"),
        ("长回答", [1, 1, 0, 0], "A", "A"),  # ties go to the first letter
        ("长回答", [0, 2, 2, 2], "B", "B"),
    ],
)
def test_single_choice(reply: str, logits: list[float], study: str, corrected: str) -> None:
    assert parsers.parse_single_choice(reply, logits, "study") == study
    assert parsers.parse_single_choice(reply, logits, "corrected") == corrected


def test_single_choice_needs_logits_for_long_replies() -> None:
    assert parsers.parse_single_choice("B", None) == "B"
    with pytest.raises(ValueError, match="letter logits"):
        parsers.parse_single_choice("B.", None)


# ---- true / false ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "study", "corrected"),
    [
        ("正确", "T", "T"),
        ("错误", "F", "F"),
        ("√", "T", "T"),
        ("×", "F", "F"),
        ("不对", "T", "F"),  # "不对" contains "对"
        ("不正确", "T", "F"),
        ("对，也错", "E", "E"),  # both kinds: wrong
        ("我不知道", "E", "E"),  # neither
        ("The answer is F", "E", "F"),  # the "T" of "The" is a true-word in the study
        ("TRUE", "T", "T"),
        ("t", "E", "E"),  # case-sensitive
    ],
)
def test_true_false(reply: str, study: str, corrected: str) -> None:
    assert parsers.parse_true_false(reply, "study") == study
    assert parsers.parse_true_false(reply, "corrected") == corrected


def test_true_false_labels() -> None:
    assert [parsers.true_false_label(w) for w in ("正确", "对", "T", "√", "V")] == ["T"] * 5
    assert [parsers.true_false_label(w) for w in ("错误", "错", "F", "×", "X")] == ["F"] * 5
    with pytest.raises(ValueError, match="true/false label"):
        parsers.true_false_label("是")


# ---- cloze ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "label", "study_parsed", "study", "corrected"),
    [
        ("  春天  ", "春天", "春天", True, True),
        ("春天。", "春天", "春天。", False, True),  # punctuation right after the Chinese run is kept
        ("春天，夏天", "春天", "春天，", False, True),
        ("答案是春天", "春天", "答案是春天", False, False),
        ("spring", "spring", "spring", True, True),  # no Chinese: the whole reply
        ("1. 春天", "春天", "春天", True, True),
    ],
)
def test_cloze(reply: str, label: str, study_parsed: str, study: bool, corrected: bool) -> None:
    parsed = parsers.parse_cloze(reply, "study")
    assert parsed == study_parsed
    assert parsers.cloze_matches(parsed, label, "study") is study
    assert parsers.cloze_matches(parsers.parse_cloze(reply, "corrected"), label, "corrected") is corrected


# ---- ethics multi-select --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "study", "corrected"),
    [
        ("BA", {"A", "B"}, {"A", "B"}),  # order does not matter
        ("(A)(C)", {"A", "C"}, {"A", "C"}),
        ("A、C、D", {"A", "C", "D"}, {"A", "C", "D"}),
        ("分析……\nA 和 D\n\n", {"A", "D"}, {"A", "D"}),  # the last non-empty line only
        ("All of them: B", {"A", "B"}, {"B"}),  # capitals inside words count in the study
        ("G", set(), set()),
        ("", set(), set()),
    ],
)
def test_multi_select(reply: str, study: set[str], corrected: set[str]) -> None:
    assert parsers.parse_multi_select(reply, "study") == study
    assert parsers.parse_multi_select(reply, "corrected") == corrected


def test_multi_select_chance() -> None:
    assert parsers.multi_select_chance(frozenset("A")) == 0.25
    assert parsers.multi_select_chance(frozenset("AB")) == pytest.approx(1 / 6)
    assert parsers.multi_select_chance(frozenset()) == 1.0
    with pytest.raises(ValueError, match="more than 4"):
        parsers.multi_select_chance(frozenset("ABCDE"))


# ---- format 1 ranking -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ppl", "study", "corrected"),
    [
        ([1.5, 2.0, 3.0], True, True),
        ([2.0, 1.5, 3.0], False, False),
        ([1.0, 1.0, 2.0], True, True),  # ties count as correct
        ([2.0, 2.0, 2.0], True, True),
        ([NAN, NAN, NAN], False, False),  # all NaN: wrong
        ([NAN, 1.0, 2.0], False, False),
        ([1.0, NAN, 2.0], True, True),  # Python's min keeps 1.0
        ([1.0, NAN, 0.5], False, False),
    ],
)
def test_reference_ranked_first(ppl: list[float], study: bool, corrected: bool) -> None:
    assert parsers.reference_ranked_first(ppl, "study") is study
    assert parsers.reference_ranked_first(ppl, "corrected") is corrected
