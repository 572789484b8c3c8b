"""``jaxtune chat CHECKPOINT``: talk to a checkpoint in the terminal (see :mod:`jaxtune.serve.chat`)."""

from __future__ import annotations

import argparse
from typing import Any

from jaxtune.commands.serve import add_model_arguments, load


def run(args: argparse.Namespace) -> int:
    import jax

    from jaxtune.serve.chat import chat_loop

    loaded = load(args)
    if jax.process_index() != 0:  # on a pod slice process 0 talks, the others decode with it
        loaded.engine.follow()
        return 0
    loaded.engine.start()
    try:
        return chat_loop(loaded)
    finally:
        loaded.engine.stop()


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``chat`` to the ``jaxtune`` command's sub-parsers."""
    help = "chat with a checkpoint in the terminal (history kept, replies streamed)"
    p = subparsers.add_parser("chat", help=help, description=help)
    add_model_arguments(p)
    p.set_defaults(fn=run)
    return p
