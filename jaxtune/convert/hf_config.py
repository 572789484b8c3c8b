"""Translation between a Hugging Face LLaMA ``config.json`` (transformers v4 or v5 spelling) and :class:`ModelConfig`.

transformers v5 writes ``rope_parameters: {rope_theta, rope_type, ...}`` and ``dtype`` where v4 wrote ``rope_theta``
plus ``rope_scaling: {type|rope_type, ...}`` and ``torch_dtype``; both are read. Exports are written by transformers'
own ``LlamaConfig.save_pretrained`` so that they are exactly what the pinned transformers expects.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from jaxtune.config.schema import ModelConfig, RopeScalingConfig
from jaxtune.errors import JaxtuneError

logger = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
SUPPORTED_ROPE_TYPES = ("default", "llama3", "linear")
HF_DTYPES = {
    "float32": "float32",
    "bfloat16": "bfloat16",
    "float16": "float16",
    "fp32": "float32",
    "bf16": "bfloat16",
    "fp16": "float16",
}


class HFConfigError(JaxtuneError, ValueError):
    """A Hugging Face config.json cannot be read as a LLaMA model jaxtune supports; the message names the field."""


def read_hf_config(hf_dir: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a Hugging Face model folder."""
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise HFConfigError(f"{hf_dir}: no config.json (is this a Hugging Face model folder?)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise HFConfigError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise HFConfigError(f"{path}: expected a JSON object")
    return raw


def _rope_scaling(raw: dict[str, Any], where: str) -> tuple[float, RopeScalingConfig]:
    """rope_theta and the scaling from either spelling."""
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
    scaling = RopeScalingConfig(rope_type=rope_type)
    if rope_type in ("llama3", "linear"):
        if "factor" not in spec:
            raise HFConfigError(f"{where}: rope type {rope_type!r} needs a 'factor'")
        scaling.factor = float(spec["factor"])
    if rope_type == "llama3":
        for key in ("low_freq_factor", "high_freq_factor"):
            if key not in spec:
                raise HFConfigError(f"{where}: rope type 'llama3' needs {key!r}")
            setattr(scaling, key, float(spec[key]))
        scaling.original_max_position_embeddings = int(
            spec.get("original_max_position_embeddings", raw.get("max_position_embeddings", 2048))
        )
    return float(theta), scaling


def hf_dtype(raw: dict[str, Any]) -> Optional[str]:
    """The dtype a config declares (v5 ``dtype`` or v4 ``torch_dtype``), as a jaxtune dtype name, or None."""
    value = raw.get("dtype", raw.get("torch_dtype"))
    if isinstance(value, str):
        return HF_DTYPES.get(value.removeprefix("torch."))
    return None


def model_config_from_hf(raw: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """A :class:`ModelConfig` for a Hugging Face LLaMA config dict.

    Raises HFConfigError naming the architecture or field jaxtune does not support (other architectures, biases,
    activations other than SiLU, rope types other than default/llama3/linear).
    """
    archs = raw.get("architectures") or []
    model_type = raw.get("model_type")
    if archs:
        unsupported = [a for a in archs if a not in SUPPORTED_ARCHITECTURES]
        if unsupported:
            raise HFConfigError(
                f"{where}: unsupported architecture {', '.join(unsupported)} (jaxtune converts "
                f"{', '.join(SUPPORTED_ARCHITECTURES)})"
            )
    elif model_type != "llama":
        raise HFConfigError(f"{where}: unsupported model_type {model_type!r} (jaxtune converts LLaMA models)")
    if model_type not in (None, "llama"):
        raise HFConfigError(f"{where}: unsupported model_type {model_type!r} (jaxtune converts LLaMA models)")
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

    eos = raw.get("eos_token_id", 2)
    if isinstance(eos, list):
        if len(eos) > 1:
            logger.warning("%s: eos_token_id lists %s; jaxtune keeps the first, %s", where, eos, eos[0])
        eos = eos[0] if eos else None
    theta, scaling = _rope_scaling(raw, where)
    num_heads = int(need("num_attention_heads"))
    hidden = int(need("hidden_size"))
    head_dim = raw.get("head_dim")
    cfg = ModelConfig(
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        intermediate_size=int(need("intermediate_size")),
        num_layers=int(need("num_hidden_layers")),
        num_heads=num_heads,
        num_kv_heads=raw.get("num_key_value_heads"),
        head_dim=None if head_dim in (None, hidden // num_heads) else int(head_dim),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        bos_token_id=raw.get("bos_token_id", 1),
        eos_token_id=eos,
        pad_token_id=raw.get("pad_token_id"),
        param_dtype=hf_dtype(raw) or "float32",
        initializer_range=float(raw.get("initializer_range", 0.02)),
    )
    if cfg.num_kv_heads == cfg.num_heads:
        cfg.num_kv_heads = None
    try:
        cfg.validate("model")
    except ValueError as e:
        raise HFConfigError(f"{where}: {e}") from None
    return cfg


def hf_config_dict(cfg: ModelConfig, dtype: str) -> dict[str, Any]:
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
        architectures=list(SUPPORTED_ARCHITECTURES),
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


def save_with_generation_config(hf_config: Any, cfg: ModelConfig, out_dir: str | Path) -> None:
    """Write a transformers config object as ``config.json`` and ``cfg``'s special tokens as
    ``generation_config.json``, both with transformers' own writers."""
    from transformers import GenerationConfig

    hf_config.save_pretrained(out_dir)
    GenerationConfig(
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id
    ).save_pretrained(out_dir)


def write_hf_config(cfg: ModelConfig, out_dir: str | Path, dtype: str) -> None:
    """Write ``config.json`` and ``generation_config.json`` for ``cfg`` with transformers' own writers."""
    from transformers import LlamaConfig

    save_with_generation_config(LlamaConfig(**hf_config_dict(cfg, dtype)), cfg, out_dir)
