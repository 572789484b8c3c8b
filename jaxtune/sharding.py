"""Device meshes, the one logical-axis rules table, and every sharding derived from it.

The model names the axes of its parameters and activations (see :mod:`jaxtune.models.llama` and :mod:`jaxtune.models.bloom`); :data:`RULES` maps
those names to the mesh axes ``data``, ``fsdp`` and ``tensor``. Parameter, optimizer-state and batch shardings are
all derived from this table, never written per tensor. Layouts that cannot work (52 heads on a tensor axis of 8, a
global batch not divisible by the data-parallel size) fail here, before anything is compiled, naming the dimension,
the config field and the mesh axis.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxtune.config.schema import MeshConfig, ModelConfig, TrainConfig
from jaxtune.errors import JaxtuneError
from jaxtune.models.registry import create_model
from jaxtune.runtime.tpu_vm import cloud_tpu_slice

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_MESH_AXES = ("data", "fsdp")
"""The mesh axes a batch is split over (the data-parallel size is the product of their sizes)."""

RULES: tuple[tuple[str, Any], ...] = (
    # Parameters.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("qkv", None),  # BLOOM's fused projection: query, key and value of a head stay together
    ("embed_bias", None),  # biases over the embedding axis (BLOOM), small: replicated like the norms
    # Activations.
    ("act_batch", BATCH_MESH_AXES),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # The input lookup reads the table with its vocabulary whole: XLA cannot turn a lookup into a vocab-sharded table
    # into batch-sharded activations, and replicated everything instead ("Involuntary full rematerialization"). The
    # embedding axis stays split over fsdp as stored: each chip looks up the tokens of its data shard's rows in its
    # slice of the columns, and an all-to-all hands the rows to their batch shards (gathering the whole float32 table, and scattering its
    # gradient into a whole one, took 2 x 1.24 GiB per chip for doit-33b on 8 chips).
    ("act_lookup_vocab", None),
    ("act_lookup_embed", "fsdp"),
    ("act_lookup_batch", "data"),  # fsdp splits the table's columns: every fsdp shard looks up all of its rows
    # The KV cache of generation: rows like the batch, key/value heads like the attention heads they feed.
    ("cache_layers", None),
    ("cache_batch", BATCH_MESH_AXES),
    ("cache_length", None),
    ("cache_kv_heads", "tensor"),
    ("cache_head_dim", None),
)
"""Logical axis name (each of :data:`jaxtune.names.LOGICAL_AXES`, once) -> mesh axis (or axes, or None for
replicated). The only place a layout is decided."""

# The config field that sets each parameter dimension, for error messages.
_DIMENSION_FIELDS = {
    "vocab": "model.vocab_size (padded to model.vocab_pad_multiple)",
    "embed": "model.hidden_size",
    "heads": "model.num_heads",
    "kv_heads": "model.num_kv_heads (num_heads when unset)",
    "mlp": "model.intermediate_size",
}


class LayoutError(JaxtuneError):
    """A mesh or sharding that cannot hold the model or the batch; the message names the dimension and axis."""


# --------------------------------------------------------------------------------------------------------------------
# Processes and meshes
# --------------------------------------------------------------------------------------------------------------------

# Environment variables that mark a multi-process launch JAX's cluster detection understands.
_CLUSTER_MARKERS = ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS")


def _multi_process_environment() -> bool:
    """True when the environment describes several processes (TPU pod slice, SLURM, Open MPI, explicit)."""
    if any(os.environ.get(name) for name in _CLUSTER_MARKERS):
        return True
    if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):  # a multi-host TPU VM
        return True
    for count_var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        value = os.environ.get(count_var, "")
        if value.isdigit() and int(value) > 1:
            return True
    return False


def initialize_distributed(cfg: MeshConfig) -> bool:
    """Call ``jax.distributed.initialize`` when the run spans several processes; returns whether it is initialised.

    With ``mesh.coordinator_address`` set, uses it (with num_processes and process_id, which JAX may also read
    from the environment). Otherwise initialises with no arguments when the environment describes a multi-process
    launch (GKE/multi-slice ``MEGASCALE_*``, TPU_WORKER_HOSTNAMES, SLURM, Open MPI, JAX_COORDINATOR_ADDRESS) or
    when this is a Cloud TPU VM whose slice may span hosts (:func:`jaxtune.runtime.tpu_vm.cloud_tpu_slice`: a
    plain TPU VM sets no variables, JAX reads its peers from the metadata server), and does nothing on a single
    machine. Must run before anything touches the devices; a second call is a no-op.
    """
    if jax.distributed.is_initialized():
        return True
    if cfg.coordinator_address:
        jax.distributed.initialize(
            coordinator_address=cfg.coordinator_address, num_processes=cfg.num_processes, process_id=cfg.process_id
        )
        return True
    _check_mesh_config(cfg)  # e.g. num_processes without coordinator_address
    if _multi_process_environment():
        jax.distributed.initialize()
        return True
    tpu = cloud_tpu_slice()
    if tpu is not None and tpu.may_span_hosts:
        jax.distributed.initialize()
        return True
    if tpu is not None and not tpu.accelerator_type:
        print(f"jaxtune: warning: {tpu.describe()}: running as a single host", file=sys.stderr, flush=True)
    return False


def startup_line(mesh: Mesh) -> str:
    """The line every process logs once its mesh is built: process index/count, host name, local and global device
    counts and kinds, and the mesh's axis sizes."""
    kinds = sorted({d.device_kind for d in jax.devices()})
    shape = " x ".join(f"{name}={size}" for name, size in mesh.shape.items())
    return (
        f"start-up: process {jax.process_index()}/{jax.process_count()} on {socket.gethostname()} | devices "
        f"{jax.local_device_count()} local, {jax.device_count()} global ({jax.default_backend()}: "
        f"{', '.join(kinds)}) | mesh {shape} | jax.distributed "
        f"{'initialised' if jax.distributed.is_initialized() else 'not used (one process)'}"
    )


