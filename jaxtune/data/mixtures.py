"""The DoIT study's data constructions (``make_data.py``), reproduced exactly, and the run manifest.

``DataConfig.selection`` names what to train on:

- ``all``: every record at ``data.path`` (a file, or the data files directly inside a folder).
- ``curated-N`` (N a multiple of 10; the study used 10, 40, 160, 640, 2560, 10000): N/10 records per ability drawn
  with CPython's ``random.sample`` from ``curated/1000/{ability}_1000.json``, after one ``random.seed(seed)``; the
  same generator serves every file in turn, files in sorted name order. ``baseline`` is ``curated-10000``.
- ``synthetic-N``: ``random.sample(lines, N)`` on the synthetic file(s) in ``synthetic/40960/``.
- ``reconstruct``: the first lines of each ``curated/full`` file: ethics 64, role_play 64, creative_writing 1000,
  biology all, chinese 1306, every other ability 1305 (10k in all).
- ``maximum`` (= ``mix-0``): ethics 64, role_play 64, creative_writing 1000, every other ability complete.
- ``mix-N``: ``maximum`` plus the ``synthetic-N`` sample (the maximum part consumes no randomness).
- a count map such as ``biology:16,math:64`` (optionally ``others:all`` or ``others:100``): the first k lines of each
  named ``curated/full`` file, the study's explicit per-ability construction; ``all`` takes the whole file.
- ``budget:PATH``: the per-ability counts of a ``budget.json`` (its ``counts`` object, ability -> records; written by
  ``jaxtune budget``), drawn from ``curated/1000`` exactly as ``curated-N`` draws (one ``random.seed(seed)``, files
  in sorted name order, ``random.sample`` of that ability's count; an ability with count 0 or not named is skipped),
  so equal counts give ``curated-N``'s very records.

The study selections need ``data.path`` to be the dataset root, the folder holding ``curated/`` (and
``synthetic/``). Blank lines hold no record and are not counted as lines; every other line is part of the population
that is sampled, so an invalid line is drawn exactly where the study would have drawn it, and then reported.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

from jaxtune.data.formats import (
    OnError,
    RecordCollector,
    ability_from_file_name,
    is_data_file_name,
    iter_records,
    read_raw_entries,
)
from jaxtune.data.records import RawEntry, Record, SkipReport
from jaxtune.errors import JaxtuneError
from jaxtune.paths import as_path, is_remote

STUDY_ABILITIES: tuple[str, ...] = (
    "biology",
    "chinese",
    "code",
    "creative_writing",
    "ethics",
    "history",
    "math",
    "reasoning",
    "role_play",
    "understanding",
)
"""The ten DoIT abilities in sorted file-name order (the order selections consume the random generator)."""

DISPLAY_NAMES: dict[str, str] = {
    "biology": "STEM - Biology",
    "history": "Humanity - History",
    "code": "Code Generation",
    "creative_writing": "Creative Writing",
    "chinese": "Chinese",
    "understanding": "Dialogue Understanding",
    "role_play": "Role-play Chat",
    "reasoning": "Logical Reasoning",
    "math": "COT for Grad-Math",
    "ethics": "Ethics",
}
"""The study's name of each ability in its tables and figures (jaxtune.study.report's row labels and titles)."""

# Per-ability caps of the study's `maximum` construction; None = the whole file.
_MAXIMUM_SIZES: dict[str, Optional[int]] = {"ethics": 64, "role_play": 64, "creative_writing": 1000}
_RECONSTRUCT_SIZES: dict[str, Optional[int]] = {**_MAXIMUM_SIZES, "biology": None, "chinese": 1306}
_RECONSTRUCT_OTHERS = 1305


class SelectionError(JaxtuneError, ValueError):
    """A selection that cannot be made from the data given (the message says what was expected)."""


@dataclass
class Selection:
    """The records a run trains on, how they were chosen, and the invalid ones left out."""

    name: str
    records: list[Record]
    skipped: SkipReport = field(default_factory=SkipReport)

    def counts(self) -> dict[str, int]:
        """Records per ability, abilities sorted."""
        counts: dict[str, int] = {}
        for r in self.records:
            counts[r.ability] = counts.get(r.ability, 0) + 1
        return dict(sorted(counts.items()))


def _study_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise SelectionError(f"expected the folder {folder} (DoIT layout), but it does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_data_file_name(p))
    if not files:
        raise SelectionError(f"the folder {folder} holds no .json/.jsonl data files")
    return files


def find_doit_root(path: Union[str, Path]) -> Path:
    """The dataset root holding ``curated/``: ``path`` itself, or its parent when ``path`` is ``curated/``."""
    p = as_path(path)
    if (p / "curated").is_dir():
        return p
    if p.name == "curated" and p.is_dir():
        return p.parent
    raise SelectionError(
        f"study selections need data.path to be the DoIT dataset root (the folder holding curated/ and "
        f"synthetic/); {p} has no curated/ folder"
    )


@dataclass
class FileSelection:
    """The lines a study selection takes from one input file, in the order ``make_data.py`` wrote them."""

    file: Path
    entries: list[RawEntry]

    @property
    def output_name(self) -> str:
        """The file ``make_data.py`` writes them to: the input name without its last ``_`` part
        (``role_play_full.json`` -> ``role_play.json``, ``general_instruction_gpt4_41k.json`` ->
        ``general_instruction_gpt4.json``)."""
        return ability_from_file_name(self.file) + ".json"


class _StudySampler:
    """Reads study files as raw lines and draws from them with the study's one seeded generator."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)  # identical stream to the study's random.seed(seed) + random.sample
        self.picks: list[FileSelection] = []

    def sample(self, files: list[Path], k: int | dict[str, int]) -> None:
        """``k`` records of every file, or ``k[ability]`` of each named ability's file (others skipped)."""
        for file in files:
            n = k.get(ability_from_file_name(file), 0) if isinstance(k, dict) else k
            if isinstance(k, dict) and n == 0:
                continue
            entries = list(read_raw_entries(file))
            if len(entries) < n:
                raise SelectionError(
                    f"{file}: the selection draws {n} records from this file but it has {len(entries)}"
                )
            # sample() on a range picks the same positions as sample() on the study's list of parsed lines.
            self.picks.append(FileSelection(file, [entries[i] for i in self.rng.sample(range(len(entries)), n)]))

    def first(
        self, files: list[Path], sizes: dict[str, Optional[int]], others: Optional[int], use_others: bool
    ) -> None:
        for file in files:
            ability = ability_from_file_name(file)
            if ability in sizes:
                size = sizes[ability]
            elif use_others:
                size = others
            else:
                continue
            entries = list(read_raw_entries(file))
            self.picks.append(FileSelection(file, entries if size is None else entries[:size]))


