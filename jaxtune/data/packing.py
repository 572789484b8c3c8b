"""Packing plans: which examples share a row of ``max_len`` tokens.

The plan is computed once from the examples' token lengths, before training, so the number of rows (and with it the
number of steps the learning-rate schedule spans) is known up front and every row can be built by random access.
Examples are taken in a seeded random order and placed by best fit (the open row with the least room that still
holds the example) among a bounded number of open rows; when a new row is needed and the limit is reached, the
fullest open row is closed. Examples never split across rows.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Optional

import numpy as np

_SHIFT = 32  # open rows are kept sorted as (room << 32) | row, one int per row


@dataclass(frozen=True)
class RowPlan:
    """Rows as ragged lists of example indices: row r holds ``items[offsets[r]:offsets[r + 1]]``, in order."""

    offsets: np.ndarray
    """int64 [R + 1]"""
    items: np.ndarray
    """int32 [N] (int64 beyond 2**31 examples): indices into the example table."""

    @property
    def num_rows(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def row(self, r: int) -> np.ndarray:
        return self.items[self.offsets[r] : self.offsets[r + 1]]

    def row_lengths(self, lengths: np.ndarray) -> np.ndarray:
        """Tokens used in each row."""
        if self.items.size == 0:
            return np.zeros(self.num_rows, np.int64)
        sums = np.add.reduceat(lengths[self.items].astype(np.int64), self.offsets[:-1])
        sums[self.offsets[:-1] == self.offsets[1:]] = 0
        return sums


def one_per_row(num_examples: int) -> RowPlan:
    """No packing: row i holds example i."""
    index_type = np.int32 if num_examples < 2**31 else np.int64
    return RowPlan(np.arange(num_examples + 1, dtype=np.int64), np.arange(num_examples, dtype=index_type))


def pack_rows(lengths: np.ndarray, capacity: int, *, seed: Optional[int] = 0, max_open_rows: int = 64) -> RowPlan:
    """Pack examples of the given token lengths into rows of ``capacity`` tokens.

    ``seed`` orders the examples (None keeps their order, for evaluation). Deterministic for equal inputs.
    """
    lengths = np.asarray(lengths)
    n = lengths.shape[0]
    if n and (lengths.max() > capacity or lengths.min() <= 0):
        raise ValueError(f"every length must be in 1..{capacity}; got {lengths.min()}..{lengths.max()}")
    index_type = np.int32 if n < 2**31 else np.int64
    order = np.arange(n, dtype=index_type)
    if seed is not None:
        np.random.default_rng(seed).shuffle(order)  # in place: no int64 copy of millions of indices
    row_of = np.empty(n, np.int32)  # row of the t-th example in packing order
    num_rows = 0
    open_rows: list[int] = []  # sorted keys (room << 32) | row
    mask = (1 << _SHIFT) - 1
    chunk = 1 << 16  # Python ints only for a chunk at a time: millions of examples stay in numpy
    for start in range(0, n, chunk):
        for t, length in enumerate(lengths[order[start : start + chunk]].tolist(), start=start):
            k = bisect.bisect_left(open_rows, length << _SHIFT)
            if k < len(open_rows):
                key = open_rows.pop(k)
                row = key & mask
                room = (key >> _SHIFT) - length
            else:
                if len(open_rows) >= max_open_rows:
                    open_rows.pop(0)  # close the fullest row
                row = num_rows
                num_rows += 1
                room = capacity - length
            row_of[t] = row
            if room > 0:
                bisect.insort(open_rows, (room << _SHIFT) | row)
    by_row = np.argsort(row_of, kind="stable")  # rows in order, examples in packing order within a row
    items = order[by_row]
    del by_row
    offsets = np.zeros(num_rows + 1, np.int64)
    np.cumsum(np.bincount(row_of, minlength=num_rows), out=offsets[1:])
    return RowPlan(offsets, items)
