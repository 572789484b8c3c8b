"""jaxtune.checkpoint.train_state: restoring onto another mesh, the data iterator's position, the params-only view of
a train checkpoint, incomplete folders, which steps are kept, damaged steps and non-finite values.
(Params-only checkpoints are tested in test_params.py, epoch checkpoints in test_epochs.py.)"""

from __future__ import annotations

import re
import shutil

import jax
import numpy as np
import pytest
from damage import DAMAGES
from flax import nnx
from train.synthetic_stream import TINY_MODEL, synthetic_data

from jaxtune.checkpoint.errors import CheckpointError
from jaxtune.checkpoint.finite import NonFiniteParamsError
from jaxtune.checkpoint.params import load_params
from jaxtune.checkpoint.train_state import TrainCheckpointManager
from jaxtune.config.loading import model_config_from_dict
from jaxtune.config.schema import CheckpointConfig, MeshConfig, OptimConfig
from jaxtune.models.llama import Llama
from jaxtune.sharding import abstract_model, build_mesh, with_shardings
from jaxtune.train.optim import build_optimizer
from jaxtune.train.step import init_train_state, new_train_state, train_state_shardings


@pytest.fixture(autouse=True)
def _eight_devices():
    if jax.device_count() != 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS for 8 CPU devices)")


def _layout(cfg, mesh_cfg):
    mesh = build_mesh(mesh_cfg)
    tx, _ = build_optimizer(OptimConfig(), 10)
    _, shapes, axes = abstract_model(cfg)
    shardings = train_state_shardings(tx, shapes, axes, mesh)
    abstract = jax.eval_shape(lambda p: new_train_state(p, tx, 0), shapes)
    return (
        mesh,
        tx,
        shardings,
        with_shardings(shapes, shardings.params),
        with_shardings(abstract.train_fields(), shardings.train_fields()),
    )