_NUMBERED = re.compile(r"^(curated|synthetic|mix)-(\d+)$")
STUDY_ALIASES: dict[str, str] = {"baseline": "curated-10000", "mix-0": "maximum"}
"""Names ``make_data.py`` accepts for another selection."""

STUDY_DATA_TYPES: tuple[str, ...] = (
    "curated-10",
    "curated-40",
    "curated-160",
    "curated-640",
    "curated-2560",
    "curated-10000",
    "synthetic-10",
    "synthetic-40",
    "synthetic-160",
    "synthetic-640",
    "synthetic-2560",
    "synthetic-10000",
    "synthetic-40960",
    "baseline",
    "reconstruct",
    "maximum",
    "mix-0",
    "mix-2560",
    "mix-40960",
)
"""The ``--data_type`` choices of the study's ``make_data.py``, in its order."""


def parse_count_map(text: str) -> tuple[dict[str, Optional[int]], bool, Optional[int]]:
    """``biology:16,math:all,others:100`` -> ({biology: 16, math: None}, use_others, others_size)."""
    sizes: dict[str, Optional[int]] = {}
    use_others, others = False, None
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part.count(":") != 1:
            raise SelectionError(f"selection {text!r}: {part!r} is not of the form ability:count")
        name, value = (s.strip() for s in part.split(":"))
        if value == "all":
            size = None
        elif value.isdigit():
            size = int(value)
        else:
            raise SelectionError(f"selection {text!r}: count of {name!r} must be a non-negative integer or 'all'")
        if name == "others":
            use_others, others = True, size
        elif name in sizes:
            raise SelectionError(f"selection {text!r}: {name!r} is given twice")
        else:
            sizes[name] = size
    if not sizes and not use_others:
        raise SelectionError(f"selection {text!r} names no ability")
    return sizes, use_others, others


BUDGET_PREFIX = "budget:"
"""``budget:PATH`` selects the counts of a ``budget.json`` (``jaxtune budget``)."""


