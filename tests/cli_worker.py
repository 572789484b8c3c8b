"""Runs a ``jaxtune`` command (the command-line entry point) in a fresh process with its own CPU device count.

    python cli_worker.py DEVICES COMMAND ARG...

DEVICES: this process's simulated CPU devices; COMMAND ARG...: the ``jaxtune`` command and its arguments.
Multi-process runs (``eval``, ``serve`` on a pod slice) pass mesh.coordinator_address, mesh.num_processes and
mesh.process_id as overrides, as a user on a pod would (or let JAX read them from the environment).
"""

from __future__ import annotations

import sys
from pathlib import Path

from compile_level import start_cpu_process  # tests/: this script's folder

REPO = Path(__file__).resolve().parents[1]


def main(devices: int, args: list[str]) -> int:
    start_cpu_process(devices)  # before jax is imported: the test session's XLA_FLAGS may say another device count
    sys.path.insert(0, str(REPO))

    from jaxtune.cli import main as jaxtune_main

    return jaxtune_main(args)


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), sys.argv[2:]))
