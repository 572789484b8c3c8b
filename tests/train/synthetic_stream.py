"""A small grain-based training stream for the trainer's tests (the real pipeline needs tokenizers and records).

Rows are random token sequences packed as two examples each, with a per-row supervised share, built on demand from
the row index, so any process can make any row. The stream mirrors the real pipeline's sharding: global batch b is
the shuffled rows b*G .. b*G+G-1, process p of P takes every P-th of them, and grain's iterator state (checkpointed
by the trainer) is the only position it keeps.

Two test-side knobs act on the data only, never on the trainer: ``sleep_s`` slows every row down (so a signal can
land mid-run) and ``nan_from_step`` puts NaN loss weights into every batch from that step on.
"""

from __future__ import annotations

import time
from typing import Optional

import grain
import numpy as np

from jaxtune.config.loading import config_from_dict
from jaxtune.train.trainer import RunData

ABILITIES = ("alpha", "beta", "gamma")

TINY_MODEL = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    max_position_embeddings=64,
    param_dtype="float32",
    compute_dtype="float32",
)


def make_row(index: int, seq_len: int, vocab: int, seed: int) -> dict[str, np.ndarray]:
    """Row ``index``: two packed examples of random tokens, the second half of each supervised, a little padding."""
    rng = np.random.default_rng([seed, index])
    used = seq_len - int(rng.integers(0, seq_len // 4))
    first = int(rng.integers(2, used - 2))
    ids = rng.integers(1, vocab, seq_len).astype(np.int32)
    segments = np.zeros(seq_len, np.int32)
    segments[:first] = 1
    segments[first:used] = 2
    positions = np.zeros(seq_len, np.int32)
    positions[:first] = np.arange(first)
    positions[first:used] = np.arange(used - first)
    targets = np.zeros(seq_len, np.int32)
    weights = np.zeros(seq_len, np.float32)
    abilities = np.full(seq_len, -1, np.int32)
    for start, end in ((0, first), (first, used)):
        targets[start : end - 1] = ids[start + 1 : end]
        weights[start + (end - start) // 2 : end - 1] = 1.0
        abilities[start:end] = int(rng.integers(0, len(ABILITIES)))
    ids[used:] = 0
    return {
        "input_ids": ids,
        "targets": targets,
        "loss_weights": weights,
        "segment_ids": segments,
        "positions": positions,
        "ability_ids": abilities,
    }


class _Rows:
    def __init__(
        self, seq_len: int, vocab: int, seed: int, global_batch: int, sleep_s: float, nan_from_step: Optional[int]
    ):
        self.seq_len, self.vocab, self.seed = seq_len, vocab, seed
        self.global_batch, self.sleep_s, self.nan_from_step = global_batch, sleep_s, nan_from_step

    def __call__(self, position: int, row: int) -> dict[str, np.ndarray]:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        out = make_row(int(row), self.seq_len, self.vocab, self.seed)
        step = position // self.global_batch + 1  # the optimizer step this row feeds
        if self.nan_from_step is not None and step >= self.nan_from_step:
            out["loss_weights"] = np.full_like(out["loss_weights"], np.nan)
        return out


def synthetic_data(
    *,
    num_rows: int,
    seq_len: int,
    global_batch: int,
    epochs: int,
    seed: int = 0,
    vocab: int = TINY_MODEL["vocab_size"],
    process_index: int = 0,
    process_count: int = 1,
    sleep_s: float = 0.0,
    nan_from_step: Optional[int] = None,
    valid_rows: int = 0,
) -> RunData:
    """A RunData over ``num_rows`` rows (a whole number of global batches) for ``epochs`` epochs."""
    assert num_rows % global_batch == 0 and global_batch % process_count == 0
    rows = _Rows(seq_len, vocab, seed, global_batch, sleep_s, nan_from_step)
    order = grain.MapDataset.range(num_rows).shuffle(seed=seed).repeat(epochs)
    ds = order.map_with_index(rows)
    ds = ds[process_index::process_count].batch(global_batch // process_count)
    iterator = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))
    valid = None
    if valid_rows:
        valid_rows_ds = grain.MapDataset.range(10_000, 10_000 + valid_rows).map(
            lambda i: make_row(int(i), seq_len, vocab, seed)
        )
        valid = valid_rows_ds[process_index::process_count].batch(global_batch // process_count).to_iter_dataset()
    return RunData(
        iterator=iterator,
        steps_per_epoch=num_rows // global_batch,
        ability_names=ABILITIES,
        valid=valid,
        summary=f"synthetic stream: {num_rows} rows of {seq_len}",
    )


def tiny_config(run_dir: str, overrides: tuple[str, ...] = (), **sections: dict):
    """A Config for the tiny test model; ``sections`` update whole sections (e.g. train=dict(...))."""
    values: dict = {
        "run_dir": str(run_dir),
        "model": dict(TINY_MODEL),
        "optim": dict(learning_rate=3e-3, schedule="linear_from_peak", weight_decay=0.1, max_grad_norm=1.0),
        "train": dict(global_batch_size=8, log_every=1, seed=0),
        "checkpoint": dict(save_every=4, max_to_keep=2, async_save=True),
    }
    for name, update in sections.items():
        values.setdefault(name, {}).update(update)
    return config_from_dict(values, list(overrides))