def read_budget_counts(path: Union[str, Path]) -> dict[str, int]:
    """The ``counts`` object of a budget file (ability -> non-negative integer); errors name the file and key."""
    p = as_path(path)
    if not p.is_file():
        raise SelectionError(f"budget selection: {p} is not a file (expected a budget.json of jaxtune budget)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SelectionError(f"{p}: not valid JSON (line {e.lineno}): {e.msg}") from None
    counts = data.get("counts") if isinstance(data, dict) else None
    if not isinstance(counts, dict) or not counts:
        raise SelectionError(f"{p}: expected an object with a non-empty 'counts' object (ability -> records)")
    for ability, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise SelectionError(f"{p}: counts.{ability} must be a non-negative integer, got {n!r}")
    if sum(counts.values()) == 0:
        raise SelectionError(f"{p}: counts select no record")
    return dict(counts)


def plan_selection(path: Union[str, Path], selection: str, *, seed: int = 0) -> list[FileSelection]:
    """Which lines of which files a study selection takes (every name of the module docstring but ``all``), in
    ``make_data.py``'s order: files in sorted name order, lines in the order they were drawn."""
    selection = selection.strip()
    name = STUDY_ALIASES.get(selection, selection)
    root = find_doit_root(path)
    sampler = _StudySampler(seed)
    match = _NUMBERED.match(name)
    if match:
        kind, n = match.group(1), int(match.group(2))
        if n <= 0 and kind != "mix":
            raise SelectionError(f"selection {selection!r}: the number of records must be positive")
        if kind == "curated":
            if n % 10:
                raise SelectionError(
                    f"selection {selection!r}: curated-N takes N/10 per ability, N must be a multiple of 10"
                )
            sampler.sample(_study_files(root / "curated" / "1000"), n // 10)
        elif kind == "synthetic":
            sampler.sample(_study_files(root / "synthetic" / "40960"), n)
        else:
            sampler.first(_study_files(root / "curated" / "full"), _MAXIMUM_SIZES, None, use_others=True)
            if n:
                sampler.sample(_study_files(root / "synthetic" / "40960"), n)
    elif name == "reconstruct":
        sampler.first(_study_files(root / "curated" / "full"), _RECONSTRUCT_SIZES, _RECONSTRUCT_OTHERS, use_others=True)
    elif name == "maximum":
        sampler.first(_study_files(root / "curated" / "full"), _MAXIMUM_SIZES, None, use_others=True)
    elif name.startswith(BUDGET_PREFIX):
        counts = read_budget_counts(name[len(BUDGET_PREFIX) :])
        files = _study_files(root / "curated" / "1000")
        unknown = sorted(set(counts) - {ability_from_file_name(f) for f in files})
        if unknown:
            raise SelectionError(f"selection {selection!r}: no curated/1000 file for {', '.join(unknown)}")
        sampler.sample(files, counts)
    elif ":" in name:
        sizes, use_others, others = parse_count_map(name)
        files = _study_files(root / "curated" / "full")
        available = {ability_from_file_name(f) for f in files}
        unknown = sorted(set(sizes) - available)
        if unknown:
            raise SelectionError(
                f"selection {selection!r}: no curated/full file for {', '.join(unknown)} "
                f"(abilities there: {', '.join(sorted(available))})"
            )
        sampler.first(files, sizes, others, use_others)
    else:
        raise SelectionError(
            f"unknown selection {selection!r} (expected all, curated-N, synthetic-N, reconstruct, maximum, mix-N, "
            f"baseline, budget:PATH, or a count map like biology:16,math:64)"
        )
    return sampler.picks


def select_records(
    path: Union[str, Path],
    selection: str = "all",
    *,
    format: str = "doit",
    seed: int = 0,
    on_error: OnError = "raise",
) -> Selection:
    """The records of ``selection`` (see the module docstring) read from ``path``, validated. Each keeps its origin
    (``source`` file and ``line``), which the run's manifest records."""
    selection = selection.strip()
    if selection == "all":
        report = SkipReport()
        return Selection("all", list(iter_records(path, format, on_error=on_error, report=report)), report)
    collector = RecordCollector(format, on_error)
    records = []
    for pick in plan_selection(path, selection, seed=seed):
        for entry in pick.entries:
            record = collector.parse(entry)
            if record is not None:
                records.append(record)
    return Selection(selection, records, collector.report)


# --------------------------------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------------------------------


def write_manifest(path: Union[str, Path], records: Iterable[Record]) -> int:
    """Write one JSON line per record trained on (id, ability, source file, line); returns the number written.

    Streams: ``records`` may be a generator over a corpus that does not fit in memory.
    """
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    # Local: a temporary file renamed at the end. An object store has no rename, but an object appears only once
    # its upload completes, so the file is written in place there.
    tmp = path if is_remote(path) else path.parent / (path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(
                json.dumps({"id": r.id, "ability": r.ability, "source": r.source, "line": r.line}, ensure_ascii=False)
            )
            f.write("\n")
            n += 1
    if tmp != path:
        tmp.replace(path)
    return n


def read_manifest(path: Union[str, Path]) -> list[dict]:
    """The entries of a manifest written by :func:`write_manifest`."""
    with as_path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
