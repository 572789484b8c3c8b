"""Loading a checkpoint (jaxtune or Hugging Face, sharded or not) and its chat codec for evaluation."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from jaxtune.checkpoint.params import expected_param_shapes, save_params
from jaxtune.config.schema import MeshConfig
from jaxtune.eval.errors import EvalSetupError
from jaxtune.eval.loading import checkpoint_kind, load_codec, load_model, shard_model, tokenizer_location
from jaxtune.models.configs import model_config
from jaxtune.sharding import build_mesh

from .conftest import DEMO_TOKENIZER, DOIT_ADDED


def _params(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))]


def test_hf_folder_loads_the_same_model_as_the_jaxtune_checkpoint(jaxtune_checkpoint, hf_checkpoint):
    assert checkpoint_kind(jaxtune_checkpoint) == "jaxtune" and checkpoint_kind(hf_checkpoint) == "hf"
    from_hf, from_jaxtune = load_model(hf_checkpoint), load_model(jaxtune_checkpoint)
    assert from_hf.cfg.vocab_size == from_jaxtune.cfg.vocab_size == 1004
    assert jax.tree.structure(nnx.to_pure_dict(nnx.state(from_hf, nnx.Param))) == jax.tree.structure(
        nnx.to_pure_dict(nnx.state(from_jaxtune, nnx.Param))
    )
    for a, b in zip(_params(from_hf), _params(from_jaxtune)):
        np.testing.assert_array_equal(a, b)
    assert load_model(jaxtune_checkpoint, compute_dtype="bfloat16").cfg.compute_dtype == "bfloat16"


def test_sharded_loading_places_parameters_by_the_rules(jaxtune_checkpoint, gqa_pair):
    mesh = build_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    model = load_model(jaxtune_checkpoint, mesh=mesh)
    # q_proj (layers, embed, heads, head_dim): embed over fsdp, heads over tensor.
    assert model.layers.q_proj[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    for a, b in zip(_params(model), _params(gqa_pair[1])):
        np.testing.assert_array_equal(a, b)
    placed = shard_model(load_model(jaxtune_checkpoint), mesh)
    assert placed.embed_tokens[...].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")


def test_parameters_arrive_on_the_mesh_in_the_evaluation_dtype(jaxtune_checkpoint, hf_checkpoint, gqa_pair):
    import jax.numpy as jnp

    mesh = build_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    expected = [np.asarray(jnp.asarray(x, jnp.bfloat16)) for x in _params(gqa_pair[1])]
    for checkpoint in (jaxtune_checkpoint, hf_checkpoint):  # restored by Orbax / streamed tensor by tensor
        model = load_model(checkpoint, mesh=mesh, compute_dtype="bfloat16")
        assert model.cfg.compute_dtype == model.cfg.param_dtype == "bfloat16"
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        assert params["layers"]["down_proj"].sharding.spec == jax.sharding.PartitionSpec(None, "tensor", "fsdp")
        assert params["embed_tokens"].sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
        # No device holds a whole (fsdp x tensor)-split matrix: each has a quarter.
        assert params["layers"]["up_proj"].addressable_shards[0].data.size * 4 == params["layers"]["up_proj"].size
        for got, want in zip(jax.tree.leaves(params), expected):
            assert got.dtype == jnp.bfloat16
            np.testing.assert_array_equal(np.asarray(got), want)


def test_tied_embeddings_stream_onto_the_mesh(tied_pair, tmp_path):
    hf_model, model = tied_pair
    hf_model.save_pretrained(tmp_path / "tied", safe_serialization=True)
    mesh = build_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    loaded = load_model(tmp_path / "tied", mesh=mesh, compute_dtype="float32")
    params = nnx.to_pure_dict(nnx.state(loaded, nnx.Param))
    assert "lm_head" not in params and params["embed_tokens"].sharding.spec == jax.sharding.PartitionSpec(
        "tensor", "fsdp"
    )
    for a, b in zip(_params(loaded), _params(model)):
        np.testing.assert_array_equal(a, b)


def test_codec_of_each_checkpoint_kind_renders_like_the_suites_reference(jaxtune_checkpoint, hf_checkpoint, doit_codec):
    messages = [{"role": "user", "content": "天空是什么颜色？"}]
    for checkpoint in (jaxtune_checkpoint, hf_checkpoint):
        codec = load_codec(tokenizer_location(checkpoint), "doit", 1004)
        assert codec.prompt_ids(messages) == doit_codec.prompt_ids(messages)
    assert tokenizer_location(jaxtune_checkpoint, "elsewhere").name == "elsewhere"


def test_template_tokens_beyond_the_model_vocabulary_are_an_error(tmp_path):
    # A base model (vocabulary 1000) never resized for DoIT's role tokens, with a tokenizer that lacks them.
    cfg = model_config("tiny-gqa", vocab_size=1000)
    params = jax.tree.map(
        lambda shape: np.zeros(shape, np.float32), expected_param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple)
    )
    path = tmp_path / "base-model"
    save_params(path, params, cfg, tokenizer_dir=DEMO_TOKENIZER)
    with pytest.raises(EvalSetupError, match=r"template 'doit' needs tokens .*beyond the model's vocabulary of 1000"):
        load_codec(tokenizer_location(path), "doit", 1000)
    # With a model that has room for them, the appended ids are exactly the study's.
    codec = load_codec(tokenizer_location(path), "doit", 1004)
    assert codec.prompt_ids([{"role": "user", "content": "好"}])[0] == DOIT_ADDED["<user>"]


def test_not_a_checkpoint_or_no_tokenizer(tmp_path, gqa_pair):
    with pytest.raises(EvalSetupError, match="is not a directory"):
        checkpoint_kind(tmp_path / "missing")
    with pytest.raises(EvalSetupError, match="neither a jaxtune params checkpoint"):
        checkpoint_kind(tmp_path)
    _, model = gqa_pair
    save_params(tmp_path / "bare", nnx.state(model, nnx.Param), model.cfg)
    with pytest.raises(EvalSetupError, match="carries no tokenizer/ folder: set eval.tokenizer"):
        tokenizer_location(tmp_path / "bare")
