"""The family-neutral decoder kit every model family builds on: embedding -> stacked layers -> final norm and LM head.

A family's model subclasses :class:`DecoderModel` and provides only what differs between families:

- ``prepare(input_ids, positions, segment_ids, cache) -> Prepared``: the embedded residual stream h (B, T, E) and the
  per-batch side inputs every layer reads (rotary tables or ALiBi, segment ids, slots); :func:`chunk_slots` and
  :func:`cache_segments` compute the slots and segment ids of the cache the same way for every family;
- ``layer(layer_params, h, shared, cache_kv) -> (h, cache_kv)``: one layer on one slice of the stacked weights
  (``layers.*`` with the leading ``layers`` axis removed), a pure function of its arguments; it writes its keys and
  values with :func:`write_cache`;
- ``final_norm(h)``: the norm before the LM head.

Everything else is here, once: ``__call__`` (``prepare`` -> :func:`run_layers` over ``layer`` -> ``finish``), the
KV cache (:class:`KVCache`, :func:`init_cache`, :func:`constrain_cache`: the cache's own axis names, on the empty
cache and on every updated one), :func:`project`, the LM head (:func:`lm_head_logits`), rematerialisation
(:data:`REMAT_POLICIES`), the layer scan, the stacked layer weights (:class:`StackedLayers`) and the parameter
initialiser (:func:`normal_init`). The train step's layer-by-layer backward pass (:mod:`jaxtune.train.layerwise`)
drives ``prepare`` / ``layer`` / ``finish`` itself, so every family trains that way without a line of its own.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtune.config.schema import ModelConfig
from jaxtune.models.axes import (
    BATCH,
    CACHE_SEGMENTS,
    EMBED,
    KV_CACHE,
    LENGTH,
    LOOKUP_BATCH,
    LOOKUP_EMBED,
    LOOKUP_VOCAB,
    VOCAB,
    constrain,
)
from jaxtune.models.dtypes import DTYPES

LayerFn = Callable[[dict, jnp.ndarray, dict, Optional[tuple]], tuple[jnp.ndarray, Optional[tuple]]]

REMAT_POLICIES: dict[str, Any] = {
    "none": None,  # no jax.checkpoint around the layer
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # The weight projections' outputs plus attention's output and log-sum-exp (see attention.xla_attention): the
    # backward pass recomputes only norms, RoPE, activations and attention's probabilities. Fastest on CPU.
    "projections": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names("attention_out", "attention_lse"),
    ),
    "qkv_proj": jax.checkpoint_policies.save_only_these_names("query_proj", "key_proj", "value_proj"),
}
"""``model.remat_policy`` -> the jax.checkpoint policy around each layer (None: no rematerialisation)."""


class Prepared(NamedTuple):
    """What ``prepare`` hands to the layers."""

    h: jnp.ndarray
    """The embedded residual stream (B, T, E) in the compute dtype."""
    shared: dict
    """Keyword arguments every layer takes (arrays that depend on the batch only, never on the weights)."""
    kv_segment_ids: jnp.ndarray
    """Segment ids of the cache slots after this chunk is written (B, S); the chunk's own without a cache."""


# --------------------------------------------------------------------------------------------------------------------
# The KV cache
# --------------------------------------------------------------------------------------------------------------------


