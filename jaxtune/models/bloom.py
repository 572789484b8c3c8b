"""The BLOOM decoder as Flax NNX (transformers' ``BloomForCausalLM``), with stacked (scanned) layers and a KV cache.

What transformers computes, and this module too: the token embedding goes through a LayerNorm; each layer is a
pre-LayerNorm block whose attention uses one fused query/key/value projection with biases and ALiBi (no position
embeddings), and whose MLP is dense -> tanh-GeLU -> dense with biases; a final LayerNorm; the LM head is the
embedding matrix (tied). LayerNorms, softmax and the ALiBi bias run in float32.

Parameters keep transformers' layout up to transposes and reshapes (see :mod:`jaxtune.convert.hf_bloom`). The
fused projection keeps Hugging Face's per-head order: its output features are (head, q/k/v, head_dim), so heads
shard over the tensor axis with their own query, key and value.

=================  ======================  ========================================
parameter          shape                   logical axes
=================  ======================  ========================================
embed_tokens       (V, E)                  (vocab, embed)
embed_norm         (E,)                    (norm,)
embed_norm_bias    (E,)                    (norm,)
layers.attn_norm   (L, E)                  (layers, norm)
layers.attn_norm_bias (L, E)               (layers, norm)
layers.qkv_proj    (L, E, H, 3, D)         (layers, embed, heads, qkv, head_dim)
layers.qkv_bias    (L, H, 3, D)            (layers, heads, qkv, head_dim)
layers.o_proj      (L, H, D, E)            (layers, heads, head_dim, embed)
layers.o_bias      (L, E)                  (layers, embed_bias)
layers.mlp_norm    (L, E)                  (layers, norm)
layers.mlp_norm_bias (L, E)                (layers, norm)
layers.up_proj     (L, E, M)               (layers, embed, mlp)
layers.up_bias     (L, M)                  (layers, mlp)
layers.down_proj   (L, M, E)               (layers, mlp, embed)
layers.down_bias   (L, E)                  (layers, embed_bias)
norm               (E,)                    (norm,)
norm_bias          (E,)                    (norm,)
lm_head            (E, V)                  (embed, vocab)   absent when embeddings are tied (every BLOOM)
=================  ======================  ========================================

ALiBi positions are counted from the segment ids as transformers counts them from the attention mask
(``cumsum(mask) - 1``): padding slots do not advance them, so a left-padded row computes what transformers computes
for it with its attention mask, and packed documents see distances within their own segment (segments never attend
across). The ``positions`` argument is accepted for the LLaMA's interface and not used (transformers' BLOOM takes no
position ids either). The KV cache is the LLaMA's (:class:`jaxtune.models.llama.KVCache`, :func:`init_cache`):
the decode interface is the same, so :mod:`jaxtune.eval` drives both families alike: ``init_cache(rows, length)``,
``__call__(ids, positions=, segment_ids=, cache=, logit_slots=)``, and a cache index that may be one slot shared by
all rows or one slot per row (``index`` of shape () or (B,); keys and values are scattered at each row's slots).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from jaxtune.config.schema import ModelConfig
from jaxtune.models.attention import Alibi, alibi_slopes, dot_product_attention
from jaxtune.models.axes import (
    BATCH,
    EMBED,
    HEADS,
    KV_HEADS,
    LENGTH,
    MLP,
    constrain,
)
from jaxtune.models.decoder import Prepared, embed_lookup, run_layers
from jaxtune.models.llama import DTYPES, KVCache, _normal, init_cache, lm_head_logits, project

LAYER_PARAM_AXES: dict[str, tuple[str, ...]] = {
    "attn_norm": ("layers", "norm"),
    "attn_norm_bias": ("layers", "norm"),
    "qkv_proj": ("layers", "embed", "heads", "qkv", "head_dim"),
    "qkv_bias": ("layers", "heads", "qkv", "head_dim"),
    "o_proj": ("layers", "heads", "head_dim", "embed"),
    "o_bias": ("layers", "embed_bias"),
    "mlp_norm": ("layers", "norm"),
    "mlp_norm_bias": ("layers", "norm"),
    "up_proj": ("layers", "embed", "mlp"),
    "up_bias": ("layers", "mlp"),
    "down_proj": ("layers", "mlp", "embed"),
    "down_bias": ("layers", "embed_bias"),
}
"""Logical axes of the stacked layer weights (the activations' names are in :mod:`jaxtune.models.axes`)."""

_NORM_SCALES = ("attn_norm", "mlp_norm")


def layer_norm(x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray, eps: float) -> jnp.ndarray:
    """LayerNorm over the last axis computed in float32 and cast back to x's dtype (torch's LayerNorm upcasts
    half-precision inputs the same way)."""
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    centred = x32 - mean
    var = jnp.mean(centred * centred, axis=-1, keepdims=True)
    out = centred * jax.lax.rsqrt(var + eps) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return out.astype(dtype)


def bloom_gelu(x: jnp.ndarray) -> jnp.ndarray:
    """transformers' ``bloom_gelu_forward``: the tanh approximation with BLOOM's rounded constant 0.79788456."""
    return x * 0.5 * (1.0 + jnp.tanh(0.79788456 * x * (1.0 + 0.044715 * x * x)))


def alibi_positions(segment_ids: jnp.ndarray) -> jnp.ndarray:
    """ALiBi positions (B, S) of the slots of a row: non-padding slots counted from 0, as transformers'
    ``(attention_mask.cumsum(-1) - 1) * attention_mask``."""
    real = (segment_ids != 0).astype(jnp.int32)
    return (jnp.cumsum(real, axis=-1) - 1) * real


class BloomLayers(nnx.Module):
    """All decoder layers' weights, stacked on a leading ``layers`` axis."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        e, m, h, d, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.resolved_head_dim(), cfg.num_layers
        dt, std = DTYPES[cfg.param_dtype], cfg.initializer_range
        shapes = {
            "attn_norm": (n, e),
            "attn_norm_bias": (n, e),
            "qkv_proj": (n, e, h, 3, d),
            "qkv_bias": (n, h, 3, d),
            "o_proj": (n, h, d, e),
            "o_bias": (n, e),
            "mlp_norm": (n, e),
            "mlp_norm_bias": (n, e),
            "up_proj": (n, e, m),
            "up_bias": (n, m),
            "down_proj": (n, m, e),
            "down_bias": (n, e),
        }
        for name, shape in shapes.items():
            if name in _NORM_SCALES:
                value = jnp.ones(shape, dt)
            elif name.endswith("bias"):
                value = jnp.zeros(shape, dt)  # transformers initialises every bias to zero
            else:
                value = _normal(rngs, shape, std, dt)
            setattr(self, name, nnx.Param(value, logical_axes=LAYER_PARAM_AXES[name]))

    def arrays(self) -> dict[str, jnp.ndarray]:
        """The stacked weights as a dict of arrays (what the scan iterates over)."""
        return {name: getattr(self, name)[...] for name in LAYER_PARAM_AXES}


def bloom_layer(
    cfg: ModelConfig,
    params: dict[str, jnp.ndarray],
    h: jnp.ndarray,
    *,
    alibi: Alibi,
    q_segment_ids: jnp.ndarray,
    kv_segment_ids: jnp.ndarray,
    q_slots: jnp.ndarray,
    kv_slots: jnp.ndarray,
    cache_kv: Optional[tuple[jnp.ndarray, jnp.ndarray]] = None,
    cache_slots: Optional[jnp.ndarray] = None,
) -> tuple[jnp.ndarray, Optional[tuple[jnp.ndarray, jnp.ndarray]]]:
    """One BLOOM block on the residual stream h (B, T, E); with a cache, writes this chunk's keys and values at each
    row's slots ``cache_slots`` (B, T) and attends over the whole cache. Returns the new residual and the updated
    cache."""
    cd = DTYPES[cfg.compute_dtype]
    eps = cfg.layer_norm_epsilon
    w = {k: v.astype(cd) for k, v in params.items()}

    x = layer_norm(h, params["attn_norm"], params["attn_norm_bias"], eps)
    x = constrain(x, (BATCH, LENGTH, EMBED))
    qkv = project(x, w["qkv_proj"]) + w["qkv_bias"]  # (B, T, H, 3, D)
    q = checkpoint_name(qkv[..., 0, :], "query_proj")
    k = checkpoint_name(qkv[..., 1, :], "key_proj")
    v = checkpoint_name(qkv[..., 2, :], "value_proj")
    q = constrain(q, (BATCH, LENGTH, HEADS, None))
    k = constrain(k, (BATCH, LENGTH, HEADS, None))
    v = constrain(v, (BATCH, LENGTH, HEADS, None))

    new_cache = None
    if cache_kv is not None:
        cache_k, cache_v = cache_kv
        rows = jnp.arange(k.shape[0])[:, None]
        k = cache_k.at[rows, cache_slots].set(k.astype(cache_k.dtype), mode="drop")
        v = cache_v.at[rows, cache_slots].set(v.astype(cache_v.dtype), mode="drop")
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
        alibi=alibi,
    )
    attn = constrain(attn, (BATCH, LENGTH, HEADS, None))
    h = h + constrain(project(attn, w["o_proj"], in_dims=2) + w["o_bias"], (BATCH, LENGTH, EMBED))

    x = layer_norm(h, params["mlp_norm"], params["mlp_norm_bias"], eps)
    x = constrain(x, (BATCH, LENGTH, EMBED))
    act = constrain(bloom_gelu(project(x, w["up_proj"]) + w["up_bias"]), (BATCH, LENGTH, MLP))
    h = h + constrain(project(act, w["down_proj"]) + w["down_bias"], (BATCH, LENGTH, EMBED))
    return h, new_cache


class Bloom(nnx.Module):
    """BLOOM causal language model (transformers' BloomForCausalLM), see the module docstring for the layout."""

    def __init__(self, cfg: ModelConfig, rngs: Optional[nnx.Rngs] = None):
        cfg.validate()
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.cfg = cfg
        dt = DTYPES[cfg.param_dtype]
        e, vocab = cfg.hidden_size, cfg.padded_vocab_size()
        self.embed_tokens = nnx.Param(
            _normal(rngs, (vocab, e), cfg.initializer_range, dt), logical_axes=("vocab", "embed")
        )
        self.embed_norm = nnx.Param(jnp.ones((e,), dt), logical_axes=("norm",))
        self.embed_norm_bias = nnx.Param(jnp.zeros((e,), dt), logical_axes=("norm",))
        self.layers = BloomLayers(cfg, rngs)
        self.norm = nnx.Param(jnp.ones((e,), dt), logical_axes=("norm",))
        self.norm_bias = nnx.Param(jnp.zeros((e,), dt), logical_axes=("norm",))
        if not cfg.tie_word_embeddings:
            self.lm_head = nnx.Param(
                _normal(rngs, (e, vocab), cfg.initializer_range, dt), logical_axes=("embed", "vocab")
            )

    def init_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty KV cache in the compute dtype (:func:`jaxtune.models.llama.init_cache`), sharded like the keys
        and values written into it (rows over the data-parallel axes, heads over tensor) when a mesh is installed."""
        cache = init_cache(self.cfg, batch_size, max_len)
        names = (None, BATCH, LENGTH, KV_HEADS, None)
        return cache._replace(
            k=constrain(cache.k, names),
            v=constrain(cache.v, names),
            segment_ids=constrain(cache.segment_ids, (BATCH, LENGTH)),
        )

    def __call__(
        self,
        input_ids: jnp.ndarray,
        positions: Optional[jnp.ndarray] = None,
        segment_ids: Optional[jnp.ndarray] = None,
        cache: Optional[KVCache] = None,
        logit_slots: Optional[jnp.ndarray] = None,
    ) -> tuple[jnp.ndarray, Optional[KVCache]]:
        """Logits (B, T, vocab_size) in float32 for token ids (B, T).

        positions: accepted for the LLaMA's interface, unused (ALiBi positions come from the segment ids).
        segment_ids: (B, T) ids of packed examples, 0 for padding; default all ones.
        cache: a KVCache to write this chunk into (at its index: one for all rows, or one per row) and attend over;
            returned updated (None without one).
        logit_slots: (B, K) slots of the chunk whose logits alone are wanted: the result is (B, K, vocab_size) and
            the LM head runs on those K positions only.
        """
        prepared = self.prepare(input_ids, positions, segment_ids, cache)
        layer_cache = None if cache is None else (cache.k, cache.v)
        h, new_kv = run_layers(self.cfg, self.layer, prepared.h, self.layers.arrays(), prepared.shared, layer_cache)
        logits = self.finish(h, logit_slots)
        new_cache = None
        if cache is not None:
            index = cache.index + h.shape[1]
            new_cache = KVCache(k=new_kv[0], v=new_kv[1], segment_ids=prepared.kv_segment_ids, index=index)
        return logits, new_cache

    def prepare(
        self,
        input_ids: jnp.ndarray,
        positions: Optional[jnp.ndarray] = None,
        segment_ids: Optional[jnp.ndarray] = None,
        cache: Optional[KVCache] = None,
    ) -> Prepared:
        """The embedded, LayerNormed tokens and the layers' side inputs (ALiBi, segment ids, slots); see __call__."""
        del positions
        cfg = self.cfg
        b, t = input_ids.shape
        slots = jnp.arange(t, dtype=jnp.int32)
        if cache is not None:
            # (T,) when the rows share one index, (B, T) when each row fills its cache independently.
            slots = cache.index[..., None] + slots if cache.index.ndim else cache.index + slots
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)

        h = embed_lookup(self.embed_tokens[...], input_ids, DTYPES[cfg.compute_dtype])
        h = layer_norm(h, self.embed_norm[...], self.embed_norm_bias[...], cfg.layer_norm_epsilon)
        h = constrain(h, (BATCH, LENGTH, EMBED))

        row_slots = jnp.broadcast_to(slots, (b, t))
        if cache is not None:
            rows = jnp.arange(b)[:, None]
            kv_segment_ids = cache.segment_ids.at[rows, row_slots].set(segment_ids, mode="drop")
            kv_slots = jnp.arange(cache.segment_ids.shape[1], dtype=jnp.int32)
            kv_positions = alibi_positions(kv_segment_ids)
            q_positions = jnp.take_along_axis(kv_positions, row_slots, axis=1, mode="clip")
        else:
            kv_segment_ids, kv_slots = segment_ids, slots
            q_positions = kv_positions = alibi_positions(segment_ids)
        alibi = Alibi(jnp.asarray(alibi_slopes(cfg.num_heads)), q_positions, kv_positions)
        shared = dict(
            alibi=alibi,
            q_segment_ids=segment_ids,
            kv_segment_ids=kv_segment_ids,
            q_slots=slots,
            kv_slots=kv_slots,
            cache_slots=None if cache is None else row_slots,
        )
        return Prepared(h, shared, kv_segment_ids)

    def layer(
        self, params: dict, h: jnp.ndarray, shared: dict, cache_kv: Optional[tuple] = None
    ) -> tuple[jnp.ndarray, Optional[tuple]]:
        """One BLOOM block (:func:`bloom_layer`) on one slice of the stacked weights."""
        return bloom_layer(self.cfg, params, h, cache_kv=cache_kv, **shared)

    def finish(self, h: jnp.ndarray, logit_slots: Optional[jnp.ndarray] = None) -> jnp.ndarray:
        """The final LayerNorm and the (tied) LM head: float32 logits cut to ``vocab_size`` (at ``logit_slots``)."""
        cfg = self.cfg
        if logit_slots is not None:
            h = jnp.take_along_axis(h, logit_slots[:, :, None], axis=1)
        h = layer_norm(h, self.norm[...], self.norm_bias[...], cfg.layer_norm_epsilon)
        return lm_head_logits(self, h)
