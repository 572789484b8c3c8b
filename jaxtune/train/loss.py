"""The loss pieces both backward passes share (:mod:`jaxtune.train.step`'s autodiff pass and
:mod:`jaxtune.train.layerwise`'s layer-by-layer one): per-token cross-entropy, a microbatch's weighted share of the
step's loss, and the up-front cast of the weights to the compute dtype.

A batch is a mapping of (rows, length) arrays: ``input_ids``, ``targets``, ``loss_weights``, ``segment_ids``,
``positions`` (and ``ability_ids`` for validation batches).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxtune.models.decoder import forward

Batch = Mapping[str, jax.Array]


def token_cross_entropy(graphdef: nnx.GraphDef, params: Any, batch: Batch) -> jax.Array:
    """Per-token cross-entropy (B, L) in float32 of logits(input_ids) against targets (no further shifting)."""
    logits, _ = forward(
        graphdef, params, batch["input_ids"], positions=batch["positions"], segment_ids=batch["segment_ids"]
    )
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])


def weighted_loss(ce: jax.Array, micro: Batch, denominator: jax.Array) -> jax.Array:
    """A microbatch's share of the step's loss: its per-token cross-entropies weighted by ``loss_weights``, summed,
    over the whole batch's total weight ``denominator``."""
    return jnp.sum(ce * micro["loss_weights"].astype(jnp.float32)) / denominator


def cast_for_compute(params: Any, compute_dtype: Optional[str]) -> Any:
    """The weights the model would cast to ``compute_dtype`` anyway, cast once up front (None: unchanged).

    The decoder casts every layer weight to the compute dtype before using it, so casting first changes no value of
    the forward pass nor of the gradients (the cast's transpose is the same cast of the cotangent). It makes the
    sharded weights be all-gathered in bf16 and the per-microbatch gradient tree bf16 (half the bytes of float32)
    before it is added into the float32 accumulator. The input embedding stays as stored: its gradient is a
    scatter-add over repeated token ids, which must accumulate in the master dtype. Norm weights and biases (any
    name with ``norm``) stay too: BLOOM's LayerNorm applies them in float32.
    """
    if compute_dtype is None:
        return params
    dtype = jnp.dtype(compute_dtype)

    def cast(path: Any, p: Any) -> Any:
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        if (
            "embed_tokens" in keys
            or any("norm" in k for k in keys)
            or not jnp.issubdtype(p.dtype, jnp.floating)
            or p.dtype == dtype
        ):
            return p
        return p.astype(dtype)

    return jax.tree_util.tree_map_with_path(cast, params)
