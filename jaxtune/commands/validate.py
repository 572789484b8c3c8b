"""``jaxtune validate CONFIG``: every check a training run makes before it computes, without any device.

The checks, in order, each problem naming its dotted key:

1. The config's values: :meth:`jaxtune.config.schema.Config.problems` (each section checks its own; the same checks run
   when any config is loaded). Problems found here are reported together with those of the layout (3.): the
   layout is checked on the config without the ``key=value`` overrides that have problems, skipping the checks
   those keys feed (:mod:`jaxtune.train.preflight`); with problems in the files themselves, the layout is not
   checked.
2. What the config names on disk: ``data.path`` and ``data.tokenizer`` are set (a run needs both) and, with
   ``data.valid_path``, ``checkpoint.init_from``, ``eval.data_dir`` and ``eval.tokenizer``, exist (local paths only;
   ``gs://`` and other URLs are not looked up); the tokenizer with the template's added tokens has
   ``model.vocab_size`` ids; ``data.max_len`` fits the model's positions, and its host batches fit this machine's
   available memory (:mod:`jaxtune.data.host_memory`); ``eval.suites`` names known suites, each with its data under ``eval.data_dir`` (when
   set) and, for ``belle``, a judge.
3. The layout, on abstract shapes: the mesh of ``mesh.*`` resolved for a device count (a
   :class:`jax.sharding.AbstractMesh`, so no device is touched), then
   :func:`jaxtune.train.preflight.layout_problems`: the batch split over it and the processes and every parameter
   dimension over its mesh axes.

The device count is ``--devices N`` (one process), or an accelerator name (one slice; ``mesh.dcn_data`` slices of
it): ``v4-N``/``v5p-N`` count TensorCores, two per chip (``v5p-16`` = 8 chips on 2 hosts of 4); ``v5e-N``,
``v5litepod-N`` and ``v6e-N`` count chips (one host up to 8 chips, 4 chips per host above); GPUs count 8 per host
(the facts of :mod:`jaxtune.hardware`). Without either, the devices and processes of this machine.

:func:`jaxtune.train.preflight.check_run` runs checks 1 and 3 first in every ``train`` call on its real mesh, so a
run never starts compiling with a config this command rejects.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from jaxtune.commands.arguments import add_command, config_files
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


def _local_path_problems(cfg: Config, processes: int) -> list[str]:
    from jaxtune.data.host_memory import host_memory_problem

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
    memory = host_memory_problem(cfg, processes)
    if memory:
        problems.append(memory)
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
    from jaxtune.train.preflight import vocabulary_problem

    problem = vocabulary_problem(cfg, tokenizer.vocab_size)
    return [problem] if problem else []


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


def abstract_mesh(cfg: Config, devices: int) -> Any:
    """The run's ("data", "fsdp", "tensor") mesh for ``devices`` devices, as an AbstractMesh (no device needed); the
    data axis spans ``mesh.dcn_data`` slices as :func:`jaxtune.sharding.build_mesh` lays it out."""
    from jax.sharding import AbstractMesh, AxisType

    from jaxtune.sharding import MESH_AXES, resolve_mesh_shape

    sizes = resolve_mesh_shape(cfg.mesh, devices)
    sizes["data"] *= cfg.mesh.dcn_data
    return AbstractMesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


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
    """``jaxtune validate``: load ``path`` with ``overrides``, then check the files it names and the layout for the
    devices given (see the module docstring). Returns the result; its ``problems`` lists what failed. Problems of
    the values raise ValidationError listing them with the layout's problems."""
    # Imported when run: the CLI imports this module to build its parser, and these import JAX.
    from jaxtune.sharding import LayoutError
    from jaxtune.train.preflight import layout_problems, names_key

    if devices is not None and accelerator is not None:
        raise ValidationError("give --devices or --accelerator, not both")
    if devices is not None and devices < 1:
        raise ValidationError(f"--devices must be at least 1, got {devices}")
    try:
        cfg, value_problems = load_config(path, list(overrides)), []
    except ConfigError as e:
        cfg, value_problems = _config_without_bad_overrides(path, overrides, e), e.problems
    topology = _topology(cfg, devices, accelerator)
    layout: list[str] = []
    mesh_shape: dict[str, int] = {}
    if not names_key(value_problems, "mesh."):
        try:
            mesh = abstract_mesh(cfg, topology.devices)
        except LayoutError as e:
            layout.append(str(e))
        else:
            mesh_shape = dict(mesh.shape)
            layout += layout_problems(cfg, mesh, topology.processes, value_problems)
    if value_problems:
        raise ValidationError([*value_problems, *layout])
    return Validation(cfg, topology, mesh_shape, _local_path_problems(cfg, topology.processes) + layout)


def _config_without_bad_overrides(path: Optional[str], overrides: Sequence[str], error: ConfigError) -> Config:
    """The config loaded without the overrides ``error`` names, so the layout can still be checked; re-raises
    ``error`` when that does not load either (a problem in the files)."""
    kept = [o for o in overrides if not any(f"{o!r}:" in p for p in error.problems)]
    if len(kept) == len(overrides):
        raise error
    try:
        return load_config(path, kept)
    except ConfigError:
        raise error from None


def _topology(cfg: Config, devices: Optional[int], accelerator: Optional[str]) -> Topology:
    if accelerator is not None:
        return accelerator_topology(accelerator, cfg.mesh.dcn_data)
    if devices is not None:
        return Topology(devices, 1, f"--devices {devices}")
    import jax

    return Topology(jax.device_count(), jax.process_count(), f"this machine ({jax.devices()[0].platform})")


def register(subparsers: Any) -> None:
    """Add ``jaxtune validate CONFIG [key=value ...] [--devices N | --accelerator NAME]`` to the ``jaxtune`` parser."""
    p = add_command(
        subparsers,
        "validate",
        run,
        "check a config, the files it names and its layout on a device count, without devices (all problems together)",
    )
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--devices", type=int, help="check the layout for N devices in one process")
    where.add_argument(
        "--accelerator",
        help="check the layout for a TPU slice: v4-8, v5p-16 (8 chips), v5e-8, "
        "v6e-16 ... (default: this machine's devices)",
    )


def run(args: argparse.Namespace) -> int:
    """``jaxtune validate``: print what was checked; exit 1 when a file or layout check failed."""
    paths, overrides = config_files(args.config, args.overrides)
    result = validate(paths, overrides, devices=args.devices, accelerator=args.accelerator)
    print(result.summary())
    return 0 if result.ok else 1
