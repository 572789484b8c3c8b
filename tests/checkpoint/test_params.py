"""jaxtune.checkpoint.params: save_params / load_params / restore_model on Orbax, damaged and non-finite checkpoints,
and the hint naming another complete step."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from damage import DAMAGES
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from jaxtune.checkpoint.errors import CheckpointError
from jaxtune.checkpoint.finite import NonFiniteParamsError
from jaxtune.checkpoint.params import load_model_config, load_params, restore_model, save_params
from jaxtune.checkpoint.tokenizer_files import tokenizer_path
from jaxtune.models.configs import model_config
from jaxtune.models.llama import Llama


@pytest.fixture(scope="module")
def model() -> Llama:
    return Llama(model_config("tiny-gqa", vocab_pad_multiple=128), nnx.Rngs(7))


def params_of(model: Llama) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def test_save_then_load_gives_the_same_arrays_and_config(model: Llama, tmp_path: Path) -> None:
    save_params(tmp_path / "ck", nnx.state(model, nnx.Param), model.cfg)
    cfg, params = load_params(tmp_path / "ck")
    assert cfg == dataclasses.replace(model.cfg, preset=None)
    for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(params_of(model))):
        assert isinstance(got, jax.Array)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=str(path))
    assert tokenizer_path(tmp_path / "ck") is None
    assert json.loads((tmp_path / "ck" / "model_config.json").read_text())["num_kv_heads"] == 2


def test_restored_model_computes_the_same_logits(model: Llama, tmp_path: Path) -> None:
    save_params(tmp_path / "ck", params_of(model), model.cfg)
    restored = restore_model(tmp_path / "ck", remat_policy="full")
    assert restored.cfg.remat_policy == "full"
    ids = jnp.arange(12, dtype=jnp.int32)[None]
    logits = nnx.jit(lambda m, x: m(x)[0])
    np.testing.assert_allclose(np.asarray(logits(restored, ids)), np.asarray(logits(model, ids)), atol=1e-5)


def test_load_casts_to_dtype_and_to_host_numpy(model: Llama, tmp_path: Path) -> None:
    numpy_params = jax.tree.map(np.asarray, params_of(model))
    save_params(tmp_path / "ck", numpy_params, model.cfg)  # numpy trees are written as they are
    cfg, params = load_params(tmp_path / "ck", dtype="bfloat16", as_numpy=True)
    assert cfg.param_dtype == "bfloat16"
    leaf = params["layers"]["q_proj"]
    assert isinstance(leaf, np.ndarray) and leaf.dtype == jnp.bfloat16
    np.testing.assert_array_equal(leaf, numpy_params["layers"]["q_proj"].astype(jnp.bfloat16))


def test_load_places_arrays_with_the_given_shardings(model: Llama, tmp_path: Path) -> None:
    if len(jax.devices()) < 4:
        pytest.skip("needs several (simulated) devices")
    save_params(tmp_path / "ck", params_of(model), model.cfg)
    mesh = jax.make_mesh((4,), ("fsdp",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:4])
    replicated = NamedSharding(mesh, PartitionSpec())
    shardings = jax.tree.map(lambda _: replicated, params_of(model))
    shardings["embed_tokens"] = NamedSharding(mesh, PartitionSpec("fsdp", None))
    _, params = load_params(tmp_path / "ck", shardings=shardings)
    embed = params["embed_tokens"]
    assert embed.sharding == shardings["embed_tokens"]
    assert {s.data.shape for s in embed.addressable_shards} == {(1024 // 4, model.cfg.hidden_size)}
    np.testing.assert_array_equal(np.asarray(embed), np.asarray(model.embed_tokens[...]))


def test_tokenizer_files_and_added_tokens_travel_with_the_checkpoint(model: Llama, tmp_path: Path) -> None:
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.model").write_bytes(b"sentencepiece bytes")
    (tok / "model.safetensors").write_bytes(b"not a tokenizer file")
    save_params(tmp_path / "ck", params_of(model), model.cfg, tokenizer_dir=tok, added_tokens={"<eot>": 999})
    found = tokenizer_path(tmp_path / "ck")
    assert sorted(p.name for p in found.iterdir()) == ["added_tokens.json", "tokenizer.model"]
    assert json.loads((found / "added_tokens.json").read_text()) == {"<eot>": 999}


def test_errors_name_the_problem(model: Llama, tmp_path: Path) -> None:
    params = params_of(model)
    save_params(tmp_path / "ck", params, model.cfg)
    with pytest.raises(CheckpointError, match="already exists"):
        save_params(tmp_path / "ck", params, model.cfg)
    with pytest.raises(CheckpointError, match="not a jaxtune params checkpoint"):
        load_params(tmp_path)
    wrong = dataclasses.replace(model.cfg, num_layers=3)
    with pytest.raises(
        CheckpointError,
        match=r"param layers\.attn_norm has shape \(2, 64\), the model config "
        r"needs \(3, 64\)",
    ):
        save_params(tmp_path / "other", params, wrong)
    del params["norm"]
    with pytest.raises(CheckpointError, match=r"missing \['norm'\]"):
        save_params(tmp_path / "other", params, model.cfg)
    (tmp_path / "ck" / "model_config.json").write_text("{}")
    assert load_model_config(tmp_path / "ck").vocab_size == 32000  # defaults: then the shapes disagree
    with pytest.raises(
        CheckpointError,
        match=r"param embed_tokens has shape \(1024, 64\), the model config needs "
        r"\(32000, 4096\)",
    ):
        load_params(tmp_path / "ck", as_numpy=True)
    (tmp_path / "ck" / "model_config.json").write_text('{"hidden": 64}')
    with pytest.raises(CheckpointError, match=r"model_config\.json: unknown config key 'model\.hidden'"):
        load_params(tmp_path / "ck")


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_params_folder_is_one_error_naming_the_folder(model: Llama, tmp_path: Path, damage: str) -> None:
    path = save_params(tmp_path / "ck", nnx.state(model, nnx.Param), model.cfg)
    DAMAGES[damage](path / "params")
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: damaged checkpoint"):
        load_params(path)


def _with_values(model: Llama, name: str, values: list[float]) -> dict:
    params = jax.tree.map(np.asarray, params_of(model))
    table = params[name].copy()
    table.reshape(-1)[: len(values)] = values
    params[name] = table
    return params


def test_non_finite_values_are_refused_naming_the_array(model: Llama, tmp_path: Path) -> None:
    params = _with_values(model, "lm_head", [np.nan, np.inf, 2.5e38])
    path = save_params(tmp_path / "ck", params, model.cfg)
    for as_numpy in (False, True):  # on device (one jitted reduction) and on the host (export-hf)
        with pytest.raises(
            NonFiniteParamsError,
            match=rf"^{re.escape(str(path))}: non-finite values .* in params\.lm_head \(2 values\): ",
        ):
            load_params(path, as_numpy=as_numpy)
    bf16 = save_params(
        tmp_path / "bf16",
        jax.tree.map(lambda a: a.astype(jnp.bfloat16), params),
        dataclasses.replace(model.cfg, param_dtype="bfloat16"),
    )
    with pytest.raises(NonFiniteParamsError, match=r"params\.lm_head \(2 values\)"):  # numpy misses bfloat16's NaN
        load_params(bf16, as_numpy=True)


def test_a_missing_or_partial_step_offers_the_previous_complete_one(model: Llama, tmp_path: Path) -> None:
    root = tmp_path / "run" / "checkpoints"
    for step in (4, 8):
        save_params(root / str(step), nnx.state(model, nnx.Param), model.cfg)
        (root / str(step) / "commit_success.txt").write_text("done")
    partial = root / "12"
    save_params(partial, nnx.state(model, nnx.Param), model.cfg)
    (partial / "model_config.json").unlink()  # a step whose save never finished

    def at(step: int) -> str:
        return re.escape(str(root / str(step)))

    with pytest.raises(
        CheckpointError, match=rf"^{at(12)}: .*incomplete step .*; the previous complete step is {at(8)}$"
    ):
        load_params(partial)
    with pytest.raises(
        CheckpointError,
        match=rf"^{at(16)}: no such checkpoint folder; the previous complete step is "
        rf"{at(8)}$",
    ):
        load_params(root / "16")
    with pytest.raises(
        CheckpointError,
        match=rf"^{at(2)}: no such checkpoint folder; the newest complete step is "
        rf"{at(8)}$",
    ):
        load_params(root / "2")
