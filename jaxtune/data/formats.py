"""Instruction-data readers: every supported file format becomes one validated
:class:`~jaxtune.data.records.Record` (the record types live in :mod:`jaxtune.data.records`).

Formats (``DataConfig.format``):

- ``doit``: the DoIT dataset's JSON Lines records ``{messages: [{role, content}], type, question_format, choices,
  answer, idx}``; ``type`` is the ability (taken from the file name, as the study's ``make_data.py`` did, when absent).
- ``messages``: any ``{messages: [{role, content}]}`` lines (optional ``id``/``idx`` and ``ability``/``type``).
- ``belle``: BELLE's ``{instruction, input, output}`` lines; the user turn is ``instruction + input`` concatenated as
  BELLE's training code did.
- ``belle_conversations``: BELLE's multi-turn ``{id, conversations: [{from: human|assistant, value}]}`` lines.
- ``alpaca``: Alpaca's ``{instruction, input, output}`` records; the user turn is the instruction, then a blank line
  and the input when there is one.
- ``sharegpt``: ``{conversations: [{from: human|gpt|system, value}]}`` conversations.

A file may hold JSON Lines (one object per line) or a single JSON array of objects; the first non-blank character
decides (both are read by :mod:`jaxtune.data.jsonl`). Blank lines hold no record and are passed over. A malformed element of an array is one bad record (named by
the line it starts on and its index) and reading goes on after it; only text that cannot be split into elements
(an unclosed array, text after its ``]``) ends a file, and is listed as unreadable. Folders are read for ``.json``
and ``.jsonl`` files in any case. Every record is validated: a malformed line, a missing field,
an unknown role, an empty assistant turn or a wrong type raises :class:`~jaxtune.data.records.DataError` naming the file, the
line and the field, or, with ``on_error="skip"``, the record is left out and listed in a
:class:`~jaxtune.data.records.SkipReport`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Optional, Union

from jaxtune.data import jsonl
from jaxtune.data.records import ROLES, DataError, Message, RawEntry, Record, SkipReport
from jaxtune.names import DATA_FORMATS
from jaxtune.paths import as_path

OnError = Literal["raise", "skip"]

FORMATS = DATA_FORMATS
DEFAULT_ABILITY = "general"
"""Ability of records whose format carries none (BELLE, Alpaca, ShareGPT without an ``ability`` key)."""
DATA_FILE_SUFFIXES: tuple[str, ...] = (".json", ".jsonl")
"""Suffixes of data files in a folder, matched in any case (``.JSONL`` too)."""

# Speaker names of the "from"/"value" conversation formats, mapped onto jaxtune's three roles.
_SPEAKER_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
}


# --------------------------------------------------------------------------------------------------------------------
# Raw entries: one JSON value (or the error that stopped it) per line or array element of a file
# --------------------------------------------------------------------------------------------------------------------


def read_raw_entries(path: Union[str, Path]) -> Iterator[RawEntry]:
    """Yield every record-holding line of a JSON Lines file, or every element of a JSON array file, in order."""
    path = as_path(path)
    if jsonl.is_json_array_file(path):
        yield from jsonl.read_json_array(path)
    else:
        yield from read_json_lines(path)


def read_json_lines(
    path: Union[str, Path], start: int = 0, stop: Optional[int] = None, first_line: int = 1
) -> Iterator[RawEntry]:
    """The non-blank lines of a JSON Lines file from byte ``start`` (a line start, numbered ``first_line``) up to
    byte ``stop``, parsed by :func:`jaxtune.data.jsonl.read_json_lines`; a bad line is an entry holding its
    DataError (so that ``on_error="skip"`` can count it and go on)."""
    src = str(path)
    for line_no, value in jsonl.read_json_lines(path, bad="yield", start=start, stop=stop, first_line=first_line):
        if isinstance(value, jsonl.JsonLinesError):
            yield RawEntry(src, line_no, error=DataError(src, line_no, "", value.problem))
        else:
            yield RawEntry(src, line_no, value=value)


# --------------------------------------------------------------------------------------------------------------------
# Validation per format
# --------------------------------------------------------------------------------------------------------------------


class _Where:
    """The file and line a value came from, to build errors that name them."""

    __slots__ = ("source", "line")

    def __init__(self, source: str, line: int):
        self.source = source
        self.line = line

    def error(self, field_name: str, problem: str) -> DataError:
        return DataError(self.source, self.line, field_name, problem)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _require(obj: dict, key: str, where: _Where, expected: type | tuple, what: str) -> Any:
    if key not in obj:
        keys = ", ".join(sorted(obj)) or "none"
        raise where.error(key, f"missing required field (expected {what}; the record has keys: {keys})")
    value = obj[key]
    if not isinstance(value, expected) or (isinstance(value, bool) and bool not in _as_tuple(expected)):
        raise where.error(key, f"expected {what}, got {_type_name(value)}")
    return value


def _as_tuple(tp: type | tuple) -> tuple:
    return tp if isinstance(tp, tuple) else (tp,)


def _optional(obj: dict, key: str, where: _Where, expected: type | tuple, what: str) -> Any:
    if key not in obj or obj[key] is None:
        return None
    return _require(obj, key, where, expected, what)


_MISSING = object()


def _check_dialogue(messages: list[Message], where: _Where, field_name: str) -> tuple[Message, ...]:
    if not messages:
        raise where.error(field_name, "expected at least one turn, got an empty list")
    for i, m in enumerate(messages):
        if m.role == "assistant" and not m.content.strip():
            raise where.error(f"{field_name}[{i}].content", "empty assistant turn (nothing to learn from)")
    if messages[-1].role != "assistant":
        raise where.error(
            f"{field_name}[{len(messages) - 1}]",
            f"the last turn must be the assistant's reply, got role {messages[-1].role!r}",
        )
    return tuple(messages)


def _parse_role_messages(obj: dict, where: _Where) -> tuple[Message, ...]:
    items = _require(obj, "messages", where, list, "a list of {role, content} turns")
    messages = []
    for i, item in enumerate(items):
        name = f"messages[{i}]"
        if not isinstance(item, dict):
            raise where.error(name, f"expected an object with 'role' and 'content', got {_type_name(item)}")
        role = item.get("role", _MISSING)
        if role is _MISSING:
            raise where.error(f"{name}.role", f"missing required field (expected one of {', '.join(ROLES)})")
        if not isinstance(role, str):
            raise where.error(f"{name}.role", f"expected a string, got {_type_name(role)}")
        if role not in ROLES:
            raise where.error(f"{name}.role", f"unknown role {role!r} (expected one of {', '.join(ROLES)})")
        content = item.get("content", _MISSING)
        if content is _MISSING:
            raise where.error(f"{name}.content", "missing required field (expected a string)")
        if not isinstance(content, str):
            raise where.error(f"{name}.content", f"expected a string, got {_type_name(content)}")
        messages.append(Message(role, content))
    return _check_dialogue(messages, where, "messages")


def _parse_speaker_turns(obj: dict, where: _Where, key: str = "conversations") -> tuple[Message, ...]:
    items = _require(obj, key, where, list, "a list of {from, value} turns")
    messages = []
    for i, item in enumerate(items):
        name = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise where.error(name, f"expected an object with 'from' and 'value', got {_type_name(item)}")
        if "from" not in item:
            raise where.error(f"{name}.from", "missing required field (expected a speaker name such as 'human')")
        speaker = item["from"]
        if not isinstance(speaker, str):
            raise where.error(f"{name}.from", f"expected a string, got {_type_name(speaker)}")
        role = _SPEAKER_ROLES.get(speaker.lower())
        if role is None:
            known = ", ".join(sorted(_SPEAKER_ROLES))
            raise where.error(f"{name}.from", f"unknown speaker {speaker!r} (expected one of {known})")
        if "value" not in item:
            raise where.error(f"{name}.value", "missing required field (expected a string)")
        value = item["value"]
        if not isinstance(value, str):
            raise where.error(f"{name}.value", f"expected a string, got {_type_name(value)}")
        messages.append(Message(role, value))
    return _check_dialogue(messages, where, key)


def _record_id(obj: dict, where: _Where, keys: tuple[str, ...]) -> str:
    for key in keys:
        if key in obj and obj[key] is not None:
            value = obj[key]
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise where.error(key, f"expected a string or an integer id, got {_type_name(value)}")
            return str(value)
    return f"{Path(where.source).stem}:{where.line}"


def ability_from_file_name(path: Union[str, Path]) -> str:
    """The study's ability name of a data file: its name without the last ``_`` part (``role_play_1000.json`` ->
    ``role_play``); a name without ``_`` is kept whole (without its suffix)."""
    stem = Path(path).name
    if is_data_file_name(stem):
        stem = stem[: -len(Path(stem).suffix)]
    parts = stem.split("_")
    return "_".join(parts[:-1]) if len(parts) > 1 else stem


def _parse_doit(obj: dict, where: _Where) -> Record:
    messages = _parse_role_messages(obj, where)
    ability = _optional(obj, "type", where, str, "a string (the ability)") or ability_from_file_name(where.source)
    qf = _optional(obj, "question_format", where, int, "0 (free generation) or 1 (likelihood ranking)")
    qf = 0 if qf is None else qf
    if qf not in (0, 1):
        raise where.error("question_format", f"expected 0 (free generation) or 1 (likelihood ranking), got {qf!r}")
    choices_raw = _optional(obj, "choices", where, list, "a list of strings")
    choices: tuple[str, ...] = ()
    if choices_raw is not None:
        for i, c in enumerate(choices_raw):
            if not isinstance(c, str):
                raise where.error(f"choices[{i}]", f"expected a string, got {_type_name(c)}")
        choices = tuple(choices_raw)
    if qf == 1 and len(choices) < 2:
        raise where.error("choices", f"question_format 1 needs at least 2 choices, got {len(choices)}")
    answer = _optional(obj, "answer", where, (str, int, float), "a string or a number")
    if isinstance(answer, float) and not math.isfinite(answer):
        raise where.error("answer", f"expected a finite number, got {answer!r}")
    return Record(
        messages=messages,
        ability=ability,
        id=_record_id(obj, where, ("idx", "id")),
        source=where.source,
        line=where.line,
        question_format=qf,
        choices=choices,
        answer=None if answer is None else str(answer),
    )


def _generic_ability(obj: dict, where: _Where) -> str:
    for key in ("ability", "type"):
        value = _optional(obj, key, where, str, "a string (the ability)")
        if value:
            return value
    return DEFAULT_ABILITY


def _parse_messages(obj: dict, where: _Where) -> Record:
    return Record(
        messages=_parse_role_messages(obj, where),
        ability=_generic_ability(obj, where),
        id=_record_id(obj, where, ("id", "idx")),
        source=where.source,
        line=where.line,
    )


def _instruction_turns(obj: dict, where: _Where, joiner: Optional[str]) -> tuple[Message, ...]:
    instruction = _require(obj, "instruction", where, str, "a string")
    inp = _optional(obj, "input", where, str, "a string") or ""
    output = _require(obj, "output", where, str, "a string")
    if not output.strip():
        raise where.error("output", "empty assistant turn (nothing to learn from)")
    if joiner is None:  # BELLE's training code: instruction + input, nothing between
        human = instruction + inp
    else:
        human = joiner.join(p for p in (instruction, inp) if p)
    return (Message("user", human), Message("assistant", output))


def _parse_belle(obj: dict, where: _Where) -> Record:
    return Record(
        messages=_instruction_turns(obj, where, joiner=None),
        ability=_generic_ability(obj, where),
        id=_record_id(obj, where, ("id",)),
        source=where.source,
        line=where.line,
    )


def _parse_alpaca(obj: dict, where: _Where) -> Record:
    return Record(
        messages=_instruction_turns(obj, where, joiner="\n\n"),
        ability=_generic_ability(obj, where),
        id=_record_id(obj, where, ("id",)),
        source=where.source,
        line=where.line,
    )


def _parse_conversations(obj: dict, where: _Where) -> Record:
    return Record(
        messages=_parse_speaker_turns(obj, where),
        ability=_generic_ability(obj, where),
        id=_record_id(obj, where, ("id",)),
        source=where.source,
        line=where.line,
    )


_PARSERS = {
    "doit": _parse_doit,
    "messages": _parse_messages,
    "belle": _parse_belle,
    "alpaca": _parse_alpaca,
    "belle_conversations": _parse_conversations,
    "sharegpt": _parse_conversations,
}


def check_format(format: str) -> None:
    if format not in _PARSERS:
        raise ValueError(f"unknown data format {format!r} (expected one of {', '.join(FORMATS)})")


def parse_entry(entry: RawEntry, format: str) -> Record:
    """Validate one raw entry as a record of ``format``; raise :class:`DataError` if it is not one."""
    if entry.error is not None:
        raise entry.error
    where = _Where(entry.source, entry.line)
    if not isinstance(entry.value, dict):
        raise where.error("", f"expected a JSON object per record, got {_type_name(entry.value)}")
    return _PARSERS[format](entry.value, where)


# --------------------------------------------------------------------------------------------------------------------
# Files and directories
# --------------------------------------------------------------------------------------------------------------------


def is_data_file_name(name: Union[str, Path]) -> bool:
    """Whether a file name ends in one of :data:`DATA_FILE_SUFFIXES`, in any case (``a.JSONL`` is a data file)."""
    return Path(name).suffix.lower() in DATA_FILE_SUFFIXES


def list_data_files(path: Union[str, Path]) -> list[Path]:
    """The data files at ``path``: the file itself, or the ``.json``/``.jsonl`` files (any case) directly inside a
    directory, in sorted file-name order (the order jaxtune gives the study's unsorted file lists)."""
    path = as_path(path)
    if path.is_file():
        return [path]
    if not path.exists():
        raise FileNotFoundError(f"data path {path} does not exist")
    files = sorted(p for p in path.iterdir() if p.is_file() and is_data_file_name(p))
    if not files:
        folders = sorted(p.name + "/" for p in path.iterdir() if p.is_dir())
        hint = f"; it holds the folders {', '.join(folders)}: point at one of them" if folders else ""
        raise FileNotFoundError(f"data path {path} holds no .json or .jsonl files{hint}")
    return files


class RecordCollector:
    """Applies the ``on_error`` policy: raise the first :class:`DataError`, or skip the record and report it."""

    def __init__(self, format: str, on_error: OnError = "raise", report: Optional[SkipReport] = None):
        check_format(format)
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.format = format
        self.on_error = on_error
        self.report = report if report is not None else SkipReport()

    def parse(self, entry: RawEntry) -> Optional[Record]:
        """The record of ``entry``, or None when it was invalid and skipped."""
        self.report.seen += 1
        try:
            return parse_entry(entry, self.format)
        except DataError as e:
            if self.on_error == "raise":
                raise
            self.report.add(e)
            return None

    def iter_file(self, path: Union[str, Path]) -> Iterator[Record]:
        yield from self.iter_entries(read_raw_entries(path))

    def iter_entries(self, entries: Iterable[RawEntry]) -> Iterator[Record]:
        """The valid records of ``entries``; text that cannot be split into records (the rest of a broken JSON
        array) ends them, and is listed in the report's ``unreadable``."""
        try:
            for entry in entries:
                record = self.parse(entry)
                if record is not None:
                    yield record
        except DataError as e:
            if self.on_error == "raise":
                raise
            self.report.unreadable.append(str(e))


def iter_records(
    path: Union[str, Path], format: str, *, on_error: OnError = "raise", report: Optional[SkipReport] = None
) -> Iterator[Record]:
    """Stream the validated records of a file or of every data file in a directory (sorted by file name)."""
    collector = RecordCollector(format, on_error, report)
    for file in list_data_files(path):
        yield from collector.iter_file(file)


def read_records(
    path: Union[str, Path], format: str, *, on_error: OnError = "raise"
) -> tuple[list[Record], SkipReport]:
    """All validated records at ``path`` and the report of those skipped (always empty with ``on_error="raise"``)."""
    report = SkipReport()
    records = list(iter_records(path, format, on_error=on_error, report=report))
    return records, report