class KVCache(NamedTuple):
    """Keys and values of every layer for a batch of rows, written slot by slot.

    k, v: (layers, B, S, KV, D); segment_ids: (B, S), 0 for slots not yet written (or padding); index: (B,) the next
    slot to write in each row (or () for one slot shared by all rows). Rows fill independently (a row's tokens sit
    at slots 0, 1, ... in order), so a decoding loop can give a finished row a new prompt while the others go on; a
    token at slot i attends to the slots j <= i of its row that carry its segment id.
    """

    k: jnp.ndarray
    v: jnp.ndarray
    segment_ids: jnp.ndarray
    index: jnp.ndarray

    @property
    def length(self) -> int:
        """Slots per row (S)."""
        return self.segment_ids.shape[1]

    def resized(self, length: int) -> "KVCache":
        """The same rows in ``length`` slots: cut at the end, or padded with empty slots (segment 0)."""
        if length <= self.length:
            return KVCache(self.k[:, :, :length], self.v[:, :, :length], self.segment_ids[:, :length], self.index)
        pad = length - self.length
        kv_pad = ((0, 0), (0, 0), (0, pad), (0, 0), (0, 0))
        return KVCache(
            jnp.pad(self.k, kv_pad), jnp.pad(self.v, kv_pad), jnp.pad(self.segment_ids, ((0, 0), (0, pad))), self.index
        )

    def take_rows(self, rows: jnp.ndarray) -> "KVCache":
        """A cache of rows ``rows`` (R,) of this one (a row may be taken several times)."""
        return KVCache(self.k[:, rows], self.v[:, rows], self.segment_ids[rows], self.index[rows])

    def insert_rows(
        self, rows: jnp.ndarray, other: "KVCache", pin: Callable[[jnp.ndarray], jnp.ndarray] = lambda a: a
    ) -> "KVCache":
        """Rows ``rows`` (R,) replaced by the R rows of ``other`` (slots 0..other.length-1; later slots emptied).
        A row index out of range (e.g. B for a dummy row) is dropped. ``pin`` is applied to the keys and values
        carried through the loop over layers (jaxtune.eval pins the device's layout there, see
        :func:`jaxtune.eval.batching.keep_default_layout`).

        Written one layer at a time: the rows may land on any device, so under a mesh XLA's partitioner replicates
        the scatter's updates on every chip; a loop over layers bounds that to one layer's R rows (the whole
        scatter at once gathered every layer's: doit-33b's prefill of 32 rows of 2048 tokens needed 133.7 GiB of
        temporaries per chip on 8 v5p chips)."""
        n = other.length
        segments = self.segment_ids.at[rows].set(0, mode="drop").at[rows, :n].set(other.segment_ids, mode="drop")

        def layer(i, kv):
            k, v = kv
            k = k.at[i, rows, :n].set(other.k[i].astype(k.dtype), mode="drop")
            v = v.at[i, rows, :n].set(other.v[i].astype(v.dtype), mode="drop")
            return pin(constrain(k, KV_CACHE)), pin(constrain(v, KV_CACHE))

        k, v = jax.lax.fori_loop(0, self.k.shape[0], layer, (self.k, self.v))
        return KVCache(k=k, v=v, segment_ids=segments, index=self.index.at[rows].set(other.index, mode="drop"))

    def replace_rows(self, mask: jnp.ndarray, other: "KVCache") -> "KVCache":
        """Rows where ``mask`` (B,) is true replaced by the same rows of ``other``, a cache of the same B rows and at
        most as many slots (its slots 0..other.length-1; later slots emptied); the other rows kept.

        Row for row, so when both caches are sharded alike (as the model shards them) every device keeps to its
        own rows: no communication, and no buffer beyond the two caches. :meth:`insert_rows` moves rows anywhere."""
        grown = other.resized(self.length)
        rows5 = mask[None, :, None, None, None]
        return KVCache(
            k=jnp.where(rows5, grown.k.astype(self.k.dtype), self.k),
            v=jnp.where(rows5, grown.v.astype(self.v.dtype), self.v),
            segment_ids=jnp.where(mask[:, None], grown.segment_ids, self.segment_ids),
            index=jnp.where(mask, other.index, self.index),
        )


def constrain_cache(cache: KVCache) -> KVCache:
    """Name the cache's axes (rows over the data-parallel axes, key/value heads over ``tensor`` under
    jaxtune.sharding's rules; a no-op without them), so that no device holds the whole cache."""
    return cache._replace(
        k=constrain(cache.k, KV_CACHE),
        v=constrain(cache.v, KV_CACHE),
        segment_ids=constrain(cache.segment_ids, CACHE_SEGMENTS),
    )


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int, dtype: Any = None) -> KVCache:
    """An empty cache for ``batch_size`` rows of up to ``max_len`` slots (dtype: the compute dtype by default), its
    axes named by :func:`constrain_cache`."""
    dtype = DTYPES[cfg.compute_dtype] if dtype is None else dtype
    shape = (cfg.num_layers, batch_size, max_len, cfg.resolved_num_kv_heads(), cfg.resolved_head_dim())
    return constrain_cache(
        KVCache(
            k=jnp.zeros(shape, dtype),
            v=jnp.zeros(shape, dtype),
            segment_ids=jnp.zeros((batch_size, max_len), jnp.int32),
            index=jnp.zeros((batch_size,), jnp.int32),
        )
    )


