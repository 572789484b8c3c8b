"""The Ray sweep's remote functions: one task claims a whole slice, then one task per host runs the cell's command.

:func:`slice_task` asks for the slice type's head resource (``TPU-<type>-head``, which Ray's TPU support gives
worker 0 of every TPU VM slice), so it runs on host 0 of a free slice and holds the whole slice while it runs. It
finds the slice's hosts by their node labels (``ray.io/tpu-slice-name``, ordered by ``ray.io/tpu-worker-id``:
what Ray sets on TPU VMs), picks a free port on host 0 for JAX's coordinator, and starts :func:`host_task` on each
host, pinned to that node (and claiming the slice's name resource, one per host), with the overrides
``mesh.coordinator_address=HOST0:PORT mesh.num_processes=N mesh.process_id=I``. It is a generator: it first yields
``{"slice", "hosts"}`` (the driver's table shows where the cell runs), then ``{"exit", "lost", "host",
"log_tail"}``: the first host to end badly decides (the others are then stopped: their exits are only the
consequence), else 0. ``lost`` names the Ray error of a host that vanished (its node died: a preemption).

Each host task runs the command in a subprocess of its own process group, so that exit statuses mean what
:mod:`jaxtune.errors` says; its output goes to a file in the node's temporary folder, whose last lines come back.
No orphans: the subprocess is killed with its Ray worker (Linux ``PR_SET_PDEATHSIG``), and a cancelled host task
(``ray.cancel``: a KeyboardInterrupt in the task) sends SIGTERM to the whole group, then SIGKILL after a grace
period. Levanter's ``ray_tpu`` found the same: tasks, not actor methods (which cannot be cancelled), and the heavy
work in a process of its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Iterator, Optional

import ray
from ray import exceptions as ray_errors
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

SLICE_LABEL = "ray.io/tpu-slice-name"
WORKER_LABEL = "ray.io/tpu-worker-id"
LOST_ERRORS = (
    ray_errors.NodeDiedError,
    ray_errors.WorkerCrashedError,
    ray_errors.OwnerDiedError,
    ray_errors.ObjectLostError,
    ray_errors.ActorDiedError,
    ray_errors.LocalRayletDiedError,
    ray_errors.RaySystemError,
    ray_errors.TaskCancelledError,
)
"""Ray errors that mean the task's process or node vanished (a preempted slice), not that the command failed."""


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the Ray worker that started it dies (Linux only)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the subprocess's process group (jaxtune saves and exits 75), SIGKILL it after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # what the leader left behind
            return


def _listen_for_cancel() -> None:
    """Make ``ray.cancel`` reach this task. Ray interrupts a task with ``_thread.interrupt_main()``, which does
    nothing while SIGINT is ignored, and a worker inherits that from the process that started its node (seen: a
    local cluster started from a background job of a shell script, whose SIGINT is ignored; the task ran on)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _wait(proc: subprocess.Popen) -> int:
    """The subprocess's exit status. Polled: Ray's cancel raises its KeyboardInterrupt between Python bytecodes, so
    a plain ``wait()`` blocked in ``waitpid`` never sees it (measured: the task stayed alive)."""
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return proc.wait(timeout=0.5)


def _tail(path: str, lines: int = 40) -> list[str]:
    with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as f:
        return [line.rstrip("\n") for line in f.readlines()[-lines:]]
    return []


@ray.remote(num_cpus=0, max_retries=0)
def host_task(argv: list[str], env: dict[str, str], grace_s: float) -> dict[str, Any]:
    """Run ``python ARGV...`` (this worker's Python) on this host; ``{"exit", "log_tail", "log"}`` (see the module
    docstring)."""
    _listen_for_cancel()
    fd, log = tempfile.mkstemp(prefix="jaxtune-cell-", suffix=".log")
    with os.fdopen(fd, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        try:
            status = _wait(proc)
        except BaseException:  # ray.cancel (KeyboardInterrupt) or the worker shutting down
            _stop_group(proc, grace_s)
            raise
    return {"exit": status, "log_tail": _tail(log), "log": log}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def slice_hosts() -> tuple[str, list[dict[str, Any]]]:
    """This node's slice name and its alive hosts, worker 0 first."""
    node_id = ray.get_runtime_context().get_node_id()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    me = next(n for n in nodes if n["NodeID"] == node_id)
    name = me.get("Labels", {}).get(SLICE_LABEL) or ray.util.tpu.get_current_pod_name()
    if not name:
        raise RuntimeError(f"node {me.get('NodeManagerAddress')} holds a slice's head resource but no {SLICE_LABEL}")
    hosts = [n for n in nodes if n.get("Labels", {}).get(SLICE_LABEL) == name]
    hosts.sort(key=lambda n: (n["NodeID"] != node_id, int(n.get("Labels", {}).get(WORKER_LABEL, 0))))
    return name, hosts


