"""The BELLE study's data volumes: nested random subsets of one corpus, optionally mixed with Stanford Alpaca.

Selection names (``data.selection``), declared in :data:`STUDY_VOLUMES` and parsed by :func:`parse_belle_selection`:

- ``belle-200k``, ``belle-600k``, ``belle-1m``, ``belle-2m``: the study's volumes (0.2M, 0.6M, 1M, 2M Chinese
  instructions); ``belle-N`` with any count (``belle-40``, ``belle-15k``) for other volumes and for tests;
  ``belle-all``: the whole corpus.
- a ``+alpaca`` suffix adds every record of ``data.alpaca_path`` (Stanford Alpaca's ``alpaca_data.json``, the
  52,002 ``{instruction, input, output}`` records the model cards call "50,000 pieces of English data"), as the
  released BELLE-7B models were trained; ``+alpaca-N`` adds a nested random N of them.

The corpus at ``data.path`` is a prepared ArrayRecord dataset (``jaxtune prepare``) or JSON Lines / JSON array
files (a file, or the data files directly inside a folder, in sorted name order). Its records are numbered
``0 .. P-1`` in corpus order, and one permutation of that range is drawn from ``numpy.random.RandomState(
data.selection_seed)`` (the legacy generator, whose stream NumPy keeps frozen across versions); ``belle-N`` is the
first N positions of that permutation, read back in corpus order. So at one seed every volume holds every smaller
one (0.2M within 0.6M within 1M within 2M), and the same ids are chosen whatever the number of hosts: no process
index enters the choice, every host computes it identically, and the pipeline shards batches afterwards.

For files, every non-blank line (or JSON-array element) is a member of the population, as in the DoIT selections: an
invalid line that is drawn is reported by file and line (``data.on_error``: raise, or skip and count), and only the
drawn lines are kept in memory. A prepared dataset's population is its validated records.

The Alpaca file is read with the ``belle`` format (instruction and input concatenated), as BELLE's training code
(``train/finetune.py`` @ 8234dd3, ``"Human: " + instruction + input``) built every record it trained on. Records
with no ability of their own are labelled ``belle`` and ``alpaca``, so the data summary, the per-ability losses and
the run's manifest (which lists every record trained on, with its file and line) tell the two apart.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from jaxtune.data.formats import DEFAULT_ABILITY, OnError, RecordCollector, list_data_files, read_raw_entries
from jaxtune.data.jsonl import is_json_array_file
from jaxtune.data.mixtures import SelectionError
from jaxtune.data.prepare import PreparedRecords, is_prepared_dataset
from jaxtune.data.records import Record, SkipReport

log = logging.getLogger(__name__)

STUDY_VOLUMES: dict[str, int] = {
    "belle-200k": 200_000,
    "belle-600k": 600_000,
    "belle-1m": 1_000_000,
    "belle-2m": 2_000_000,
}
"""The study's four BELLE volumes (arXiv 2303.14742: 0.2M, 0.6M, 1M and 2M instructions), smallest first."""

BELLE_LABEL = "belle"
ALPACA_LABEL = "alpaca"
ALPACA_FORMAT = "belle"

_NAME = re.compile(r"^belle-(?P<belle>all|\d+[km]?)(?:\+alpaca(?:-(?P<alpaca>\d+[km]?))?(?P<mix>))?$")
_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000}


@dataclass(frozen=True)
class BelleSelection:
    """A parsed BELLE selection name."""

    name: str
    belle: Optional[int]
    """Records drawn from the corpus; None = all of it."""
    alpaca: bool
    """Whether Alpaca records are mixed in."""
    alpaca_count: Optional[int] = None
    """Alpaca records drawn; None = all of the file."""

    @property
    def source_label(self) -> str:
        """The data source a report plots this selection under: ``belle`` or ``belle+alpaca``."""
        return f"{BELLE_LABEL}+{ALPACA_LABEL}" if self.alpaca else BELLE_LABEL


def _count(text: str) -> int:
    number, suffix = (text[:-1], text[-1]) if text[-1] in "km" else (text, "")
    return int(number) * _SUFFIX[suffix]


def is_belle_selection(selection: str) -> bool:
    """True for names of the ``belle-...`` family (well formed or not: the parser then says what is wrong)."""
    return selection.strip().startswith("belle-")


def parse_belle_selection(selection: str) -> BelleSelection:
    """``belle-600k+alpaca`` -> BelleSelection(belle=600000, alpaca=True); a malformed name is a SelectionError."""
    name = selection.strip()
    m = _NAME.match(name)
    if m is None:
        raise SelectionError(
            f"selection {selection!r}: expected belle-N (N a count with optional k or m: the study's "
            f"{', '.join(STUDY_VOLUMES)}) or belle-all, optionally followed by +alpaca or +alpaca-N"
        )
    belle = None if m.group("belle") == "all" else _count(m.group("belle"))
    alpaca_count = _count(m.group("alpaca")) if m.group("alpaca") else None
    if belle == 0 or alpaca_count == 0:
        raise SelectionError(f"selection {selection!r}: a volume must be positive")
    return BelleSelection(name, belle, m.group("mix") is not None, alpaca_count)


def nested_indices(population: int, count: Optional[int], seed: int, where: str) -> np.ndarray:
    """Sorted positions of the first ``count`` of the seeded permutation of ``range(population)`` (all when None):
    at one seed, a smaller count's positions are a subset of a larger one's."""
    if count is None:
        return np.arange(population, dtype=np.int64)
    if count > population:
        raise SelectionError(f"{where}: the selection draws {count:,} records but it holds {population:,}")
    order = np.random.RandomState(seed).permutation(population)
    return np.sort(order[:count]).astype(np.int64)