def chunk_slots(cache: Optional[KVCache], t: int) -> jnp.ndarray:
    """The cache slots of a chunk of ``t`` tokens: 0..t-1 (T,) without a cache; with one, each row's from its index
    on ((B, T) for a per-row index, (T,) for one shared by all rows)."""
    slots = jnp.arange(t, dtype=jnp.int32)
    return slots if cache is None else cache.index[..., None] + slots


def cache_segments(
    cache: Optional[KVCache], segment_ids: jnp.ndarray, slots: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(kv_segment_ids, kv_slots): the segment ids and slots the chunk's queries attend over. With a cache, the
    cache's segment ids (B, S) with the chunk's written at its ``slots`` and every slot 0..S-1; without one, the
    chunk's own."""
    if cache is None:
        return segment_ids, slots
    rows = jnp.arange(segment_ids.shape[0])[:, None]
    kv_segment_ids = cache.segment_ids.at[rows, slots].set(segment_ids, mode="drop")
    return kv_segment_ids, jnp.arange(cache.length, dtype=jnp.int32)


def write_cache(
    cache_kv: tuple[jnp.ndarray, jnp.ndarray], k: jnp.ndarray, v: jnp.ndarray, slots: jnp.ndarray, dtype: Any
) -> tuple[tuple[jnp.ndarray, jnp.ndarray], jnp.ndarray, jnp.ndarray]:
    """One layer's keys and values (B, T, KV, D) written into its cache slice (B, S, KV, D) at each row's ``slots``
    ((B, T) or (T,)): the updated slice, and its keys and values in ``dtype`` for attention over the whole cache."""
    cache_k, cache_v = cache_kv
    rows = jnp.arange(k.shape[0])[:, None]
    k = cache_k.at[rows, slots].set(k.astype(cache_k.dtype), mode="drop")
    v = cache_v.at[rows, slots].set(v.astype(cache_v.dtype), mode="drop")
    return (k, v), k.astype(dtype), v.astype(dtype)


# --------------------------------------------------------------------------------------------------------------------
# The computation every family shares
# --------------------------------------------------------------------------------------------------------------------


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


def project(x: jnp.ndarray, w: jnp.ndarray, in_dims: int = 1, **dot_kwargs: Any) -> jnp.ndarray:
    """Contract the last ``in_dims`` axes of an activation (B, T, ...) with the leading ``in_dims`` axes of a weight.

    Done as one matmul of the (B*T, in) view of the activation (a free reshape of a contiguous array): XLA:CPU then
    runs the weight-gradient dots of the backward pass as plain matmuls, where the equivalent einsums over (B, T)
    cost it transposing copies of the activations first. The weight keeps its output axes (only contracted axes are
    merged): a TPU stores a (E, H, D) projection with E minor to H when H is no multiple of 8 (doit-33b's 52 heads),
    and flattening it to (E, H*D) made XLA copy every layer's float32 weights into another layout up front (4 GiB
    per chip for doit-33b's train step on 8 v5p chips).
    """
    lead = x.shape[: x.ndim - in_dims]
    k = math.prod(w.shape[:in_dims])
    out = w.shape[in_dims:]
    y = jax.lax.dot_general(x.reshape(-1, k), w.reshape(k, *out), (((1,), (0,)), ((), ())), **dot_kwargs)
    return y.reshape(*lead, *out)


def lm_head_logits(model: nnx.Module, h: jnp.ndarray) -> jnp.ndarray:
    """The LM head of a model with ``embed_tokens`` (and ``lm_head`` unless tied) on the normed residual h: float32
    logits, vocabulary split like the head, cut back from the padded vocabulary to ``cfg.vocab_size``."""
    cfg = model.cfg
    cd = DTYPES[cfg.compute_dtype]
    head = model.embed_tokens[...].astype(cd).T if cfg.tie_word_embeddings else model.lm_head[...].astype(cd)
    logits = constrain(project(h, head, preferred_element_type=jnp.float32), (BATCH, LENGTH, VOCAB))
    return logits[..., : cfg.vocab_size] if logits.shape[-1] != cfg.vocab_size else logits


# --------------------------------------------------------------------------------------------------------------------
# Parameters and the model
# --------------------------------------------------------------------------------------------------------------------


def normal_init(rngs: nnx.Rngs, shape: tuple[int, ...], std: float, dtype: Any) -> jnp.ndarray:
    """A weight drawn from normal(0, std) in float32 and cast to ``dtype`` (transformers' initialiser of every
    family's projections and embeddings); one draw from ``rngs.params()``."""
    return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


class StackedLayers(nnx.Module):
    """All decoder layers' weights, stacked on a leading ``layers`` axis: one ``nnx.Param`` per name of ``axes``
    (its logical axes), of shape ``shapes[name]``, initialised to ones (names in ``ones``: norm scales), zeros
    (names in ``zeros``: biases) or :func:`normal_init` with ``cfg.initializer_range``, drawn in ``shapes``'s order."""

    def __init__(
        self,
        cfg: ModelConfig,
        rngs: nnx.Rngs,
        shapes: dict[str, tuple[int, ...]],
        axes: dict[str, tuple[str, ...]],
        ones: tuple[str, ...] = (),
        zeros: tuple[str, ...] = (),
    ):
        dt, std = DTYPES[cfg.param_dtype], cfg.initializer_range
        for name, shape in shapes.items():
            if name in ones:
                value = jnp.ones(shape, dt)
            elif name in zeros:
                value = jnp.zeros(shape, dt)
            else:
                value = normal_init(rngs, shape, std, dt)
            setattr(self, name, nnx.Param(value, logical_axes=axes[name]))

    def arrays(self) -> dict[str, jnp.ndarray]:
        """The stacked weights as a dict of arrays (what the scan iterates over)."""
        return {name: var[...] for name, var in vars(self).items() if isinstance(var, nnx.Param)}


def embedding_param(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Param:
    """The input embedding (padded vocabulary, E), drawn with :func:`normal_init`."""
    shape = (cfg.padded_vocab_size(), cfg.hidden_size)
    value = normal_init(rngs, shape, cfg.initializer_range, DTYPES[cfg.param_dtype])
    return nnx.Param(value, logical_axes=("vocab", "embed"))


def lm_head_param(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Param:
    """The untied LM head (E, padded vocabulary), drawn with :func:`normal_init`."""
    shape = (cfg.hidden_size, cfg.padded_vocab_size())
    value = normal_init(rngs, shape, cfg.initializer_range, DTYPES[cfg.param_dtype])
    return nnx.Param(value, logical_axes=("embed", "vocab"))


class DecoderModel(nnx.Module):
    """What every family's causal LM shares: ``cfg``, ``embed_tokens``, ``layers`` (:class:`StackedLayers`),
    ``lm_head`` unless tied; ``__call__``, ``init_cache`` and ``finish``. A family defines ``prepare``, ``layer``
    and ``final_norm`` (see the module docstring)."""

    cfg: ModelConfig
    layers: StackedLayers

    def prepare(
        self,
        input_ids: jnp.ndarray,
        positions: Optional[jnp.ndarray] = None,
        segment_ids: Optional[jnp.ndarray] = None,
        cache: Optional[KVCache] = None,
    ) -> Prepared:
        raise NotImplementedError

    def layer(
        self, params: dict, h: jnp.ndarray, shared: dict, cache_kv: Optional[tuple] = None
    ) -> tuple[jnp.ndarray, Optional[tuple]]:
        raise NotImplementedError

    def final_norm(self, h: jnp.ndarray) -> jnp.ndarray:
        raise NotImplementedError

    def init_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty KV cache in the compute dtype, sharded like the keys and values written into it (rows over the
        data-parallel axes, heads over tensor) when a mesh is installed. The decoding loops of jaxtune.eval take
        their cache from the model, so any model with this method and ``__call__(..., cache=, logit_slots=)``
        decodes with them."""
        return init_cache(self.cfg, batch_size, max_len)

    def __call__(
        self,
        input_ids: jnp.ndarray,
        positions: Optional[jnp.ndarray] = None,
        segment_ids: Optional[jnp.ndarray] = None,
        cache: Optional[KVCache] = None,
        logit_slots: Optional[jnp.ndarray] = None,
    ) -> tuple[jnp.ndarray, Optional[KVCache]]:
        """Logits (B, T, vocab_size) in float32 for token ids (B, T).

        positions: (B, T) positions of the tokens for families with position embeddings (LLaMA's rotary ones);
            default 0..T-1, offset by each row's cache index when decoding. Families without (BLOOM's ALiBi counts
            them from the segment ids) ignore it.
        segment_ids: (B, T) ids of packed examples, 0 for padding; default all ones.
        cache: a KVCache to write this chunk into (at each row's index) and attend over; returned updated (None
            without one).
        logit_slots: (B, K) slots of the chunk whose logits alone are wanted: the result is (B, K, vocab_size) and
            the LM head runs on those K positions only (a prefill wants the last prompt token's).
        """
        prepared = self.prepare(input_ids, positions, segment_ids, cache)
        layer_cache = None if cache is None else (cache.k, cache.v)
        h, new_kv = run_layers(self.cfg, self.layer, prepared.h, self.layers.arrays(), prepared.shared, layer_cache)
        logits = self.finish(h, logit_slots)
        new_cache = None
        if cache is not None:
            new_cache = constrain_cache(
                KVCache(k=new_kv[0], v=new_kv[1], segment_ids=prepared.kv_segment_ids, index=cache.index + h.shape[1])
            )
        return logits, new_cache

    def finish(self, h: jnp.ndarray, logit_slots: Optional[jnp.ndarray] = None) -> jnp.ndarray:
        """The final norm and the LM head: float32 logits cut to ``vocab_size`` (at ``logit_slots`` only)."""
        if logit_slots is not None:
            h = jnp.take_along_axis(h, logit_slots[:, :, None], axis=1)
        return lm_head_logits(self, self.final_norm(h))


def resize_token_embeddings(
    model: DecoderModel, new_vocab_size: int, pad_multiple: Optional[int] = None
) -> DecoderModel:
    """Grow (or shrink) the vocabulary in place, as transformers' ``resize_token_embeddings`` does for added tokens.

    New rows of the input embedding and new columns of the LM head are the mean of the old real rows (a neutral
    start for added special tokens); padding rows up to the next multiple of ``pad_multiple`` are zero.
    """
    cfg = model.cfg
    old = cfg.vocab_size
    new_cfg = dataclasses.replace(
        cfg,
        vocab_size=new_vocab_size,
        vocab_pad_multiple=cfg.vocab_pad_multiple if pad_multiple is None else pad_multiple,
    )
    padded = new_cfg.padded_vocab_size()
    keep = min(old, new_vocab_size)

    def resize_rows(table: jnp.ndarray) -> jnp.ndarray:  # (V, E)
        mean = jnp.mean(table[:old].astype(jnp.float32), axis=0, keepdims=True).astype(table.dtype)
        out = jnp.zeros((padded, table.shape[1]), table.dtype)
        out = out.at[:keep].set(table[:keep])
        if new_vocab_size > old:
            out = out.at[old:new_vocab_size].set(jnp.broadcast_to(mean, (new_vocab_size - old, table.shape[1])))
        return out

    model.embed_tokens = nnx.Param(resize_rows(model.embed_tokens[...]), logical_axes=("vocab", "embed"))
    if not cfg.tie_word_embeddings:
        model.lm_head = nnx.Param(resize_rows(model.lm_head[...].T).T, logical_axes=("embed", "vocab"))
    model.cfg = new_cfg
    return model


def forward(
    graphdef: nnx.GraphDef,
    params: Any,
    input_ids: jnp.ndarray,
    positions: Optional[jnp.ndarray] = None,
    segment_ids: Optional[jnp.ndarray] = None,
    cache: Optional[KVCache] = None,
) -> tuple[jnp.ndarray, Optional[KVCache]]:
    """Functional form of a model's ``__call__`` on a split model (for jit with explicit shardings)."""
    model = nnx.merge(graphdef, params)
    return model(input_ids, positions=positions, segment_ids=segment_ids, cache=cache)
