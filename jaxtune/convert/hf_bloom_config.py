"""Translation between a Hugging Face BLOOM ``config.json`` (transformers v4 or v5 spelling) and :class:`ModelConfig`.

Spellings read: the width as ``hidden_size`` or the older ``n_embed`` (bloomz-7b1-mt), layers as ``n_layer`` or
``num_hidden_layers``, heads as ``n_head`` or ``num_attention_heads``, the dtype as v5 ``dtype`` or v4
``torch_dtype``. BLOOM has no position embeddings (ALiBi), so ``max_position_embeddings`` is taken from the
training ``seq_length`` when the config states one. The MLP is always 4 x hidden_size (transformers ignores
``n_inner``). Exports are written by transformers' own ``BloomConfig.save_pretrained``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from jaxtune.config.schema import ModelConfig
from jaxtune.convert.hf_config import HFConfigError, hf_dtype, save_with_generation_config

logger = logging.getLogger(__name__)

ARCHITECTURE = "BloomForCausalLM"


def _first(raw: dict[str, Any], keys: tuple[str, ...], where: str) -> Any:
    for key in keys:
        if raw.get(key) is not None:
            return raw[key]
    raise HFConfigError(f"{where}: missing required field {' or '.join(repr(k) for k in keys)}")


def bloom_config_from_hf(raw: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """A BLOOM :class:`ModelConfig` for a Hugging Face BloomConfig dict; HFConfigError names a field jaxtune's BLOOM
    cannot represent (post-LayerNorm residuals, Megatron's slow-but-exact tensor-parallel rounding)."""
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
    hidden = int(_first(raw, ("hidden_size", "n_embed"), where))
    eos = raw.get("eos_token_id", 2)
    if isinstance(eos, list):
        if len(eos) > 1:
            logger.warning("%s: eos_token_id lists %s; jaxtune keeps the first, %s", where, eos, eos[0])
        eos = eos[0] if eos else None
    cfg = ModelConfig(
        family="bloom",
        vocab_size=int(_first(raw, ("vocab_size",), where)),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_layers=int(_first(raw, ("n_layer", "num_hidden_layers"), where)),
        num_heads=int(_first(raw, ("n_head", "num_attention_heads"), where)),
        layer_norm_epsilon=float(raw.get("layer_norm_epsilon", 1e-5)),
        max_position_embeddings=int(raw.get("seq_length") or raw.get("max_position_embeddings") or 2048),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)),
        bos_token_id=raw.get("bos_token_id", 1),
        eos_token_id=eos,
        pad_token_id=raw.get("pad_token_id"),
        param_dtype=hf_dtype(raw) or "float32",
        initializer_range=float(raw.get("initializer_range", 0.02)),
    )
    try:
        cfg.validate("model")
    except ValueError as e:
        raise HFConfigError(f"{where}: {e}") from None
    return cfg


def bloom_config_dict(cfg: ModelConfig, dtype: str) -> dict[str, Any]:
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


def write_bloom_config(cfg: ModelConfig, out_dir: str | Path, dtype: str) -> None:
    """Write ``config.json`` and ``generation_config.json`` for ``cfg`` with transformers' own writers."""
    from transformers import BloomConfig

    save_with_generation_config(BloomConfig(**bloom_config_dict(cfg, dtype)), cfg, out_dir)
