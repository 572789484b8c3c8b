"""``jaxtune select``: write one of the study's 19 data types as its ``make_data.py`` lays it out.

Output (``OUT_DIR``, created when missing): one JSON Lines file per input file the data type reads, named as
``make_data.py`` names it (the input name without its last ``_`` part: ``role_play_full.json`` -> ``role_play.json``,
``general_instruction_gpt4_41k.json`` -> ``general_instruction_gpt4.json``), each line the input line's bytes
unchanged (a missing final newline is added), in the order ``make_data.py`` writes them. Which lines, and in which
order, comes from :func:`jaxtune.data.mixtures.plan_selection`, the one implementation of the study's selections that
training uses too. A selection with a line that is not JSON stops with an error naming file and line (``make_data.py``
could not have read it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

from jaxtune.data.jsonl import is_json_array_file
from jaxtune.data.mixtures import (
    BUDGET_PREFIX,
    STUDY_ALIASES,
    STUDY_DATA_TYPES,
    FileSelection,
    SelectionError,
    plan_selection,
)

_BOM = b"\xef\xbb\xbf"


@dataclass
class SelectOutputs:
    """The files written and the records in each."""

    data_type: str
    out_dir: Path
    counts: dict[str, int]
    """Output file name -> lines written, in writing order."""

    def summary(self) -> str:
        width = max(len(n) for n in self.counts)
        lines = [
            f"{self.data_type}: {sum(self.counts.values())} records in {len(self.counts)} files under {self.out_dir}"
        ]
        if self.data_type in STUDY_ALIASES:
            lines.append(f"  (type {self.data_type!r} is equivalent to {STUDY_ALIASES[self.data_type]!r})")
        lines += [f"  {name.ljust(width)}  {n}" for name, n in self.counts.items()]
        return "\n".join(lines)


def _line_bytes(pick: FileSelection) -> list[bytes]:
    """The bytes of the picked lines, in pick order."""
    if is_json_array_file(pick.file):
        raise SelectionError(f"{pick.file}: holds one JSON array; make_data.py reads JSON Lines (one object per line)")
    for entry in pick.entries:
        if entry.error is not None:
            raise SelectionError(
                f"{entry.source}:{entry.line}: the selection takes this line, but it is {entry.error.problem}"
            )
    wanted = {entry.line for entry in pick.entries}
    found: dict[int, bytes] = {}
    with open(pick.file, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number in wanted:
                if number == 1 and raw.startswith(_BOM):
                    raw = raw[len(_BOM) :]
                found[number] = raw if raw.endswith(b"\n") else raw + b"\n"
    return [found[entry.line] for entry in pick.entries]


def select_study_data(
    data_dir: Union[str, Path], data_type: str, out_dir: Union[str, Path], *, seed: int = 0
) -> SelectOutputs:
    """Write ``data_type`` (one of :data:`STUDY_DATA_TYPES`, or ``budget:PATH``) drawn from the DoIT dataset root
    ``data_dir``."""
    if data_type not in STUDY_DATA_TYPES and not data_type.startswith(BUDGET_PREFIX):
        raise SelectionError(
            f"unknown data type {data_type!r}; make_data.py's data types are: {', '.join(STUDY_DATA_TYPES)} "
            f"(or budget:PATH, a budget.json of jaxtune budget)"
        )
    picks = plan_selection(data_dir, data_type, seed=seed)
    names: dict[str, Path] = {}
    for pick in picks:
        if pick.output_name in names:
            raise SelectionError(
                f"{pick.file} and {names[pick.output_name]} would both be written to "
                f"{pick.output_name} (make_data.py keeps only the last)"
            )
        names[pick.output_name] = pick.file
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for pick in picks:
        lines = _line_bytes(pick)
        target = out / pick.output_name
        tmp = target.with_name(target.name + ".tmp")
        with open(tmp, "wb") as f:
            f.writelines(lines)
        tmp.replace(target)
        counts[pick.output_name] = len(lines)
    return SelectOutputs(data_type, out, counts)
