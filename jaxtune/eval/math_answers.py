"""Final-answer extraction from a math reply and MATH-style answer equivalence, as the DoIT study scored them.

Two modes:

- ``study`` reproduces the study's scorer item for item, quirks included: ``\\fbox{}`` extracts nothing; ``-3/4``
  falls back to the last number (``4``); and when normalising an answer hits a case the study's normaliser crashed
  on (a plain number or comma list of numbers, a trailing ``\\sqrt``/``\\frac``, two ``\\text{ `` units...), the
  comparison falls back to the raw strings, so ``"1."`` vs ``"1"`` or ``"10\\%"`` vs ``"10"`` score wrong.
- ``corrected`` extracts ``\\fbox{}`` and signed fractions, never falls back to raw strings, and compares numbers
  (integers, decimals, ``a/b``, ``\\frac{a}{b}``, comma lists of them as sets) by value.
"""

from __future__ import annotations

import re
from fractions import Fraction

from jaxtune.names import ScorerMode

# The study's "plain number" test: a character class from ',' to '?' (which spans , - . / 0-9 : ; < = > ?) plus digits.
_NUMERIC_LIST = re.compile(r"^[,-?\d]+$")
_LAST_NUMBER = re.compile(r"(?:\$)?(?:-)?\d+(?:\.\d+)?(?![\w\d])")
_DOLLAR = re.compile(r"\$(.*)\$")


class _Unnormalisable(Exception):
    """Raised where the study's normaliser raised; the study then compared the raw strings."""


# --------------------------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------------------------


def _last_boxed(text: str) -> str | None:
    """The last ``\\boxed{...}`` (else ``\\fbox{...}``) with balanced braces, as the study scanned for it."""
    idx = text.rfind("\\boxed")
    if idx < 0:
        idx = text.rfind("\\fbox")
        if idx < 0:
            return None
    depth = 0
    for i in range(idx, len(text)):
        if text[i] == "{":
            depth += 1
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[idx : i + 1]
    return None


def _unbox(boxed: str, mode: ScorerMode) -> str | None:
    # The study looked for "\boxed{" even inside an "\fbox{...}", so an \fbox never yielded an answer.
    left = "\\fbox{" if mode == "corrected" and boxed.startswith("\\fbox{") else "\\boxed{"
    if not (boxed.startswith(left) and boxed.endswith("}")):
        return None
    answer = boxed[len(left) : -1]
    if "=" in answer:
        answer = answer.split("=")[-1].lstrip(" ")
    return answer


def _from_dollars(text: str) -> str | None:
    matches = _DOLLAR.findall(text)
    if not matches:
        return None
    last = matches[-1]
    if "=" in last:
        last = last.split("=")[-1].lstrip(" ")
    return last


def _special_case(text: str, mode: ScorerMode) -> str | None:
    """Fractions ``a/b``, comma lists, ``sqrt(...)`` and bracketed answers (the study's dataset-specific cases)."""
    s = text.strip()
    parts = s.split("/")
    if len(parts) == 2:
        numerator = parts[0][1:] if mode == "corrected" and parts[0].startswith("-") else parts[0]
        if re.search(r"[^a-zA-Z0-9]", numerator) or re.search(r"[^a-zA-Z0-9]", parts[1]):
            return None
        return s
    s = s.replace("，", ",")
    if _NUMERIC_LIST.match(s) is not None:
        return s
    s = s.replace(" ", "")
    sqrt = re.findall(r"(sqrt\([^)]*\))", s)
    if sqrt:
        return sqrt[-1]
    brackets = re.findall(r"(\[.*?\]|\(.*?\))", s)
    if brackets:
        return brackets[-1]
    return None


def _after_equals_or_last_number(text: str) -> str | None:
    if "=" in text:
        last = text.split("=")[-1].lstrip(" ").rstrip(".")
        if "\\n" in last:  # a literal backslash-n, as the study wrote it
            last = last.split("\\n")[0]
        return last
    numbers = _LAST_NUMBER.findall(text)
    return numbers[-1].strip("$") if numbers else None


def extract_math_answer(reply: str, mode: ScorerMode = "study") -> str | None:
    """The final answer of a math reply, or None.

    Order: text after the last ``答案``; the last ``\\boxed{}`` (``\\fbox{}`` too in corrected mode; in study mode a
    found box ends the search even when it yields nothing); else the last ``$...$``; else the special cases
    (fractions, comma lists, sqrt, brackets); else the text after the last ``=`` or the last number. Then
    ``或`` becomes ``", "`` and ``$`` is dropped.
    """
    text = reply
    if "答案" in text:
        text = text.split("答案")[-1].strip()
    boxed = _last_boxed(text)
    if boxed is not None:
        answer = _unbox(boxed, mode)
    else:
        answer = _from_dollars(text)
        if not answer:
            answer = _special_case(text, mode)
        if not answer:
            answer = _after_equals_or_last_number(text)
    if answer is not None:
        answer = answer.replace("或", ", ").replace("$", "")
    return answer


