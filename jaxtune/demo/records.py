"""Writing records in the DoIT schema: one builder and one JSON Lines writer for every generated corpus.

The demo corpus (:mod:`jaxtune.demo.abilities`), the tests' small datasets and the data-pipeline benchmark all write
DoIT records through these two functions, so the schema is spelled out once. A record, as the study's files hold it
(see specs/doit.md)::

    {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...],
     "type": "<ability>", "question_format": 0 | 1, "choices": [...], "answer": "<optional>", "idx": <optional int>}

``messages`` ends with the reference assistant turn; earlier (user, assistant) turns come from ``history``.
Files are UTF-8 JSON Lines, one record a line, non-ASCII characters written as they are (``ensure_ascii=False``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence


def doit_record(
    ability: str,
    question: str,
    reply: str,
    *,
    fmt: int = 0,
    choices: Sequence[str] | None = None,
    answer: str | None = None,
    history: Sequence[tuple[str, str]] = (),
    idx: int | None = None,
) -> dict:
    """A DoIT record: ``history`` turns, then ``question`` and the reference ``reply``; ``answer`` and ``idx`` only
    when given (keys in the order above)."""
    messages = []
    for user, assistant in history:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    record = {
        "messages": messages,
        "type": ability,
        "question_format": fmt,
        "choices": list(choices) if choices is not None else [],
    }
    if answer is not None:
        record["answer"] = answer
    if idx is not None:
        record["idx"] = idx
    return record


def write_jsonl(path: str | Path, records: Iterable[dict | str]) -> Path:
    """Write ``records`` to ``path`` as JSON Lines (parent folders created) and return the path.

    A dict is serialised; a str is taken as an already serialised line and written as it stands (how a caller writes
    a blank or malformed line on purpose). ``records`` may be a generator: nothing is held in memory.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path
