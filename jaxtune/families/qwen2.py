"""The Qwen2 family (:class:`jaxtune.models.qwen2.Qwen2`, transformers' ``Qwen2ForCausalLM``: Qwen1.5, Qwen2 and
Qwen2.5): LLaMA with biases on the query, key and value projections. Its presets, counts, ``config.json``
translation (transformers v4 or v5 spelling) and tensor layout.

Config: read as LLaMA's (:func:`jaxtune.families.llama.config_fields`: ``rope_theta`` or v5 ``rope_parameters``,
``torch_dtype`` or ``dtype``), with Qwen2's defaults (``max_position_embeddings`` 32768, ``rms_norm_eps`` 1e-6).
Sliding-window attention (``use_sliding_window: true``, or any ``sliding_attention`` in ``layer_types``) is refused:
every released Qwen1.5/2/2.5 dense checkpoint attends over the full context. Exports are written by transformers'
own ``Qwen2Config.save_pretrained``.

Layout: LLaMA's tensors (:data:`jaxtune.families.llama.LAYOUT`) plus ``self_attn.{q,k,v}_proj.bias``, stored
(heads*D,) and kept by jaxtune as (heads, D).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from jaxtune.families import llama
from jaxtune.families.hf import Cfg, HFArchitecture, HFConfigError, LayerTensor
from jaxtune.families.registry import Family, LayerCounts, register

ARCHITECTURE = "Qwen2ForCausalLM"

# --------------------------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------------------------

# The Qwen/Qwen1.5-* and Qwen/Qwen2.5-* base models' config.json: untied embeddings, rope_theta 1e6, the Qwen2
# tokenizer's <|endoftext|> (151643) as bos and eos. Qwen1.5-7B's vocabulary is 151,936 rows, the others' 152,064.
_QWEN_COMMON: dict[str, Any] = dict(
    vocab_size=152064,
    rope_theta=1000000.0,
    tie_word_embeddings=False,
    bos_token_id=151643,
    eos_token_id=151643,
)
_QWEN15: dict[str, Any] = dict(_QWEN_COMMON, rms_norm_eps=1e-6, max_position_embeddings=32768)
_QWEN25: dict[str, Any] = dict(_QWEN_COMMON, max_position_embeddings=131072)


def _shape(hidden: int, mlp: int, layers: int, heads: int, kv_heads: int) -> dict[str, Any]:
    return dict(
        hidden_size=hidden,
        intermediate_size=mlp,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=None if kv_heads == heads else kv_heads,
    )


PRESETS: dict[str, dict[str, Any]] = {
    "qwen1.5-7b": dict(_QWEN15, vocab_size=151936, **_shape(4096, 11008, 32, 32, 32)),
    "qwen1.5-14b": dict(_QWEN15, **_shape(5120, 13696, 40, 40, 40)),
    "qwen1.5-32b": dict(_QWEN15, **_shape(5120, 27392, 64, 40, 8)),
    "qwen2.5-7b": dict(_QWEN25, rms_norm_eps=1e-6, **_shape(3584, 18944, 28, 28, 4)),
    "qwen2.5-14b": dict(_QWEN25, rms_norm_eps=1e-5, **_shape(5120, 13824, 48, 40, 8)),
    "qwen2.5-32b": dict(_QWEN25, rms_norm_eps=1e-5, **_shape(5120, 27648, 64, 40, 8)),
    # Unit-test shape: grouped-query attention, tied embeddings.
    "qwen2-tiny": dict(
        _QWEN_COMMON,
        vocab_size=1000,
        rms_norm_eps=1e-6,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        **_shape(64, 176, 2, 4, 2),
    ),
}


def layer_counts(cfg: Cfg) -> LayerCounts:
    """LLaMA's layer plus the q, k and v biases."""
    base = llama.layer_counts(cfg)
    biases = (cfg.num_heads + 2 * cfg.resolved_num_kv_heads()) * cfg.resolved_head_dim()
    return dataclasses.replace(base, layer_params=base.layer_params + biases)


# --------------------------------------------------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------------------------------------------------


def config_fields(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """ModelConfig fields of a Qwen2Config dict; HFConfigError names a field jaxtune's Qwen2 cannot represent
    (sliding-window attention, besides what LLaMA's reading refuses)."""
    layer_types = raw.get("layer_types") or []
    if raw.get("use_sliding_window") or "sliding_attention" in layer_types:
        raise HFConfigError(
            f"{where}: sliding-window attention (use_sliding_window/layer_types) is not supported "
            "(jaxtune's Qwen2 attends over the whole context)"
        )
    defaults = {"max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}
    # Qwen2 has its q/k/v biases by construction; a config never says attention_bias, and LLaMA's reading refuses it.
    return llama.config_fields({**defaults, **raw, "attention_bias": False}, where)


def config_kwargs(cfg: Cfg, dtype: str) -> dict[str, Any]:
    """The keyword arguments of ``transformers.Qwen2Config`` describing ``cfg`` with weights stored in ``dtype``."""
    kwargs = llama.config_kwargs(cfg, dtype)
    for key in ("attention_bias", "mlp_bias"):
        del kwargs[key]
    if cfg.head_dim is None:
        del kwargs["head_dim"]  # Qwen2Config has no head_dim field; transformers derives it from the width
    return dict(kwargs, architectures=[ARCHITECTURE], use_sliding_window=False)


# --------------------------------------------------------------------------------------------------------------------
# Tensor layout
# --------------------------------------------------------------------------------------------------------------------


def bias_of(kv: bool) -> tuple[Callable, Callable, Callable]:
    """(hf_shape, to_jaxtune, to_hf) of a q/k/v bias: HF (heads*D,) <-> jaxtune (heads, D)."""

    def heads(cfg: Cfg) -> int:
        return cfg.resolved_num_kv_heads() if kv else cfg.num_heads

    return (
        lambda cfg: (heads(cfg) * cfg.resolved_head_dim(),),
        lambda w, cfg: w.reshape(heads(cfg), cfg.resolved_head_dim()),
        lambda a, cfg: a.reshape(-1),
    )


def _with_biases(tensors: tuple[LayerTensor, ...]) -> tuple[LayerTensor, ...]:
    """LLaMA's layer tensors with each q/k/v bias right after its weight (transformers' order)."""
    out: list[LayerTensor] = []
    for tensor in tensors:
        out.append(tensor)
        for name in ("q", "k", "v"):
            if tensor.param == f"{name}_proj":
                out.append(LayerTensor(f"self_attn.{name}_proj.bias", f"{name}_bias", *bias_of(kv=name != "q")))
    return tuple(out)


LAYOUT = dataclasses.replace(llama.LAYOUT, layer_tensors=_with_biases(llama.LAYOUT.layer_tensors))

FAMILY = register(
    Family(
        name="qwen2",
        model="jaxtune.models.qwen2:Qwen2",
        layer_counts=layer_counts,
        hf=HFArchitecture(
            architecture=ARCHITECTURE,
            model_type="qwen2",
            config_class="Qwen2Config",
            config_fields=config_fields,
            config_kwargs=config_kwargs,
            layout=LAYOUT,
        ),
        presets=PRESETS,
        config_rules=llama.config_rules,
    )
)
