"""How evaluation batches meet the devices: bucketed shapes, rows split over the mesh, results every process can
read, and one compiled function per model shape.

Generation (:mod:`jaxtune.eval.generate`) and likelihood scoring (:mod:`jaxtune.eval.likelihood`) both pad batches
to a few bucket lengths, run under jaxtune.sharding's mesh and logical-axis rules when given a mesh, and share
compiled functions across model instances of the same configuration (a sweep evaluates many checkpoints of one
shape and compiles each batch shape once per process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from collections.abc import Callable, Sequence
from typing import Any, Optional

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxtune.config.schema import ModelConfig


def bucket_length(n: int, multiple: int = 64, smallest: int = 16) -> int:
    """The padded length of a batch whose longest prompt has ``n`` tokens: the next power of two from ``smallest``
    up to ``multiple``, then the next multiple of ``multiple``. Bounds the number of compiled prompt shapes."""
    if n <= 0:
        raise ValueError(f"a prompt length must be positive, got {n}")
    if multiple <= 0:
        raise ValueError(f"bucket multiple must be positive, got {multiple}")
    length = max(1, min(smallest, multiple))
    while length < n and length < multiple:
        length *= 2
    if n <= length:
        return length
    return -(-n // multiple) * multiple


def model_context(mesh: Optional[Mesh]) -> contextlib.AbstractContextManager:
    """The context to trace and run the model in: jaxtune.sharding's mesh and logical-axis rules, or nothing."""
    if mesh is None:
        return contextlib.nullcontext()
    from jaxtune.sharding import activation_rules

    return activation_rules(mesh)


def put_rows(arrays: Sequence[np.ndarray], mesh: Optional[Mesh]) -> list[Any]:
    """Host arrays with a leading row axis, as global arrays split by rows over the mesh's data-parallel axes
    (every process passes the same full arrays and contributes its own rows). Without a mesh: unchanged."""
    if mesh is None:
        return list(arrays)
    from jaxtune.sharding import BATCH_MESH_AXES

    out = []
    for array in arrays:
        sharding = NamedSharding(mesh, P(BATCH_MESH_AXES, *([None] * (array.ndim - 1))))
        out.append(jax.make_array_from_callback(array.shape, sharding, lambda index, a=array: a[index]))
    return out


def replicated(mesh: Optional[Mesh]) -> Optional[NamedSharding]:
    """Output sharding that every process can read whole (None without a mesh: jit decides)."""
    return None if mesh is None else NamedSharding(mesh, P())


_JITTED: dict[tuple, Callable] = {}


def jitted(
    fn: Callable,
    graphdef: nnx.GraphDef,
    cfg: ModelConfig,
    mesh: Optional[Mesh],
    static_argnames: tuple[str, ...] = (),
    donate_argnames: tuple[str, ...] = (),
    out_shardings: Any = "replicated",
) -> Callable:
    """``jax.jit(fn)`` with the model's graphdef bound, shared by every caller with an equal model config and mesh,
    so evaluating many checkpoints of one shape (a sweep) compiles each batch shape once per process.

    Outputs are replicated (readable by every process) unless ``out_shardings`` says otherwise (a pytree prefix of
    the outputs, None leaves left to XLA: a decoding loop's state stays sharded between calls)."""
    shardings = replicated(mesh) if out_shardings == "replicated" else out_shardings
    key = (
        fn.__module__,
        fn.__qualname__,
        json.dumps(dataclasses.asdict(cfg), sort_keys=True),
        mesh,
        static_argnames,
        donate_argnames,
        repr(shardings),
    )
    if key not in _JITTED:
        _JITTED[key] = jax.jit(
            functools.partial(fn, graphdef),
            static_argnames=static_argnames,
            donate_argnames=donate_argnames,
            out_shardings=shardings,
        )
    return _JITTED[key]


def keep_default_layout(x: jax.Array, mesh: Optional[Mesh], logical_axes: Sequence[Optional[str]]) -> jax.Array:
    """``x`` (sharded over ``mesh`` by the logical axes' rules) pinned to the device's default layout for its shard
    shape, the layout it has between calls. Only on TPU: CPU and GPU lay arrays out row-major, the loop's too.

    A decoding loop carries the KV cache through a while loop; XLA's TPU compiler lays the loop's state out
    row-major while the cache arrives in the TPU default layout (head and slot axes swapped when the key/value
    heads are not a multiple of 8, e.g. doit-33b's 52), and then copies the whole cache into and out of the loop
    (doit-33b's refill of 16 rows on 8 v5p chips: 59.96 GiB per chip with the copies, 37.92 without). Pinned
    inside the loop, it stays put. The pin is placed on each device's shard (in a shard_map): on the
    global array XLA's partitioner gathers the whole cache onto every chip around it."""
    if mesh is None or mesh.devices.flat[0].platform != "tpu":
        return x
    from jax.experimental.layout import Layout, with_layout_constraint

    from jaxtune.sharding import logical_to_spec

    spec = logical_to_spec(logical_axes)
    device = mesh.devices.flat[0]
    shard = NamedSharding(mesh, spec).shard_shape(x.shape)
    default = Layout.from_pjrt_layout(device.client.get_default_layout(np.dtype(x.dtype), shard, device))
    layout = Layout(major_to_minor=default.major_to_minor)
    return jax.shard_map(lambda local: with_layout_constraint(local, layout), mesh=mesh, in_specs=spec, out_specs=spec)(
        x
    )
