"""Math answer extraction and equivalence against hand-worked cases (spec: DoIT "Fidelity details")."""

from __future__ import annotations

import pytest

from jaxtune.eval.math_answers import extract_math_answer, math_answers_equal, normalise_math_answer


@pytest.mark.parametrize(
    ("reply", "study", "corrected"),
    [
        ("答案是 \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "\\frac{1}{2}"),
        ("面积为 \\boxed{x = 12}", "12", "12"),  # text after "=" inside the box
        ("\\fbox{5}", None, "5"),  # the study looked for "\boxed{" inside an \fbox: nothing extracted
        ("-3/4", "4", "-3/4"),  # the signed fraction fell through to "the last number"
        ("所以 x=-3/4", "-3/4", "-3/4"),
        ("所以 x = 5.", "5", "5"),  # after the last "=", trailing "." dropped
        ("因此 $x=3$", "3", "3"),  # last $...$, after its "="
        ("答案：$\\frac{3}{4}$或$-\\frac{3}{4}$", "\\frac{3}{4}, -\\frac{3}{4}", "\\frac{3}{4}, -\\frac{3}{4}"),
        ("答案：2或3", "3", "3"),  # "2" is followed by a word character (或), so only "3" is a number
        ("坐标 (1, 2)", "(1,2)", "(1,2)"),  # brackets, spaces removed
        ("共有 12 个, 1,2,3", "3", "3"),
        ("\\boxed{5", "5", "5"),  # unbalanced box: no box, last number
        ("无答案", None, None),
    ],
)
def test_extract(reply: str, study: str | None, corrected: str | None) -> None:
    assert extract_math_answer(reply, "study") == study
    assert extract_math_answer(reply, "corrected") == corrected


def test_last_box_wins_and_text_after_answer_marker() -> None:
    assert extract_math_answer("先得 \\boxed{1}，再得 \\boxed{2}") == "2"
    assert extract_math_answer("步骤 \\boxed{9}。答案：7") == "7"  # only the text after the last 答案 is searched


@pytest.mark.parametrize(
    ("pred", "label", "study", "corrected"),
    [
        # The study's normaliser crashed on plain numbers and fell back to the raw strings:
        ("1", "1", True, True),
        ("1.", "1", False, True),
        ("10\\%", "10", False, True),
        ("90^\\circ", "90", False, True),
        (" -2 ", "-2", False, True),
        ("5\\text{ cm}", "5", False, True),
        ("1,2", "2,1", False, True),
        ("0.50", "\\frac{1}{2}", False, True),
        ("1.5", "3/2", False, True),
        # MATH-style normalisation works where it did not crash:
        ("\\frac12", "\\frac{1}{2}", True, True),
        ("0.5", "\\frac{1}{2}", True, True),
        ("\\dfrac{3}{4}", "3/4", True, True),
        ("-3/4", "-\\frac{3}{4}", True, True),
        ("\\left(1,2\\right)", "(1,2)", True, True),
        ("\\sqrt2", "\\sqrt{2}", True, True),
        ("\\text{(B)}", "B", True, True),
        ("\\frac{1}{3}", "\\frac{1}{2}", False, False),
        ("(1,2)", "(2,1)", False, False),
        (None, None, True, True),
        (None, "1", False, False),
    ],
)
def test_equivalence(pred: str | None, label: str | None, study: bool, corrected: bool) -> None:
    assert math_answers_equal(pred, label, "study") is study
    assert math_answers_equal(pred, label, "corrected") is corrected


def test_normalise_steps() -> None:
    assert normalise_math_answer("\\left( \\dfrac{1}{2} \\right)") == "(\\frac{1}{2})"
    assert normalise_math_answer("k = \\sqrt3") == "\\sqrt{3}"  # short "k =" prefix dropped, sqrt braced
    assert normalise_math_answer("\\frac{-3}{4}") == "-\\frac{3}{4}"
    assert normalise_math_answer(".5x") == "0.5x"
