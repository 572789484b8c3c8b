"""``jaxtune validate CONFIG``: every check a training run makes before it computes, without any device.

The checks, in order, with every problem of a stage reported together (each naming its dotted key):

1. The config's values: :meth:`jaxtune.config.schema.Config.problems` (each section checks its own; the same checks run
   when any config is loaded).
2. What the config names on disk: ``data.path`` and ``data.tokenizer`` are set (a run needs both) and, with
   ``data.valid_path``, ``checkpoint.init_from``, ``eval.data_dir`` and ``eval.tokenizer``, exist (local paths only;
   ``gs://`` and other URLs are not looked up); the tokenizer with the template's added tokens has
   ``model.vocab_size`` ids; ``eval.suites`` names known suites, each with its data under ``eval.data_dir`` (when
   set) and, for ``belle``, a judge.
3. The layout, on abstract shapes: the mesh of ``mesh.*`` resolved for a device count (a
   :class:`jax.sharding.AbstractMesh`, so no device is touched), the batch split over it and the processes
   (:func:`jaxtune.sharding.validate_batch_layout`) and every parameter dimension over its mesh axes
   (:func:`jaxtune.sharding.validate_param_layout` on :func:`jaxtune.sharding.abstract_model`).

The device count is ``--devices N`` (one process), or an accelerator name (one slice; ``mesh.dcn_data`` slices of
it): ``v4-N``/``v5p-N`` count TensorCores, two per chip (``v5p-16`` = 8 chips on 2 hosts of 4); ``v5e-N``,
``v5litepod-N`` and ``v6e-N`` count chips (one host up to 8 chips, 4 chips per host above); GPUs count 8 per host
(the facts of :mod:`jaxtune.hardware`). Without either, the devices and processes of this machine.

:func:`check_run` is what ``train`` calls first on its real mesh, so a run never starts compiling with a config
this command rejects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from jaxtune.config.loading import load_config
from jaxtune.config.schema import Config, ConfigError, max_len_problem
from jaxtune.hardware import AcceleratorError, parse_accelerator


class ValidationError(ConfigError):
    """``jaxtune validate`` (or a run's first check) found problems; ``problems`` lists every one."""


@dataclass(frozen=True)
class Topology:
    """Devices and processes the layout is checked for."""

    devices: int
    processes: int
    described_as: str
    """How the count was given (``--devices 8``, ``v5p-16 (8 chips, 2 hosts)``, ``this machine``)."""


def accelerator_topology(name: str, slices: int = 1) -> Topology:
    """The chips and hosts of an accelerator name such as ``v5p-16`` (8 chips, 2 hosts) times ``slices``; the names
    are those of :func:`jaxtune.hardware.parse_accelerator` (TensorCores for v4/v5p, chips for v5e/v6e, GPUs)."""
    try:
        acc = parse_accelerator(name)
    except AcceleratorError as e:
        raise ValidationError(str(e)) from None
    chips, hosts = acc.chips, acc.hosts
    per = f"{chips} chips, {hosts} host{'s' if hosts > 1 else ''}"
    across = f" x {slices} slices" if slices > 1 else ""
    return Topology(chips * slices, hosts * slices, f"{name} ({per}){across}")


def _local_path_problems(cfg: Config) -> list[str]:
    problems = []
    for key in ("data.path", "data.tokenizer"):
        if not _get(cfg, key):
            problems.append(f"{key} is not set (a training run needs it)")
    for key in (
        "data.path",
        "data.valid_path",
        "data.tokenizer",
        "checkpoint.init_from",
        "eval.data_dir",
        "eval.tokenizer",
    ):
        value = _get(cfg, key)
        if value and "://" not in value and not Path(value).exists():
            problems.append(f"{key}={value}: no such file or folder")
    if max_len_problem(cfg):
        problems.append(max_len_problem(cfg))
    tokenizer = cfg.data.tokenizer
    if tokenizer and "://" not in tokenizer and Path(tokenizer).exists():
        problems += _vocabulary_problems(cfg)
    return problems + _eval_problems(cfg)


def _vocabulary_problems(cfg: Config) -> list[str]:
    from jaxtune.data.templates import make_template, template_backend
    from jaxtune.data.tokenizer import load_tokenizer
    from jaxtune.errors import JaxtuneError

    try:
        tokenizer = load_tokenizer(cfg.data.tokenizer, template_backend(cfg.data.template))
        make_template(cfg.data.template, tokenizer)  # appends the template's special tokens
    except (JaxtuneError, ValueError, OSError) as e:
        return [f"data.tokenizer={cfg.data.tokenizer}: {e}"]
    problem = vocabulary_problem(cfg, tokenizer.vocab_size)
    return [problem] if problem else []


def vocabulary_problem(cfg: Config, tokenizer_size: int) -> Optional[str]:
    """The problem of a model whose vocabulary is not the tokenizer's (with the template's added tokens), if any."""
    if tokenizer_size == cfg.model.vocab_size:
        return None
    return (
        f"model.vocab_size={cfg.model.vocab_size}, but the tokenizer {cfg.data.tokenizer} with its added tokens "
        f"has {tokenizer_size} ids; set model.vocab_size={tokenizer_size}"
    )


def _eval_problems(cfg: Config) -> list[str]:
    from jaxtune.eval.errors import EvalSetupError
    from jaxtune.eval.suites.registry import get_suite, suite_data_root, unknown_suites_problem

    unknown = unknown_suites_problem(cfg.eval.suites)
    if unknown:
        return [unknown]
    problems = []
    if cfg.eval.data_dir and "://" not in cfg.eval.data_dir and Path(cfg.eval.data_dir).exists():
        for suite in cfg.eval.suites:
            try:
                suite_data_root(suite, cfg.eval.data_dir, cfg.eval.split)
            except EvalSetupError as e:
                problems.append(str(e))
    for suite in cfg.eval.suites:
        try:
            get_suite(suite).check(cfg.eval, None)
        except EvalSetupError as e:
            problems.append(str(e))
    return problems


def _get(cfg: Config, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def layout_problems(cfg: Config, mesh: Any, process_count: int) -> list[str]:
    """Problems of the batch and of the parameters on ``mesh`` (a Mesh or an AbstractMesh: only its axis sizes are
    read), each naming the config field and the mesh axis."""
    from jaxtune.sharding import LayoutError, abstract_model, validate_batch_layout, validate_param_layout

    problems = []
    # Packed rows dealt over a step count in examples (train.batch_unit=examples): the rows per step are known only
    # once the data is read, and are rounded up to what the mesh divides, so there is nothing to check here.
    dealt_rows = cfg.train.batch_unit == "examples" and cfg.data.packing
    try:
        if not dealt_rows:
            validate_batch_layout(cfg.train.global_batch_size, cfg.train.microbatches, mesh, process_count)
    except LayoutError as e:
        problems.append(str(e))
    _, shapes, axes = abstract_model(cfg.model, cfg.train.seed)
    try:
        validate_param_layout(shapes, axes, mesh)
    except LayoutError as e:
        problems.append(str(e))
    return problems


def abstract_mesh(cfg: Config, devices: int) -> Any:
    """The run's ("data", "fsdp", "tensor") mesh for ``devices`` devices, as an AbstractMesh (no device needed); the
    data axis spans ``mesh.dcn_data`` slices as :func:`jaxtune.sharding.build_mesh` lays it out."""
    from jax.sharding import AbstractMesh, AxisType

    from jaxtune.sharding import MESH_AXES, resolve_mesh_shape

    sizes = resolve_mesh_shape(cfg.mesh, devices)
    sizes["data"] *= cfg.mesh.dcn_data
    return AbstractMesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def check_run(cfg: Config, mesh: Any, process_count: int) -> None:
    """What a run checks before it reads data or compiles: the config's values (ConfigError listing every
    problem), then the layout on ``mesh`` (LayoutError listing every problem)."""
    from jaxtune.sharding import LayoutError

    cfg.validate()
    problems = layout_problems(cfg, mesh, process_count)
    if len(problems) == 1:
        raise LayoutError(problems[0])
    if problems:
        raise LayoutError(f"{len(problems)} layout problems:\n" + "\n".join(f"  {p}" for p in problems))


@dataclass
class Validation:
    """What ``jaxtune validate`` checked and found."""

    config: Config
    topology: Topology
    mesh_shape: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        from jaxtune.models.stats import count_params

        mesh = " x ".join(f"{k}={v}" for k, v in self.mesh_shape.items()) or "(not resolved)"
        tc = self.config.train
        lines = [
            f"checked for {self.topology.devices} devices in {self.topology.processes} process"
            f"{'es' if self.topology.processes > 1 else ''}: {self.topology.described_as}",
            f"  mesh {mesh}",
            f"  batch {tc.global_batch_size} rows = {tc.microbatches} microbatch(es) of "
            f"{tc.global_batch_size // max(1, tc.microbatches)} rows",
            f"  model {count_params(self.config.model, self.config.model.vocab_size)[0]:,} parameters",
        ]
        if self.ok:
            lines.insert(0, "config OK: every check a run makes before computing passed")
        else:
            lines.insert(0, f"{len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}:")
            lines[1:1] = [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def validate(
    path: Optional[str],
    overrides: Sequence[str] = (),
    *,
    devices: Optional[int] = None,
    accelerator: Optional[str] = None,
) -> Validation:
    """``jaxtune validate``: load ``path`` with ``overrides`` (ConfigError listing every problem of the values),
    then check the files it names and the layout for the devices given (see the module docstring). Returns the
    result; its ``problems`` lists what failed."""
    if devices is not None and accelerator is not None:
        raise ValidationError("give --devices or --accelerator, not both")
    cfg = load_config(path, list(overrides))
    if accelerator is not None:
        topology = accelerator_topology(accelerator, cfg.mesh.dcn_data)
    elif devices is not None:
        if devices < 1:
            raise ValidationError(f"--devices must be at least 1, got {devices}")
        topology = Topology(devices, 1, f"--devices {devices}")
    else:
        import jax

        topology = Topology(jax.device_count(), jax.process_count(), f"this machine ({jax.devices()[0].platform})")
    result = Validation(cfg, topology, problems=_local_path_problems(cfg))
    from jaxtune.sharding import LayoutError

    try:
        mesh = abstract_mesh(cfg, topology.devices)
    except LayoutError as e:
        result.problems.append(str(e))
        return result
    result.mesh_shape = dict(mesh.shape)
    result.problems += layout_problems(cfg, mesh, topology.processes)
    return result
