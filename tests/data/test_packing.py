"""Packing plans of jaxtune/data/packing.py."""

from __future__ import annotations

import numpy as np
import pytest

from jaxtune.data.packing import one_per_row, pack_rows


def _check_plan(plan, lengths, capacity):
    items = np.sort(plan.items)
    assert items.tolist() == list(range(len(lengths)))  # every example exactly once
    used = plan.row_lengths(lengths)
    assert used.max() <= capacity and (used > 0).all()
    manual = [int(lengths[plan.row(r)].sum()) for r in range(plan.num_rows)]
    assert used.tolist() == manual


def test_pack_rows_valid_dense_and_deterministic():
    rng = np.random.default_rng(1)
    lengths = np.clip(rng.lognormal(np.log(250), 0.8, 5000).astype(np.int64), 5, 2048)
    plan = pack_rows(lengths, 2048, seed=3)
    _check_plan(plan, lengths, 2048)
    lower_bound = -(-int(lengths.sum()) // 2048)
    assert plan.num_rows <= lower_bound * 1.03  # within 3% of the fewest rows possible
    again = pack_rows(lengths, 2048, seed=3)
    assert np.array_equal(plan.items, again.items) and np.array_equal(plan.offsets, again.offsets)
    assert not np.array_equal(plan.items, pack_rows(lengths, 2048, seed=4).items)


def test_pack_rows_exact_fit_and_order_without_seed():
    lengths = np.array([4, 4, 8, 3, 5, 8])
    plan = pack_rows(lengths, 8, seed=None)
    _check_plan(plan, lengths, 8)
    assert plan.num_rows == 4  # 4+4, 8, 3+5, 8: every row full
    assert plan.row(0).tolist() == [0, 1]


def test_pack_rows_bounded_open_rows():
    lengths = np.full(100, 5)
    plan = pack_rows(lengths, 8, seed=0, max_open_rows=2)
    _check_plan(plan, lengths, 8)
    assert plan.num_rows == 100


def test_pack_rows_rejects_bad_lengths_and_one_per_row():
    with pytest.raises(ValueError, match="1..8"):
        pack_rows(np.array([9]), 8)
    plan = one_per_row(3)
    assert [plan.row(r).tolist() for r in range(3)] == [[0], [1], [2]]
