"""The lifecycle of grain's worker processes (``data.num_workers``): their start-up needs (absl flags marked parsed),
their end (each exits as soon as the process that started it is gone), and the ``mp_prefetch`` stage that starts
them, shared by the pipeline's first pass and its batch stream."""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Optional

_PARENT_POLL_S = 0.5


def exit_with_parent(worker_index: int = 0, worker_count: int = 1) -> None:
    """grain's ``worker_init_fn``: end this worker process as soon as the process that started it is gone.

    A trainer killed outright (SIGKILL, the OOM killer) runs no cleanup, and its workers would live on, reparented,
    each holding its own copy of the data. A daemon thread polls the parent's pid (prctl's PR_SET_PDEATHSIG would
    fire when the *thread* that spawned the worker ends, which in grain need not be the trainer's main thread).
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)  # no cleanup to run: the parent that would read this worker's output is gone

    threading.Thread(target=watch, name=f"jaxtune-exit-with-parent-{worker_index}", daemon=True).start()


def ensure_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; mark them parsed when the program did not use absl.app."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def prefetch_in_workers(dataset: Any, num_workers: int, per_worker_buffer_size: Optional[int] = None) -> Any:
    """``dataset`` (a grain IterDataset) computed ahead in ``num_workers`` worker processes, each ending with its
    parent (:func:`exit_with_parent`); ``per_worker_buffer_size`` None keeps grain's default."""
    import grain

    ensure_absl_flags_parsed()
    options = (
        grain.MultiprocessingOptions(num_workers=num_workers)
        if per_worker_buffer_size is None
        else grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=per_worker_buffer_size)
    )
    return dataset.mp_prefetch(options, worker_init_fn=exit_with_parent)
