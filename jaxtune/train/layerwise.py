"""Gradients computed layer by layer, each layer's gradient added straight into the float32 accumulator
(``train.backward: layerwise``).

``jax.value_and_grad`` of a microbatch's loss builds the whole gradient tree of that microbatch before the scan over
microbatches adds it into the accumulator, and casting the weights to bf16 up front keeps a whole bf16 copy of the
model beside the float32 masters: on 8 v5p chips at the study's batch, 7.6 + 7.6 GiB per chip for doit-33b on top
of the 15.3 GiB accumulator. This module writes the backward pass itself, over the pieces every model family
provides (:mod:`jaxtune.models.decoder`: ``prepare`` -> ``layer`` x L -> ``finish``):

1. forward: embed (its VJP kept), scan the layers keeping each layer's input (L, B, T, E) in the compute dtype and
   nothing else, then the final norm, the LM head and the weighted cross-entropy (VJP kept);
2. backward: a reverse scan over the layers whose carry is the residual's cotangent and the accumulator's stacked
   layer weights; step i casts layer i's float32 slice to the compute dtype, recomputes the layer with
   ``jax.vjp`` from its saved input, and adds the slice's gradient into ``acc[layers][i]`` in place
   (``dynamic_update_slice`` of a loop carry);
3. the embedding's and head's gradients are added last.

The values equal the autodiff path's (same casts, the same operations, each layer recomputed once as with
``remat_policy: full``): tests/train/test_layerwise.py compares losses and gradients of both.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxtune.train.loss import Batch, cast_for_compute, weighted_loss


def _split(params: dict) -> tuple[dict, dict]:
    """(stacked layer weights, everything else)."""
    return params["layers"], {k: v for k, v in params.items() if k != "layers"}


def layerwise_loss_and_grads(
    graphdef: nnx.GraphDef,
    params: Any,
    batch: Batch,
    *,
    grad_shardings: Any = None,
    compute_dtype: Optional[str] = None,
) -> tuple[jax.Array, Any, jax.Array]:
    """(loss, float32 gradients, supervised-token count) of a (microbatches, rows, length) batch, as
    :func:`jaxtune.train.step.loss_and_grads` computes them, with the accumulator updated one layer at a time."""

    total_weight = jnp.sum(batch["loss_weights"].astype(jnp.float32))
    denominator = jnp.maximum(total_weight, 1.0)
    layers, outer = _split(params)
    model = nnx.merge(graphdef, params)  # for its cfg-bound pieces; the weights it uses are passed explicitly
    num_layers = jax.tree.leaves(layers)[0].shape[0]

    def constrain(tree: Any, shardings: Any) -> Any:
        return tree if shardings is None else jax.lax.with_sharding_constraint(tree, shardings)

    layer_shardings, outer_shardings = (None, None) if grad_shardings is None else _split(grad_shardings)

    def merged(o: dict) -> Any:
        return nnx.merge(graphdef, {**cast_for_compute(o, compute_dtype), "layers": layers})

    def micro_step(carry: tuple[dict, dict, jax.Array], micro: Batch) -> tuple[tuple[dict, dict, jax.Array], None]:
        acc_layers, acc_outer, loss_acc = carry

        def embed(o: dict) -> tuple[jax.Array, dict]:
            prepared = merged(o).prepare(micro["input_ids"], micro["positions"], micro["segment_ids"])
            return prepared.h, prepared.shared

        h0, embed_vjp, shared = jax.vjp(embed, outer, has_aux=True)

        def layer_forward(layer_params: dict, h: jax.Array) -> jax.Array:
            return model.layer(cast_for_compute(layer_params, compute_dtype), h, shared, None)[0]

        def forward(h: jax.Array, layer_params: dict) -> tuple[jax.Array, jax.Array]:
            return layer_forward(layer_params, h), h

        h_last, inputs = jax.lax.scan(forward, h0, layers)

        def head_loss(o: dict, h: jax.Array) -> jax.Array:
            ce = optax.softmax_cross_entropy_with_integer_labels(merged(o).finish(h), micro["targets"])
            return weighted_loss(ce, micro, denominator)

        loss, head_vjp = jax.vjp(head_loss, outer, h_last)
        head_grads, g_h = head_vjp(jnp.ones_like(loss))

        def backward(carry: tuple[jax.Array, dict], xs: tuple) -> tuple[tuple[jax.Array, dict], None]:
            g_h, acc = carry
            i, layer_params, h_in = xs
            _, layer_vjp = jax.vjp(layer_forward, layer_params, h_in)
            g_params, g_h = layer_vjp(g_h)
            acc = {
                k: jax.lax.dynamic_update_index_in_dim(a, a[i] + g_params[k].astype(jnp.float32), i, 0)
                for k, a in acc.items()
            }
            return (g_h, constrain(acc, layer_shardings)), None

        (g_h0, acc_layers), _ = jax.lax.scan(
            backward, (g_h, acc_layers), (jnp.arange(num_layers), layers, inputs), reverse=True
        )
        (embed_grads,) = embed_vjp(g_h0)
        acc_outer = jax.tree.map(
            lambda a, g1, g2: a + g1.astype(jnp.float32) + g2.astype(jnp.float32), acc_outer, head_grads, embed_grads
        )
        return (acc_layers, constrain(acc_outer, outer_shardings), loss_acc + loss), None

    zeros = lambda tree, shardings: constrain(jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), tree), shardings)
    init = (zeros(layers, layer_shardings), zeros(outer, outer_shardings), jnp.zeros((), jnp.float32))
    (acc_layers, acc_outer, loss), _ = jax.lax.scan(micro_step, init, batch)
    return loss, {**acc_outer, "layers": acc_layers}, total_weight
