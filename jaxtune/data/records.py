"""The record types of instruction data, whatever file format they came from (:mod:`jaxtune.data.formats` reads and
validates them): :class:`Message` turns, the validated :class:`Record`, the :class:`RawEntry` of one line or array
element before validation, the :class:`DataError` naming the file, line and field of bad data, and the
:class:`SkipReport` of the records left out under ``on_error="skip"``.

A record serialised by :func:`record_to_json` (one line; prepared ArrayRecord datasets store records in this form)::

    {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...], "ability": str, "id": str,
     "source": str, "line": int, "question_format": 1 (only when 1), "choices": [str, ...] (only when any),
     "answer": str (only when set)}
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from jaxtune.errors import JaxtuneError

ROLES: tuple[str, ...] = ("system", "user", "assistant")
"""The roles of a :class:`Message`."""


class DataError(JaxtuneError, ValueError):
    """Bad input data. The message names the file, the line and the field, and says what was expected."""

    def __init__(self, source: str, line: int, field: str, problem: str):
        self.source = source
        self.line = line
        self.field = field
        self.problem = problem
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {field}: {problem}" if field else f"{where}: {problem}")

    def __reduce__(self):  # picklable across grain worker processes
        return (DataError, (self.source, self.line, self.field, self.problem))


@dataclass(frozen=True)
class Message:
    """One turn of a dialogue."""

    role: str
    """One of :data:`ROLES`: ``system``, ``user`` or ``assistant``."""
    content: str


@dataclass(frozen=True)
class Record:
    """One validated training or evaluation example, whatever file format it came from."""

    messages: tuple[Message, ...]
    """The dialogue; it ends with the assistant's reference reply."""
    ability: str
    """Ability (DoIT ``type``) the record belongs to; :data:`jaxtune.data.formats.DEFAULT_ABILITY` when the format
    has none."""
    id: str
    """The record's own id (DoIT ``idx``, BELLE ``id``), else ``<file stem>:<line>``."""
    source: str = ""
    """File the record was read from."""
    line: int = 0
    """1-based line of the record in ``source`` (for JSON arrays: the line its object starts on)."""
    question_format: int = 0
    """DoIT: 1 = three-way likelihood ranking over ``choices`` (``choices[0]`` correct), 0 = free generation."""
    choices: tuple[str, ...] = ()
    answer: Optional[str] = None
    """DoIT: the reference final answer (math)."""


@dataclass(frozen=True)
class SkippedRecord:
    """A record left out under ``on_error="skip"``."""

    source: str
    line: int
    field: str
    problem: str

    def describe(self) -> str:
        return str(DataError(self.source, self.line, self.field, self.problem))


@dataclass
class SkipReport:
    """Counts and first examples of the records left out because they were invalid."""

    max_examples: int = 20
    seen: int = 0
    """Records (valid or not) looked at."""
    skipped: int = 0
    by_source: Counter = field(default_factory=Counter)
    by_field: Counter = field(default_factory=Counter)
    examples: list[SkippedRecord] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    """Parts of files that could not be split into records at all (each message names the file, the line and how
    much was lost); not counted in ``seen`` or ``skipped``."""

    def add(self, error: DataError) -> None:
        self.skipped += 1
        self.by_source[error.source] += 1
        self.by_field[error.field or "(line)"] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(SkippedRecord(error.source, error.line, error.field, error.problem))

    def merge(self, other: SkipReport) -> None:
        self.seen += other.seen
        self.skipped += other.skipped
        self.by_source.update(other.by_source)
        self.by_field.update(other.by_field)
        room = self.max_examples - len(self.examples)
        self.examples.extend(other.examples[: max(0, room)])
        self.unreadable.extend(other.unreadable)

    def summary(self, show: int = 5) -> str:
        """A human-readable account: how many were skipped, where, why, and the first few in full."""
        if not self.skipped and not self.unreadable:
            return f"all {self.seen} records valid"
        lines = []
        if self.skipped:
            files = ", ".join(f"{n} in {src}" for src, n in self.by_source.most_common())
            fields = ", ".join(f"{n} x {f}" for f, n in self.by_field.most_common())
            lines = [f"skipped {self.skipped} invalid records of {self.seen} ({files}; fields: {fields})"]
            lines += [f"  {e.describe()}" for e in self.examples[:show]]
            if self.skipped > show:
                lines.append(f"  ... and {self.skipped - show} more")
        else:
            lines = [f"all {self.seen} records read were valid"]
        if self.unreadable:
            lines.append(f"unreadable parts of {len(self.unreadable)} file(s), not counted above:")
            lines += [f"  {u}" for u in self.unreadable]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "seen": self.seen,
            "skipped": self.skipped,
            "by_source": dict(self.by_source),
            "by_field": dict(self.by_field),
            "examples": [e.describe() for e in self.examples],
            "unreadable": list(self.unreadable),
        }


@dataclass(frozen=True)
class RawEntry:
    """One non-blank line (or JSON-array element) of a data file, parsed or not."""

    source: str
    line: int
    value: Any = None
    error: Optional[DataError] = None


def record_to_json(record: Record) -> str:
    """The record as one line of JSON (read back by :func:`record_from_json`)."""
    obj: dict[str, Any] = {
        "messages": [{"role": m.role, "content": m.content} for m in record.messages],
        "ability": record.ability,
        "id": record.id,
        "source": record.source,
        "line": record.line,
    }
    if record.question_format:
        obj["question_format"] = record.question_format
    if record.choices:
        obj["choices"] = list(record.choices)
    if record.answer is not None:
        obj["answer"] = record.answer
    return json.dumps(obj, ensure_ascii=False)


def record_from_json(data: Union[str, bytes]) -> Record:
    """Inverse of :func:`record_to_json`."""
    obj = json.loads(data)
    return Record(
        messages=tuple(Message(m["role"], m["content"]) for m in obj["messages"]),
        ability=obj["ability"],
        id=obj["id"],
        source=obj.get("source", ""),
        line=obj.get("line", 0),
        question_format=obj.get("question_format", 0),
        choices=tuple(obj.get("choices", ())),
        answer=obj.get("answer"),
    )
