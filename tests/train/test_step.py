"""jaxtune.train.step: sharded vs unsharded steps, the token-mean loss, gradient accumulation, the NaN guard and the
per-ability evaluation sums, each against an independent computation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_level import DEFAULT_LEVEL
from flax import nnx

from jaxtune.config.loading import model_config_from_dict
from jaxtune.config.schema import MeshConfig, OptimConfig
from jaxtune.models.llama import Llama
from jaxtune.sharding import abstract_model, activation_rules, build_mesh, global_batch, param_shardings
from jaxtune.train.optim import build_optimizer
from jaxtune.train.step import (
    eval_sums,
    init_train_state,
    loss_and_grads,
    make_eval_step,
    make_train_step,
    train_state_shardings,
)

from .reference_loss import token_cross_entropy
from .synthetic_stream import TINY_MODEL, make_row

pytestmark = pytest.mark.long  # minutes: scheduled first (tests/conftest.py)

SEQ = 32
KEYS = ("input_ids", "targets", "loss_weights", "segment_ids", "positions")


@pytest.fixture(autouse=True)
def _eight_devices():
    if jax.device_count() != 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS for 8 CPU devices)")


@pytest.fixture(scope="module")
def cfg():
    return model_config_from_dict(dict(TINY_MODEL))


def _rows(n: int, start: int = 0, keys=KEYS) -> dict[str, np.ndarray]:
    rows = [make_row(start + i, SEQ, TINY_MODEL["vocab_size"], seed=5) for i in range(n)]
    return {k: np.stack([r[k] for r in rows]) for k in keys}


@pytest.fixture(scope="module")
def initial_params(cfg):
    """Host copies of the model's initial parameters (sharded initialisation is tested in test_sharding.py)."""
    return {seed: _host(nnx.to_pure_dict(nnx.state(Llama(cfg, nnx.Rngs(seed))))) for seed in (0, 1, 2)}


def _place(params, mesh, cfg):
    _, shapes, axes = abstract_model(cfg)
    return jax.device_put(params, param_shardings(axes, mesh))


def _setup(cfg, initial, mesh_cfg: MeshConfig, devices=None, steps: int = 10, eps: float = 1e-8):
    mesh = build_mesh(mesh_cfg, devices)
    optim = OptimConfig(learning_rate=1e-2, weight_decay=0.1, max_grad_norm=1.0, eps=eps)
    tx, schedule = build_optimizer(optim, steps)
    graphdef, shapes, axes = abstract_model(cfg)
    shardings = train_state_shardings(tx, shapes, axes, mesh)
    state = init_train_state(_place(initial[0], mesh, cfg), tx, 0, shardings)
    step = make_train_step(graphdef, tx, schedule, mesh=mesh, state_shardings=shardings)
    return mesh, graphdef, state, step


