"""The decoder stack every model family shares: embedding -> stacked layers -> final norm and LM head.

A family's model class provides three pieces; its ``__call__`` is ``prepare``, :func:`run_layers` over ``layer``,
then ``finish``:

- ``prepare(input_ids, positions, segment_ids, cache) -> Prepared``: the embedded residual stream h (B, T, E) and the
  per-batch side inputs every layer reads (rotary tables or ALiBi, segment ids, slots);
- ``layer(layer_params, h, shared, cache_kv) -> (h, cache_kv)``: one layer on one slice of the stacked weights
  (``layers.*`` with the leading ``layers`` axis removed), a pure function of its arguments;
- ``finish(h, logit_slots) -> logits``: the final norm and the LM head, logits (B, T or K, vocab_size) in float32.

The train step's layer-by-layer backward pass (:mod:`jaxtune.train.layerwise`) drives the same three pieces
itself, so both families train that way without a line of their own.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from jaxtune.config.schema import ModelConfig
from jaxtune.models.axes import BATCH, EMBED, LENGTH, LOOKUP_BATCH, LOOKUP_EMBED, LOOKUP_VOCAB, constrain

LayerFn = Callable[[dict, jnp.ndarray, dict, Optional[tuple]], tuple[jnp.ndarray, Optional[tuple]]]


class Prepared(NamedTuple):
    """What ``prepare`` hands to the layers."""

    h: jnp.ndarray
    """The embedded residual stream (B, T, E) in the compute dtype."""
    shared: dict
    """Keyword arguments every layer takes (arrays that depend on the batch only, never on the weights)."""
    kv_segment_ids: jnp.ndarray
    """Segment ids of the cache slots after this chunk is written (B, S); the chunk's own without a cache."""


def run_layers(
    cfg: ModelConfig,
    layer: LayerFn,
    h: jnp.ndarray,
    layer_params: dict,
    shared: dict,
    layer_cache: Optional[tuple[jnp.ndarray, jnp.ndarray]] = None,
) -> tuple[jnp.ndarray, Optional[tuple[jnp.ndarray, jnp.ndarray]]]:
    """Every layer in order over the stacked weights, rematerialised by ``cfg.remat_policy``, scanned (one compiled
    layer) or unrolled by ``cfg.scan_layers``. Returns the last residual and the stacked new (k, v) cache."""
    from jaxtune.models.llama import REMAT_POLICIES

    def body(h: jnp.ndarray, xs: tuple) -> tuple[jnp.ndarray, Any]:
        params, cache_kv = xs
        return layer(params, h, shared, cache_kv)

    if cfg.remat_policy != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers and layer_cache is not None:
        # The cache rides in the carry and each layer's slice is written back in place: as the scan's output it
        # was a second whole cache (doit-33b's decoding steps at batch 32 on 8 v5p chips: 47.44 -> 26.96 GiB).
        def cached_body(carry: tuple, xs: tuple) -> tuple[tuple, None]:
            h, (k_all, v_all) = carry
            params, i = xs
            h, (k, v) = body(h, (params, (k_all[i], v_all[i])))
            k_all = jax.lax.dynamic_update_index_in_dim(k_all, k, i, 0)
            v_all = jax.lax.dynamic_update_index_in_dim(v_all, v, i, 0)
            return (h, (k_all, v_all)), None

        index = jnp.arange(cfg.num_layers)
        (h, new_cache), _ = jax.lax.scan(cached_body, (h, tuple(layer_cache)), (layer_params, index))
        return h, new_cache
    if cfg.scan_layers:
        return jax.lax.scan(body, h, (layer_params, layer_cache))
    outs = []
    for i in range(cfg.num_layers):
        h, kv = body(h, jax.tree.map(lambda a: a[i], (layer_params, layer_cache)))
        outs.append(kv)
    return h, None if layer_cache is None else jax.tree.map(lambda *a: jnp.stack(a), *outs)


def embed_lookup(table: jnp.ndarray, input_ids: jnp.ndarray, dtype: Any) -> jnp.ndarray:
    """Rows of the embedding table (V, E) for token ids (B, T), cast to ``dtype``, laid out as (BATCH, LENGTH, EMBED).

    Two layouts, whichever moves fewer bytes: the whole table gathered on every chip (its float32 bytes, and as many
    again for its gradient's scatter), or each chip looking its data shard's tokens up in the table columns it holds
    and the looked-up (B, T, E) rows gathered along the columns (their bytes in ``dtype``). doit-33b on 8 v5p chips at
    8 rows x 2048 per microbatch: 0.2 GiB of rows against 1.24 GiB of table; 64 rows per microbatch on v5e-64: the
    table. The vocabulary is never split for the lookup: XLA cannot turn a lookup into a vocab-split table into
    batch-split rows and replicates everything instead ("Involuntary full rematerialization").
    """
    rows_bytes = input_ids.size * table.shape[1] * jnp.dtype(dtype).itemsize
    if rows_bytes < table.size * table.dtype.itemsize:
        table = constrain(table, (LOOKUP_VOCAB, LOOKUP_EMBED))
        h = jnp.take(table, constrain(input_ids, (LOOKUP_BATCH, LENGTH)), axis=0).astype(dtype)
        # Gathered along the columns within each data shard first: from column-split straight to row-split, XLA
        # would replicate the rows.
        h = constrain(h, (LOOKUP_BATCH, LENGTH, None))
    else:
        table = constrain(table, (LOOKUP_VOCAB, EMBED))
        h = jnp.take(table, input_ids, axis=0).astype(dtype)
    return constrain(h, (BATCH, LENGTH, EMBED))
