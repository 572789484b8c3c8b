"""The LLaMA family (:class:`jaxtune.models.llama.Llama`, transformers' ``LlamaForCausalLM``): its presets, counts,
``config.json`` translation (transformers v4 or v5 spelling) and tensor layout.

Config: transformers v5 writes ``rope_parameters: {rope_theta, rope_type, ...}`` and ``dtype`` where v4 wrote
``rope_theta`` plus ``rope_scaling: {type|rope_type, ...}`` and ``torch_dtype``; both are read. Exports are written
by transformers' own ``LlamaConfig.save_pretrained`` so that they are exactly what the pinned transformers expects.

Layout: the attention projections are stored with heads flattened, (heads*D, E) and (E, H*D); jaxtune keeps heads
as their own axes (see :mod:`jaxtune.models.llama`). Both use the rotate-half rotary layout, so no row permutation is
needed.
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
    vector,
)
from jaxtune.families.registry import Family, LayerCounts, register

SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear")

# --------------------------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------------------------

# Chinese-LLaMA-Plus (DoIT): LLaMA-1 architecture with the 49,953-piece Chinese vocabulary.
_DOIT_COMMON: dict[str, Any] = dict(
    vocab_size=49953,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)
_LLAMA2_COMMON: dict[str, Any] = dict(
    vocab_size=32000,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)

PRESETS: dict[str, dict[str, Any]] = {
    "doit-7b": dict(_DOIT_COMMON, hidden_size=4096, num_layers=32, num_heads=32, intermediate_size=11008),
    "doit-13b": dict(_DOIT_COMMON, hidden_size=5120, num_layers=40, num_heads=40, intermediate_size=13824),
    "doit-33b": dict(_DOIT_COMMON, hidden_size=6656, num_layers=60, num_heads=52, intermediate_size=17920),
    "llama2-7b": dict(_LLAMA2_COMMON, hidden_size=4096, num_layers=32, num_heads=32, intermediate_size=11008),
    "llama2-13b": dict(_LLAMA2_COMMON, hidden_size=5120, num_layers=40, num_heads=40, intermediate_size=13824),
    # A few million parameters: the quickstart's model, trainable on a laptop CPU in minutes.
    "tiny": dict(
        _DOIT_COMMON,
        vocab_size=49957,
        hidden_size=128,
        num_layers=2,
        num_heads=4,
        intermediate_size=352,
        max_position_embeddings=512,
    ),
    # Unit-test shapes: grouped-query attention and tied embeddings.
    "tiny-gqa": dict(
        _LLAMA2_COMMON,
        vocab_size=1000,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=176,
        max_position_embeddings=256,
    ),
    "tiny-tied": dict(
        _LLAMA2_COMMON,
        vocab_size=1000,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=176,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    ),
}


def layer_counts(cfg: Cfg) -> LayerCounts:
    """q, k, v, o and gate, up, down weights plus two RMSNorm scales per layer; the final RMSNorm outside."""
    e, m, h, kv, d = (
        cfg.hidden_size,
        cfg.intermediate_size,
        cfg.num_heads,
        cfg.resolved_num_kv_heads(),
        cfg.resolved_head_dim(),
    )
    matmul = e * h * d + 2 * e * kv * d + h * d * e + 3 * e * m
    return LayerCounts(layer_params=matmul + 2 * e, layer_matmul_weights=matmul, other_params=e)


def config_rules(cfg: Cfg, where: str) -> list[tuple[str, str]]:
    """Rotary embeddings rotate pairs of features: the head width must be even."""
    if cfg.head_dim is None and cfg.hidden_size % cfg.num_heads:
        return []  # the shape rules already report the width
    if cfg.resolved_head_dim() % 2:
        return [(f"{where}.head_dim must be even for rotary embeddings, got {cfg.resolved_head_dim()}", "head_dim")]
    return []


# --------------------------------------------------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------------------------------------------------


def rope_fields(raw: dict[str, Any], where: str) -> tuple[float, dict[str, Any]]:
    """rope_theta and the fields of ``model.rope_scaling`` from either spelling."""
    params = raw.get("rope_parameters")
    legacy = raw.get("rope_scaling")
    if params is not None and not isinstance(params, dict):
        raise HFConfigError(f"{where}: rope_parameters must be an object, got {params!r}")
    if legacy is not None and not isinstance(legacy, dict):
        raise HFConfigError(f"{where}: rope_scaling must be an object or null, got {legacy!r}")
    # transformers v5 gives rope_scaling priority over rope_parameters when both are present; so do we.
    spec = dict(params or {})
    spec.update(legacy or {})
    theta = spec.get("rope_theta", raw.get("rope_theta", 10000.0))
    rope_type = spec.get("rope_type", spec.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise HFConfigError(
            f"{where}: unsupported rope type {rope_type!r} (jaxtune supports {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    if spec.get("partial_rotary_factor", 1.0) != 1.0:
        raise HFConfigError(f"{where}: partial_rotary_factor={spec['partial_rotary_factor']} is not supported")
    scaling: dict[str, Any] = {"rope_type": rope_type}
    if rope_type in ("llama3", "linear"):
        if "factor" not in spec:
            raise HFConfigError(f"{where}: rope type {rope_type!r} needs a 'factor'")
        scaling["factor"] = float(spec["factor"])
    if rope_type == "llama3":
        for key in ("low_freq_factor", "high_freq_factor"):
            if key not in spec:
                raise HFConfigError(f"{where}: rope type 'llama3' needs {key!r}")
            scaling[key] = float(spec[key])
        scaling["original_max_position_embeddings"] = int(
            spec.get("original_max_position_embeddings", raw.get("max_position_embeddings", 2048))
        )
    return float(theta), scaling


def config_fields(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """ModelConfig fields of a LlamaConfig dict; HFConfigError names a field jaxtune's LLaMA cannot represent
    (biases, activations other than SiLU, rope types other than default/llama3/linear)."""
    for key in ("attention_bias", "mlp_bias"):
        if raw.get(key):
            raise HFConfigError(f"{where}: {key}=true is not supported (jaxtune's LLaMA has no biases)")
    act = raw.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise HFConfigError(f"{where}: hidden_act={act!r} is not supported (LLaMA's SwiGLU uses silu)")

    def need(key: str) -> Any:
        if key not in raw:
            raise HFConfigError(f"{where}: missing required field {key!r}")
        return raw[key]

    theta, scaling = rope_fields(raw, where)
    num_heads = int(need("num_attention_heads"))
    hidden_size = int(need("hidden_size"))
    head_dim = raw.get("head_dim")
    num_kv_heads = raw.get("num_key_value_heads")
    return dict(
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden_size,
        intermediate_size=int(need("intermediate_size")),
        num_layers=int(need("num_hidden_layers")),
        num_heads=num_heads,
        num_kv_heads=None if num_kv_heads == num_heads else num_kv_heads,
        head_dim=None if head_dim in (None, hidden_size // num_heads) else int(head_dim),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        bos_token_id=raw.get("bos_token_id", 1),
        eos_token_id=eos_token_id(raw, where),
        pad_token_id=raw.get("pad_token_id"),
        param_dtype=hf_dtype(raw) or "float32",
        initializer_range=float(raw.get("initializer_range", 0.02)),
    )


def config_kwargs(cfg: Cfg, dtype: str) -> dict[str, Any]:
    """The keyword arguments of ``transformers.LlamaConfig`` describing ``cfg`` with weights stored in ``dtype``."""
    rope: dict[str, Any] = {"rope_type": cfg.rope_scaling.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling.rope_type in ("llama3", "linear"):
        rope["factor"] = cfg.rope_scaling.factor
    if cfg.rope_scaling.rope_type == "llama3":
        rope.update(
            low_freq_factor=cfg.rope_scaling.low_freq_factor,
            high_freq_factor=cfg.rope_scaling.high_freq_factor,
            original_max_position_embeddings=cfg.rope_scaling.original_max_position_embeddings,
        )
    return dict(
        architectures=[ARCHITECTURE],
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.resolved_num_kv_heads(),
        head_dim=cfg.resolved_head_dim(),
        hidden_act="silu",
        max_position_embeddings=cfg.max_position_embeddings,
        initializer_range=cfg.initializer_range,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters=rope,
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
        attention_bias=False,
        mlp_bias=False,
        dtype=dtype,
    )


# --------------------------------------------------------------------------------------------------------------------
# Tensor layout
# --------------------------------------------------------------------------------------------------------------------


def heads_in(kv: bool) -> tuple[Callable, Callable, Callable]:
    """(hf_shape, to_jaxtune, to_hf) of q/k/v: HF (heads*D, E) <-> jaxtune (E, heads, D)."""

    def heads(cfg: Cfg) -> int:
        return cfg.resolved_num_kv_heads() if kv else cfg.num_heads

    def hf_shape(cfg: Cfg) -> tuple[int, ...]:
        return (heads(cfg) * cfg.resolved_head_dim(), cfg.hidden_size)

    def to_jaxtune(w: np.ndarray, cfg: Cfg) -> np.ndarray:
        return w.reshape(heads(cfg), cfg.resolved_head_dim(), cfg.hidden_size).transpose(2, 0, 1)

    def to_hf(a: np.ndarray, cfg: Cfg) -> np.ndarray:
        return a.transpose(1, 2, 0).reshape(hf_shape(cfg))

    return hf_shape, to_jaxtune, to_hf


def heads_out() -> tuple[Callable, Callable, Callable]:
    """(hf_shape, to_jaxtune, to_hf) of o: HF (E, H*D) <-> jaxtune (H, D, E)."""

    def hf_shape(cfg: Cfg) -> tuple[int, ...]:
        return (cfg.hidden_size, cfg.num_heads * cfg.resolved_head_dim())

    def to_jaxtune(w: np.ndarray, cfg: Cfg) -> np.ndarray:
        return w.reshape(cfg.hidden_size, cfg.num_heads, cfg.resolved_head_dim()).transpose(1, 2, 0)

    def to_hf(a: np.ndarray, cfg: Cfg) -> np.ndarray:
        return a.transpose(2, 0, 1).reshape(hf_shape(cfg))

    return hf_shape, to_jaxtune, to_hf


ARCHITECTURE = "LlamaForCausalLM"

LAYOUT = TensorLayout(
    embed="model.embed_tokens.weight",
    lm_head="lm_head.weight",
    layer_prefix="model.layers.",
    layer_tensors=(
        LayerTensor("input_layernorm.weight", "attn_norm", *vector(hidden)),
        LayerTensor("self_attn.q_proj.weight", "q_proj", *heads_in(kv=False)),
        LayerTensor("self_attn.k_proj.weight", "k_proj", *heads_in(kv=True)),
        LayerTensor("self_attn.v_proj.weight", "v_proj", *heads_in(kv=True)),
        LayerTensor("self_attn.o_proj.weight", "o_proj", *heads_out()),
        LayerTensor("post_attention_layernorm.weight", "mlp_norm", *vector(hidden)),
        LayerTensor("mlp.gate_proj.weight", "gate_proj", *linear(mlp, hidden)),
        LayerTensor("mlp.up_proj.weight", "up_proj", *linear(mlp, hidden)),
        LayerTensor("mlp.down_proj.weight", "down_proj", *linear(hidden, mlp)),
    ),
    after_layers={"model.norm.weight": "norm"},
    # A non-parameter buffer that old transformers versions saved; it carries no information.
    ignored=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",),
)

FAMILY = register(
    Family(
        name="llama",
        model="jaxtune.models.llama:Llama",
        layer_counts=layer_counts,
        hf=HFArchitecture(
            architecture=ARCHITECTURE,
            model_type="llama",
            config_class="LlamaConfig",
            config_fields=config_fields,
            config_kwargs=config_kwargs,
            layout=LAYOUT,
        ),
        presets=PRESETS,
        config_rules=config_rules,
    )
)