def _check_mesh_config(cfg: MeshConfig) -> None:
    """MeshConfig's own rules (sizes, one -1, dcn_data, processes), raised as a LayoutError."""
    problems = cfg.problems()
    if problems:
        raise LayoutError("; ".join(problems))


def resolve_mesh_shape(cfg: MeshConfig, num_devices: int) -> dict[str, int]:
    """Sizes of ``data``, ``fsdp``, ``tensor`` within one slice (resolving a single -1), checked against the device
    count. With ``dcn_data`` > 1 each slice holds num_devices / dcn_data devices."""
    _check_mesh_config(cfg)
    if num_devices % cfg.dcn_data:
        raise LayoutError(f"mesh.dcn_data={cfg.dcn_data} does not divide the {num_devices} devices into slices")
    per_slice = num_devices // cfg.dcn_data
    sizes = {name: getattr(cfg, name) for name in MESH_AXES}
    free = [name for name, size in sizes.items() if size == -1]
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if per_slice % fixed:
            others = " x ".join(f"mesh.{n}={sizes[n]}" for n in MESH_AXES if n != free[0])
            raise LayoutError(
                f"mesh.{free[0]}=-1 cannot take the rest: the other sizes ({others}) multiply to {fixed}, which "
                f"does not divide the {per_slice} devices per slice"
            )
        sizes[free[0]] = per_slice // fixed
    elif fixed != per_slice:
        shown = " x ".join(f"mesh.{n}={sizes[n]}" for n in MESH_AXES)
        raise LayoutError(
            f"{shown} = {fixed} devices, but there are {per_slice} devices per slice "
            f"({num_devices} devices, mesh.dcn_data={cfg.dcn_data}); set one size to -1 to take the rest"
        )
    return sizes


