"""Named model shapes (``model.preset``): the DoIT base models, LLaMA-2, BLOOM (the BELLE study's Bloomz-7b1-mt),
and tiny shapes for tests and the quickstart. A preset sets ``family`` too: ``model.preset=bloom-tiny`` alone selects
a BLOOM.

Plain data: each preset is a mapping of :class:`jaxtune.config.schema.ModelConfig` fields. It lives below
:mod:`jaxtune.config.loading` (which reads it when a config names a preset) so that loading a config never imports the
models; :mod:`jaxtune.models.configs` builds ModelConfigs from it."""

from __future__ import annotations

from typing import Any

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
# BLOOM (bigscience/bloom-560m, bloom-1b1, bloomz-7b1-mt config.json): 250,880 ids, tied embeddings, MLP 4 x hidden.
_BLOOM_COMMON: dict[str, Any] = dict(
    family="bloom",
    vocab_size=250880,
    layer_norm_epsilon=1e-5,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=3,
)


def _bloom(hidden: int, layers: int, heads: int, **extra: Any) -> dict[str, Any]:
    return dict(
        _BLOOM_COMMON, hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=4 * hidden, **extra
    )


PRESETS: dict[str, dict[str, Any]] = {
    "doit-7b": dict(_DOIT_COMMON, hidden_size=4096, num_layers=32, num_heads=32, intermediate_size=11008),
    "doit-13b": dict(_DOIT_COMMON, hidden_size=5120, num_layers=40, num_heads=40, intermediate_size=13824),
    "doit-33b": dict(_DOIT_COMMON, hidden_size=6656, num_layers=60, num_heads=52, intermediate_size=17920),
    "llama2-7b": dict(_LLAMA2_COMMON, hidden_size=4096, num_layers=32, num_heads=32, intermediate_size=11008),
    "llama2-13b": dict(_LLAMA2_COMMON, hidden_size=5120, num_layers=40, num_heads=40, intermediate_size=13824),
    "bloom-560m": _bloom(1024, 24, 16),
    "bloom-1b1": _bloom(1536, 24, 16),
    "bloomz-7b1-mt": _bloom(4096, 30, 32),
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
    # BLOOM test and miniature shapes: 6 heads (not a power of two, so both ALiBi slope sequences are used); the
    # vocabulary fits a small byte-level BPE tokenizer built in the tests.
    "bloom-tiny": _bloom(96, 2, 6, vocab_size=1024, max_position_embeddings=512),
    "bloom-tiny-4l": _bloom(128, 4, 8, vocab_size=1024, max_position_embeddings=512),
}
