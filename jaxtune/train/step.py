"""The jitted train step: token-weighted cross-entropy, gradient accumulation over microbatches, AdamW, and the
guard that keeps non-finite losses and gradients away from the parameters.

The loss of a step is the mean over every supervised token of the global batch: the sum of per-token
cross-entropies weighted by ``loss_weights``, divided by the total weight of all microbatches on all hosts (not a
mean of per-sequence or per-microbatch means).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxtune.sharding import activation_rules, batch_sharding, param_shardings
from jaxtune.train.layerwise import layerwise_loss_and_grads
from jaxtune.train.loss import Batch, cast_for_compute, token_cross_entropy, weighted_loss
from jaxtune.train.metrics import TrainMetrics
from jaxtune.train.optim import optimizer_state_shardings


@flax.struct.dataclass
class TrainState:
    """Everything a run needs to continue exactly (all arrays; checkpointed as a whole)."""

    params: Any
    """Master parameters (model.param_dtype, float32 by default), a pure dict."""
    opt_state: Any
    """optax state (Adam moments mirror the parameters)."""
    step: jax.Array
    """Optimizer steps taken = global batches consumed, skipped ones included (int32)."""
    updates: jax.Array
    """Updates actually applied: the learning-rate schedule's clock (int32)."""
    bad_steps: jax.Array
    """Consecutive steps with a non-finite loss or gradient, up to now (int32)."""
    skipped_steps: jax.Array
    """Steps skipped over the whole run (int32)."""
    rng: jax.Array
    """The run's PRNG key (raw uint32[2], from train.seed), saved and restored with the rest of the state."""

    def train_fields(self) -> dict[str, Any]:
        """Everything but the parameters (saved beside them as a separate checkpoint item)."""
        return {k: getattr(self, k) for k in ("opt_state", "step", "updates", "bad_steps", "skipped_steps", "rng")}


def new_train_state(params: Any, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """A fresh state at step 0 (call under jit to place the optimizer state with the parameters' shardings)."""
    zero = jnp.zeros((), jnp.int32)
    return TrainState(
        params=params,
        opt_state=tx.init(params),
        step=zero,
        updates=zero,
        bad_steps=zero,
        skipped_steps=zero,
        rng=jax.random.PRNGKey(seed),
    )


def train_state_shardings(tx: optax.GradientTransformation, shapes: Any, axes: Any, mesh: Mesh) -> TrainState:
    """Shardings of the whole train state, derived from the parameters' logical axes: parameters and the
    optimizer state that mirrors them are sharded alike; counters and the key are replicated."""
    params = param_shardings(axes, mesh)
    replicated = NamedSharding(mesh, P())
    return TrainState(
        params=params,
        opt_state=optimizer_state_shardings(tx, shapes, params, replicated),
        step=replicated,
        updates=replicated,
        bad_steps=replicated,
        skipped_steps=replicated,
        rng=replicated,
    )


def init_train_state(params: Any, tx: optax.GradientTransformation, seed: int, shardings: TrainState) -> TrainState:
    """A step-0 state laid out as ``shardings`` (the parameters' buffers are donated to it)."""
    make = jax.jit(lambda p: new_train_state(p, tx, seed), out_shardings=shardings, donate_argnums=(0,))
    return make(params)


def loss_and_grads(
    graphdef: nnx.GraphDef,
    params: Any,
    batch: Batch,
    *,
    grad_shardings: Any = None,
    compute_dtype: Optional[str] = None,
) -> tuple[jax.Array, Any, jax.Array]:
    """(loss, gradients, supervised-token count) of a global batch laid out as (microbatches, rows, length).

    Gradients of each microbatch's weighted loss sum are accumulated in float32 by a scan and divided by the total
    weight of the whole batch, so the result equals one pass over the concatenated batch (up to summation order).
    ``grad_shardings`` keeps the accumulators laid out like the parameters.
    """
    total_weight = jnp.sum(batch["loss_weights"].astype(jnp.float32))
    denominator = jnp.maximum(total_weight, 1.0)  # a batch with nothing supervised has loss 0, not NaN

    def weighted_sum(p: Any, micro: Batch) -> jax.Array:
        return weighted_loss(token_cross_entropy(graphdef, p, micro), micro, denominator)

    grad_fn = jax.value_and_grad(weighted_sum)
    params = cast_for_compute(params, compute_dtype)
    num_micro = batch["input_ids"].shape[0]
    if num_micro == 1:
        loss, grads = grad_fn(params, jax.tree.map(lambda x: x[0], batch))
        grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
    else:

        def constrain(tree: Any) -> Any:
            if grad_shardings is None:
                return tree
            return jax.lax.with_sharding_constraint(tree, grad_shardings)

        def body(carry: tuple[Any, jax.Array], micro: Batch) -> tuple[tuple[Any, jax.Array], None]:
            acc, loss_acc = carry
            loss, grads = grad_fn(params, micro)
            acc = constrain(jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc, grads))
            return (acc, loss_acc + loss), None

        zeros = constrain(jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params))
        (grads, loss), _ = jax.lax.scan(body, (zeros, jnp.zeros((), jnp.float32)), batch)
    return loss, grads, total_weight


