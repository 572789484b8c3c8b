"""The LLaMA decoder as Flax NNX, in Hugging Face's weight layout, with stacked (scanned) layers and a KV cache.

Parameters keep transformers' ``LlamaForCausalLM`` layout up to transposes and reshapes, so conversion is
mechanical (see :mod:`jaxtune.convert.hf`):

=================  ======================  ========================================
parameter          shape                   logical axes
=================  ======================  ========================================
embed_tokens       (V, E)                  (vocab, embed)
layers.attn_norm   (L, E)                  (layers, norm)
layers.q_proj      (L, E, H, D)            (layers, embed, heads, head_dim)
layers.k_proj      (L, E, KV, D)           (layers, embed, kv_heads, head_dim)
layers.v_proj      (L, E, KV, D)           (layers, embed, kv_heads, head_dim)
layers.o_proj      (L, H, D, E)            (layers, heads, head_dim, embed)
layers.mlp_norm    (L, E)                  (layers, norm)
layers.gate_proj   (L, E, M)               (layers, embed, mlp)
layers.up_proj     (L, E, M)               (layers, embed, mlp)
layers.down_proj   (L, M, E)               (layers, mlp, embed)
norm               (E,)                    (norm,)
lm_head            (E, V)                  (embed, vocab)   absent when embeddings are tied
=================  ======================  ========================================

V is the padded vocabulary (``ModelConfig.padded_vocab_size``); logits are cut back to ``vocab_size``. The model
only names axes; :mod:`jaxtune.sharding` maps names to mesh axes.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from jaxtune.config.schema import ModelConfig
from jaxtune.models.attention import dot_product_attention
from jaxtune.models.axes import (
    BATCH,
    CACHE_SEGMENTS,
    EMBED,
    HEADS,
    KV_CACHE,
    KV_HEADS,
    LENGTH,
    MLP,
    VOCAB,
    constrain,
)
from jaxtune.models.decoder import Prepared, embed_lookup, run_layers
from jaxtune.models.dtypes import DTYPES
from jaxtune.models.rope import apply_rotary, inverse_frequencies, rotary_cos_sin

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

LAYER_PARAM_AXES: dict[str, tuple[str, ...]] = {
    "attn_norm": ("layers", "norm"),
    "q_proj": ("layers", "embed", "heads", "head_dim"),
    "k_proj": ("layers", "embed", "kv_heads", "head_dim"),
    "v_proj": ("layers", "embed", "kv_heads", "head_dim"),
    "o_proj": ("layers", "heads", "head_dim", "embed"),
    "mlp_norm": ("layers", "norm"),
    "gate_proj": ("layers", "embed", "mlp"),
    "up_proj": ("layers", "embed", "mlp"),
    "down_proj": ("layers", "mlp", "embed"),
}
"""Logical axes of the stacked layer weights (the activations' names are in :mod:`jaxtune.models.axes`)."""


class KVCache(NamedTuple):
    """Keys and values of every layer for a batch of rows, written slot by slot.

    k, v: (layers, B, S, KV, D); segment_ids: (B, S), 0 for slots not yet written (or padding); index: (B,) the next
    slot to write in each row. Rows fill independently (a row's tokens sit at slots 0, 1, ... in order), so a
    decoding loop can give a finished row a new prompt while the others go on; a token at slot i attends to the
    slots j <= i of its row that carry its segment id.
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


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int, dtype: Any = None) -> KVCache:
    """An empty cache for ``batch_size`` rows of up to ``max_len`` slots (dtype: the compute dtype by default)."""
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


def constrain_cache(cache: KVCache) -> KVCache:
    """Name the cache's axes (rows over the data-parallel axes, key/value heads over ``tensor`` under
    jaxtune.sharding's rules; a no-op without them), so that no device holds the whole cache."""
    return cache._replace(
        k=constrain(cache.k, KV_CACHE),
        v=constrain(cache.v, KV_CACHE),
        segment_ids=constrain(cache.segment_ids, CACHE_SEGMENTS),
    )


def rms_norm(x: jnp.ndarray, weight: jnp.ndarray, eps: float) -> jnp.ndarray:
    """RMSNorm computed in float32 and cast back, as transformers' LlamaRMSNorm."""
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(dtype) * x32.astype(dtype)


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


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], std: float, dtype: Any) -> jnp.ndarray:
    return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)