def _host(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def test_sharded_and_unsharded_steps_give_the_same_loss_and_update(cfg, initial_params):
    batches = [_rows(8, 0), _rows(8, 8)]
    results = []
    for mesh_cfg, devices in [
        (MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1]),
        (MeshConfig(data=2, fsdp=2, tensor=2), None),
    ]:
        # Adam's first steps are lr x g / (|g| + eps): with the default eps, gradients near 1e-9 turn summation-order
        # noise into visible update differences; a larger eps keeps the comparison about the sharding.
        mesh, _, state, step = _setup(cfg, initial_params, mesh_cfg, devices, eps=1e-5)
        losses = []
        for b in batches:
            state, metrics = step(state, global_batch(b, mesh, microbatches=1))
            losses.append(float(metrics.compute()["loss"]))
        results.append((losses, _host(state.params), _host(state.opt_state)))
    (loss_1, params_1, opt_1), (loss_8, params_8, opt_8) = results
    np.testing.assert_allclose(loss_8, loss_1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves((params_8, opt_8)), jax.tree.leaves((params_1, opt_1))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # And the update did something (by about the learning rate).
    moved = np.abs(params_1["layers"]["q_proj"] - np.asarray(initial_params[0]["layers"]["q_proj"]))
    assert moved.mean() > 5e-3


def _reference_loss(cfg, params, batch) -> float:
    """Mean cross-entropy over every supervised token, from the unsharded model's logits and numpy."""
    ce = token_cross_entropy(cfg, params, batch)
    w = batch["loss_weights"].astype(np.float64)
    return float((ce * w).sum() / w.sum())


def test_loss_is_the_mean_over_all_supervised_tokens_across_microbatches(cfg, initial_params):
    batch = _rows(8)
    # Very different supervised counts per row: a per-sequence mean would differ from the token mean.
    batch["loss_weights"][:4, : SEQ // 2] = 0.0
    batch["loss_weights"][4:] = (batch["segment_ids"][4:] > 0).astype(np.float32)
    batch["loss_weights"][4:, -1] = 0.0
    mesh, _, state, step = _setup(cfg, initial_params, MeshConfig(data=2, fsdp=2, tensor=2))
    before = _host(state.params)
    _, metrics = step(state, global_batch(batch, mesh, microbatches=2))
    got = metrics.compute()
    want = _reference_loss(cfg, before, batch)
    assert float(got["loss"]) == pytest.approx(want, rel=1e-5)
    assert float(got["supervised_tokens"]) == batch["loss_weights"].sum()
    assert float(got["tokens"]) == (batch["segment_ids"] > 0).sum()
    per_row = [(_reference_loss(cfg, before, {k: v[i : i + 1] for k, v in batch.items()})) for i in range(8)]
    assert abs(np.mean(per_row) - want) > 1e-3  # the two definitions really differ on this batch


def test_four_microbatches_of_two_equal_one_batch_of_eight(cfg, initial_params):
    mesh = build_mesh(MeshConfig(data=1, fsdp=2, tensor=2), jax.devices()[:4])
    graphdef, _, _ = abstract_model(cfg)
    params = _place(initial_params[1], mesh, cfg)
    batch = _rows(8, 40)
    fn = jax.jit(lambda p, b: loss_and_grads(graphdef, p, b))
    loss_1, grads_1, n_1 = fn(params, global_batch(batch, mesh, microbatches=1))
    loss_4, grads_4, n_4 = fn(params, global_batch(batch, mesh, microbatches=4))
    assert float(n_1) == float(n_4) == batch["loss_weights"].sum()
    assert float(loss_4) == pytest.approx(float(loss_1), rel=1e-6)
    for path, a in jax.tree_util.tree_flatten_with_path(grads_4)[0]:
        b = grads_1
        for k in path:
            b = b[k.key]
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7, err_msg=jax.tree_util.keystr(path)
        )
    # A microbatch's own normalisation would give a different gradient: check the test can tell.
    loss_half, _, _ = fn(params, global_batch({k: v[:2] for k, v in batch.items()}, mesh, microbatches=1))
    assert abs(float(loss_half) - float(loss_1)) > 1e-4


def test_a_non_finite_step_never_reaches_the_parameters(cfg, initial_params):
    mesh, _, state, step = _setup(cfg, initial_params, MeshConfig(data=1, fsdp=4, tensor=2))
    good = global_batch(_rows(8), mesh, microbatches=1)
    bad_rows = _rows(8)
    bad_rows["loss_weights"][3, 5] = np.nan
    bad = global_batch(bad_rows, mesh, microbatches=1)

    state, _ = step(state, good)
    before = _host((state.params, state.opt_state))
    state, metrics = step(state, bad)
    after = _host((state.params, state.opt_state))
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)
    values = metrics.compute()
    assert float(values["skipped_steps"]) == 1.0
    assert int(state.step) == 2 and int(state.updates) == 1 and int(state.bad_steps) == 1
    state, _ = step(state, bad)
    assert int(state.bad_steps) == 2 and int(state.skipped_steps) == 2
    state, metrics = step(state, good)
    assert int(state.bad_steps) == 0 and int(state.updates) == 2 and int(state.skipped_steps) == 2
    assert np.isfinite(float(metrics.compute()["loss"]))
    assert not np.array_equal(_host(state.params)["norm"], before[0]["norm"])


def test_the_select_form_of_the_guard_matches_the_cond_form(cfg, initial_params):
    """Accelerators select the update per element instead of branching: the same update on a good batch, the old
    state bit for bit on a non-finite one (one device: XLA:CPU keeps the cond form under a mesh)."""
    from jaxtune.train.step import new_train_state, train_step

    tx, schedule = build_optimizer(OptimConfig(learning_rate=1e-2, weight_decay=0.1), 10)
    graphdef, _, _ = abstract_model(cfg)
    state = new_train_state(jax.tree.map(jnp.asarray, initial_params[0]), tx, 0)
    good = {k: v[None] for k, v in _rows(4).items()}
    bad = {k: v.copy() for k, v in good.items()}
    bad["loss_weights"][0, 1, 2] = np.nan
    run = jax.jit(
        lambda st, b, sel: train_step(st, b, graphdef=graphdef, tx=tx, schedule=schedule, select_update=sel)[0],
        static_argnums=2,
        compiler_options=DEFAULT_LEVEL,  # two programs bit for bit: as jaxtune compiles them
    )
    for batch in (good, bad):
        by_cond, by_select = _host(run(state, batch, False)), _host(run(state, batch, True))
        for a, b in zip(jax.tree.leaves(by_cond), jax.tree.leaves(by_select)):
            np.testing.assert_array_equal(a, b)
    unchanged = _host(run(state, bad, True))
    for a, b in zip(
        jax.tree.leaves((unchanged.params, unchanged.opt_state)),
        jax.tree.leaves(_host((state.params, state.opt_state))),
    ):
        np.testing.assert_array_equal(a, b)


