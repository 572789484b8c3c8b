"""Answer parsers of the DoIT scorer: multiple choice, true/false, Chinese cloze, ethics multi-select, and the
three-way perplexity ranking. Math lives in :mod:`jaxtune.eval.math_answers`.

Every parser takes a ``mode``: ``study`` reproduces the study's per-item decisions exactly (quirks included, see
the spec's "Fidelity details"); ``corrected`` fixes what the study got wrong, and results name the mode used.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence

import numpy as np

from jaxtune.names import ScorerMode

CHOICE_LETTERS = ("A", "B", "C", "D")
WRONG = "E"
"""The parsed answer of a reply that commits to something other than A-D (never equal to a label)."""

TRUE_WORDS = ("正确", "对", "T", "√", "V")
FALSE_WORDS = ("错误", "错", "F", "×", "X")

_CLOZE = re.compile(r"[\u4e00-\u9fff]+.*?[^\w\s]*")
_STUDY_ETHICS_LETTER = re.compile(r"\(*([A-F])\)*")
_LATIN_RUN = re.compile(r"[A-Za-z]+")
_CORRECTED_LONE_LETTER = re.compile(r"^[(\[（【]?\s*([A-Za-z0-9])\s*[)\]）】]?\s*[.。、,，:：;；!！]?$")
_PUNCTUATION_EDGES = re.compile(r"^[\W_]+|[\W_]+$")


def _argmax_after_softmax(logits: Sequence[float]) -> int:
    """Index of the largest softmax probability in float32, ties to the first (as torch + np.argmax did)."""
    x = np.asarray(logits, dtype=np.float32)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"expected a non-empty 1-D vector of letter logits, got shape {x.shape}")
    e = np.exp(x - x.max())
    return int(np.argmax(e / e.sum()))


def parse_single_choice(reply: str, letter_logits: Sequence[float] | None, mode: ScorerMode = "study") -> str:
    """The chosen letter of a multiple-choice reply.

    study: a stripped reply of exactly one character is the answer if it is one of A-D, else wrong (``E``); any
    other reply (``"A."``, empty...) is decided by the argmax of ``letter_logits`` (the last decoding step's logits
    of ``▁A``..``▁D``), ties to the first letter.
    corrected: after NFKC (full-width ``Ａ`` -> ``A``), a lone letter with brackets or trailing punctuation
    (``"(B)"``, ``"C。"``, ``"a"``) counts as that letter; a lone character outside A-D is wrong; anything else
    goes to the logits.
    """
    answer = reply.strip()
    if mode == "corrected":
        normal = unicodedata.normalize("NFKC", answer).strip()
        lone = _CORRECTED_LONE_LETTER.match(normal)
        if lone is not None:
            letter = lone.group(1).upper()
            return letter if letter in CHOICE_LETTERS else WRONG
    elif len(answer) == 1:
        return answer if answer in CHOICE_LETTERS else WRONG
    if letter_logits is None:
        raise ValueError(f"reply {reply!r} needs the last-step letter logits to be parsed, but none were given")
    return CHOICE_LETTERS[_argmax_after_softmax(letter_logits)]


def true_false_label(label: str) -> str:
    """``T`` or ``F`` for a reference answer, which must be one of the true- or false-words."""
    if label in TRUE_WORDS:
        return "T"
    if label in FALSE_WORDS:
        return "F"
    raise ValueError(f"true/false label {label!r} is none of {TRUE_WORDS + FALSE_WORDS}")


def parse_true_false(reply: str, mode: ScorerMode = "study") -> str:
    """``T``, ``F`` or ``E`` (neither or both).

    study: case-sensitive substring search of the stripped reply for true-words and false-words; only one kind must
    occur ("不对" contains "对" and counts as True; "TRUE or FALSE" is neither).
    corrected: negated true-words ("不对", "不正确", "不是正确") count as false; the Latin letters T/F/V/X count only
    as standalone tokens, and the English words true/false (any case) count too.
    """
    text = reply.strip()
    if mode == "study":
        has_true = any(w in text for w in TRUE_WORDS)
        has_false = any(w in text for w in FALSE_WORDS)
    else:
        text = unicodedata.normalize("NFKC", text)
        negated = re.compile(r"不是?(?:正确|对)")
        has_false = bool(negated.search(text))
        text = negated.sub(" ", text)
        has_true = bool(re.search(r"正确|对|√|(?<![A-Za-z])[TV](?![A-Za-z])|(?i:\btrue\b)", text))
        has_false = has_false or bool(re.search(r"错误|错|×|(?<![A-Za-z])[FX](?![A-Za-z])|(?i:\bfalse\b)", text))
    if has_true and not has_false:
        return "T"
    if has_false and not has_true:
        return "F"
    return WRONG


def parse_cloze(reply: str, mode: ScorerMode = "study") -> str:
    """The answer of a Chinese fill-in-the-blank reply: the first run of Chinese characters plus the punctuation
    right after it (study: "春天。" stays "春天。"), else the whole stripped reply. corrected drops punctuation at
    both ends."""
    text = reply.strip()
    found = _CLOZE.findall(text)
    answer = found[0].strip() if found else text
    if mode == "corrected":
        answer = _PUNCTUATION_EDGES.sub("", answer)
    return answer


def cloze_matches(parsed: str, label: str, mode: ScorerMode = "study") -> bool:
    """Exact equality with the label (study); corrected strips the label and punctuation at its ends too."""
    if mode == "study":
        return parsed == label
    return parsed == _PUNCTUATION_EDGES.sub("", label.strip())


def last_nonempty_line(text: str) -> str:
    """The last line that is not blank; the text itself when every line is blank."""
    for line in reversed(text.split("\n")):
        if line.strip() != "":
            return line
    return text


def parse_multi_select(text: str, mode: ScorerMode = "study") -> frozenset[str]:
    """The set of option letters A-F on the last non-empty line. study counts capitals inside words too ("All"
    gives A); corrected counts only runs of Latin letters made of A-F capitals alone ("AB" yes, "All" no)."""
    line = last_nonempty_line(text)
    if mode == "study":
        return frozenset(_STUDY_ETHICS_LETTER.findall(line))
    return frozenset(c for run in _LATIN_RUN.findall(line) if re.fullmatch(r"[A-F]+", run) for c in run)


def multi_select_chance(label_letters: frozenset[str]) -> float:
    """1 / C(4, |label|): guessing a set of the right size among four options."""
    ways = math.comb(4, len(label_letters))
    if ways == 0:
        raise ValueError(f"multi-select label {sorted(label_letters)} has more than 4 letters")
    return 1.0 / ways


def reference_ranked_first(perplexities: Sequence[float], mode: ScorerMode = "study") -> bool:
    """Format 1: is the reference choice (index 0) the least perplexing?

    study: ``min(ppl) == ppl[0]`` with Python's ``min`` (ties count as correct; NaNs behave as Python makes them:
    all-NaN is wrong, a NaN first entry is wrong). corrected: NaN counts as +inf, a NaN reference is wrong.
    """
    values = [float(p) for p in perplexities]
    if not values:
        raise ValueError("no perplexities to rank")
    if mode == "study":
        return min(values) == values[0]
    cleaned = [math.inf if math.isnan(p) else p for p in values]
    return math.isfinite(cleaned[0]) and cleaned[0] <= min(cleaned)
