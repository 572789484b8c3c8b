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
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Union

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
"""A decoder refusing bare NaN and Infinity (also for the JSON array files of :mod:`jaxtune.data.formats`)."""
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