def _outcome(ref: Any, host: int) -> Optional[dict[str, Any]]:
    """A finished host task's result, or None when it exited 0."""
    try:
        result = ray.get(ref)
    except LOST_ERRORS as e:
        return {"exit": None, "lost": type(e).__name__, "host": host, "log_tail": [str(e).splitlines()[0]]}
    except ray_errors.RayTaskError as e:
        return {"exit": 1, "lost": "", "host": host, "log_tail": str(e).splitlines()[-40:]}
    return None if result["exit"] == 0 else {**result, "lost": "", "host": host}


@ray.remote(num_cpus=0, max_retries=0)
def slice_task(
    argv: list[str], env: dict[str, str], hosts_expected: int, grace_s: float, done_markers: list[str]
) -> Iterator[dict]:
    """Run ``argv`` (plus the mesh overrides) on every host of the slice this task landed on; see the module
    docstring for what it yields. When every file of ``done_markers`` exists (another driver finished the phase
    while this task waited for a slice) nothing is started."""
    from jaxtune.paths import as_path
    from jaxtune.study.grid import ALREADY_DONE

    name, hosts = slice_hosts()
    yield {"slice": name, "hosts": [h["NodeManagerAddress"] for h in hosts]}
    if done_markers and all(as_path(p).exists() for p in done_markers):
        yield {"exit": 0, "lost": "", "host": -1, "log_tail": [f"{ALREADY_DONE} (found done before the start)"]}
        return
    if len(hosts) != hosts_expected:  # a host already lost: the slice cannot run the program
        yield {"exit": None, "lost": f"slice has {len(hosts)} of {hosts_expected} hosts", "host": -1, "log_tail": []}
        return
    coordinator = f"{hosts[0]['NodeManagerAddress']}:{_free_port()}"
    refs = []
    for i, host in enumerate(hosts):
        mesh = [f"mesh.coordinator_address={coordinator}", f"mesh.num_processes={len(hosts)}", f"mesh.process_id={i}"]
        strategy = NodeAffinitySchedulingStrategy(host["NodeID"], soft=False)
        options = {"scheduling_strategy": strategy, "resources": {name: 1} if name in host["Resources"] else {}}
        refs.append(host_task.options(**options).remote([*argv, *mesh], env, grace_s))
    pending, bad = list(refs), None
    while pending and bad is None:
        ready, pending = ray.wait(pending, num_returns=1)
        bad = _outcome(ready[0], refs.index(ready[0]))
    for ref in pending:  # one host ended badly: the others cannot go on without it
        with contextlib.suppress(Exception):
            ray.cancel(ref)
    deadline = time.time() + grace_s + 15
    for ref in pending:
        try:
            ray.get(ref, timeout=max(1.0, deadline - time.time()))
        except ray_errors.GetTimeoutError:  # deaf to the interrupt: kill its worker (the subprocess dies with it)
            ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001 - cancelled or lost: what we asked for
            pass
    yield bad or {"exit": 0, "lost": "", "host": -1, "log_tail": ray.get(refs[0])["log_tail"]}