def _host(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def test_train_state_saved_on_fsdp8_restores_on_data2_fsdp4(tmp_path):
    cfg = model_config_from_dict(dict(TINY_MODEL))
    mesh_a, tx, shard_a, _, _ = _layout(cfg, MeshConfig(data=1, fsdp=8, tensor=1))
    params = jax.device_put(_host(nnx.to_pure_dict(nnx.state(Llama(cfg, nnx.Rngs(4))))), shard_a.params)
    state = init_train_state(params, tx, 7, shard_a)
    rng = np.random.default_rng(0)
    # Non-trivial optimizer moments and counters, as after some training.
    state = state.replace(
        opt_state=jax.tree.map(
            lambda x: jax.device_put(rng.normal(size=x.shape).astype(x.dtype), x.sharding) if x.ndim else x,
            state.opt_state,
        ),
        step=state.step + 3,
        updates=state.updates + 3,
    )
    data = synthetic_data(num_rows=32, seq_len=16, global_batch=8, epochs=1)
    for _ in range(3):
        next(data.iterator)
    saved = _host((state.params, state.train_fields()))

    manager = TrainCheckpointManager(tmp_path, CheckpointConfig(max_to_keep=2, async_save=True), model_cfg=cfg)
    manager.save(3, state.params, state.train_fields(), data.iterator, {"note": "test"})
    expected_next = next(data.iterator)
    manager.close()

    mesh_b, _, shard_b, abstract_params, abstract_fields = _layout(cfg, MeshConfig(data=2, fsdp=4, tensor=1))
    fresh = synthetic_data(num_rows=32, seq_len=16, global_batch=8, epochs=1)
    manager = TrainCheckpointManager(tmp_path, CheckpointConfig(max_to_keep=2), model_cfg=cfg)
    assert manager.latest_step() == 3
    params_b, fields_b = manager.restore(3, abstract_params, abstract_fields, fresh.iterator)
    for got, want in zip(jax.tree.leaves(_host((params_b, fields_b))), jax.tree.leaves(saved)):
        np.testing.assert_array_equal(got, want)
    q = params_b["layers"]["q_proj"]
    assert q.sharding.mesh.shape == mesh_b.shape and q.sharding.spec == shard_b.params["layers"]["q_proj"].spec
    mu = fields_b["opt_state"][1][0].mu["layers"]["gate_proj"]
    assert mu.sharding.spec == shard_b.params["layers"]["gate_proj"].spec
    # The data iterator continues exactly where the saved one stood.
    got_next = next(fresh.iterator)
    for k in expected_next:
        np.testing.assert_array_equal(got_next[k], expected_next[k])
    assert manager.saved_config(3) == {"note": "test"}
    # The step folder doubles as a params-only checkpoint (eval, export-hf, init_from).
    loaded_cfg, loaded = load_params(manager.step_dir(3))
    assert loaded_cfg.hidden_size == cfg.hidden_size
    for got, want in zip(jax.tree.leaves(_host(loaded)), jax.tree.leaves(saved[0])):
        np.testing.assert_array_equal(got, want)
    manager.close()


def _save_steps(manager: TrainCheckpointManager, steps, data):
    for step in steps:
        manager.save(step, {"w": np.full((2,), step, np.float32)}, {"step": np.int32(step)}, data.iterator, {})
    manager.wait_until_finished()


def test_incomplete_folders_are_never_picked(tmp_path):
    cfg = model_config_from_dict(dict(TINY_MODEL))
    data = synthetic_data(num_rows=16, seq_len=16, global_batch=8, epochs=1)
    manager = TrainCheckpointManager(tmp_path, CheckpointConfig(max_to_keep=None, async_save=False), model_cfg=cfg)
    _save_steps(manager, [2, 3], data)
    manager.close()
    root = tmp_path / "checkpoints"
    shutil.copytree(root / "3", root / "5.orbax-checkpoint-tmp-1700000000")  # a save cut short before its rename
    shutil.copytree(root / "3", root / "7")  # an interrupted copy: no commit marker
    (root / "7" / "commit_success.txt").unlink()
    manager = TrainCheckpointManager(tmp_path, CheckpointConfig(max_to_keep=None), model_cfg=cfg)
    assert manager.all_steps() == [2, 3] and manager.latest_step() == 3
    assert manager.incomplete_steps() == [7]
    with pytest.raises(CheckpointError, match="no complete checkpoint at step 7"):
        manager.restore(
            7,
            {"w": jax.ShapeDtypeStruct((2,), np.float32)},
            {"step": jax.ShapeDtypeStruct((), np.int32)},
            data.iterator,
        )
    params, fields = manager.restore(
        3, {"w": jax.ShapeDtypeStruct((2,), np.float32)}, {"step": jax.ShapeDtypeStruct((), np.int32)}, data.iterator
    )
    assert np.asarray(params["w"]).tolist() == [3.0, 3.0] and int(fields["step"]) == 3
    manager.close()


def test_only_the_newest_max_to_keep_full_states_are_kept(tmp_path):
    cfg = model_config_from_dict(dict(TINY_MODEL))
    data = synthetic_data(num_rows=16, seq_len=16, global_batch=8, epochs=1)
    manager = TrainCheckpointManager(tmp_path, CheckpointConfig(max_to_keep=2, async_save=True), model_cfg=cfg)
    _save_steps(manager, range(1, 8), data)
    assert manager.all_steps() == [6, 7]
    assert all((manager.step_dir(s) / "model_config.json").is_file() for s in (6, 7))
    manager.close()


_ABSTRACT = ({"w": jax.ShapeDtypeStruct((2,), np.float32)}, {"step": jax.ShapeDtypeStruct((), np.int32)})


@pytest.mark.parametrize("item", ["params", "train_state"])
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_step_is_one_checkpoint_error_naming_its_folder(tmp_path, damage, item):
    cfg = model_config_from_dict(dict(TINY_MODEL))
    data = synthetic_data(num_rows=16, seq_len=16, global_batch=8, epochs=1)
    manager = TrainCheckpointManager(tmp_path, CheckpointConfig(max_to_keep=None, async_save=False), model_cfg=cfg)
    big = jax.ShapeDtypeStruct((4096,), np.float32)  # random: its compressed bytes fill a data file of their own
    values = {step: np.random.default_rng(step).normal(size=(2, 4096)).astype(np.float32) for step in (2, 3)}
    for step in (2, 3):
        manager.save(step, {"w": values[step][0]}, {"m": values[step][1]}, data.iterator, {})
    manager.wait_until_finished()
    DAMAGES[damage](manager.step_dir(3) / item)
    # Orbax raises bare Exceptions, ValueErrors or fails on a None metadata tree: all end up as one error.
    with pytest.raises(
        CheckpointError,
        match=rf"^{re.escape(str(manager.step_dir(3)))}: damaged checkpoint.*; the "
        rf"previous complete step is {re.escape(str(manager.step_dir(2)))}",
    ):
        manager.restore(3, {"w": big}, {"m": big}, data.iterator)
    params, fields = manager.restore(2, {"w": big}, {"m": big}, data.iterator)
    np.testing.assert_array_equal(np.stack([params["w"], fields["m"]]), values[2])
    manager.close()


def test_restore_refuses_non_finite_values_naming_the_array(tmp_path):
    cfg = model_config_from_dict(dict(TINY_MODEL))
    data = synthetic_data(num_rows=16, seq_len=16, global_batch=8, epochs=1)
    manager = TrainCheckpointManager(tmp_path, CheckpointConfig(max_to_keep=None, async_save=False), model_cfg=cfg)
    manager.save(4, {"w": np.array([1.0, np.nan], np.float32)}, {"step": np.int32(4)}, data.iterator, {})
    manager.save(
        5, {"w": np.ones(2, np.float32)}, {"step": np.int32(5), "mu": np.array([np.inf], np.float32)}, data.iterator, {}
    )
    manager.wait_until_finished()
    with pytest.raises(
        NonFiniteParamsError,
        match=r"checkpoints/4: non-finite values \(NaN or inf\) in params\.w "
        r"\(1 values\)",
    ):
        manager.restore(4, *_ABSTRACT, data.iterator)
    with pytest.raises(NonFiniteParamsError, match=r"in train_state\.mu \(1 values\)"):
        manager.restore(5, _ABSTRACT[0], dict(_ABSTRACT[1], mu=jax.ShapeDtypeStruct((1,), np.float32)), data.iterator)
    manager.close()
