"""The Qwen2 decoder as Flax NNX (transformers' ``Qwen2ForCausalLM``: Qwen1.5, Qwen2, Qwen2.5): a LLaMA whose
query, key and value projections carry biases.

Everything but the three biases is :mod:`jaxtune.models.llama`'s (RMSNorm, rotary positions, grouped-query
attention, SwiGLU; :func:`jaxtune.models.llama.decoder_layer` adds a bias to a projection when the layer's
parameters hold one); the family's presets, counts and Hugging Face mapping are :mod:`jaxtune.families.qwen2`'s.
Parameters are LLaMA's (see :mod:`jaxtune.models.llama`) plus:

=================  ======================  ========================================
parameter          shape                   logical axes
=================  ======================  ========================================
layers.q_bias      (L, H, D)               (layers, heads, head_dim)
layers.k_bias      (L, KV, D)              (layers, kv_heads, head_dim)
layers.v_bias      (L, KV, D)              (layers, kv_heads, head_dim)
=================  ======================  ========================================

The biases start at zero, as transformers initialises them.
"""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
from flax import nnx

from jaxtune.config.schema import ModelConfig
from jaxtune.models.decoder import StackedLayers, embedding_param, lm_head_param
from jaxtune.models.dtypes import DTYPES
from jaxtune.models.llama import LAYER_PARAM_AXES as LLAMA_AXES
from jaxtune.models.llama import Llama
from jaxtune.models.llama import layer_shapes as llama_layer_shapes

BIASES = ("q_bias", "k_bias", "v_bias")

LAYER_PARAM_AXES: dict[str, tuple[str, ...]] = {
    **LLAMA_AXES,
    "q_bias": ("layers", "heads", "head_dim"),
    "k_bias": ("layers", "kv_heads", "head_dim"),
    "v_bias": ("layers", "kv_heads", "head_dim"),
}
"""Logical axes of the stacked layer weights: LLaMA's and the three biases."""


def layer_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the stacked layer weights in initialisation order: LLaMA's, then the (zero) biases."""
    n, h, kv, d = cfg.num_layers, cfg.num_heads, cfg.resolved_num_kv_heads(), cfg.resolved_head_dim()
    return {**llama_layer_shapes(cfg), "q_bias": (n, h, d), "k_bias": (n, kv, d), "v_bias": (n, kv, d)}


class Qwen2(Llama):
    """Qwen2 causal language model (transformers' Qwen2ForCausalLM): :class:`jaxtune.models.llama.Llama` with
    q/k/v biases; ``prepare``, ``layer`` and ``final_norm`` are LLaMA's."""

    def __init__(self, cfg: ModelConfig, rngs: Optional[nnx.Rngs] = None):
        cfg.validate()
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.cfg = cfg
        self.embed_tokens = embedding_param(cfg, rngs)
        self.layers = StackedLayers(
            cfg, rngs, layer_shapes(cfg), LAYER_PARAM_AXES, ones=("attn_norm", "mlp_norm"), zeros=BIASES
        )
        self.norm = nnx.Param(jnp.ones((cfg.hidden_size,), DTYPES[cfg.param_dtype]), logical_axes=("norm",))
        if not cfg.tie_word_embeddings:
            self.lm_head = lm_head_param(cfg, rngs)
