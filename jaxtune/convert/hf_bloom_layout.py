"""How each tensor of transformers' ``BloomForCausalLM`` maps onto jaxtune's BLOOM parameter tree, both ways.

transformers stores ``nn.Linear`` weights as (out_features, in_features). The fused ``query_key_value`` rows are
(head, q/k/v, head_dim) flattened, which jaxtune keeps as the (E, H, 3, D) ``qkv_proj`` (see
:mod:`jaxtune.models.bloom`); ``dense`` columns are (head, head_dim). Checkpoints saved from ``BloomModel`` (the
original bigscience releases) name tensors without the ``transformer.`` prefix; :func:`canonical_name` adds it, and
exports use the prefixed names ``BloomForCausalLM.save_pretrained`` writes. All transforms are views.
"""

from __future__ import annotations

import re
from typing import Optional

import numpy as np

from jaxtune.config.schema import ModelConfig
from jaxtune.convert.hf_layout import LayerTensor, Placement, placed_tensor

PREFIX = "transformer."
LAYER_PREFIX = PREFIX + "h."
_LAYER_NAME = re.compile(r"transformer\.h\.(\d+)\.(.+)")

EMBED, LM_HEAD = PREFIX + "word_embeddings.weight", "lm_head.weight"
TOP_LEVEL: dict[str, str] = {
    EMBED: "embed_tokens",
    PREFIX + "word_embeddings_layernorm.weight": "embed_norm",
    PREFIX + "word_embeddings_layernorm.bias": "embed_norm_bias",
    PREFIX + "ln_f.weight": "norm",
    PREFIX + "ln_f.bias": "norm_bias",
    LM_HEAD: "lm_head",
}
"""Tensors outside the layers -> jaxtune param (vocabulary tables are handled by the converter)."""


def _vector(size):
    return (lambda cfg: (size(cfg),), lambda w, cfg: w, lambda a, cfg: a)


def _linear(out_dim, in_dim):
    return (lambda cfg: (out_dim(cfg), in_dim(cfg)), lambda w, cfg: w.T, lambda a, cfg: a.T)


def _qkv_weight():
    """HF (H*3*D, E) <-> jaxtune (E, H, 3, D)."""

    def hf_shape(cfg: ModelConfig) -> tuple[int, ...]:
        return (3 * cfg.num_heads * cfg.resolved_head_dim(), cfg.hidden_size)

    def to_jaxtune(w: np.ndarray, cfg: ModelConfig) -> np.ndarray:
        return w.reshape(cfg.num_heads, 3, cfg.resolved_head_dim(), cfg.hidden_size).transpose(3, 0, 1, 2)

    def to_hf(a: np.ndarray, cfg: ModelConfig) -> np.ndarray:
        return a.transpose(1, 2, 3, 0).reshape(hf_shape(cfg))

    return hf_shape, to_jaxtune, to_hf


def _qkv_bias():
    """HF (H*3*D,) <-> jaxtune (H, 3, D)."""
    return (
        lambda cfg: (3 * cfg.num_heads * cfg.resolved_head_dim(),),
        lambda w, cfg: w.reshape(cfg.num_heads, 3, cfg.resolved_head_dim()),
        lambda a, cfg: a.reshape(-1),
    )


def _dense_weight():
    """HF (E, H*D) <-> jaxtune (H, D, E)."""
    return (
        lambda cfg: (cfg.hidden_size, cfg.num_heads * cfg.resolved_head_dim()),
        lambda w, cfg: w.reshape(cfg.hidden_size, cfg.num_heads, cfg.resolved_head_dim()).transpose(1, 2, 0),
        lambda a, cfg: a.transpose(2, 0, 1).reshape(cfg.hidden_size, -1),
    )


_E = lambda cfg: cfg.hidden_size  # noqa: E731
_M = lambda cfg: cfg.intermediate_size  # noqa: E731

LAYER_TENSORS: tuple[LayerTensor, ...] = (
    LayerTensor("input_layernorm.weight", "attn_norm", *_vector(_E)),
    LayerTensor("input_layernorm.bias", "attn_norm_bias", *_vector(_E)),
    LayerTensor("self_attention.query_key_value.weight", "qkv_proj", *_qkv_weight()),
    LayerTensor("self_attention.query_key_value.bias", "qkv_bias", *_qkv_bias()),
    LayerTensor("self_attention.dense.weight", "o_proj", *_dense_weight()),
    LayerTensor("self_attention.dense.bias", "o_bias", *_vector(_E)),
    LayerTensor("post_attention_layernorm.weight", "mlp_norm", *_vector(_E)),
    LayerTensor("post_attention_layernorm.bias", "mlp_norm_bias", *_vector(_E)),
    LayerTensor("mlp.dense_h_to_4h.weight", "up_proj", *_linear(_M, _E)),
    LayerTensor("mlp.dense_h_to_4h.bias", "up_bias", *_vector(_M)),
    LayerTensor("mlp.dense_4h_to_h.weight", "down_proj", *_linear(_E, _M)),
    LayerTensor("mlp.dense_4h_to_h.bias", "down_bias", *_vector(_E)),
)
LAYER_TENSOR_BY_SUFFIX = {t.hf_suffix: t for t in LAYER_TENSORS}


def canonical_name(name: str) -> str:
    """The ``BloomForCausalLM`` name of a stored tensor (``h.0.mlp...`` from a BloomModel checkpoint gains the
    ``transformer.`` prefix)."""
    if name == LM_HEAD or name.startswith(PREFIX):
        return name
    return PREFIX + name


def place(name: str, cfg: ModelConfig) -> Optional[Placement]:
    """The destination of a (canonical) Hugging Face tensor name, or None for a name that is not part of the model."""
    if name in TOP_LEVEL:
        return Placement(TOP_LEVEL[name])
    m = _LAYER_NAME.fullmatch(name)
    if m and m.group(2) in LAYER_TENSOR_BY_SUFFIX and int(m.group(1)) < cfg.num_layers:
        spec = LAYER_TENSOR_BY_SUFFIX[m.group(2)]
        return Placement(spec.param, int(m.group(1)), spec)
    return None


def is_ignored(name: str) -> bool:
    """BLOOM checkpoints carry no non-parameter buffers."""
    return False


def hf_tensor_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the Hugging Face checkpoint of ``cfg`` in transformers' order, with its shape
    (``lm_head.weight`` only for untied embeddings, as ``save_pretrained`` writes it)."""
    e = cfg.hidden_size
    shapes: dict[str, tuple[int, ...]] = {
        EMBED: (cfg.vocab_size, e),
        PREFIX + "word_embeddings_layernorm.weight": (e,),
        PREFIX + "word_embeddings_layernorm.bias": (e,),
    }
    for i in range(cfg.num_layers):
        for t in LAYER_TENSORS:
            shapes[f"{LAYER_PREFIX}{i}.{t.hf_suffix}"] = t.hf_shape(cfg)
    shapes[PREFIX + "ln_f.weight"] = (e,)
    shapes[PREFIX + "ln_f.bias"] = (e,)
    if not cfg.tie_word_embeddings:
        shapes[LM_HEAD] = (cfg.vocab_size, e)
    return shapes


def hf_tensor(name: str, params: dict, cfg: ModelConfig) -> np.ndarray:
    """The Hugging Face tensor ``name`` as a view of jaxtune params (vocabulary padding stripped)."""
    return placed_tensor(name, place(name, cfg), params, cfg)
