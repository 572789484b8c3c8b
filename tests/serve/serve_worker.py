"""Runs ``jaxtune serve`` (the command-line entry point) in a fresh process with its own CPU device count.

    python serve_worker.py DEVICES ARG...

DEVICES: this process's simulated CPU devices; ARG...: the ``jaxtune serve`` arguments. A pod slice's processes
pass mesh.coordinator_address, mesh.num_processes and mesh.process_id as overrides: process 0 answers HTTP, the
others follow its plans.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(devices: int, args: list[str]) -> int:
    # Before jax is imported: the test session's XLA_FLAGS may say another device count.
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    flags.append(f"--xla_force_host_platform_device_count={devices}")
    os.environ["XLA_FLAGS"] = " ".join(flags)
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

    from jaxtune.cli import main as jaxtune_main

    return jaxtune_main(["serve", *args])


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), sys.argv[2:]))
