"""RUN_DIR/heartbeat.json: what a run is doing now, for a supervisor that must tell a hang from a long compile.

Process 0 rewrites the file (atomically, :func:`jaxtune.paths.write_text_atomic`, local or gs://) at every logging
interval and at each change of phase::

    {"step": 120, "total_steps": 500, "phase": "training", "time": 1765049212.5, "host": "t1v-n-0", "pid": 4242}

``phase``, in the order a run goes through them:

=============  ======================================================================================
starting       from the start of ``train`` (the lease taken): data, layout, restore
compiling      written BEFORE the first step's compile starts: a long silence after it is a compile
training       steps running (refreshed at every ``train.log_every`` steps)
saving         a checkpoint (train state or epoch) is being written
evaluating     validation loss, or the sweep's evaluation of a finished run's epoch checkpoints
done           the run completed (``completed.json`` exists, or is about to)
preempted      stopped on SIGTERM/Ctrl-C with its state saved (the command exits 75)
=============  ======================================================================================

``time`` is the writer's wall clock in unix seconds; ``step`` is the last optimizer step finished. Writes happen on
a background thread that keeps only the newest record (a newer one replaces one not yet written), so a slow object
store never holds up a step; :meth:`Heartbeat.close` waits until the last record is written.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Optional

from jaxtune.checkpoint.layout import HEARTBEAT_FILE
from jaxtune.paths import PathLike, as_path, is_remote, write_text_atomic

PHASES = ("starting", "compiling", "training", "saving", "evaluating", "done", "preempted")


class Heartbeat:
    """The writer of one run's heartbeat.json; inactive (writes nothing) unless ``enabled`` (process 0 only)."""

    def __init__(self, run_dir: PathLike, total_steps: int = 0, *, enabled: bool = True):
        self.path = as_path(run_dir) / HEARTBEAT_FILE
        self.total_steps = total_steps
        self.enabled = enabled
        self.phase: Optional[str] = None
        self.step = 0
        self._pending: Optional[str] = None  # the newest record not yet written
        self._cond = threading.Condition()
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self.failures = 0
        """Writes that raised (the store was unreachable): a heartbeat never stops a run."""

    def beat(self, phase: Optional[str] = None, step: Optional[int] = None) -> None:
        """Record ``phase`` (default: the current one) at ``step`` (default: the last one); returns at once."""
        if phase is not None and phase not in PHASES:
            raise ValueError(f"unknown heartbeat phase {phase!r} (one of {PHASES})")
        self.phase = phase or self.phase or "starting"
        if step is not None:
            self.step = step
        if not self.enabled:
            return
        record = {
            "step": self.step,
            "total_steps": self.total_steps,
            "phase": self.phase,
            "time": round(time.time(), 3),
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        with self._cond:
            if self._closed:
                return
            self._pending = json.dumps(record) + "\n"
            if self._thread is None:
                self._thread = threading.Thread(target=self._write_loop, name="jaxtune-heartbeat", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                text, self._pending = self._pending, None
                if text is None:  # closed with nothing left to write
                    return
            try:
                if not is_remote(self.path):  # a fresh local run_dir may not exist yet (an object store has no folders)
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(self.path, text)
            except Exception:  # an unreachable store: the next beat tries again
                self.failures += 1

    def close(self, phase: Optional[str] = None, timeout_s: float = 30.0) -> None:
        """Write ``phase`` (if given) as the last record, wait (at most ``timeout_s``) until it is written."""
        if phase is not None:
            self.beat(phase)
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
