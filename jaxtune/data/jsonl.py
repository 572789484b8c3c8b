"""The one JSON Lines reader of jaxtune: training data, evaluation suites and prediction files all read through it.

:func:`read_json_lines` yields ``(line number, value)`` for every non-blank line of a local or ``gs://`` file
(through :func:`jaxtune.paths.as_path`), one line at a time (a prediction file's logit vectors are large):

- line numbers are 1-based and count every line, blank ones included (so they match an editor's);
- blank lines (only spaces, tabs, CR) hold no value and are passed over;
- a UTF-8 byte-order mark at the start of the file is dropped;
- bare ``NaN``, ``Infinity`` and ``-Infinity`` (Python's ``json`` writes them; JSON has none) are refused unless
  ``allow_nan`` (then read as floats);
- a line that is not UTF-8 or not one JSON value raises :class:`JsonLinesError` naming the file and the line, or
  with ``bad="yield"`` is yielded as that error in place of a value and reading goes on (for readers that skip and
  count bad records).

A data file may instead hold a single JSON array of values (:func:`is_json_array_file`: its first non-blank character
is ``[``); :func:`read_json_array` yields its elements as :class:`~jaxtune.data.records.RawEntry` values, each with
the line it starts on. A malformed element of an array is one bad entry (named by that line and its index) and
reading goes on after it; only text that cannot be split into elements (an unclosed array, text after its ``]``, a
``,`` before it) raises :class:`~jaxtune.data.records.DataError`, after the entries before it.
"""

from __future__ import annotations

import bisect
import json
import re
from pathlib import Path
from typing import Any, Generator, Iterator, Literal, Optional, Union

from jaxtune.data.records import DataError, RawEntry
from jaxtune.errors import JaxtuneError
from jaxtune.paths import as_path

_BOM = b"\xef\xbb\xbf"


class JsonLinesError(JaxtuneError, ValueError):
    """A line of a JSON Lines file that is not valid; ``source``, ``line`` and ``problem`` say where and what."""

    def __init__(self, source: str, line: int, problem: str):
        self.source, self.line, self.problem = source, line, problem
        super().__init__(f"{source}:{line}: {problem}")

    def __reduce__(self):  # picklable across grain worker processes
        return (JsonLinesError, (self.source, self.line, self.problem))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"bare {name} is not valid JSON (JSON has no NaN or Infinity)")


STRICT_JSON = json.JSONDecoder(parse_constant=_refuse_constant)
"""A decoder refusing bare NaN and Infinity (also for JSON array files, :func:`read_json_array`)."""
_LENIENT = json.JSONDecoder()


def _decode(raw: bytes, decoder: json.JSONDecoder) -> Any:
    """The value of one line, or raise ValueError with the problem (UTF-8, JSON syntax or a bare constant)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        return decoder.decode(text.rstrip("\r\n"))  # without the newline, a column counts in this line
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None


def read_json_lines(
    path: Union[str, Path],
    *,
    allow_nan: bool = False,
    bad: Literal["raise", "yield"] = "raise",
    start: int = 0,
    stop: Optional[int] = None,
    first_line: int = 1,
) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for every non-blank line of the JSON Lines file ``path`` (see the module docs).

    ``start``/``stop``: read from byte ``start`` (the start of line ``first_line``) up to the line that starts at or
    after byte ``stop``, so that one file can be read in byte ranges. ``bad="yield"``: a bad line gives
    ``(line number, JsonLinesError)`` instead of raising."""
    src = str(path)
    decoder = _LENIENT if allow_nan else STRICT_JSON
    with as_path(path).open("rb") as f:  # a local file or an object (gs://...) alike
        f.seek(start)
        offset = start
        for line_no, raw in enumerate(f, start=first_line):
            if stop is not None and offset >= stop:
                break
            offset += len(raw)
            if offset == len(raw) and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            if not raw.strip():
                continue
            try:
                value = _decode(raw, decoder)
            except ValueError as e:
                error = JsonLinesError(src, line_no, str(e))
                if bad == "raise":
                    raise error from None
                yield line_no, error
                continue
            yield line_no, value