# --------------------------------------------------------------------------------------------------------------------
# Normalisation (after Hendrycks et al.'s MATH equivalence, as the study modified it)
# --------------------------------------------------------------------------------------------------------------------


def _fix_fracs(s: str, mode: ScorerMode) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1b`` -> ``\\frac{1}{b}``."""
    pieces = s.split("\\frac")
    out = pieces[0]
    for piece in pieces[1:]:
        out += "\\frac"
        if not piece:
            if mode == "study":
                raise _Unnormalisable("empty \\frac argument")
            continue
        if piece[0] == "{":
            out += piece
            continue
        if len(piece) < 2:
            return s
        a, b, rest = piece[0], piece[1], piece[2:]
        out += "{" + a + "}{" + b + "}" + rest if b != "{" else "{" + a + "}" + b + rest
    return out


def _fix_a_slash_b(s: str, mode: ScorerMode) -> str:
    """``a/b`` (integers) -> ``\\frac{a}{b}``; ``-a/b`` -> ``-\\frac{a}{b}``."""
    parts = s.split("/")
    if len(parts) != 2:
        return s
    a, b = parts
    if not a:
        if mode == "study":
            raise _Unnormalisable("empty numerator")
        return s
    negative = a[0] == "-"
    if negative:
        a = a[1:]
    try:
        ia, ib = int(a), int(b)
    except ValueError:
        return s
    if negative:
        return "-\\frac{" + str(ia) + "}{" + str(ib) + "}"
    if s != f"{ia}/{ib}":
        return s
    return "\\frac{" + str(ia) + "}{" + str(ib) + "}"


def _remove_right_units(s: str, mode: ScorerMode) -> str:
    if "\\text{ " not in s:
        return s
    parts = s.split("\\text{ ")
    if len(parts) != 2 and mode == "study":
        raise _Unnormalisable("more than one '\\text{ ' unit")
    return parts[0]


def _fix_sqrt(s: str, mode: ScorerMode) -> str:
    if "\\sqrt" not in s:
        return s
    pieces = s.split("\\sqrt")
    out = pieces[0]
    for piece in pieces[1:]:
        if not piece:
            if mode == "study":
                raise _Unnormalisable("empty \\sqrt argument")
            out += "\\sqrt"
        elif piece[0] != "{":
            out += "\\sqrt{" + piece[0] + "}" + piece[1:]
        else:
            out += "\\sqrt" + piece
    return out


def normalise_math_answer(s: str, mode: ScorerMode = "study") -> str:
    """The study's ``_strip_string``. In study mode raises where the study's normaliser raised (the caller then
    compares raw strings); corrected mode never raises and also drops plain ``%`` and a trailing ``.``."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")
    s = _remove_right_units(s, mode)
    s = s.replace("\\%", "")
    if mode == "corrected":
        s = s.replace("%", "").strip().rstrip(".")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    halves = s.split("=")
    if len(halves) == 2 and len(halves[0]) <= 2:
        s = halves[1]
    s = _fix_sqrt(s, mode)
    s = s.replace(" ", "")
    s = _fix_fracs(s, mode)
    if s == "0.5":
        s = "\\frac{1}{2}"
    s = _fix_a_slash_b(s, mode)
    if _NUMERIC_LIST.match(s) is not None and mode == "study":
        # The study turned the string into a set here and then crashed calling re.match on it.
        raise _Unnormalisable("plain number")
    if "\\frac{" in s:
        s = re.sub(r"\\frac{(-)(\d+)}{(\d+)}", r"-\\frac{\2}{\3}", s)
    if re.match(r"\\text\{\((A|B|C|D|E|F)\)", s):
        s = re.findall(r"\\text\{\((A|B|C|D|E|F)\)", s)[-1]
    return s


_FRAC = re.compile(r"^(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}$")


def _as_number(s: str) -> Fraction | None:
    m = _FRAC.match(s)
    try:
        if m:
            value = Fraction(int(m.group(2)), int(m.group(3)))
            return -value if m.group(1) else value
        if re.fullmatch(r"-?\d+(?:\.\d*)?|-?\.\d+|-?\d+/\d+", s):
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _as_number_set(s: str) -> frozenset[Fraction] | None:
    items = [p for p in s.split(",") if p != ""]
    if not items:
        return None
    values = [_as_number(p) for p in items]
    if any(v is None for v in values):
        return None
    return frozenset(values)  # type: ignore[arg-type]


def math_answers_equal(prediction: str | None, label: str | None, mode: ScorerMode = "study") -> bool:
    """MATH-style equivalence of an extracted answer and the reference (the study's ``is_equiv``)."""
    if prediction is None and label is None:
        return True
    if prediction is None or label is None:
        return False
    if mode == "study":
        try:
            return normalise_math_answer(prediction, "study") == normalise_math_answer(label, "study")
        except _Unnormalisable:
            return prediction == label
    a = normalise_math_answer(prediction, "corrected")
    b = normalise_math_answer(label, "corrected")
    if a == b:
        return True
    na, nb = _as_number_set(a), _as_number_set(b)
    return na is not None and na == nb
