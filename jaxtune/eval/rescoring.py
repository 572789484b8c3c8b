"""Scoring saved predictions without a model: what a suite's rescoring hooks get, and the readers they share.

``jaxtune score`` (:mod:`jaxtune.eval.score`) finds the files; each suite scores its own through the hooks it
registers (:class:`jaxtune.eval.suites.registry.Rescoring`):

- :class:`ItemsFile`: one ``{suite}-{variant}[-corrected].items.jsonl`` written by ``jaxtune eval`` (one JSON object
  per item, non-finite values stored as null), with the run information and details of the summary beside it;
- :class:`PredictionFolder`: one folder of another tool's prediction files (the DoIT study's ``pred_*.json``).

Every reader here raises :class:`ScoreError` naming file and line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from jaxtune.data import jsonl
from jaxtune.errors import JaxtuneError
from jaxtune.names import ScorerMode
from jaxtune.results import RunInfo


class ScoreError(JaxtuneError, ValueError):
    """A prediction file cannot be scored; the message names file and line."""


@dataclass(frozen=True)
class ItemsFile:
    """One ``*.items.jsonl`` of ``jaxtune eval``, to be scored again without a model."""

    path: Path
    suite: str
    """From the file name (``doit-test-corrected.items.jsonl``: ``doit``)."""
    variant: str
    """From the file name (``doit-test-corrected.items.jsonl``: ``test``)."""
    mode: ScorerMode
    """The scorer mode asked for (suites with one scorer ignore it)."""
    run: RunInfo
    """The run of the summary beside the file, else one named after its folder."""
    details: Mapping[str, Any] = field(default_factory=dict)
    """The details of the summary beside the file (empty when there is none)."""

    def lines(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(file:line, item)`` for every item (see :func:`json_lines`)."""
        return json_lines(self.path)


@dataclass(frozen=True)
class PredictionFolder:
    """One folder of another tool's prediction files of a suite, to be scored together."""

    folder: Path
    files: Sequence[Path]
    mode: ScorerMode
    tokenizer: Union[str, Path, None] = None
    """The tokenizer the predictions were made with (``jaxtune score --tokenizer``), if given."""
    on_file: Optional[Callable[[Path, int], None]] = None
    """``on_file(path, items)`` hears of each file scored."""


def json_lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(file:line, object)`` for every non-blank line, one at a time (a pred file's logit vectors are large); NaN
    and Infinity are read as Python's json reads them."""
    empty = True
    for lineno, value in jsonl.read_json_lines(path, allow_nan=True, bad="yield"):
        where = f"{path}:{lineno}"
        if isinstance(value, jsonl.JsonLinesError):
            raise ScoreError(str(value))
        if not isinstance(value, dict):
            raise ScoreError(f"{where}: expected a JSON object, got {type(value).__name__}")
        empty = False
        yield where, value
    if empty:
        raise ScoreError(f"{path}: no records")


def numbers(value: Any, where: str, key: str, length: int | None = None, null_is_nan: bool = False) -> list[float]:
    """A list of numbers; ``null_is_nan`` reads null as NaN (jaxtune's strict-JSON items store non-finite values so)."""
    if not isinstance(value, list):
        raise ScoreError(f"{where}: field '{key}' must be a list of numbers, got {type(value).__name__}")
    out = []
    for i, v in enumerate(value):
        if v is None and null_is_nan:
            v = math.nan
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ScoreError(f"{where}: field '{key}'[{i}] must be a number, got {v!r}")
        out.append(float(v))
    if length is not None and len(out) != length:
        raise ScoreError(f"{where}: field '{key}' must hold {length} numbers, got {len(out)}")
    return out


def text(value: Any, where: str, key: str) -> str:
    """``value`` when it is a string."""
    if not isinstance(value, str):
        raise ScoreError(f"{where}: field '{key}' must be a string, got {value!r}")
    return value


def required(d: Mapping[str, Any], key: str, where: str) -> Any:
    """``d[key]``, which must be there."""
    if key not in d:
        raise ScoreError(f"{where}: missing field '{key}'")
    return d[key]
