"""jaxtune.checkpoint.epochs: params-only epoch checkpoints in the epoch dtype, and which checkpoint holds an epoch
(its epoch checkpoint, else the train checkpoint of the step that ended it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from train.synthetic_stream import TINY_MODEL, synthetic_data

import jaxtune
from jaxtune.checkpoint.epochs import EpochCheckpointManager, epoch_checkpoint_path
from jaxtune.checkpoint.errors import CheckpointError
from jaxtune.checkpoint.params import load_params
from jaxtune.checkpoint.train_state import TrainCheckpointManager
from jaxtune.config.loading import model_config_from_dict
from jaxtune.config.schema import CheckpointConfig, MeshConfig, OptimConfig
from jaxtune.models.llama import Llama
from jaxtune.sharding import abstract_model, build_mesh
from jaxtune.train.optim import build_optimizer
from jaxtune.train.step import train_state_shardings


@pytest.fixture(autouse=True)
def _eight_devices():
    if jax.device_count() != 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS for 8 CPU devices)")


def _host(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def _tiny_params(cfg, mesh):
    """The tiny model's parameters, sharded over ``mesh`` as training holds them (float32 masters)."""
    _, shapes, axes = abstract_model(cfg)
    shardings = train_state_shardings(build_optimizer(OptimConfig(), 10)[0], shapes, axes, mesh)
    params = nnx.to_pure_dict(nnx.state(Llama(cfg, nnx.Rngs(3)), nnx.Param))
    return jax.tree.map(lambda x, s: jax.device_put(x, s), params, shardings.params)


def test_epoch_checkpoints_hold_the_params_in_the_epoch_dtype(tmp_path):
    cfg = model_config_from_dict(dict(TINY_MODEL))
    mesh = build_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    params = _tiny_params(cfg, mesh)
    tokenizer = Path(jaxtune.__file__).parent / "demo" / "tokenizer"
    manager = EpochCheckpointManager(
        tmp_path,
        model_cfg=cfg,
        dtype="bfloat16",
        async_save=True,
        tokenizer_src=tokenizer,
        added_tokens={"<|role|>": 127},
    )
    manager.save(1, 3, params)
    manager.save(2, 6, params)
    manager.close()
    assert manager.all_epochs() == [1, 2]
    folder = tmp_path / "epochs" / "2"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith("_")) == [
        "commit_success.txt",
        "epoch",
        "model_config.json",
        "params",
        "tokenizer",
    ]  # no optimizer, no iterator
    loaded_cfg, loaded = load_params(folder)
    assert loaded_cfg.param_dtype == "bfloat16" and loaded_cfg.hidden_size == cfg.hidden_size
    want = jax.tree.map(lambda x: np.asarray(jax.device_get(x)).astype(jnp.bfloat16), params)
    for got, ref in zip(jax.tree.leaves(_host(loaded)), jax.tree.leaves(want)):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_array_equal(got, ref)
    # checkpoint.init_from reads it back as float32 masters onto the training shardings.
    _, as_fp32 = load_params(folder, shardings=jax.tree.map(lambda x: x.sharding, params), dtype="float32")
    for got, ref in zip(jax.tree.leaves(_host(as_fp32)), jax.tree.leaves(want)):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, ref.astype(np.float32))
    assert (folder / "tokenizer" / "tokenizer.model").is_file()
    assert json.loads((folder / "tokenizer" / "added_tokens.json").read_text()) == {"<|role|>": 127}


def test_an_epoch_is_found_as_an_epoch_checkpoint_or_the_train_checkpoint_that_ended_it(tmp_path):
    cfg = model_config_from_dict(dict(TINY_MODEL))
    data = synthetic_data(num_rows=16, seq_len=16, global_batch=8, epochs=1)
    manager = TrainCheckpointManager(tmp_path, CheckpointConfig(max_to_keep=1, async_save=False), model_cfg=cfg)
    manager.save(6, {"w": np.full((2,), 6, np.float32)}, {"step": np.int32(6)}, data.iterator, {})
    manager.close()
    epochs = EpochCheckpointManager(tmp_path, model_cfg=cfg, dtype="float32", async_save=False)
    epochs.save(1, 3, _tiny_params(cfg, build_mesh(MeshConfig())))
    epochs.close()
    assert os.fspath(epoch_checkpoint_path(tmp_path, 1, 3)) == os.fspath(tmp_path / "epochs" / "1")
    assert os.fspath(epoch_checkpoint_path(tmp_path, 2, 6)) == os.fspath(tmp_path / "checkpoints" / "6")
    with pytest.raises(
        CheckpointError,
        match=r"no complete checkpoint of epoch 3: .*epoch checkpoints there: \[1\]; "
        r"train checkpoints at steps: \[6\]",
    ):
        epoch_checkpoint_path(tmp_path, 3, 9)


def test_exporting_an_epoch_checkpoint_logs_no_missing_metadata_warning(tmp_path, caplog):
    """An epoch's params/ is an item of a CheckpointManager step (its _CHECKPOINT_METADATA lies one level up):
    reading it is not a reason for Orbax's "Metadata file does not exist" warning."""
    from jaxtune.convert.hf import export_hf

    cfg = model_config_from_dict(dict(TINY_MODEL))
    mesh = build_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    manager = EpochCheckpointManager(tmp_path, model_cfg=cfg, dtype="float32", async_save=False)
    manager.save(1, 3, _tiny_params(cfg, mesh))
    manager.close()
    folder = tmp_path / "epochs" / "1"
    assert not (folder / "params" / "_CHECKPOINT_METADATA").exists()  # what made Orbax warn
    with caplog.at_level("WARNING", logger="absl"):
        export_hf(folder, tmp_path / "hf")
    assert (tmp_path / "hf" / "config.json").is_file()
    assert not [r for r in caplog.records if "Metadata file does not exist" in r.getMessage()]