class DecoderLayers(nnx.Module):
    """All decoder layers' weights, stacked on a leading ``layers`` axis."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        e, m, h, kv, d, n = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_heads,
            cfg.resolved_num_kv_heads(),
            cfg.resolved_head_dim(),
            cfg.num_layers,
        )
        dt, std = DTYPES[cfg.param_dtype], cfg.initializer_range
        shapes = {
            "attn_norm": (n, e),
            "q_proj": (n, e, h, d),
            "k_proj": (n, e, kv, d),
            "v_proj": (n, e, kv, d),
            "o_proj": (n, h, d, e),
            "mlp_norm": (n, e),
            "gate_proj": (n, e, m),
            "up_proj": (n, e, m),
            "down_proj": (n, m, e),
        }
        for name, shape in shapes.items():
            if name.endswith("norm"):
                value = jnp.ones(shape, dt)
            else:
                value = _normal(rngs, shape, std, dt)
            setattr(self, name, nnx.Param(value, logical_axes=LAYER_PARAM_AXES[name]))

    def arrays(self) -> dict[str, jnp.ndarray]:
        """The stacked weights as a dict of arrays (what the scan iterates over)."""
        return {name: getattr(self, name)[...] for name in LAYER_PARAM_AXES}


def decoder_layer(
    cfg: ModelConfig,
    params: dict[str, jnp.ndarray],
    h: jnp.ndarray,
    *,
    cos: jnp.ndarray,
    sin: jnp.ndarray,
    q_segment_ids: jnp.ndarray,
    kv_segment_ids: jnp.ndarray,
    q_slots: jnp.ndarray,
    kv_slots: jnp.ndarray,
    cache_kv: Optional[tuple[jnp.ndarray, jnp.ndarray]] = None,
) -> tuple[jnp.ndarray, Optional[tuple[jnp.ndarray, jnp.ndarray]]]:
    """One pre-norm decoder layer on the residual stream h (B, T, E). With a cache, writes this chunk's keys and
    values at each row's slots ``q_slots`` (B, T) and attends over the whole cache; returns the new residual and the
    updated cache."""
    cd = DTYPES[cfg.compute_dtype]
    w = {k: v.astype(cd) for k, v in params.items()}

    x = rms_norm(h, params["attn_norm"], cfg.rms_norm_eps)
    x = constrain(x, (BATCH, LENGTH, EMBED))
    q = checkpoint_name(project(x, w["q_proj"]), "query_proj")
    k = checkpoint_name(project(x, w["k_proj"]), "key_proj")
    v = checkpoint_name(project(x, w["v_proj"]), "value_proj")
    q = constrain(apply_rotary(q, cos, sin), (BATCH, LENGTH, HEADS, None))
    k = constrain(apply_rotary(k, cos, sin), (BATCH, LENGTH, KV_HEADS, None))
    v = constrain(v, (BATCH, LENGTH, KV_HEADS, None))

    new_cache = None
    if cache_kv is not None:
        cache_k, cache_v = cache_kv
        rows = jnp.arange(k.shape[0])[:, None]
        k = cache_k.at[rows, q_slots].set(k.astype(cache_k.dtype), mode="drop")
        v = cache_v.at[rows, q_slots].set(v.astype(cache_v.dtype), mode="drop")
        new_cache = (k, v)
        k, v = k.astype(cd), v.astype(cd)

    attn = dot_product_attention(
        q,
        k,
        v,
        q_segment_ids=q_segment_ids,
        kv_segment_ids=kv_segment_ids,
        q_slots=q_slots,
        kv_slots=kv_slots,
        impl=cfg.attention_impl,
        has_cache=cache_kv is not None,
    )
    attn = constrain(attn, (BATCH, LENGTH, HEADS, None))
    h = h + constrain(project(attn, w["o_proj"], in_dims=2), (BATCH, LENGTH, EMBED))

    x = rms_norm(h, params["mlp_norm"], cfg.rms_norm_eps)
    x = constrain(x, (BATCH, LENGTH, EMBED))
    gate = project(x, w["gate_proj"])
    up = project(x, w["up_proj"])
    act = constrain(jax.nn.silu(gate) * up, (BATCH, LENGTH, MLP))
    h = h + constrain(project(act, w["down_proj"]), (BATCH, LENGTH, EMBED))
    return h, new_cache


class Llama(nnx.Module):
    """LLaMA causal language model (transformers' LlamaForCausalLM), see the module docstring for the layout."""

    def __init__(self, cfg: ModelConfig, rngs: Optional[nnx.Rngs] = None):
        cfg.validate()
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.cfg = cfg
        dt = DTYPES[cfg.param_dtype]
        vocab = cfg.padded_vocab_size()
        self.embed_tokens = nnx.Param(
            _normal(rngs, (vocab, cfg.hidden_size), cfg.initializer_range, dt), logical_axes=("vocab", "embed")
        )
        self.layers = DecoderLayers(cfg, rngs)
        self.norm = nnx.Param(jnp.ones((cfg.hidden_size,), dt), logical_axes=("norm",))
        if not cfg.tie_word_embeddings:
            self.lm_head = nnx.Param(
                _normal(rngs, (cfg.hidden_size, vocab), cfg.initializer_range, dt), logical_axes=("embed", "vocab")
            )

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

        positions: rotary positions (B, T); default 0..T-1 (offset by each row's cache index when decoding).
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

    def prepare(
        self,
        input_ids: jnp.ndarray,
        positions: Optional[jnp.ndarray] = None,
        segment_ids: Optional[jnp.ndarray] = None,
        cache: Optional[KVCache] = None,
    ) -> Prepared:
        """The embedded tokens and the layers' side inputs (rotary tables, segment ids, slots); see __call__."""
        cfg = self.cfg
        b, t = input_ids.shape
        slots = jnp.arange(t, dtype=jnp.int32)
        if cache is not None:
            slots = cache.index[:, None] + slots[None, :]  # (B, T): rows fill their caches independently
        if positions is None:
            positions = jnp.broadcast_to(slots if slots.ndim == 2 else slots[None, :], (b, t))
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)

        h = embed_lookup(self.embed_tokens[...], input_ids, DTYPES[cfg.compute_dtype])
        cos, sin = rotary_cos_sin(positions, inverse_frequencies(cfg))

        if cache is not None:
            kv_segment_ids = cache.segment_ids.at[jnp.arange(b)[:, None], slots].set(segment_ids, mode="drop")
            kv_slots = jnp.arange(cache.length, dtype=jnp.int32)
        else:
            kv_segment_ids, kv_slots = segment_ids, slots
        shared = dict(
            cos=cos, sin=sin, q_segment_ids=segment_ids, kv_segment_ids=kv_segment_ids, q_slots=slots, kv_slots=kv_slots
        )
        return Prepared(h, shared, kv_segment_ids)

    def layer(
        self, params: dict, h: jnp.ndarray, shared: dict, cache_kv: Optional[tuple] = None
    ) -> tuple[jnp.ndarray, Optional[tuple]]:
        """One decoder layer (:func:`decoder_layer`) on one slice of the stacked weights."""
        return decoder_layer(self.cfg, params, h, cache_kv=cache_kv, **shared)

    def finish(self, h: jnp.ndarray, logit_slots: Optional[jnp.ndarray] = None) -> jnp.ndarray:
        """The final RMSNorm and the LM head: float32 logits cut to ``vocab_size`` (at ``logit_slots`` only)."""
        cfg = self.cfg
        if logit_slots is not None:
            h = jnp.take_along_axis(h, logit_slots[:, :, None], axis=1)
        h = rms_norm(h, self.norm[...], cfg.rms_norm_eps)
        return lm_head_logits(self, h)


def resize_token_embeddings(model: Llama, new_vocab_size: int, pad_multiple: Optional[int] = None) -> Llama:
    """Grow (or shrink) the vocabulary in place, as transformers' ``resize_token_embeddings`` does for added tokens.

    New rows of the input embedding and new columns of the LM head are the mean of the old real rows (a neutral
    start for added special tokens); padding rows up to the next multiple of ``pad_multiple`` are zero.
    """
    import dataclasses

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
    """Functional form of ``Llama.__call__`` on a split model (for jit with explicit shardings)."""
    model = nnx.merge(graphdef, params)
    return model(input_ids, positions=positions, segment_ids=segment_ids, cache=cache)
