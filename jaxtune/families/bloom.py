"""The BLOOM family (:class:`jaxtune.models.bloom.Bloom`, transformers' ``BloomForCausalLM``; the BELLE study's
Bloomz-7b1-mt): its presets, counts, ``config.json`` translation (transformers v4 or v5 spelling) and tensor layout.

Config spellings read: the width as ``hidden_size`` or the older ``n_embed`` (bloomz-7b1-mt), layers as ``n_layer``
or ``num_hidden_layers``, heads as ``n_head`` or ``num_attention_heads``, the dtype as v5 ``dtype`` or v4
``torch_dtype``. BLOOM has no position embeddings (ALiBi), so ``max_position_embeddings`` is taken from the training
``seq_length`` when the config states one. The MLP is always 4 x hidden_size (transformers ignores ``n_inner``).
Exports are written by transformers' own ``BloomConfig.save_pretrained``.

Layout: the fused ``query_key_value`` rows are (head, q/k/v, head_dim) flattened, which jaxtune keeps as the
(E, H, 3, D) ``qkv_proj`` (see :mod:`jaxtune.models.bloom`); ``dense`` columns are (head, head_dim). Checkpoints
saved from ``BloomModel`` (the original bigscience releases) name tensors without the ``transformer.`` prefix; the
layout adds it, and exports use the prefixed names ``BloomForCausalLM.save_pretrained`` writes.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from jaxtune.families.hf import (
    Cfg,
    HFArchitecture,
    HFConfigError,
    LayerTensor,
    TensorLayout,
    eos_token_id,
    hf_dtype,
    hidden,
    linear,
    mlp,
    required,
    vector,
)
from jaxtune.families.registry import Family, LayerCounts, register

ARCHITECTURE = "BloomForCausalLM"
PREFIX = "transformer."

# --------------------------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------------------------

# bigscience/bloom-560m, bloom-1b1, bloomz-7b1-mt config.json: 250,880 ids, tied embeddings, MLP 4 x hidden.
_BLOOM_COMMON: dict[str, Any] = dict(
    vocab_size=250880,
    layer_norm_epsilon=1e-5,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=3,
)


def _bloom(hidden_size: int, layers: int, heads: int, **extra: Any) -> dict[str, Any]:
    return dict(
        _BLOOM_COMMON,
        hidden_size=hidden_size,
        num_layers=layers,
        num_heads=heads,
        intermediate_size=4 * hidden_size,
        **extra,
    )


PRESETS: dict[str, dict[str, Any]] = {
    "bloom-560m": _bloom(1024, 24, 16),
    "bloom-1b1": _bloom(1536, 24, 16),
    "bloomz-7b1-mt": _bloom(4096, 30, 32),
    # Test and miniature shapes: 6 heads (not a power of two, so both ALiBi slope sequences are used); the
    # vocabulary fits a small byte-level BPE tokenizer built in the tests.
    "bloom-tiny": _bloom(96, 2, 6, vocab_size=1024, max_position_embeddings=512),
    "bloom-tiny-4l": _bloom(128, 4, 8, vocab_size=1024, max_position_embeddings=512),
}


def layer_counts(cfg: Cfg) -> LayerCounts:
    """Fused qkv, dense, h_to_4h and 4h_to_h weights, their biases and two LayerNorms per layer; the embedding
    LayerNorm and the final LayerNorm (each with a bias) outside."""
    e, m, h, d = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.resolved_head_dim()
    matmul = 3 * e * h * d + h * d * e + 2 * e * m
    biases = 3 * h * d + e + m + e
    norms = 2 * 2 * e
    return LayerCounts(layer_params=matmul + biases + norms, layer_matmul_weights=matmul, other_params=4 * e)


def config_rules(cfg: Cfg, where: str) -> list[tuple[str, str]]:
    """BLOOM has one key/value head per query head."""
    if cfg.num_kv_heads not in (None, cfg.num_heads):
        message = (
            f"{where}.num_kv_heads={cfg.num_kv_heads}: BLOOM has one key/value head per query head (leave it unset)"
        )
        return [(message, "num_kv_heads")]
    return []


# --------------------------------------------------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------------------------------------------------


def config_fields(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """ModelConfig fields of a BloomConfig dict; HFConfigError names a field jaxtune's BLOOM cannot represent
    (post-LayerNorm residuals, Megatron's slow-but-exact tensor-parallel rounding)."""
    if raw.get("apply_residual_connection_post_layernorm"):
        raise HFConfigError(
            f"{where}: apply_residual_connection_post_layernorm=true is not supported (every "
            "released BLOOM uses the pre-LayerNorm residual)"
        )
    if raw.get("slow_but_exact") and int(raw.get("pretraining_tp", 1)) > 1:
        raise HFConfigError(
            f"{where}: slow_but_exact=true with pretraining_tp={raw['pretraining_tp']} is not "
            "supported (it splits the dense layers into tensor-parallel slices)"
        )
    hidden_size = int(required(raw, ("hidden_size", "n_embed"), where))
    return dict(
        vocab_size=int(required(raw, ("vocab_size",), where)),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_layers=int(required(raw, ("n_layer", "num_hidden_layers"), where)),
        num_heads=int(required(raw, ("n_head", "num_attention_heads"), where)),
        layer_norm_epsilon=float(raw.get("layer_norm_epsilon", 1e-5)),
        max_position_embeddings=int(raw.get("seq_length") or raw.get("max_position_embeddings") or 2048),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)),
        bos_token_id=raw.get("bos_token_id", 1),
        eos_token_id=eos_token_id(raw, where),
        pad_token_id=raw.get("pad_token_id"),
        param_dtype=hf_dtype(raw) or "float32",
        initializer_range=float(raw.get("initializer_range", 0.02)),
    )