@dataclass(frozen=True)
class _Part:
    """Records ``base[i]`` for ``i`` in ``indices``; those without an ability of their own get ``label``."""

    base: Any
    """A :class:`PreparedRecords` or a list of records."""
    indices: np.ndarray
    label: str

    def read(self, positions: np.ndarray) -> list[Record]:
        chosen = self.indices[positions]
        if isinstance(self.base, PreparedRecords):
            records = self.base.__getitems__(chosen)
        else:
            records = [self.base[int(i)] for i in chosen]
        return [r if r.ability != DEFAULT_ABILITY else dataclasses.replace(r, ability=self.label) for r in records]


class SelectedRecords:
    """Random access to a BELLE selection (a grain ``RandomAccessDataSource``; picklable, so grain workers read it):
    the chosen corpus records in corpus order, then the chosen Alpaca records."""

    def __init__(self, parts: Sequence[_Part]):
        self.parts = list(parts)
        self._starts = np.cumsum([0] + [len(p.indices) for p in self.parts])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> Record:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Record]:
        """Records at ``indices``; each part is read in one call (random access to ArrayRecord costs per call)."""
        idx = np.asarray(indices, np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"record index out of range 0..{len(self) - 1}")
        part_of = np.searchsorted(self._starts, idx, side="right") - 1
        out: list[Optional[Record]] = [None] * len(idx)
        for k, part in enumerate(self.parts):
            where = np.flatnonzero(part_of == k)
            if where.size:
                for slot, record in zip(where, part.read(idx[where] - self._starts[k])):
                    out[int(slot)] = record
        return out  # type: ignore[return-value]


@dataclass
class BelleData:
    """What a BELLE selection trains on."""

    selection: BelleSelection
    source: SelectedRecords
    abilities: list[str]
    counts: dict[str, int]
    """Records chosen per part: ``belle`` and (mixed) ``alpaca``."""
    skipped: SkipReport = field(default_factory=SkipReport)
    """Drawn lines that were invalid and left out (``on_error="skip"``)."""


def _count_entries(file: Path) -> int:
    """Non-blank lines of a JSON Lines file (blank lines hold no record), or elements of a JSON array file."""
    if is_json_array_file(file):
        return sum(1 for _ in read_raw_entries(file))
    n = 0
    with open(file, "rb") as f:
        for i, raw in enumerate(f):
            if i == 0 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            n += bool(raw.strip())
    return n


def _draw_from_files(
    path: Union[str, Path], count: Optional[int], seed: int, collector: RecordCollector, where: str
) -> list[Record]:
    """The drawn entries of the files at ``path``, parsed (invalid ones raised or skipped by ``collector``)."""
    files = list_data_files(path)
    sizes = [_count_entries(f) for f in files]
    chosen = nested_indices(sum(sizes), count, seed, where)
    log.info("%s: drawing %d of %d records from %d file(s)", where, len(chosen), sum(sizes), len(files))
    records: list[Record] = []
    cursor, start = 0, 0
    for file, size in zip(files, sizes):
        stop = int(np.searchsorted(chosen, start + size))
        wanted = chosen[cursor:stop] - start  # sorted positions within this file
        cursor = stop
        k = 0
        if len(wanted):
            for i, entry in enumerate(read_raw_entries(file)):
                if i == wanted[k]:
                    record = collector.parse(entry)
                    if record is not None:
                        records.append(record)
                    k += 1
                    if k == len(wanted):
                        break
            log.info("%s: %d records drawn", file, k)
        start += size
    return records


def select_belle(
    path: Optional[Union[str, Path]],
    selection: str,
    *,
    format: str = "belle",
    seed: int = 0,
    on_error: OnError = "raise",
    alpaca_path: Optional[Union[str, Path]] = None,
) -> BelleData:
    """The records of a ``belle-...`` selection (see the module docstring) of the corpus at ``path``."""
    parsed = parse_belle_selection(selection)
    if not path:
        raise SelectionError(f"selection {selection!r} draws from data.path, which is not set")
    if parsed.alpaca and not alpaca_path:
        raise SelectionError(
            f"selection {selection!r} mixes in Stanford Alpaca: set data.alpaca_path to its "
            f"alpaca_data.json (records {{instruction, input, output}})"
        )
    skipped = SkipReport()
    parts: list[_Part] = []
    if is_prepared_dataset(path):
        corpus = PreparedRecords(path)
        indices = nested_indices(len(corpus), parsed.belle, seed, f"prepared dataset {path}")
        parts.append(_Part(corpus, indices, BELLE_LABEL))
        skipped.seen = len(indices)
        abilities = {BELLE_LABEL if a == DEFAULT_ABILITY else a for a in corpus.abilities}
    else:
        collector = RecordCollector(format, on_error, skipped)
        records = _draw_from_files(path, parsed.belle, seed, collector, f"data.path={path}")
        parts.append(_Part(records, np.arange(len(records), dtype=np.int64), BELLE_LABEL))
        abilities = set()
    if parsed.alpaca:
        collector = RecordCollector(ALPACA_FORMAT, on_error, skipped)
        records = _draw_from_files(alpaca_path, parsed.alpaca_count, seed, collector, f"data.alpaca_path={alpaca_path}")
        parts.append(_Part(records, np.arange(len(records), dtype=np.int64), ALPACA_LABEL))
    for part in parts:
        if not isinstance(part.base, PreparedRecords):
            abilities |= {r.ability if r.ability != DEFAULT_ABILITY else part.label for r in part.base}
    counts = {part.label: len(part.indices) for part in parts}
    if not sum(counts.values()):
        raise SelectionError(f"selection {selection!r} of {path}: no valid record was drawn ({skipped.summary()})")
    return BelleData(parsed, SelectedRecords(parts), sorted(abilities), counts, skipped)
