"""How each tensor of transformers' ``LlamaForCausalLM`` maps onto jaxtune's parameter tree, in both directions.

transformers stores ``nn.Linear`` weights as (out_features, in_features) and the attention projections with heads
flattened; jaxtune keeps (in, out) with heads as their own axes and every layer stacked on a leading axis (see
:mod:`jaxtune.models.llama`). Both checkpoints use the rotate-half rotary layout, so no row permutation is needed.
All transforms here are views (reshape of a contiguous array, then transpose): a copy happens only when the
result is written into its destination.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from jaxtune.config.schema import ModelConfig

LAYER_PREFIX = "model.layers."
# Non-parameter buffers that old transformers versions saved in checkpoints; they carry no information.
IGNORED_PATTERNS = (re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"),)
_LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)")


@dataclass(frozen=True)
class LayerTensor:
    """One per-layer tensor: its Hugging Face name suffix, the jaxtune param, and the two transforms."""

    hf_suffix: str
    param: str
    hf_shape: Callable[[ModelConfig], tuple[int, ...]]
    to_jaxtune: Callable[[np.ndarray, ModelConfig], np.ndarray]
    to_hf: Callable[[np.ndarray, ModelConfig], np.ndarray]


def _heads(cfg: ModelConfig, kv: bool) -> int:
    return cfg.resolved_num_kv_heads() if kv else cfg.num_heads


def _in_proj(kv: bool) -> tuple[Callable, Callable, Callable]:
    """q/k/v: HF (heads*D, E) <-> jaxtune (E, heads, D)."""

    def hf_shape(cfg: ModelConfig) -> tuple[int, ...]:
        return (_heads(cfg, kv) * cfg.resolved_head_dim(), cfg.hidden_size)

    def to_jaxtune(w: np.ndarray, cfg: ModelConfig) -> np.ndarray:
        return w.reshape(_heads(cfg, kv), cfg.resolved_head_dim(), cfg.hidden_size).transpose(2, 0, 1)

    def to_hf(a: np.ndarray, cfg: ModelConfig) -> np.ndarray:
        return a.transpose(1, 2, 0).reshape(hf_shape(cfg))

    return hf_shape, to_jaxtune, to_hf


def _out_proj() -> tuple[Callable, Callable, Callable]:
    """o: HF (E, H*D) <-> jaxtune (H, D, E)."""

    def hf_shape(cfg: ModelConfig) -> tuple[int, ...]:
        return (cfg.hidden_size, cfg.num_heads * cfg.resolved_head_dim())

    def to_jaxtune(w: np.ndarray, cfg: ModelConfig) -> np.ndarray:
        return w.reshape(cfg.hidden_size, cfg.num_heads, cfg.resolved_head_dim()).transpose(1, 2, 0)

    def to_hf(a: np.ndarray, cfg: ModelConfig) -> np.ndarray:
        return a.transpose(2, 0, 1).reshape(hf_shape(cfg))

    return hf_shape, to_jaxtune, to_hf


def _linear(out_dim: Callable[[ModelConfig], int], in_dim: Callable[[ModelConfig], int]):
    """An nn.Linear weight: HF (out, in) <-> jaxtune (in, out)."""
    return (lambda cfg: (out_dim(cfg), in_dim(cfg)), lambda w, cfg: w.T, lambda a, cfg: a.T)


def _norm():
    return (lambda cfg: (cfg.hidden_size,), lambda w, cfg: w, lambda a, cfg: a)


_E = lambda cfg: cfg.hidden_size  # noqa: E731
_M = lambda cfg: cfg.intermediate_size  # noqa: E731

LAYER_TENSORS: tuple[LayerTensor, ...] = (
    LayerTensor("input_layernorm.weight", "attn_norm", *_norm()),
    LayerTensor("self_attn.q_proj.weight", "q_proj", *_in_proj(kv=False)),
    LayerTensor("self_attn.k_proj.weight", "k_proj", *_in_proj(kv=True)),
    LayerTensor("self_attn.v_proj.weight", "v_proj", *_in_proj(kv=True)),
    LayerTensor("self_attn.o_proj.weight", "o_proj", *_out_proj()),
    LayerTensor("post_attention_layernorm.weight", "mlp_norm", *_norm()),
    LayerTensor("mlp.gate_proj.weight", "gate_proj", *_linear(_M, _E)),
    LayerTensor("mlp.up_proj.weight", "up_proj", *_linear(_M, _E)),
    LayerTensor("mlp.down_proj.weight", "down_proj", *_linear(_E, _M)),
)
LAYER_TENSOR_BY_SUFFIX = {t.hf_suffix: t for t in LAYER_TENSORS}

EMBED, NORM, LM_HEAD = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"


@dataclass(frozen=True)
class Placement:
    """Where a Hugging Face tensor goes: a top-level param, or layer ``layer`` of a stacked param."""

    param: str
    layer: Optional[int] = None
    spec: Optional[LayerTensor] = None


def place(name: str, cfg: ModelConfig) -> Optional[Placement]:
    """The destination of a Hugging Face tensor name, or None for a name that is not part of the model."""
    if name == EMBED:
        return Placement("embed_tokens")
    if name == NORM:
        return Placement("norm")
    if name == LM_HEAD:
        return Placement("lm_head")
    m = _LAYER_NAME.fullmatch(name)
    if m and m.group(2) in LAYER_TENSOR_BY_SUFFIX and int(m.group(1)) < cfg.num_layers:
        return Placement(LAYER_TENSOR_BY_SUFFIX[m.group(2)].param, int(m.group(1)), LAYER_TENSOR_BY_SUFFIX[m.group(2)])
    return None


def is_ignored(name: str) -> bool:
    """Whether a stored tensor is a known non-parameter buffer (skipped on import)."""
    return any(p.fullmatch(name) for p in IGNORED_PATTERNS)


def hf_tensor_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the Hugging Face checkpoint of ``cfg`` in transformers' order, with its shape
    (``lm_head.weight`` only for untied embeddings, as ``save_pretrained`` writes it)."""
    shapes: dict[str, tuple[int, ...]] = {EMBED: (cfg.vocab_size, cfg.hidden_size)}
    for i in range(cfg.num_layers):
        for t in LAYER_TENSORS:
            shapes[f"{LAYER_PREFIX}{i}.{t.hf_suffix}"] = t.hf_shape(cfg)
    shapes[NORM] = (cfg.hidden_size,)
    if not cfg.tie_word_embeddings:
        shapes[LM_HEAD] = (cfg.vocab_size, cfg.hidden_size)
    return shapes


def placed_tensor(name: str, where: Optional[Placement], params: dict, cfg: ModelConfig) -> np.ndarray:
    """The Hugging Face tensor ``name``, which a family's ``place`` put at ``where``, as a view of jaxtune params
    (vocabulary padding stripped); KeyError for a name that is not part of the model."""
    if where is None:
        raise KeyError(name)
    if where.param == "embed_tokens":
        return params["embed_tokens"][: cfg.vocab_size]
    if where.param == "lm_head":
        return params["lm_head"][:, : cfg.vocab_size].T
    if where.layer is None:
        return params[where.param]
    return where.spec.to_hf(params["layers"][where.param][where.layer], cfg)


def hf_tensor(name: str, params: dict, cfg: ModelConfig) -> np.ndarray:
    """The Hugging Face tensor ``name`` as a view of jaxtune params (vocabulary padding stripped)."""
    return placed_tensor(name, place(name, cfg), params, cfg)
