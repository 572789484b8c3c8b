"""Logical names of the model's activation axes, and :func:`constrain`, which attaches them.

The model only names axes, each one of :data:`jaxtune.names.LOGICAL_AXES` (these and the parameters' names listed in
:mod:`jaxtune.models.llama` and :mod:`jaxtune.models.bloom`); :data:`jaxtune.sharding.RULES` maps every name to mesh
axes. :func:`constrain` refuses an undeclared name while tracing (flax would leave it unsharded without a word).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from jaxtune.names import check_axes

BATCH, LENGTH, EMBED = "act_batch", "act_length", "act_embed"
HEADS, KV_HEADS, MLP, VOCAB = "act_heads", "act_kv_heads", "act_mlp", "act_vocab"
LOOKUP_VOCAB, LOOKUP_EMBED = "act_lookup_vocab", "act_lookup_embed"
"""The vocabulary and embedding axes of the embedding table as the input lookup reads it."""
LOOKUP_BATCH = "act_lookup_batch"
"""The rows of the token ids the input lookup reads (split only where the table's columns are not)."""
KV_CACHE = ("cache_layers", "cache_batch", "cache_length", "cache_kv_heads", "cache_head_dim")
"""Axes of the KV cache's keys and values (layers, B, S, KV, D)."""
CACHE_SEGMENTS = ("cache_batch", "cache_length")
"""Axes of the KV cache's segment ids (B, S)."""


def constrain(x: jnp.ndarray, names: tuple[Optional[str], ...]) -> jnp.ndarray:
    """Name the axes of an activation; a no-op unless jaxtune.sharding has installed its rules and a mesh. An axis
    name not in :data:`jaxtune.names.LOGICAL_AXES` raises :class:`jaxtune.names.UnknownAxisError`."""
    check_axes(names, f"activation of shape {tuple(x.shape)}")
    return nn.with_logical_constraint(x, names)
