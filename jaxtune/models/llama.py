"""The LLaMA decoder as Flax NNX, in Hugging Face's weight layout, with stacked (scanned) layers and a KV cache.

Only what is LLaMA's own lives here: RMSNorm, rotary positions, the separate q/k/v projections (grouped-query
attention) and the SwiGLU MLP; ``__call__``, the KV cache, the layer scan and the LM head are
:mod:`jaxtune.models.decoder`'s, and the family's presets, counts and Hugging Face mapping are
:mod:`jaxtune.families.llama`'s.

Parameters keep transformers' ``LlamaForCausalLM`` layout up to transposes and reshapes, so conversion is
mechanical (see :mod:`jaxtune.families.llama` and :mod:`jaxtune.convert.hf`):

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

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from jaxtune.config.schema import ModelConfig
from jaxtune.models.attention import dot_product_attention
from jaxtune.models.axes import BATCH, EMBED, HEADS, KV_HEADS, LENGTH, MLP, constrain
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
from jaxtune.models.rope import apply_rotary, inverse_frequencies, rotary_cos_sin

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


def rms_norm(x: jnp.ndarray, weight: jnp.ndarray, eps: float) -> jnp.ndarray:
    """RMSNorm computed in float32 and cast back, as transformers' LlamaRMSNorm."""
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(dtype) * x32.astype(dtype)


def layer_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the stacked layer weights (see the module docstring), in initialisation order."""
    e, m, h, kv, d, n = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_heads,
        cfg.resolved_num_kv_heads(),
        cfg.resolved_head_dim(),
        cfg.num_layers,
    )
    return {
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


def with_bias(x: jnp.ndarray, bias: Optional[jnp.ndarray]) -> jnp.ndarray:
    """``x + bias`` (a projection's output and its (heads, D) bias), or ``x`` for a projection without one."""
    return x if bias is None else x + bias


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
    """One pre-norm decoder layer on the residual stream h (B, T, E); q/k/v get biases where ``params`` hold
    ``q_bias``/``k_bias``/``v_bias`` (Qwen2, :mod:`jaxtune.models.qwen2`). With a cache, writes this chunk's keys and
    values at each row's slots ``q_slots`` (B, T) and attends over the whole cache; returns the new residual and the
    updated cache."""
    cd = DTYPES[cfg.compute_dtype]
    w = {k: v.astype(cd) for k, v in params.items()}

    x = rms_norm(h, params["attn_norm"], cfg.rms_norm_eps)
    x = constrain(x, (BATCH, LENGTH, EMBED))
    q = checkpoint_name(with_bias(project(x, w["q_proj"]), w.get("q_bias")), "query_proj")
    k = checkpoint_name(with_bias(project(x, w["k_proj"]), w.get("k_bias")), "key_proj")
    v = checkpoint_name(with_bias(project(x, w["v_proj"]), w.get("v_bias")), "value_proj")
    q = constrain(apply_rotary(q, cos, sin), (BATCH, LENGTH, HEADS, None))
    k = constrain(apply_rotary(k, cos, sin), (BATCH, LENGTH, KV_HEADS, None))
    v = constrain(v, (BATCH, LENGTH, KV_HEADS, None))

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


class Llama(DecoderModel):
    """LLaMA causal language model (transformers' LlamaForCausalLM), see the module docstring for the layout;
    ``__call__``, ``init_cache`` and ``finish`` are :class:`jaxtune.models.decoder.DecoderModel`'s."""

    def __init__(self, cfg: ModelConfig, rngs: Optional[nnx.Rngs] = None):
        cfg.validate()
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.cfg = cfg
        self.embed_tokens = embedding_param(cfg, rngs)
        self.layers = StackedLayers(cfg, rngs, layer_shapes(cfg), LAYER_PARAM_AXES, ones=("attn_norm", "mlp_norm"))
        self.norm = nnx.Param(jnp.ones((cfg.hidden_size,), DTYPES[cfg.param_dtype]), logical_axes=("norm",))
        if not cfg.tie_word_embeddings:
            self.lm_head = lm_head_param(cfg, rngs)

    def prepare(
        self,
        input_ids: jnp.ndarray,
        positions: Optional[jnp.ndarray] = None,
        segment_ids: Optional[jnp.ndarray] = None,
        cache: Optional[KVCache] = None,
    ) -> Prepared:
        """The embedded tokens and the layers' side inputs (rotary tables, segment ids, slots); see ``__call__``."""
        cfg = self.cfg
        b, t = input_ids.shape
        slots = chunk_slots(cache, t)
        if positions is None:
            positions = jnp.broadcast_to(slots, (b, t))
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)

        h = embed_lookup(self.embed_tokens[...], input_ids, DTYPES[cfg.compute_dtype])
        cos, sin = rotary_cos_sin(positions, inverse_frequencies(cfg))
        kv_segment_ids, kv_slots = cache_segments(cache, segment_ids, slots)
        shared = dict(
            cos=cos, sin=sin, q_segment_ids=segment_ids, kv_segment_ids=kv_segment_ids, q_slots=slots, kv_slots=kv_slots
        )
        return Prepared(h, shared, kv_segment_ids)

    def layer(
        self, params: dict, h: jnp.ndarray, shared: dict, cache_kv: Optional[tuple] = None
    ) -> tuple[jnp.ndarray, Optional[tuple]]:
        """One decoder layer (:func:`decoder_layer`) on one slice of the stacked weights."""
        return decoder_layer(self.cfg, params, h, cache_kv=cache_kv, **shared)

    def final_norm(self, h: jnp.ndarray) -> jnp.ndarray:
        """The final RMSNorm."""
        return rms_norm(h, self.norm[...], self.cfg.rms_norm_eps)
