"""The decoder stack every model family shares: embedding -> stacked layers -> final norm and LM head.

A family's model class provides three pieces, and :func:`run_decoder` composes them for ``__call__``:

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

from jaxtune.config import ModelConfig

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
    if cfg.scan_layers:
        return jax.lax.scan(body, h, (layer_params, layer_cache))
    outs = []
    for i in range(cfg.num_layers):
        h, kv = body(h, jax.tree.map(lambda a: a[i], (layer_params, layer_cache)))
        outs.append(kv)
    return h, None if layer_cache is None else jax.tree.map(lambda *a: jnp.stack(a), *outs)