def config_kwargs(cfg: Cfg, dtype: str) -> dict[str, Any]:
    """The keyword arguments of ``transformers.BloomConfig`` describing ``cfg`` with weights stored in ``dtype``."""
    if cfg.intermediate_size != 4 * cfg.hidden_size:
        raise HFConfigError(
            f"model.intermediate_size={cfg.intermediate_size}: transformers' BLOOM fixes the MLP at "
            f"4 x hidden_size = {4 * cfg.hidden_size}, so this model cannot be exported"
        )
    return dict(
        architectures=[ARCHITECTURE],
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        n_layer=cfg.num_layers,
        n_head=cfg.num_heads,
        layer_norm_epsilon=cfg.layer_norm_epsilon,
        initializer_range=cfg.initializer_range,
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
        apply_residual_connection_post_layernorm=False,
        seq_length=cfg.max_position_embeddings,
        dtype=dtype,
    )


# --------------------------------------------------------------------------------------------------------------------
# Tensor layout
# --------------------------------------------------------------------------------------------------------------------


def qkv_weight() -> tuple[Callable, Callable, Callable]:
    """(hf_shape, to_jaxtune, to_hf) of query_key_value.weight: HF (H*3*D, E) <-> jaxtune (E, H, 3, D)."""

    def hf_shape(cfg: Cfg) -> tuple[int, ...]:
        return (3 * cfg.num_heads * cfg.resolved_head_dim(), cfg.hidden_size)

    def to_jaxtune(w: np.ndarray, cfg: Cfg) -> np.ndarray:
        return w.reshape(cfg.num_heads, 3, cfg.resolved_head_dim(), cfg.hidden_size).transpose(3, 0, 1, 2)

    def to_hf(a: np.ndarray, cfg: Cfg) -> np.ndarray:
        return a.transpose(1, 2, 3, 0).reshape(hf_shape(cfg))

    return hf_shape, to_jaxtune, to_hf


def qkv_bias() -> tuple[Callable, Callable, Callable]:
    """(hf_shape, to_jaxtune, to_hf) of query_key_value.bias: HF (H*3*D,) <-> jaxtune (H, 3, D)."""
    return (
        lambda cfg: (3 * cfg.num_heads * cfg.resolved_head_dim(),),
        lambda w, cfg: w.reshape(cfg.num_heads, 3, cfg.resolved_head_dim()),
        lambda a, cfg: a.reshape(-1),
    )


def dense_weight() -> tuple[Callable, Callable, Callable]:
    """(hf_shape, to_jaxtune, to_hf) of self_attention.dense.weight: HF (E, H*D) <-> jaxtune (H, D, E)."""
    return (
        lambda cfg: (cfg.hidden_size, cfg.num_heads * cfg.resolved_head_dim()),
        lambda w, cfg: w.reshape(cfg.hidden_size, cfg.num_heads, cfg.resolved_head_dim()).transpose(1, 2, 0),
        lambda a, cfg: a.transpose(2, 0, 1).reshape(cfg.hidden_size, -1),
    )


LAYOUT = TensorLayout(
    embed=PREFIX + "word_embeddings.weight",
    lm_head="lm_head.weight",
    layer_prefix=PREFIX + "h.",
    layer_tensors=(
        LayerTensor("input_layernorm.weight", "attn_norm", *vector(hidden)),
        LayerTensor("input_layernorm.bias", "attn_norm_bias", *vector(hidden)),
        LayerTensor("self_attention.query_key_value.weight", "qkv_proj", *qkv_weight()),
        LayerTensor("self_attention.query_key_value.bias", "qkv_bias", *qkv_bias()),
        LayerTensor("self_attention.dense.weight", "o_proj", *dense_weight()),
        LayerTensor("self_attention.dense.bias", "o_bias", *vector(hidden)),
        LayerTensor("post_attention_layernorm.weight", "mlp_norm", *vector(hidden)),
        LayerTensor("post_attention_layernorm.bias", "mlp_norm_bias", *vector(hidden)),
        LayerTensor("mlp.dense_h_to_4h.weight", "up_proj", *linear(mlp, hidden)),
        LayerTensor("mlp.dense_h_to_4h.bias", "up_bias", *vector(mlp)),
        LayerTensor("mlp.dense_4h_to_h.weight", "down_proj", *linear(hidden, mlp)),
        LayerTensor("mlp.dense_4h_to_h.bias", "down_bias", *vector(hidden)),
    ),
    before_layers={
        PREFIX + "word_embeddings_layernorm.weight": "embed_norm",
        PREFIX + "word_embeddings_layernorm.bias": "embed_norm_bias",
    },
    after_layers={PREFIX + "ln_f.weight": "norm", PREFIX + "ln_f.bias": "norm_bias"},
    bare_prefix=PREFIX,
)

FAMILY = register(
    Family(
        name="bloom",
        model="jaxtune.models.bloom:Bloom",
        layer_counts=layer_counts,
        hf=HFArchitecture(
            architecture=ARCHITECTURE,
            model_type="bloom",
            config_class="BloomConfig",
            config_fields=config_fields,
            config_kwargs=config_kwargs,
            layout=LAYOUT,
        ),
        presets=PRESETS,
        config_rules=config_rules,
    )
)
