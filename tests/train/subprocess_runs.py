"""Starting, watching and stopping training runs in child processes (run_worker.py), always bounded in time."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

WORKER = Path(__file__).with_name("run_worker.py")
TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(cache_dir: Optional[Path]) -> dict[str, str]:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    if cache_dir is not None:
        # The children compile the same programs: share them through JAX's persistent compilation cache.
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def start(
    spec: dict, cache_dir: Optional[Path], log_path: Path, env: Optional[dict[str, str]] = None
) -> subprocess.Popen:
    """Start run_worker.py with ``spec``; stdout and stderr go to ``log_path``; ``env`` is added to the child's
    environment (e.g. a storage emulator's settings)."""
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(spec)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**worker_env(cache_dir), **(env or {})},
            cwd=str(WORKER.parents[2]),
        )


def finish(procs: list[subprocess.Popen], timeout: float = TIMEOUT_S) -> list[int]:
    """Wait for every process (killing all of them if any overruns); their exit codes."""
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        raise


def kill_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def wait_for(
    condition: Callable[[], bool], procs: list[subprocess.Popen], what: str, timeout: float = TIMEOUT_S
) -> None:
    """Poll ``condition`` until true; fail (killing the processes) on timeout or if a process exits first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if any(p.poll() is not None for p in procs):
            raise AssertionError(f"a training process exited before {what}")
        if time.monotonic() > deadline:
            kill_all(procs)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def send(proc: subprocess.Popen, sig: signal.Signals) -> None:
    os.kill(proc.pid, sig)


def train_records(run_dir: Path) -> list[dict]:
    """The ``train`` records of a run's metrics.jsonl, in file order."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["kind"] == "train"]


def committed(run_dir: Path, step: int) -> bool:
    return (run_dir / "checkpoints" / str(step) / "commit_success.txt").is_file()