BACKWARD_PASSES: dict[str, Callable[..., tuple[jax.Array, Any, jax.Array]]] = {
    "autodiff": loss_and_grads,
    "layerwise": layerwise_loss_and_grads,
}
"""``train.backward`` -> the function computing (loss, float32 gradients, supervised tokens) of a batch."""


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    grad_shardings: Any = None,
    compute_dtype: Optional[str] = None,
    select_update: bool = False,
    backward: str = "autodiff",
) -> tuple[TrainState, TrainMetrics]:
    """One optimizer step on a (microbatches, rows, length) batch. Un-jitted; see :func:`make_train_step`.

    A non-finite loss or gradient norm skips the update entirely: parameters and optimizer state come back
    unchanged, ``skipped_steps`` and ``bad_steps`` count it, and the learning-rate clock does not advance.
    """
    gradients = BACKWARD_PASSES[backward]
    loss, grads, supervised = gradients(
        graphdef, state.params, batch, grad_shardings=grad_shardings, compute_dtype=compute_dtype
    )
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def apply(_: None) -> tuple[Any, Any]:
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return optax.apply_updates(state.params, updates), opt_state

    if select_update:
        # The update computed unconditionally and selected per element: a lax.cond between "apply" and "skip"
        # makes XLA keep separate copies of the parameters and optimizer state for its branches (on a v5p-16
        # compile of a 6-layer doit-33b, 12.2 -> 9.3 GiB of temporaries per chip). A skipped step still returns
        # the old values bit for bit, whatever the non-finite update holds.
        new_params, new_opt_state = apply(None)
        params = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_params, state.params)
        opt_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_opt_state, state.opt_state)
    else:
        params, opt_state = jax.lax.cond(finite, apply, lambda _: (state.params, state.opt_state), None)
    bad = jnp.logical_not(finite).astype(jnp.int32)
    new_state = state.replace(
        params=params,
        opt_state=opt_state,
        step=state.step + 1,
        updates=state.updates + finite.astype(jnp.int32),
        bad_steps=jnp.where(finite, 0, state.bad_steps + 1),
        skipped_steps=state.skipped_steps + bad,
    )
    metrics = TrainMetrics.single_from_model_output(
        loss=loss,
        grad_norm=grad_norm,
        learning_rate=jnp.asarray(schedule(state.updates), jnp.float32),
        finite=finite,
        tokens=jnp.sum(batch["segment_ids"] > 0),
        supervised_tokens=supervised,
        skipped=bad,
    )
    return new_state, metrics


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    mesh: Mesh,
    state_shardings: TrainState,
    compute_dtype: Optional[str] = None,
    backward: str = "autodiff",
) -> Callable[[TrainState, Batch], tuple[TrainState, TrainMetrics]]:
    """The train step jitted with explicit shardings (state as ``state_shardings``, batch rows over the data
    axes, metrics replicated) and the state's buffers donated. Call it with the mesh's rules active (it installs
    them itself for tracing). ``compute_dtype`` (model.compute_dtype) casts the weights once before the forward
    pass (see :func:`jaxtune.train.loss.cast_for_compute`); ``backward`` (train.backward) picks the gradient computation of
    :data:`BACKWARD_PASSES`."""
    replicated = NamedSharding(mesh, P())
    # Accelerators select the update per element (less memory); XLA:CPU keeps the lax.cond: with the select form,
    # its in-process all-reduce over 8 simulated devices on 2 cores missed its 40 s rendezvous (a hang).
    platform = mesh.devices.flat[0].platform
    select_update = platform != "cpu"
    # On TPU, XLA's bf16 propagation turns the layer-by-layer pass's per-layer casts into one cast of the whole
    # stacked float32 weights ahead of the loops (a bf16 copy of every layer: 5.4 GiB per chip for doit-33b on 8 v5p
    # chips), so it is off for that program. The pass only ever lowers precision: values do not change.
    compiler_options = {"xla_jf_bf16_propagation": False} if backward == "layerwise" and platform == "tpu" else None

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, TrainMetrics]:
        return train_step(
            state,
            batch,
            graphdef=graphdef,
            tx=tx,
            schedule=schedule,
            grad_shardings=state_shardings.params,
            compute_dtype=compute_dtype,
            select_update=select_update,
            backward=backward,
        )

    jitted = jax.jit(
        step,
        in_shardings=(state_shardings, batch_sharding(mesh, microbatched=True)),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
        compiler_options=compiler_options,
    )

    def run(state: TrainState, batch: Batch) -> tuple[TrainState, TrainMetrics]:
        with activation_rules(mesh):
            return jitted(state, batch)

    run.jitted = jitted  # for ahead-of-time lowering (benchmarks, memory planning)
    return run


