"""Named model shapes: the DoIT base models, LLaMA-2, and tiny shapes for tests and the quickstart."""

from __future__ import annotations

from typing import Any

# Chinese-LLaMA-Plus (DoIT): LLaMA-1 architecture with the 49,953-piece Chinese vocabulary.
_DOIT_COMMON: dict[str, Any] = dict(
    vocab_size=49953, rms_norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=2048,
    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
)
_LLAMA2_COMMON: dict[str, Any] = dict(
    vocab_size=32000, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=4096,
    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
)

PRESETS: dict[str, dict[str, Any]] = {
    "doit-7b": dict(_DOIT_COMMON, hidden_size=4096, num_layers=32, num_heads=32, intermediate_size=11008),
    "doit-13b": dict(_DOIT_COMMON, hidden_size=5120, num_layers=40, num_heads=40, intermediate_size=13824),
    "doit-33b": dict(_DOIT_COMMON, hidden_size=6656, num_layers=60, num_heads=52, intermediate_size=17920),
    "llama2-7b": dict(_LLAMA2_COMMON, hidden_size=4096, num_layers=32, num_heads=32, intermediate_size=11008),
    "llama2-13b": dict(_LLAMA2_COMMON, hidden_size=5120, num_layers=40, num_heads=40, intermediate_size=13824),
    # A few million parameters: the quickstart's model, trainable on a laptop CPU in minutes.
    "tiny": dict(_DOIT_COMMON, vocab_size=49957, hidden_size=128, num_layers=2, num_heads=4,
                 intermediate_size=352, max_position_embeddings=512),
    # Unit-test shapes: grouped-query attention and tied embeddings.
    "tiny-gqa": dict(_LLAMA2_COMMON, vocab_size=1000, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     intermediate_size=176, max_position_embeddings=256),
    "tiny-tied": dict(_LLAMA2_COMMON, vocab_size=1000, hidden_size=64, num_layers=2, num_heads=4,
                      intermediate_size=176, max_position_embeddings=256, tie_word_embeddings=True),
}


def preset_values(name: str, key: str = "model.preset") -> dict[str, Any]:
    """The fields of a named shape; an unknown name is a ConfigError listing the known ones."""
    from jaxtune.config import ConfigError

    if name not in PRESETS:
        import difflib

        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{key}: unknown model preset '{name}'{hint}; known: {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[name], preset=name)


def model_config(name: str, **overrides: Any):
    """A :class:`~jaxtune.config.ModelConfig` for a named shape, with field overrides."""
    from jaxtune.config import model_config_from_dict

    return model_config_from_dict(dict(preset_values(name), **overrides))
