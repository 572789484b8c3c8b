"""The ``jaxtune`` command. Each subcommand parses its arguments and calls one plain function of the package.

jaxtune quickstart                     the main job on the embedded default (CPU, demo data, tiny model)
jaxtune train CONFIG [key=value ...]   fine-tune (sharded, resumable)
jaxtune eval CKPT --suite doit ...     score a checkpoint per ability
jaxtune report RUN_DIR ... --out DIR   growth curves and growth-pace tables over many evaluations
jaxtune sweep SWEEP.yaml [--dry-run]   the study's grid: models x data types, idempotent (jaxtune/study/grid.py)
jaxtune sweep CONFIG --selections ...  train and evaluate one config at several data volumes
jaxtune prepare INPUT OUT --format F   local files -> ArrayRecord dataset (random access, low memory)
jaxtune import-hf HF_DIR OUT           Hugging Face LLaMA, BLOOM or Qwen2 folder -> jaxtune checkpoint
jaxtune export-hf CKPT OUT_DIR         jaxtune checkpoint -> Hugging Face folder
jaxtune check-hf HF_DIR                compare jaxtune and transformers on the same checkpoint
jaxtune info [CONFIG] [key=value ...]  parameter count, FLOPs per token, memory of a model shape
jaxtune plan CONFIG --accelerator v5p-16  per-chip memory of the train step and evaluation, compiled for that slice
jaxtune select DATA_DIR TYPE OUT_DIR   write one of the study's data types as its make_data.py does
jaxtune score PRED_DIR --out DIR       score prediction files (the study's pred_*.json or *.items.jsonl)
jaxtune validate CONFIG [key=value ...] [--devices N | --accelerator v5p-16]
                                       every check a run makes before computing, without devices
jaxtune budget EVAL_DIR --total N --out DIR  per-ability counts from a grid's growth curves (budget:PATH)
jaxtune serve CKPT [--port 8000]       an OpenAI-compatible HTTP server for a checkpoint
jaxtune chat CKPT                      a terminal chat with a checkpoint
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from jaxtune.commands import (
    budget,
    chat,
    convert,
    evaluate,
    info,
    plan,
    prepare,
    quickstart,
    report,
    score,
    select,
    serve,
    sweep,
    train,
)
from jaxtune.commands import validate as validate_command
from jaxtune.commands.exits import run_with_exit_status
from jaxtune.commands.library_logs import route_library_logs

COMMAND_MODULES = (
    quickstart,
    train,
    evaluate,
    report,
    sweep,
    prepare,
    convert,
    info,
    plan,
    select,
    score,
    budget,
    validate_command,
    serve,
    chat,
)
"""The modules of the sub-commands, in the order ``jaxtune --help`` lists them; each ``register(subparsers)`` adds
its parser (its flags, defaults and help) and binds the function the sub-command runs (``args.fn``)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``jaxtune`` command."""
    parser = argparse.ArgumentParser(
        prog="jaxtune",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``jaxtune`` console command."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow options (`eval CKPT --out D eval.batch_size=4`): argparse leaves them over.
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    if not getattr(args, "fn", None):
        parser.print_help()
        return 2
    route_library_logs(args.command)  # Orbax's and tensorstore's tracebacks go to a file, not before our error
    return run_with_exit_status(args)


if __name__ == "__main__":
    sys.exit(main())
