"""What a run checks before it reads data or compiles, each problem naming its dotted config key.

1. The config's values: :meth:`jaxtune.config.schema.Config.problems`.
2. The layout, on abstract shapes: the batch over the mesh and the processes (:func:`jaxtune.sharding.batch_geometry`
   and :func:`jaxtune.sharding.validate_batch_layout`) and every parameter dimension over its mesh axes
   (:func:`jaxtune.sharding.validate_param_layout` on :func:`jaxtune.sharding.abstract_model`).

Both are reported together: a value problem skips only the layout checks it makes impossible (a problem naming a
``mesh.*`` key skips the layout, one naming the batch's keys the batch check, one naming a ``model.*`` key the
parameters' check); the rest still run. ``jaxtune validate`` (:mod:`jaxtune.commands.validate`) runs the same checks
for a device count without devices, and :func:`check_run` runs them first in every ``train`` call, so a run never
starts compiling with a config that command rejects.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import jax
from jax.sharding import Mesh

from jaxtune.config.schema import Config, ConfigError
from jaxtune.sharding import (
    LayoutError,
    abstract_model,
    batch_geometry,
    build_mesh,
    initialize_distributed,
    validate_batch_layout,
    validate_param_layout,
)

BATCH_KEYS = ("train.global_batch_size", "train.microbatches", "train.batch_unit", "data.packing")
"""The keys the batch's layout check reads."""


def names_key(problems: Sequence[str], key: str) -> bool:
    """Whether any of ``problems`` names the dotted ``key``, or any key under it when ``key`` ends with a dot
    (``mesh.``)."""
    tail = r"\w" if key.endswith(".") else r"(?![\w])"
    pattern = re.compile(rf"(?<![\w.]){re.escape(key)}{tail}")
    return any(pattern.search(p) for p in problems)


def vocabulary_problem(cfg: Config, tokenizer_size: int) -> Optional[str]:
    """The problem of a model whose vocabulary is not the tokenizer's (with the template's added tokens), if any."""
    if tokenizer_size == cfg.model.vocab_size:
        return None
    return (
        f"model.vocab_size={cfg.model.vocab_size}, but the tokenizer {cfg.data.tokenizer} with its added tokens "
        f"has {tokenizer_size} ids; set model.vocab_size={tokenizer_size}"
    )


def layout_problems(cfg: Config, mesh: Any, process_count: int, value_problems: Sequence[str] = ()) -> list[str]:
    """Problems of the batch and of the parameters on ``mesh`` (a Mesh or an AbstractMesh: only its axis sizes are
    read), each naming the config field and the mesh axis. A check whose keys ``value_problems`` name is skipped
    (its values are not the ones asked for)."""
    problems = []
    tc = cfg.train
    # Packed rows dealt over a step count in examples: the rows per step are known only once the data is read, and
    # are rounded up to what the mesh divides, so there is nothing to check here.
    dealt = batch_geometry(tc, mesh, process_count, packing=cfg.data.packing).dealt
    if not dealt and not any(names_key(value_problems, k) for k in BATCH_KEYS):
        try:
            validate_batch_layout(tc.global_batch_size, tc.microbatches, mesh, process_count)
        except LayoutError as e:
            problems.append(str(e))
    if not names_key(value_problems, "model."):
        _, shapes, axes = abstract_model(cfg.model, tc.seed)
        try:
            validate_param_layout(shapes, axes, mesh)
        except LayoutError as e:
            problems.append(str(e))
    return problems


def raise_problems(value_problems: Sequence[str], layout: Sequence[str]) -> None:
    """Raise ConfigError listing the value problems and then the layout problems when there are value problems,
    else LayoutError listing the layout problems; nothing when there are none."""
    if value_problems:
        raise ConfigError([*value_problems, *layout])
    if len(layout) == 1:
        raise LayoutError(layout[0])
    if layout:
        raise LayoutError(f"{len(layout)} layout problems:\n" + "\n".join(f"  {p}" for p in layout))


def check_run(cfg: Config) -> Mesh:
    """A run's checks before it reads data or compiles (see the module docstring), then its mesh over every device
    of every process (``jax.distributed`` initialised first when the launch spans several processes). Raises
    ConfigError or LayoutError listing every problem (:func:`raise_problems`)."""
    values = cfg.problems()
    mesh: Optional[Mesh] = None
    layout: list[str] = []
    if not names_key(values, "mesh."):
        try:
            initialize_distributed(cfg.mesh)
            mesh = build_mesh(cfg.mesh)
        except LayoutError as e:
            if not values:
                raise
            layout.append(str(e))
    if mesh is not None:
        layout += layout_problems(cfg, mesh, jax.process_count(), values)
    raise_problems(values, layout)
    assert mesh is not None  # no problems: the mesh was built
    return mesh
