"""jaxtune.models.configs: the named shapes (DoIT's base models as the study describes them, tiny test shapes)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from jaxtune.config.loading import load_config
from jaxtune.config.presets import PRESETS
from jaxtune.config.schema import ConfigError
from jaxtune.models.configs import model_config
from jaxtune.models.registry import create_model
from jaxtune.models.stats import model_info

# The table of doit.md (hidden, layers, heads, ffn, vocab).
DOIT_SHAPES = {
    "doit-7b": (4096, 32, 32, 11008, 49953),
    "doit-13b": (5120, 40, 40, 13824, 49953),
    "doit-33b": (6656, 60, 52, 17920, 49953),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_model(name: str) -> None:
    cfg = model_config(name)
    cfg.validate()
    assert cfg.preset == name
    # Shapes only (no memory): the parameter count of the built model is the one model_info reports.
    model = nnx.eval_shape(lambda: create_model(cfg, nnx.Rngs(0)))
    allocated = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert allocated == model_info(cfg).num_params_allocated


@pytest.mark.parametrize("name", sorted(DOIT_SHAPES))
def test_doit_presets_follow_the_study(name: str) -> None:
    cfg = model_config(name)
    hidden, layers, heads, ffn, vocab = DOIT_SHAPES[name]
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size, cfg.vocab_size) == DOIT_SHAPES[name]
    assert cfg.resolved_num_kv_heads() == heads  # no grouped-query attention in LLaMA-1
    assert cfg.rms_norm_eps == 1e-6 and cfg.rope_theta == 10000.0 and cfg.rope_scaling.rope_type == "default"
    assert not cfg.tie_word_embeddings
    assert cfg.max_position_embeddings >= 2048


def test_tiny_test_shapes_cover_gqa_and_tied_embeddings() -> None:
    assert model_config("tiny-gqa").resolved_num_kv_heads() < model_config("tiny-gqa").num_heads
    assert model_config("tiny-tied").tie_word_embeddings
    assert model_config("tiny").vocab_size == 49957  # the DoIT vocabulary with its four added tokens


def test_preset_fields_can_be_overridden() -> None:
    cfg = model_config("doit-7b", num_layers=2, vocab_pad_multiple=128)
    assert cfg.num_layers == 2 and cfg.hidden_size == 4096 and cfg.padded_vocab_size() == 50048
    loaded = load_config(None, ["model.preset=doit-13b", "model.param_dtype=bfloat16"])
    assert loaded.model.hidden_size == 5120 and loaded.model.param_dtype == "bfloat16"


def test_unknown_preset_names_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"unknown model preset 'doit-7B'.*did you mean 'doit-7b'"):
        model_config("doit-7B")


# bigscience's config.json files (hidden, layers, heads, vocab) and transformers' parameter counts of the releases.
BLOOM_SHAPES = {
    "bloom-560m": (1024, 24, 16, 250880, 559_214_592),
    "bloom-1b1": (1536, 24, 16, 250880, 1_065_314_304),
    "bloomz-7b1-mt": (4096, 30, 32, 250880, 7_069_016_064),
}


@pytest.mark.parametrize("name", sorted(BLOOM_SHAPES))
def test_bloom_presets_follow_the_releases(name: str) -> None:
    cfg = model_config(name)
    hidden, layers, heads, vocab, params = BLOOM_SHAPES[name]
    assert cfg.family == "bloom"
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.vocab_size) == (hidden, layers, heads, vocab)
    assert cfg.intermediate_size == 4 * hidden and cfg.tie_word_embeddings and cfg.layer_norm_epsilon == 1e-5
    assert model_info(cfg).num_params == params


def test_a_bloom_preset_alone_selects_the_bloom_family() -> None:
    loaded = load_config(None, ["model.preset=bloom-tiny"])
    assert loaded.model.family == "bloom"
    assert type(create_model(loaded.model)).__name__ == "Bloom"
    with pytest.raises(ConfigError, match="model.family"):
        load_config(None, ["model.family=gpt2"])