# --------------------------------------------------------------------------------------------------------------------
# JSON array files: one array of values, read element by element (tolerant of malformed elements)
# --------------------------------------------------------------------------------------------------------------------


def _first_char(path: Union[str, Path]) -> str:
    with as_path(path).open("rb") as f:
        while True:
            chunk = f.read(4096)
            if not chunk:
                return ""
            text = chunk.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
            if text:
                return text[0]


def is_json_array_file(path: Union[str, Path]) -> bool:
    """True when the file holds one JSON array (its first non-blank character is ``[``), not JSON Lines."""
    return _first_char(as_path(path)) == "["


_CLOSERS = {"]": "[", "}": "{"}
_BLANK = " \t\r\n"


_SCAN = re.compile(r'["\\\[\]{},\n]')
"""The characters that matter when scanning over a malformed element."""


def _skip_malformed(text: str, start: int) -> tuple[int, bool]:
    """Where reading goes on after the malformed array element at ``start``: ``(pos, True)`` when ``pos`` is the
    ``,`` or ``]`` ending it at the array's own depth, ``(pos, False)`` when ``pos`` starts the next element (see
    :func:`_element_at`: found while the bad element still had a bracket open, so it would otherwise swallow the good
    elements after it), ``(len(text), True)`` when neither comes. Strings are skipped (a raw newline ends one: JSON
    strings cannot hold it, so a string left open stops there); a closer without its opener closes whatever is open
    inside it."""
    stack: list[str] = []
    column = _column(text, start)
    in_string = False
    escaped_at = -1
    for m in _SCAN.finditer(text, start):
        i, c = m.start(), m.group()
        if i == escaped_at:
            continue
        if c == "\n":
            in_string = False
            if _element_at(text, i + 1, column):
                return _first_non_blank(text, i + 1), False
        elif in_string:
            if c == "\\":
                escaped_at = i + 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            stack.append(c)
        elif c in "]}":
            if _CLOSERS[c] not in stack:
                return i, True  # the array's own "]" (the element left brackets open)
            while stack.pop() != _CLOSERS[c]:
                pass
        elif c == "," and not stack:
            return i, True
    return len(text), True


