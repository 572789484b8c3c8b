"""jaxtune.train.layerwise: the layer-by-layer backward pass gives the loss and gradients of jax.value_and_grad
(the autodiff path of jaxtune.train.step), for both model families, with and without microbatches and bf16 compute,
and a sharded train step with it takes the unsharded autodiff step's update."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtune.config.loading import load_config, model_config_from_dict
from jaxtune.config.schema import ConfigError, MeshConfig, OptimConfig
from jaxtune.models.registry import create_model
from jaxtune.sharding import abstract_model, build_mesh, global_batch, param_shardings
from jaxtune.train.layerwise import layerwise_loss_and_grads
from jaxtune.train.optim import build_optimizer
from jaxtune.train.step import init_train_state, loss_and_grads, make_train_step, train_state_shardings

from .synthetic_stream import TINY_MODEL, make_row

pytestmark = pytest.mark.long  # minutes: scheduled first (tests/conftest.py)

SEQ = 32
KEYS = ("input_ids", "targets", "loss_weights", "segment_ids", "positions")
FAMILIES = {
    "llama": dict(TINY_MODEL, num_layers=3),
    "bloom": dict(TINY_MODEL, family="bloom", num_layers=3, num_kv_heads=4, tie_word_embeddings=True),
    "qwen2": dict(TINY_MODEL, family="qwen2", num_layers=3),
}


def _rows(n: int, start: int = 0) -> dict[str, np.ndarray]:
    rows = [make_row(start + i, SEQ, TINY_MODEL["vocab_size"], seed=7) for i in range(n)]
    return {k: np.stack([r[k] for r in rows]) for k in KEYS}


def _params(cfg, seed: int = 0):
    return nnx.to_pure_dict(nnx.state(create_model(cfg, nnx.Rngs(seed))))


def _host(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("microbatches,compute_dtype", [(1, "float32"), (2, "float32"), (2, "bfloat16")])
def test_layerwise_gradients_equal_autodiff(family, microbatches, compute_dtype):
    cfg = model_config_from_dict(dict(FAMILIES[family], compute_dtype=compute_dtype))
    graphdef, _, _ = abstract_model(cfg)
    params = _params(cfg)
    batch = {k: v.reshape(microbatches, 4 // microbatches, SEQ) for k, v in _rows(4).items()}
    cast = None if compute_dtype == "float32" else compute_dtype

    def run(fn):
        return jax.jit(lambda p, b: fn(graphdef, p, b, compute_dtype=cast))(params, batch)

    loss_a, grads_a, weight_a = run(loss_and_grads)
    loss_b, grads_b, weight_b = run(layerwise_loss_and_grads)
    assert float(weight_a) == float(weight_b) > 0
    tol = dict(rtol=1e-5, atol=1e-7) if compute_dtype == "float32" else dict(rtol=2e-2, atol=1e-4)
    np.testing.assert_allclose(float(loss_b), float(loss_a), **tol)
    assert jax.tree.structure(grads_a) == jax.tree.structure(grads_b)
    flat_a = jax.tree_util.tree_leaves_with_path(grads_a)
    for (path, a), b in zip(flat_a, jax.tree.leaves(grads_b)):
        assert b.dtype == jnp.float32, path
        assert np.abs(np.asarray(a)).max() > 0, path  # every weight gets a gradient (the comparison means something)
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), err_msg=jax.tree_util.keystr(path), **tol)


def test_layerwise_sharded_step_takes_the_unsharded_autodiff_update():
    if jax.device_count() != 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS for 8 CPU devices)")
    cfg = model_config_from_dict(dict(FAMILIES["llama"], remat_policy="full"))
    initial = _host(_params(cfg, seed=1))
    batches = [_rows(8, 0), _rows(8, 8)]
    results = []
    for mesh_cfg, devices, backward in [
        (MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1], "autodiff"),
        (MeshConfig(data=2, fsdp=2, tensor=2), None, "layerwise"),
    ]:
        mesh = build_mesh(mesh_cfg, devices)
        tx, schedule = build_optimizer(OptimConfig(learning_rate=1e-2, eps=1e-5), 10)
        graphdef, shapes, axes = abstract_model(cfg)
        shardings = train_state_shardings(tx, shapes, axes, mesh)
        state = init_train_state(jax.device_put(initial, param_shardings(axes, mesh)), tx, 0, shardings)
        step = make_train_step(graphdef, tx, schedule, mesh=mesh, state_shardings=shardings, backward=backward)
        losses = []
        for b in batches:
            state, metrics = step(state, global_batch(b, mesh, microbatches=2))
            losses.append(float(metrics.compute()["loss"]))
        results.append((losses, _host(state.params)))
    (loss_a, params_a), (loss_b, params_b) = results
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    assert np.abs(params_a["layers"]["q_proj"] - initial["layers"]["q_proj"]).mean() > 5e-3


def test_layerwise_needs_full_remat():
    with pytest.raises(ConfigError, match=r"train\.backward=layerwise .*model\.remat_policy=full, got 'dots'"):
        load_config(None, ["train.backward=layerwise", "model.remat_policy=dots"])
    cfg = load_config(None, ["train.backward=layerwise", "model.remat_policy=full"])
    assert dataclasses.asdict(cfg)["train"]["backward"] == "layerwise"
