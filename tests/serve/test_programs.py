"""The serving batch's token selection: ids beyond the tokenizer's vocabulary are never chosen, greedy or sampled,
as in ``jaxtune eval`` (:attr:`jaxtune.eval.sampling.SamplingParams.known_ids`); the server passes its tokenizer's."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxtune.serve.programs import RowSettings, select_rows

VOCAB, KNOWN = 16, 12


def _settings(temperature):
    rows = len(temperature)
    return RowSettings(
        temperature=jnp.asarray(temperature, jnp.float32), top_k=jnp.zeros((rows,), jnp.int32),
        top_p=jnp.ones((rows,), jnp.float32), penalty=jnp.ones((rows,), jnp.float32),
        seed=jnp.arange(rows, dtype=jnp.uint32), limit=jnp.full((rows,), 8, jnp.int32),
    )  # fmt: skip


def test_ids_beyond_the_tokenizer_are_never_selected():
    # Every row's best ids lie beyond the tokenizer (12..15): a model wider than its tokenizer, as in
    # tests/eval/test_runner.py. Rows 0-1 greedy, rows 2-3 sampling hot.
    logits = np.zeros((4, VOCAB), np.float32)
    logits[:, KNOWN:] = 30.0
    logits[:, 3] = 1.0
    settings, seen = _settings([0.0, 0.0, 1.5, 2.0]), jnp.zeros((4, VOCAB), bool)
    select = jax.jit(select_rows, static_argnames="known_ids")
    unmasked = np.asarray(select(logits, seen, settings, jnp.zeros((4,), jnp.int32), known_ids=0))
    assert (unmasked >= KNOWN).all()  # the premise
    for step in range(8):
        chosen = np.asarray(select(logits, seen, settings, jnp.full((4,), step, jnp.int32), known_ids=KNOWN))
        assert (chosen < KNOWN).all(), chosen
        assert (chosen[:2] == 3).all()  # greedy: the best known id


def test_the_server_masks_ids_beyond_its_tokenizer(server):
    # What the session's server samples with: its tokenizer's vocabulary (jaxtune eval's SamplingParams.known_ids).
    batch = server.loaded.engine.batch
    assert batch.known_ids == server.loaded.codec.tokenizer.vocab_size == 1004
