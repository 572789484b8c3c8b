"""Evaluation on every process of a pod slice: which mesh, which dtype, and how the processes agree.

Evaluation is SPMD, like training: every process runs the same :func:`jaxtune.eval.runner.evaluate` call on the
same items, in the same order. Batches are global arrays over the one mesh (see
:func:`jaxtune.eval.batching.put_rows`): process ``p`` feeds only the rows of its own devices' data-parallel shards,
so prompts are split over processes and data shards by the mesh itself, and results come back replicated, so every
process holds every item's result and the suites' scoring is identical everywhere. Only process 0 writes files
(:func:`is_writer`), once per item, in the suites' item order; :func:`barrier` keeps the other processes from
running ahead of those writes, and :func:`agree` makes a decision read from process 0's filesystem (has this
evaluation already been written?) the same on every process, so that no process skips a collective the others
enter.

The mesh of an evaluation is ``eval.mesh`` when set, else the top-level ``mesh`` (:func:`eval_mesh_config`);
``jax.distributed`` is initialised from it exactly as training does (:func:`jaxtune.sharding.initialize_distributed`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
from jax.sharding import Mesh

from jaxtune.config.schema import Config, MeshConfig

_PROCESS_FIELDS = ("coordinator_address", "num_processes", "process_id")


def eval_mesh_config(cfg: Config) -> MeshConfig:
    """The mesh evaluation runs on: ``eval.mesh`` (its unset process settings filled from ``mesh``), else ``mesh``."""
    if cfg.eval.mesh is None:
        return cfg.mesh
    fill = {name: getattr(cfg.mesh, name) for name in _PROCESS_FIELDS if getattr(cfg.eval.mesh, name) is None}
    return dataclasses.replace(cfg.eval.mesh, **fill)


def setup_mesh(mesh_cfg: MeshConfig) -> Mesh:
    """Initialise ``jax.distributed`` when the launch spans several processes, then build the mesh over all devices
    of all processes (the layout is checked against the device count, naming the mesh field)."""
    from jaxtune.sharding import build_mesh, initialize_distributed

    initialize_distributed(mesh_cfg)
    return build_mesh(mesh_cfg)


def default_compute_dtype(requested: Optional[str]) -> str:
    """``eval.compute_dtype``, or when unset bfloat16 on accelerators and float32 on CPU (where bfloat16 matmuls
    are emulated and slow, and the tests compare against float32 references)."""
    if requested is not None:
        return requested
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def mesh_record(mesh: Optional[Mesh]) -> dict[str, Any]:
    """What a summary records about where it ran: the mesh's axis sizes (None without a mesh), the number of devices
    the model ran on and the number of processes."""
    return {
        "mesh": None if mesh is None else {name: int(size) for name, size in mesh.shape.items()},
        "device_count": 1 if mesh is None else int(mesh.devices.size),
        "process_count": jax.process_count(),
    }


def is_writer() -> bool:
    """Whether this process writes the evaluation's files (process 0: each result is written exactly once)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches this point (a no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def agree(value: bool) -> bool:
    """Process 0's ``value`` on every process (with one process: ``value``)."""
    if jax.process_count() == 1:
        return value
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int32)))