def _first_non_blank(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r":
        pos += 1
    return pos


def _previous_char(text: str, pos: int) -> str:
    pos -= 1
    while pos >= 0 and text[pos] in _BLANK:
        pos -= 1
    return text[pos] if pos >= 0 else ""


def _column(text: str, pos: int) -> int:
    return pos - (text.rfind("\n", 0, pos) + 1)


def _element_at(text: str, line_start: int, column: int) -> bool:
    """Whether the line at ``line_start`` begins a whole array element: at ``column`` (where the bad element began),
    after a ``,``, parsing as JSON and followed by ``,`` or ``]``."""
    pos = _first_non_blank(text, line_start)
    if pos - line_start != column or pos >= len(text) or text[pos] not in '{["-0123456789tfn':
        return False
    if _previous_char(text, pos) != ",":
        return False
    try:
        _, after = STRICT_JSON.raw_decode(text, pos)
    except ValueError:
        return False
    return text[_first_non_blank(text, after) :].lstrip(_BLANK)[:1] in (",", "]")


def read_json_array(path: Union[str, Path]) -> Iterator[RawEntry]:
    """The elements of a JSON array file, one entry each (see the module docstring). A malformed element becomes an
    entry holding its error (named by file, line and index) and reading goes on with the next element, so nothing
    after it is lost; only text that cannot be split into elements at all (an unclosed array, text after the
    closing ``]``) raises :class:`~jaxtune.data.records.DataError`."""
    data = as_path(path).read_bytes()
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    try:
        text, bad_utf8 = data.decode("utf-8"), False
    except UnicodeDecodeError:
        text, bad_utf8 = data.decode("utf-8", errors="surrogateescape"), True  # the bad bytes mark their elements
    yield from _ArrayReader(str(path), text, bad_utf8).entries()


class _ArrayReader:
    """Splits the text of one JSON array file into elements: good ones parsed, bad ones named and stepped over."""

    def __init__(self, source: str, text: str, bad_utf8: bool):
        self.source, self.text, self.bad_utf8 = source, text, bad_utf8
        self.newlines = [m.start() for m in re.finditer("\n", text)]

    def line_of(self, pos: int) -> int:
        return bisect.bisect_left(self.newlines, pos) + 1

    def skip_blank(self, pos: int) -> int:
        while pos < len(self.text) and self.text[pos] in _BLANK:
            pos += 1
        return pos

    def error(self, pos: int, problem: str) -> DataError:
        """An error of the array as a whole (it ends the file), at the line of ``pos``."""
        return DataError(self.source, self.line_of(pos), "", problem)

    def bad(self, index: int, begin: int, problem: str) -> RawEntry:
        """The entry of the malformed element ``index`` starting at ``begin``."""
        line = self.line_of(begin)
        return RawEntry(self.source, line, error=DataError(self.source, line, f"[{index}]", problem))

    def entries(self) -> Iterator[RawEntry]:
        text = self.text
        pos = self.skip_blank(0) + 1  # the opening "["
        index = 0
        need_comma = False
        while True:
            pos = self.skip_blank(pos)
            if self.at_closing_bracket(pos):
                return
            start, problem = self.element_start(pos, need_comma)
            if problem is None and text[start : start + 1] == ",":
                yield self.bad(index, start, "an empty array element (two commas)")
                pos, index, need_comma = start, index + 1, True
                continue
            if problem is None:
                value, end, problem = self.decode(start)
                if problem is None:
                    yield RawEntry(self.source, self.line_of(start), value=value)
                    pos, index, need_comma = end, index + 1, True
                    continue
            pos, need_comma = yield from self.step_over(index, start, problem)
            index += 1

    def at_closing_bracket(self, pos: int) -> bool:
        """Whether ``pos`` (not blank) is the array's closing ``]``; the end of the text, or text after the ``]``,
        raises."""
        if pos >= len(self.text):
            raise self.error(pos, "JSON array is not closed with ']'")
        if self.text[pos] != "]":
            return False
        if self.text[pos + 1 :].strip():
            raise self.error(pos + 1, "unexpected text after the closing ']' of the JSON array")
        return True

    def element_start(self, pos: int, need_comma: bool) -> tuple[int, Optional[str]]:
        """Where the element at ``pos`` starts (after the ``,`` that must come before every element but the
        first), and the problem when that ``,`` is missing; a ``,`` before the closing ``]`` raises."""
        if not need_comma:
            return pos, None
        if self.text[pos] != ",":
            return pos, f"expected ',' before this array element, got {self.text[pos]!r}"
        start = self.skip_blank(pos + 1)
        if self.text[start : start + 1] == "]":
            raise self.error(start, "a ',' after the last element of the JSON array (every element before it was read)")
        return start, None

    def decode(self, start: int) -> tuple[Any, int, Optional[str]]:
        """``(value, end, None)`` of the element at ``start``, or ``(None, start, problem)`` when it is malformed."""
        try:
            value, end = STRICT_JSON.raw_decode(self.text, start)
        except ValueError as e:
            return None, start, f"not valid JSON: {e}"
        if self.bad_utf8 and any("\udc80" <= ch <= "\udcff" for ch in self.text[start:end]):
            return None, start, "not valid UTF-8"
        return value, end, None

    def step_over(self, index: int, start: int, problem: str) -> Generator[RawEntry, None, tuple[int, bool]]:
        """Yield the entry of the malformed element ``index`` at ``start`` and return ``(pos, need_comma)`` where
        reading goes on; text that cannot be split into elements any more raises."""
        text = self.text
        if start >= len(text):
            raise self.error(start, "JSON array is not closed with ']'")
        end, at_separator = _skip_malformed(text, start)
        if end == start:  # a stray closer neither starts nor ends an element: step past it, or this loops forever
            end = start + 1
        yield self.bad(index, start, problem)
        if at_separator and end >= len(text):
            raise self.error(
                start,
                f"the JSON array from element [{index}] on cannot be split "
                f"into elements (a string or bracket left open?); the rest of "
                f"the file (lines {self.line_of(start)}-{self.line_of(len(text))}) is "
                f"unreadable",
            )
        return end, at_separator