def test_eval_sums_split_the_loss_by_ability(cfg, initial_params):
    mesh = build_mesh(MeshConfig(data=2, fsdp=4, tensor=1))
    graphdef, _, _ = abstract_model(cfg)
    params = _place(initial_params[2], mesh, cfg)
    batch = _rows(8, 70, keys=KEYS + ("ability_ids",))
    loss_sums, weight_sums = make_eval_step(
        graphdef, 3, mesh=mesh, param_shardings=jax.tree.map(lambda a: a.sharding, params)
    )(params, global_batch(batch, mesh))
    host = _host(params)
    for ability in range(3):
        mask = (batch["ability_ids"] == ability).astype(np.float32)
        sub = dict(batch, loss_weights=batch["loss_weights"] * mask)
        if sub["loss_weights"].sum() == 0:
            continue
        want = _reference_loss(cfg, host, sub) * sub["loss_weights"].sum()
        assert float(loss_sums[ability]) == pytest.approx(want, rel=1e-5)
        assert float(weight_sums[ability]) == sub["loss_weights"].sum()
    assert float(weight_sums.sum()) == batch["loss_weights"][batch["ability_ids"] >= 0].sum()
    direct = eval_sums(graphdef, host, {k: jnp.asarray(v) for k, v in batch.items()}, 3)
    np.testing.assert_allclose(np.asarray(direct[0]), np.asarray(loss_sums), rtol=1e-5)


def test_bfloat16_compute_keeps_float32_master_weights_and_moments(cfg, initial_params):
    import dataclasses

    bf16 = dataclasses.replace(cfg, compute_dtype="bfloat16")
    mesh, _, state, step = _setup(bf16, initial_params, MeshConfig(data=1, fsdp=8, tensor=1))
    batch = _rows(8, 90)
    state, metrics = step(state, global_batch(batch, mesh, microbatches=1))
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    mu = state.opt_state[1][0].mu
    assert {x.dtype for x in jax.tree.leaves(mu)} == {jnp.dtype(jnp.float32)}
    want = _reference_loss(cfg, initial_params[0], batch)  # float32 reference
    assert float(metrics.compute()["loss"]) == pytest.approx(want, rel=2e-2)


@pytest.mark.parametrize("microbatches", [1, 2])
def test_casting_weights_before_the_step_changes_no_loss_or_gradient(cfg, initial_params, microbatches):
    """bf16 compute: weights cast once before the forward (bf16 all-gathers and per-microbatch gradients) give the
    loss and float32 gradients of the model's own per-use casts, bit for bit."""
    import dataclasses

    bf16 = dataclasses.replace(cfg, compute_dtype="bfloat16")
    graphdef, _, _ = abstract_model(bf16)
    batch = _rows(4, 40)
    micro = {k: v.reshape(microbatches, 4 // microbatches, SEQ) for k, v in batch.items()}
    params = jax.tree.map(jnp.asarray, initial_params[1])
    run = jax.jit(lambda p, b, dt: loss_and_grads(graphdef, p, b, compute_dtype=dt), static_argnums=2)
    loss_a, grads_a, _ = run(params, micro, None)
    loss_b, grads_b, _ = run(params, micro, "bfloat16")
    assert float(loss_a) == float(loss_b)
    for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
        assert b.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_tensor_parallel_step_compiles_without_replicating_activations(cfg, initial_params, capfd):
    """XLA's partitioner logs "Involuntary full rematerialization" when it has to replicate a tensor to reach a
    sharding (once, the input-embedding lookup into a vocab-sharded table did): the rules must not provoke it."""
    mesh, _, state, step = _setup(cfg, initial_params, MeshConfig(data=2, fsdp=2, tensor=2))
    batch = global_batch(_rows(8, 40), mesh, microbatches=2)
    with activation_rules(mesh):
        step.jitted.lower(state, batch).compile()
    assert "Involuntary full rematerialization" not in capfd.readouterr().err
