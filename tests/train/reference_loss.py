"""The independent loss reference of the train tests: per-token cross-entropy of the eager, unsharded model,
computed in float64 numpy from its logits (no jitted step, no sharding, no optax)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtune.models.llama import Llama


def token_cross_entropy(cfg, params, batch: dict) -> np.ndarray:
    """(B, T) float64 cross-entropy of each position's target under ``params`` (a pure dict of the model's state);
    ``batch`` holds input_ids, positions, segment_ids and targets. Weighting is the caller's."""
    model = Llama(cfg, nnx.Rngs(0))
    nnx.update(model, nnx.State(jax.tree.map(jnp.asarray, params)))
    logits, _ = model(
        jnp.asarray(batch["input_ids"]),
        positions=jnp.asarray(batch["positions"]),
        segment_ids=jnp.asarray(batch["segment_ids"]),
    )
    logits = np.asarray(logits, np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return logz - np.take_along_axis(logits, np.asarray(batch["targets"])[..., None], axis=-1)[..., 0]