def build_mesh(cfg: MeshConfig, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """The ("data", "fsdp", "tensor") mesh over ``devices`` (default: all devices of all processes).

    Axis types are Auto (GSPMD propagation with the model's logical constraints). With ``dcn_data`` > 1 the data
    axis spans slices (TPU multi-slice); on hosts without slices, each process counts as one slice.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_mesh_shape(cfg, len(devices))
    ici_shape = tuple(sizes[name] for name in MESH_AXES)
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if cfg.dcn_data == 1:
        if len(devices) == len(jax.devices()):
            return jax.make_mesh(ici_shape, MESH_AXES, axis_types=axis_types, devices=devices)
        return Mesh(np.asarray(devices).reshape(ici_shape), MESH_AXES, axis_types=axis_types)
    from jax.experimental import mesh_utils

    slices = {getattr(d, "slice_index", None) for d in devices}
    processes = {d.process_index for d in devices}
    if None not in slices and len(slices) == cfg.dcn_data:
        by_process = False  # TPU slices
    elif len(processes) == cfg.dcn_data:
        by_process = True  # hosts without slices (GPU clusters, CPU tests): each process is a granule
    else:
        raise LayoutError(
            f"mesh.dcn_data={cfg.dcn_data} must equal the number of slices ({len(slices)}) or of processes "
            f"({len(processes)}) the devices form"
        )
    grid = mesh_utils.create_hybrid_device_mesh(ici_shape, (cfg.dcn_data, 1, 1), devices, process_is_granule=by_process)
    return Mesh(grid, MESH_AXES, axis_types=axis_types)


def data_parallel_size(mesh: Mesh) -> int:
    """Number of batch shards (the product of the data and fsdp axes)."""
    return math.prod(mesh.shape[name] for name in BATCH_MESH_AXES)


@contextlib.contextmanager
def activation_rules(mesh: Mesh) -> Iterator[None]:
    """Install the mesh and :data:`RULES` so the model's ``with_logical_constraint`` calls take effect while
    tracing (wrap every jit call that traces the model)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
        yield


# --------------------------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------------------------


def logical_to_spec(logical_axes: Sequence[Optional[str]]) -> P:
    """PartitionSpec of a tensor whose dimensions carry these logical names, under :data:`RULES`."""
    unknown = [a for a in logical_axes if a is not None and a not in dict(RULES)]
    if unknown:
        raise LayoutError(
            f"logical axes {unknown} have no entry in jaxtune.sharding.RULES (known: {', '.join(name for name, _ in RULES)})"
        )
    return nn.logical_to_mesh_axes(tuple(logical_axes), RULES)


def abstract_model(cfg: ModelConfig, seed: int = 0) -> tuple[nnx.GraphDef, dict, dict]:
    """(graphdef, shapes, logical axes) of a model without allocating it: pure-dict trees of ShapeDtypeStruct and of
    each parameter's logical axis names."""
    model = nnx.eval_shape(lambda: create_model(cfg, nnx.Rngs(seed)))
    graphdef, state = nnx.split(model)
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    axes = jax.tree.map(lambda v: tuple(v.get_metadata()["logical_axes"]), state, is_leaf=is_var)
    return graphdef, nnx.to_pure_dict(state), nnx.to_pure_dict(axes)


def _path_name(path: Sequence[Any]) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def validate_param_layout(shapes: Any, axes: Any, mesh: Mesh) -> None:
    """Raise LayoutError when a mesh axis does not divide the parameter dimension mapped onto it.

    The message lists every offending dimension once (with the first parameter showing it), e.g. 33b's 52 heads on
    a tensor axis of 8, and the sizes that would divide it.
    """
    problems: dict[str, str] = {}
    flat_shapes = jax.tree_util.tree_flatten_with_path(shapes)[0]
    flat_axes = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
    for (path, shape), names in zip(flat_shapes, flat_axes):
        spec = logical_to_spec(names)
        for dim, (logical, mesh_axes) in enumerate(zip(names, tuple(spec) + (None,) * len(names))):
            if mesh_axes is None or logical in problems:
                continue
            mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
            ways = math.prod(mesh.shape[a] for a in mesh_axes)
            size = shape.shape[dim]
            if size % ways:
                field = _DIMENSION_FIELDS.get(logical, f"dimension '{logical}'")
                axis_text = " x ".join(f"'{a}' ({mesh.shape[a]})" for a in mesh_axes)
                fits = [d for d in range(1, size + 1) if size % d == 0]
                problems[logical] = (
                    f"{field} = {size} (dimension '{logical}' of parameter {_path_name(path)}, shape "
                    f"{tuple(shape.shape)}) cannot be split over mesh axis {axis_text}: {ways} does not divide "
                    f"{size}. Sizes that divide it: {', '.join(map(str, fits[:12]))}"
                    + ("..." if len(fits) > 12 else "")
                )
    if problems:
        order = [name for name, _ in RULES]
        raise LayoutError("; ".join(problems[k] for k in sorted(problems, key=order.index)))


def param_shardings(axes: Any, mesh: Mesh) -> Any:
    """NamedSharding of every parameter (same tree as ``axes``)."""
    return jax.tree.map(
        lambda names: NamedSharding(mesh, logical_to_spec(names)), axes, is_leaf=lambda x: isinstance(x, tuple)
    )


def with_shardings(shapes: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying their sharding (the abstract target of a sharded restore)."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def init_params(cfg: ModelConfig, mesh: Mesh, seed: int = 0) -> tuple[nnx.GraphDef, dict]:
    """Initialise the model's parameters directly sharded on ``mesh`` (no host ever holds the whole model).

    Returns the graphdef and a pure dict of sharded arrays. The values equal an unsharded ``create_model(cfg,
    nnx.Rngs(seed))`` (JAX's partitionable threefry makes random draws independent of the layout).
    """
    graphdef, shapes, axes = abstract_model(cfg, seed)
    validate_param_layout(shapes, axes, mesh)
    shardings = param_shardings(axes, mesh)

    def init() -> dict:
        return nnx.to_pure_dict(nnx.state(create_model(cfg, nnx.Rngs(seed))))

    with activation_rules(mesh):
        params = jax.jit(init, out_shardings=shardings)()
    return graphdef, params


# --------------------------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchGeometry:
    """How a step's rows meet the mesh and the processes: the one place the rows-per-step rule is derived.

    A step of ``train.global_batch_size`` rows is ``train.microbatches`` microbatches; each microbatch is one global
    array split over the data-parallel devices and fed in equal shares by every process, so its rows must be a
    multiple of ``device_rows``.
    """

    device_rows: int
    """What a microbatch's rows must divide into: lcm(data-parallel size, process count)."""
    row_multiple: int
    """What the rows of a step must divide into: ``microbatches * device_rows``. With packing counted in examples
    (``dealt``) the pipeline rounds the rows it deals per step up to a multiple of it."""
    micro_rows: int
    """Rows of one microbatch (``global_batch_size / microbatches``); when ``dealt``, rounded down to a positive
    multiple of ``device_rows`` (the validation batches' rows, which are rows even when the step counts examples)."""
    dealt: bool
    """True when the rows per step are known only once the data is read (packing with ``train.batch_unit:
    examples``): ``global_batch_size`` counts examples, and nothing about it can be checked against the mesh."""


def batch_geometry(train: TrainConfig, mesh: Any, process_count: int, *, packing: bool = False) -> BatchGeometry:
    """The :class:`BatchGeometry` of ``train``'s batch on ``mesh`` (a Mesh or an AbstractMesh: only its axis sizes
    are read) fed by ``process_count`` processes; ``packing`` is ``data.packing``."""
    device_rows = math.lcm(data_parallel_size(mesh), process_count)
    dealt = train.batch_unit == "examples" and packing
    micro_rows = train.global_batch_size // max(1, train.microbatches)
    if dealt:
        micro_rows = max(1, micro_rows // device_rows) * device_rows
    return BatchGeometry(device_rows, train.microbatches * device_rows, micro_rows, dealt)


def check_batch_rows(rows: int, mesh: Optional[Any], what: str = "eval.batch_size") -> None:
    """Raise LayoutError unless ``rows`` (the rows of one global batch; ``what`` names where they are set) are a
    positive multiple of the mesh's data-parallel size (without a mesh: positive). The one check of evaluation's
    batches (``eval.batch_size``, the validation batches of a run)."""
    dp = 1 if mesh is None else data_parallel_size(mesh)
    if rows > 0 and rows % dp == 0:
        return
    message = f"{what}={rows} is not a positive multiple of the data-parallel size {dp}"
    if mesh is not None:
        sizes = " x ".join(f"mesh.{a}={mesh.shape[a]}" for a in BATCH_MESH_AXES)
        message += f" ({sizes}, the 'data' and 'fsdp' axes); choose a multiple of {dp}"
        if what == "eval.batch_size":
            message += " or another eval.mesh"
    raise LayoutError(message)


def validate_batch_layout(global_batch_size: int, microbatches: int, mesh: Mesh, process_count: int = 1) -> None:
    """Raise LayoutError unless the global batch splits into microbatches whose rows divide over the data-parallel
    devices and over the processes feeding them."""
    if global_batch_size <= 0 or microbatches <= 0:
        raise LayoutError(
            f"train.global_batch_size ({global_batch_size}) and train.microbatches ({microbatches}) must be positive"
        )
    if global_batch_size % microbatches:
        raise LayoutError(
            f"train.global_batch_size={global_batch_size} is not divisible by train.microbatches={microbatches}"
        )
    rows = global_batch_size // microbatches
    dp = data_parallel_size(mesh)
    if rows % dp:
        sizes = " x ".join(f"mesh.{a}={mesh.shape[a]}" for a in BATCH_MESH_AXES)
        raise LayoutError(
            f"train.global_batch_size={global_batch_size} / train.microbatches={microbatches} = {rows} rows per "
            f"microbatch, not divisible by the data-parallel size {dp} ({sizes}, the 'data' and 'fsdp' axes)"
        )
    if rows % process_count:
        raise LayoutError(
            f"{rows} rows per microbatch (train.global_batch_size={global_batch_size} / train.microbatches="
            f"{microbatches}) cannot be split evenly over {process_count} processes"
        )


def batch_sharding(mesh: Mesh, microbatched: bool) -> NamedSharding:
    """Sharding of batch arrays (B, L), or (microbatches, B/microbatches, L) when ``microbatched``: rows are split
    over the data-parallel axes."""
    spec = P(None, BATCH_MESH_AXES, None) if microbatched else P(BATCH_MESH_AXES, None)
    return NamedSharding(mesh, spec)


def global_batch(
    local: Mapping[str, np.ndarray], mesh: Mesh, microbatches: Optional[int] = None
) -> dict[str, jax.Array]:
    """Assemble each process's rows (B_local, L) into global arrays sharded over the data-parallel axes.

    With ``microbatches`` M the rows are regrouped as (M, B_local/M, L) (this process's share of every microbatch)
    and the result is (M, B/M, L). Every process must call this with its own rows of the same global batch.
    """
    sharding = batch_sharding(mesh, microbatched=microbatches is not None)
    procs = jax.process_count()
    out = {}
    for name, array in local.items():
        array = np.asarray(array)
        if microbatches is not None:
            if array.shape[0] % microbatches:
                raise LayoutError(
                    f"batch '{name}' has {array.shape[0]} rows on this process, not divisible by "
                    f"train.microbatches={microbatches}"
                )
            array = array.reshape(microbatches, array.shape[0] // microbatches, *array.shape[1:])
            shape = (microbatches, array.shape[1] * procs, *array.shape[2:])
        else:
            shape = (array.shape[0] * procs, *array.shape[1:])
        out[name] = jax.make_array_from_process_local_data(sharding, array, shape)
    return out
