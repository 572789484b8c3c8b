"""Runs the quickstart in a fresh process with one CPU device, as on a newcomer's machine (the suite's processes
simulate eight, over which the tiny runs' steps cost 15% more), and pickles what it returns and prints.

    python quickstart_worker.py OUT SELECTIONS RESULT.pkl
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: compile_level
from compile_level import start_cpu_process  # noqa: E402


def main(out: str, selections: str, result: str) -> int:
    start_cpu_process(1)  # before jax is imported
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

    from jaxtune.commands.quickstart import quickstart

    lines: list[str] = []
    outputs = quickstart(out, selections=selections, print_fn=lines.append)
    Path(result).write_bytes(pickle.dumps((outputs, lines)))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
