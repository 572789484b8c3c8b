"""What the command modules share: adding a sub-command to the ``jaxtune`` parser, and reading a run config from
the command line (a YAML file, further YAML files among the arguments, then ``key=value`` overrides)."""

from __future__ import annotations

import argparse
import functools
from typing import Any, Callable, Optional, Sequence

from jaxtune.config.loading import load_config
from jaxtune.config.schema import Config
from jaxtune.convert.architecture import inherit_architecture

Command = Callable[[argparse.Namespace], int]
"""What a sub-command runs: the parsed arguments in, the exit status out."""


def add_command(subparsers: Any, name: str, run: Command, help: str) -> argparse.ArgumentParser:
    """Add the sub-command ``name`` (its help doubles as its description) that runs ``run``."""
    parser = subparsers.add_parser(name, help=help, description=help)
    parser.set_defaults(fn=run)
    return parser


def config_files(path: Optional[str], overrides: Sequence[str]) -> tuple[Any, list[str]]:
    """(the config file, or it and the further YAML files among ``overrides`` in order; the other arguments)."""
    files = [a for a in overrides if "=" not in a and a.endswith((".yaml", ".yml"))]
    rest = [a for a in overrides if a not in files]
    return ([path, *files] if files and path is not None else path), rest


def run_config(path: Optional[str], overrides: Sequence[str], checkpoint: Optional[str] = None) -> Config:
    """The config of ``path`` plus any further YAML files among the arguments (a hardware preset:
    ``train configs/doit-33b.yaml configs/hardware/v5p-16.yaml``), then the key=value overrides; the model's
    architecture from ``checkpoint`` (default: ``checkpoint.init_from``) where the config leaves it unset
    (:mod:`jaxtune.convert.architecture`)."""
    return load_config(*config_files(path, overrides), functools.partial(inherit_architecture, source=checkpoint))
