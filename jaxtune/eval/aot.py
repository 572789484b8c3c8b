"""Evaluation's generation programs compiled ahead of time, at their largest, for a mesh of any devices (a TPU
topology's, deviceless): what ``jaxtune plan`` and ``benchmarks/tpu_memory.py --eval`` measure.

The programs are :mod:`jaxtune.eval.generate`'s own (:func:`~jaxtune.eval.generate.generation_programs`: the
decoding rows, KV cache included, donated and kept sharded between calls; what the host reads replicated), traced
with abstract inputs of the generator's shapes (:func:`~jaxtune.eval.generate.prompt_rows_spec`), with the
parameters in the evaluation dtype laid out by jaxtune.sharding's rules:

- ``prefill``: ``batch`` prompts of ``prompt_len`` tokens filling the whole batch (rows replaced in place);
- ``refill``: half the batch refilled with prompts of ``prompt_len`` tokens (scattered into their rows; only
  when half the batch still splits over the data-parallel devices, otherwise every refill is a prefill);
- ``decode steps``: a chunk of decoding steps over the full cache;

each with a KV cache of ``prompt_len + new_tokens`` slots, the most a generation of ``new_tokens`` after such
prompts holds (the generator grows the cache as rows advance).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Union

from jaxtune.config.schema import ModelConfig

PROGRAMS = ("prefill", "refill", "decode steps")
"""The compiled programs, in the order :func:`compile_generation` returns them."""


def eval_model_config(model: ModelConfig, dtype: str) -> ModelConfig:
    """The model as evaluation runs it: parameters restored in ``dtype`` and computing in it, no remat, and XLA
    attention (decoding over a KV cache attends with XLA whatever the training kernel)."""
    return dataclasses.replace(model, compute_dtype=dtype, param_dtype=dtype, remat_policy="none", attention_impl="xla")


def compile_generation(
    cfg: ModelConfig, mesh: Any, *, batch: int, prompt_len: int, new_tokens: int
) -> list[tuple[str, Union[Any, Exception]]]:
    """Compile :data:`PROGRAMS` for ``cfg`` (see :func:`eval_model_config`) on ``mesh``. Returns [(name, compiled
    program or the compiler's exception)]: a program that does not fit raises RESOURCE_EXHAUSTED, kept as its
    value so the others are still measured. Trace under :func:`jaxtune.sharding.activation_rules` of ``mesh``."""
    import jax
    import numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxtune.eval.batching import replicated
    from jaxtune.eval.generate import PROGRAM_STATICS, generation_programs, prompt_rows_spec, stop_table
    from jaxtune.eval.sampling import SamplingParams
    from jaxtune.models.registry import create_model
    from jaxtune.sharding import BATCH_MESH_AXES, abstract_model, data_parallel_size, param_shardings, with_shardings

    _, shapes, axes = abstract_model(cfg)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: create_model(cfg, nnx.Rngs(0))))
    nnx.replace_by_pure_dict(state, with_shardings(shapes, param_shardings(axes, mesh)))
    sampling = SamplingParams()
    statics = dict(zip(PROGRAM_STATICS, (new_tokens, sampling, mesh)))

    make_rows = generation_programs(graphdef, cfg, mesh).empty_rows
    sizes = dict(rows=batch, length=prompt_len + new_tokens, max_new_tokens=new_tokens)
    empty = make_rows.trace(state, **sizes, uses_penalty=sampling.uses_penalty).lower().compile()
    rows = jax.tree.map(
        lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
        jax.eval_shape(functools.partial(make_rows, **sizes, uses_penalty=sampling.uses_penalty), state),
        empty.output_shardings,
    )
    # The rows keep the layout they were made in from call to call, as they do in a generator's loop.
    programs = generation_programs(graphdef, cfg, mesh, rows_sharding=empty.output_shardings)

    def on_mesh(spec: jax.ShapeDtypeStruct, sharding: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(spec.shape, spec.dtype, sharding=sharding)

    def prompts(n: int) -> Any:
        """The host inputs of an n-row prefill, split by rows."""
        by_rows = lambda spec: NamedSharding(mesh, P(BATCH_MESH_AXES, *[None] * (len(spec.shape) - 1)))  # noqa: E731
        return jax.tree.map(lambda spec: on_mesh(spec, by_rows(spec)), prompt_rows_spec(n, prompt_len))

    one = replicated(mesh)
    seed = jax.ShapeDtypeStruct((), np.uint32, sharding=one)
    stops = on_mesh(jax.ShapeDtypeStruct(stop_table(()).shape, np.int32), one)
    flag = jax.ShapeDtypeStruct((), np.bool_, sharding=one)

    def compiled(program, *inputs, **static):
        try:
            return program.trace(*inputs, **statics, **static).lower().compile()
        except Exception as e:  # XLA's own error types (RESOURCE_EXHAUSTED among them): reported by the caller
            return e

    out = [("prefill", compiled(programs.prefill, state, rows, prompts(batch), seed, stops, aligned=True))]
    half = batch // 2
    if batch % 2 == 0 and half % data_parallel_size(mesh) == 0:  # else every refill is a whole-batch prefill
        out.append(("refill", compiled(programs.prefill, state, rows, prompts(half), seed, stops, aligned=False)))
    out.append(("decode steps", compiled(programs.decode_steps, state, rows, seed, stops, flag)))
    return out