def eval_sums(graphdef: nnx.GraphDef, params: Any, batch: Batch, num_abilities: int) -> tuple[jax.Array, jax.Array]:
    """Per-ability sums of weighted cross-entropy and of weights over a (rows, length) batch: two (num_abilities,)
    float32 vectors. Tokens with ability id -1 (padding) are dropped."""
    ce = token_cross_entropy(graphdef, params, batch)
    weights = batch["loss_weights"].astype(jnp.float32)
    ability = batch["ability_ids"]
    bucket = jnp.where(ability < 0, num_abilities, ability).reshape(-1)  # an extra bucket for padding, dropped
    loss_sums = jax.ops.segment_sum((ce * weights).reshape(-1), bucket, num_segments=num_abilities + 1)
    weight_sums = jax.ops.segment_sum(weights.reshape(-1), bucket, num_segments=num_abilities + 1)
    return loss_sums[:num_abilities], weight_sums[:num_abilities]


def make_eval_step(
    graphdef: nnx.GraphDef, num_abilities: int, *, mesh: Mesh, param_shardings: Any
) -> Callable[[Any, Batch], tuple[jax.Array, jax.Array]]:
    """:func:`eval_sums` jitted with the parameters' shardings and batch rows over the data axes."""
    replicated = NamedSharding(mesh, P())
    jitted = jax.jit(
        lambda params, batch: eval_sums(graphdef, params, batch, num_abilities),
        in_shardings=(param_shardings, batch_sharding(mesh, microbatched=False)),
        out_shardings=(replicated, replicated),
    )

    def run(params: Any, batch: Batch) -> tuple[jax.Array, jax.Array]:
        with activation_rules(mesh):
            return jitted(params, batch)

    return run
