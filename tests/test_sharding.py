"""jaxtune.sharding: meshes from config, layout validation before compiling, sharded init, batch placement."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxtune.config.loading import config_from_dict
from jaxtune.config.schema import MeshConfig, TrainConfig
from jaxtune.models.configs import model_config
from jaxtune.models.llama import Llama
from jaxtune.sharding import (
    RULES,
    BatchGeometry,
    LayoutError,
    abstract_model,
    batch_geometry,
    build_mesh,
    check_batch_rows,
    data_parallel_size,
    global_batch,
    init_params,
    resolve_mesh_shape,
    validate_batch_layout,
    validate_param_layout,
)


@pytest.fixture(autouse=True)
def _eight_devices():
    if jax.device_count() != 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS for 8 CPU devices)")


def test_mesh_shape_takes_the_rest_and_rejects_bad_products():
    assert resolve_mesh_shape(MeshConfig(data=2, fsdp=-1, tensor=2), 8) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert resolve_mesh_shape(MeshConfig(data=-1, fsdp=1, tensor=1, dcn_data=2), 8)["data"] == 4
    with pytest.raises(LayoutError, match=r"mesh.data=2 x mesh.fsdp=3 x mesh.tensor=1 = 6 devices.*8 devices"):
        resolve_mesh_shape(MeshConfig(data=2, fsdp=3, tensor=1), 8)
    with pytest.raises(LayoutError, match="only one mesh size may be -1"):
        resolve_mesh_shape(MeshConfig(data=-1, fsdp=-1), 8)
    with pytest.raises(
        LayoutError, match=r"mesh.fsdp=-1 cannot take the rest: the other sizes \(mesh.data=3 x mesh.tensor=1\)"
    ):
        resolve_mesh_shape(MeshConfig(data=3, fsdp=-1), 8)


def test_build_mesh_axes_and_sizes():
    mesh = build_mesh(MeshConfig(data=2, fsdp=-1, tensor=1))
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
    assert data_parallel_size(mesh) == 8
    # One process and no TPU slices: a multi-slice data axis cannot be formed.
    with pytest.raises(LayoutError, match=r"dcn_data=2 must equal the number of slices \(1\) or of processes \(1\)"):
        build_mesh(MeshConfig(data=1, fsdp=-1, dcn_data=2))


def test_33b_heads_on_a_tensor_axis_of_8_fail_naming_dimension_and_axis():
    mesh = build_mesh(MeshConfig(data=1, fsdp=1, tensor=8))
    _, shapes, axes = abstract_model(model_config("doit-33b", vocab_size=49957, vocab_pad_multiple=128))
    with pytest.raises(LayoutError) as err:
        validate_param_layout(shapes, axes, mesh)
    text = str(err.value)
    assert text.startswith("model.num_heads = 52 (dimension 'heads' of parameter layers.")
    assert "mesh axis 'tensor' (8): 8 does not divide 52" in text and "1, 2, 4, 13, 26, 52" in text
    assert "model.num_kv_heads (num_heads when unset) = 52" in text


def test_unpadded_vocabulary_on_a_tensor_axis_fails_naming_the_pad_setting():
    mesh = build_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    _, shapes, axes = abstract_model(model_config("tiny", vocab_size=49957))
    with pytest.raises(LayoutError, match=r"model.vocab_size \(padded to model.vocab_pad_multiple\) = 49957"):
        validate_param_layout(shapes, axes, mesh)
    _, shapes, axes = abstract_model(model_config("tiny", vocab_size=49957, vocab_pad_multiple=128))
    validate_param_layout(shapes, axes, mesh)  # 50048 rows split fine


def test_batch_not_divisible_by_data_parallel_size_fails():
    mesh = build_mesh(MeshConfig(data=2, fsdp=4, tensor=1))
    validate_batch_layout(64, 2, mesh)
    with pytest.raises(LayoutError, match=r"60 rows per microbatch, not divisible by the data-parallel size 8"):
        validate_batch_layout(60, 1, mesh)
    with pytest.raises(LayoutError, match=r"not divisible by train.microbatches=3"):
        validate_batch_layout(64, 3, mesh)
    with pytest.raises(LayoutError, match="8 rows per microbatch.*3 processes"):
        validate_batch_layout(8, 1, build_mesh(MeshConfig(data=1, fsdp=-1)), process_count=3)


def test_batch_geometry_counts_microbatches_devices_and_processes():
    mesh = build_mesh(MeshConfig(data=2, fsdp=2, tensor=2))  # data-parallel size 4
    rows = TrainConfig(global_batch_size=64, microbatches=2)
    assert batch_geometry(rows, mesh, 1) == BatchGeometry(device_rows=4, row_multiple=8, micro_rows=32, dealt=False)
    # Six processes feed the 4 data-parallel shards: a microbatch's rows must divide over both, lcm(4, 6) = 12.
    assert batch_geometry(rows, mesh, 6) == BatchGeometry(device_rows=12, row_multiple=24, micro_rows=32, dealt=False)
    # Packing counted in examples deals rows once the data is read; the validation rows round down to the devices.
    examples = TrainConfig(global_batch_size=30, microbatches=2, batch_unit="examples")
    assert batch_geometry(examples, mesh, 1, packing=True) == BatchGeometry(4, 8, 12, dealt=True)
    assert batch_geometry(examples, mesh, 1).dealt is False  # without packing, examples are rows
    tiny = TrainConfig(global_batch_size=2, microbatches=1, batch_unit="examples")
    assert batch_geometry(tiny, mesh, 1, packing=True).micro_rows == 4  # at least one row per device


def test_eval_rows_must_be_a_positive_multiple_of_the_data_parallel_size():
    mesh = build_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    check_batch_rows(8, mesh)
    check_batch_rows(3, None)
    with pytest.raises(
        LayoutError,
        match=r"eval.batch_size=6 is not a positive multiple of the data-parallel size 4 \(mesh.data=2 x mesh.fsdp=2, "
        r"the 'data' and 'fsdp' axes\); choose a multiple of 4 or another eval.mesh",
    ):
        check_batch_rows(6, mesh)
    with pytest.raises(
        LayoutError, match=r"validation batch rows=2 is not a positive multiple .* 4 \(.*multiple of 4$"
    ):
        check_batch_rows(2, mesh, "validation batch rows")
    with pytest.raises(LayoutError, match="eval.batch_size=0 is not a positive multiple of the data-parallel size 1$"):
        check_batch_rows(0, None)


def test_train_rejects_an_impossible_layout_before_reading_data_or_compiling(tmp_path):
    from jaxtune.train.trainer import train

    cfg = config_from_dict(
        {
            "run_dir": str(tmp_path),
            "model": {"preset": "doit-33b", "vocab_size": 49957, "vocab_pad_multiple": 128},
            "mesh": {"data": 1, "fsdp": 1, "tensor": 8},
            "train": {"global_batch_size": 64},
        }
    )
    # data.path is unset: reaching the data pipeline would raise a different error.
    with pytest.raises(LayoutError, match="^model.num_heads = 52"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_parameters_are_born_sharded_and_equal_an_unsharded_init():
    cfg = model_config("tiny-gqa")
    mesh = build_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    _, params = init_params(cfg, mesh, seed=3)
    # The same initialiser jitted on one device: bitwise equal (random draws do not depend on the layout).
    one_device = jax.jit(lambda: nnx.to_pure_dict(nnx.state(Llama(cfg, nnx.Rngs(3)))))()
    eager = nnx.to_pure_dict(nnx.state(Llama(cfg, nnx.Rngs(3))))
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for (path, got), want, close in zip(flat, jax.tree.leaves(one_device), jax.tree.leaves(eager)):
        name = jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=name)
        np.testing.assert_allclose(np.asarray(got), np.asarray(close), rtol=1e-6, atol=1e-8, err_msg=name)
    rules = dict(RULES)
    assert params["layers"]["q_proj"].sharding.spec == P(None, rules["embed"], rules["heads"], None)
    assert params["lm_head"].sharding.spec == P("fsdp", "tensor")
    assert params["layers"]["attn_norm"].sharding.is_fully_replicated
    # Each device holds an eighth of a (fsdp, tensor)-split matrix, not the whole.
    shard = params["layers"]["gate_proj"].addressable_shards[0].data
    assert shard.size * 8 == params["layers"]["gate_proj"].size


def test_global_batch_splits_rows_and_regroups_microbatches():
    mesh = build_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    rows = np.arange(8 * 4, dtype=np.int32).reshape(8, 4)
    whole = global_batch({"input_ids": rows}, mesh)["input_ids"]
    assert whole.shape == (8, 4) and whole.sharding.spec == P(("data", "fsdp"), None)
    np.testing.assert_array_equal(np.asarray(whole), rows)
    micro = global_batch({"input_ids": rows}, mesh, microbatches=2)["input_ids"]
    assert micro.shape == (2, 4, 4) and micro.sharding.spec == P(None, ("data", "fsdp"), None)
    np.testing.assert_array_equal(np.asarray(micro), rows.reshape(2, 4, 4))
    with pytest.raises(LayoutError, match="not divisible by train.microbatches=3"):
        global_batch({"input_ids": rows}, mesh, microbatches=3)


@pytest.mark.parametrize(
    "env, config, expected",
    [
        ({}, {}, None),  # one machine: nothing to initialise
        ({"TPU_WORKER_HOSTNAMES": "t1k-0"}, {}, None),  # a single-host TPU VM
        ({"TPU_WORKER_HOSTNAMES": "t1k-0,t1k-1"}, {}, {}),  # a pod slice: JAX reads everything itself
        ({"SLURM_NTASKS": "4"}, {}, {}),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, {}, {}),
        (
            {},
            {"coordinator_address": "127.0.0.1:9", "num_processes": 2, "process_id": 1},
            {"coordinator_address": "127.0.0.1:9", "num_processes": 2, "process_id": 1},
        ),
    ],
)
def test_distributed_initialisation_from_config_or_environment(monkeypatch, env, config, expected):
    from jaxtune.sharding import initialize_distributed

    for name in (
        "TPU_WORKER_HOSTNAMES",
        "SLURM_NTASKS",
        "OMPI_COMM_WORLD_SIZE",
        "JAX_COORDINATOR_ADDRESS",
        "MEGASCALE_COORDINATOR_ADDRESS",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    calls = []
    # jax.distributed.initialize itself is exercised for real by tests/train/test_multihost.py.
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    assert initialize_distributed(MeshConfig(**config)) is (expected is not None)
    assert calls == ([] if expected is None else [expected])


def test_process_settings_without_a_coordinator_are_rejected():
    from jaxtune.sharding import initialize_distributed

    with pytest.raises(LayoutError, match="need mesh.coordinator_address"):
        initialize_distributed(MeshConfig(num_processes=2))


def test_the_kv_cache_is_sharded_by_the_rules_rows_and_kv_heads():
    from jaxtune.models.decoder import init_cache
    from jaxtune.sharding import activation_rules

    cfg = model_config("tiny-gqa")  # 2 key/value heads
    mesh = build_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    model = nnx.eval_shape(lambda: Llama(cfg, nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    _, params = init_params(cfg, mesh)
    nnx.replace_by_pure_dict(state, params)
    ids = np.ones((8, 4), np.int32)

    def prefill(state, ids):
        model = nnx.merge(graphdef, state)
        return model(ids, positions=np.tile(np.arange(4, dtype=np.int32), (8, 1)), cache=init_cache(cfg, 8, 16))[1]

    with activation_rules(mesh):
        empty = jax.jit(lambda: init_cache(cfg, 8, 16))()
        filled = jax.jit(prefill)(state, ids)
    rows = tuple(dict(RULES)["cache_batch"])
    for cache in (empty, filled):
        assert cache.k.sharding.spec == P(None, rows, None, "tensor") and cache.v.sharding == cache.k.sharding
        assert cache.segment_ids.sharding.spec == P(rows)
        # Each device holds a quarter of the rows and half of the key/value heads.
        assert cache.k.addressable_shards[0].data.shape == (cfg.num_layers, 2, 16, 1, cfg.resolved_head_dim())


def test_bloom_layouts_split_heads_with_their_fused_qkv():
    """bloomz-7b1-mt's 32 heads split over a tensor axis of 8 (shapes only); the fused (E, H, 3, D) projection and
    its bias split by head, E-sized biases are replicated; bloom-tiny's 6 heads on 4 fail naming num_heads."""
    _, shapes, axes = abstract_model(model_config("bloomz-7b1-mt"))
    validate_param_layout(shapes, axes, build_mesh(MeshConfig(data=1, fsdp=1, tensor=8)))
    cfg = model_config("bloom-tiny", vocab_pad_multiple=128)
    _, params = init_params(cfg, build_mesh(MeshConfig(data=1, fsdp=4, tensor=2)))
    layers = params["layers"]
    assert layers["qkv_proj"].sharding.spec == P(None, "fsdp", "tensor", None, None)
    assert layers["qkv_bias"].sharding.spec == P(None, "tensor", None, None)
    assert layers["up_bias"].sharding.spec == P(None, "tensor")
    assert layers["o_bias"].sharding.is_fully_replicated and params["embed_norm_bias"].sharding.is_fully_replicated
    _, shapes, axes = abstract_model(cfg)
    with pytest.raises(LayoutError, match=r"model.num_heads = 6 .*mesh axis 'tensor' \(4\): 4 does not divide 6"):
        validate_param_layout(shapes, axes, build_mesh(MeshConfig(data=1, fsdp=2, tensor=4)))
