"""jaxtune.train.loss: with the study's left padding a batch's loss and gradients do not depend on the row length
it is padded to, so ``data.length_buckets`` changes the compiled shapes but no number."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtune.config.loading import model_config_from_dict
from jaxtune.models.llama import Llama
from jaxtune.train.loss import token_cross_entropy, weighted_loss

from .synthetic_stream import TINY_MODEL


def _left_padded(examples: list[np.ndarray], length: int, pad_id: int = 0) -> dict[str, jnp.ndarray]:
    """The study's rows: each example at the right end of its row, positions from the attention mask."""
    rows = len(examples)
    ids = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), np.int32)
    targets = np.zeros((rows, length), np.int32)
    weights = np.zeros((rows, length), np.float32)
    for r, ex in enumerate(examples):
        n = len(ex)
        ids[r, length - n :] = ex
        mask[r, length - n :] = 1
        targets[r, length - n : length - 1] = ex[1:]
        weights[r, length - n // 2 : length - 1] = 1.0  # the second half supervised, as an answer would be
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)  # transformers' from attention_mask
    batch = dict(input_ids=ids, targets=targets, loss_weights=weights, segment_ids=mask, positions=positions)
    return {k: jnp.asarray(v) for k, v in batch.items()}


def test_a_left_padded_batch_has_the_same_loss_and_gradients_at_two_bucket_lengths():
    cfg = model_config_from_dict(dict(TINY_MODEL))
    graphdef, params = nnx.split(Llama(cfg, nnx.Rngs(0)))
    rng = np.random.default_rng(3)
    examples = [rng.integers(1, cfg.vocab_size, n).astype(np.int32) for n in (5, 17, 30, 11)]

    def loss_and_grads(length: int):
        batch = _left_padded(examples, length)

        def loss(p):
            ce = token_cross_entropy(graphdef, p, batch)
            return weighted_loss(ce, batch, jnp.sum(batch["loss_weights"]))

        return jax.value_and_grad(loss)(params)

    short, long = loss_and_grads(32), loss_and_grads(64)
    assert np.isfinite(float(short[0])) and float(short[0]) > 0
    np.testing.assert_allclose(float(short[0]), float(long[0]), rtol=1e-6)
    flat_short, flat_long = jax.tree.leaves(short[1]), jax.tree.leaves(long[1])
    assert len(flat_short) == len(flat_long) > 0
    for a, b in zip(flat_short, flat_long):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    # the comparison can fail: letting the examples attend to their padding changes the loss
    padded = _left_padded(examples, 64)
    moved = dict(padded, segment_ids=jnp.ones_like(padded["segment_ids"]))
    ce = token_cross_entropy(graphdef, params, moved)
    assert abs(float(weighted_loss(ce, moved, jnp.sum(moved["loss_weights"]))) - float(short[0])) > 1e-4
