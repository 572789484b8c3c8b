"""``jaxtune train CONFIG [key=value ...]``: fine-tune (:func:`jaxtune.train.trainer.train`). Exits 0 once the run
is complete (RUN_DIR/completed.json), 75 when it stopped on SIGTERM/Ctrl-C with its state saved (run it again), 1
on a failure, 2 on bad input (:mod:`jaxtune.errors`)."""

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

    result = train(cfg)
    print(result.summary())
    return result.exit_code
