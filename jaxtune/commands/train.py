"""``jaxtune train CONFIG [key=value ...]``: fine-tune (:func:`jaxtune.train.trainer.train`)."""

from __future__ import annotations

import argparse
from typing import Any

from jaxtune.commands.arguments import add_command, run_config


def register(subparsers: Any) -> None:
    p = add_command(subparsers, "train", run, "fine-tune a model (sharded, checkpointed, resumable)")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=3 mesh.fsdp=8")


def run(args: argparse.Namespace) -> int:
    cfg = run_config(args.config, args.overrides)
    from jaxtune.train.trainer import train  # imported when run: building the parser stays fast

    print(train(cfg).summary())
    return 0
