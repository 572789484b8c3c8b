"""The BLOOM decoder as Flax NNX (transformers' ``BloomForCausalLM``), with stacked (scanned) layers and a KV cache.

What transformers computes, and this module too: the token embedding goes through a LayerNorm; each layer is a
pre-LayerNorm block whose attention uses one fused query/key/value projection with biases and ALiBi (no position
embeddings), and whose MLP is dense -> tanh-GeLU -> dense with biases; a final LayerNorm; the LM head is the
embedding matrix (tied). LayerNorms, softmax and the ALiBi bias run in float32.

Only what is BLOOM's own lives here (the embedding LayerNorm, LayerNorms with biases, ALiBi, the fused projection
with biases, the GeLU MLP); ``__call__``, the KV cache, the layer scan and the LM head are
:mod:`jaxtune.models.decoder`'s, and the family's presets, counts and Hugging Face mapping are
:mod:`jaxtune.families.bloom`'s. Parameters keep transformers' layout up to transposes and reshapes. The
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
position ids either). The KV cache and the decode interface are every family's
(:class:`jaxtune.models.decoder.KVCache`, :meth:`jaxtune.models.decoder.DecoderModel.init_cache`), so
:mod:`jaxtune.eval` drives both families alike; a cache index may be one slot per row or one shared by all rows
(``index`` of shape (B,) or ()).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from jaxtune.config.schema import ModelConfig
from jaxtune.models.attention import Alibi, alibi_slopes, dot_product_attention
from jaxtune.models.axes import BATCH, EMBED, HEADS, LENGTH, MLP, constrain
from jaxtune.models.decoder import (
    DecoderModel,
    KVCache,
    Prepared,
    StackedLayers,
    cache_segments,
    chunk_slots,
    embed_lookup,
    embedding_param,
    lm_head_param,
    project,
    write_cache,
)
from jaxtune.models.dtypes import DTYPES

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


def layer_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the stacked layer weights (see the module docstring), in initialisation order."""
    e, m, h, d, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.resolved_head_dim(), cfg.num_layers
    return {
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
) -> tuple[jnp.ndarray, Optional[tuple[jnp.ndarray, jnp.ndarray]]]:
    """One BLOOM block on the residual stream h (B, T, E); with a cache, writes this chunk's keys and values at each
    row's slots ``q_slots`` and attends over the whole cache. Returns the new residual and the updated
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
        new_cache, k, v = write_cache(cache_kv, k, v, q_slots, cd)

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


class Bloom(DecoderModel):
    """BLOOM causal language model (transformers' BloomForCausalLM), see the module docstring for the layout;
    ``__call__``, ``init_cache`` and ``finish`` are :class:`jaxtune.models.decoder.DecoderModel`'s."""

    def __init__(self, cfg: ModelConfig, rngs: Optional[nnx.Rngs] = None):
        cfg.validate()
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.cfg = cfg
        dt, e = DTYPES[cfg.param_dtype], cfg.hidden_size
        self.embed_tokens = embedding_param(cfg, rngs)
        self.embed_norm = nnx.Param(jnp.ones((e,), dt), logical_axes=("norm",))
        self.embed_norm_bias = nnx.Param(jnp.zeros((e,), dt), logical_axes=("norm",))
        # transformers initialises every bias to zero and every LayerNorm scale to one.
        biases = tuple(name for name in LAYER_PARAM_AXES if name.endswith("bias"))
        self.layers = StackedLayers(cfg, rngs, layer_shapes(cfg), LAYER_PARAM_AXES, ones=_NORM_SCALES, zeros=biases)
        self.norm = nnx.Param(jnp.ones((e,), dt), logical_axes=("norm",))
        self.norm_bias = nnx.Param(jnp.zeros((e,), dt), logical_axes=("norm",))
        if not cfg.tie_word_embeddings:
            self.lm_head = lm_head_param(cfg, rngs)

    def prepare(
        self,
        input_ids: jnp.ndarray,
        positions: Optional[jnp.ndarray] = None,
        segment_ids: Optional[jnp.ndarray] = None,
        cache: Optional[KVCache] = None,
    ) -> Prepared:
        """The embedded, LayerNormed tokens and the layers' side inputs (ALiBi, segment ids, slots); see
        ``__call__`` (``positions`` is unused: ALiBi positions come from the segment ids)."""
        del positions
        cfg = self.cfg
        b, t = input_ids.shape
        slots = chunk_slots(cache, t)
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)

        h = embed_lookup(self.embed_tokens[...], input_ids, DTYPES[cfg.compute_dtype])
        h = layer_norm(h, self.embed_norm[...], self.embed_norm_bias[...], cfg.layer_norm_epsilon)
        h = constrain(h, (BATCH, LENGTH, EMBED))

        kv_segment_ids, kv_slots = cache_segments(cache, segment_ids, slots)
        kv_positions = alibi_positions(kv_segment_ids)
        if cache is not None:
            row_slots = jnp.broadcast_to(slots, (b, t))
            q_positions = jnp.take_along_axis(kv_positions, row_slots, axis=1, mode="clip")
        else:
            q_positions = kv_positions
        alibi = Alibi(jnp.asarray(alibi_slopes(cfg.num_heads)), q_positions, kv_positions)
        shared = dict(
            alibi=alibi,
            q_segment_ids=segment_ids,
            kv_segment_ids=kv_segment_ids,
            q_slots=slots,
            kv_slots=kv_slots,
        )
        return Prepared(h, shared, kv_segment_ids)

    def layer(
        self, params: dict, h: jnp.ndarray, shared: dict, cache_kv: Optional[tuple] = None
    ) -> tuple[jnp.ndarray, Optional[tuple]]:
        """One BLOOM block (:func:`bloom_layer`) on one slice of the stacked weights."""
        return bloom_layer(self.cfg, params, h, cache_kv=cache_kv, **shared)

    def final_norm(self, h: jnp.ndarray) -> jnp.ndarray:
        """The final LayerNorm (the LM head is tied to the embedding in every BLOOM)."""
        return layer_norm(h, self.norm[...], self.norm_bias[...], self.cfg.layer_norm_epsilon)
