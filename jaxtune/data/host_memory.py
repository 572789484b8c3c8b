"""Whether a run's host batches fit in the host's memory, checked before any row is built (``jaxtune train`` and
``jaxtune validate``): a ``data.max_len`` of 10**9 once grew memory until the kernel's OOM kill.

A host batch (:mod:`jaxtune.data.pipeline`) is :data:`BATCH_ARRAYS` arrays of ``[rows, data.max_len]`` 4-byte
values, ``rows = ceil(train.global_batch_size / processes)``; ``(data.prefetch + 1) x max(1, data.num_workers)`` of
them may be in flight at once. Their bytes are compared with the memory the kernel says is available
(``psutil.virtual_memory().available``, else ``MemAvailable`` of ``/proc/meminfo``; not checked when neither says).
"""

from __future__ import annotations

import math
from typing import Any, Optional

BATCH_ARRAYS = 6
"""input_ids, targets, loss_weights, segment_ids, positions, ability_ids."""
BYTES_PER_VALUE = 4
"""int32 or float32."""


def available_host_memory() -> Optional[int]:
    """Bytes of memory available to a new allocation on this host, or None when the kernel does not say."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 -- psutil missing or unsupported here: read the kernel's own figure
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def host_batch_bytes(cfg: Any, processes: int) -> tuple[int, int]:
    """(bytes of one host batch, batches in flight at once) for a run config on ``processes`` processes."""
    rows = math.ceil(cfg.train.global_batch_size / max(1, processes))
    one = rows * cfg.data.max_len * BATCH_ARRAYS * BYTES_PER_VALUE
    return one, (cfg.data.prefetch + 1) * max(1, cfg.data.num_workers)


def host_memory_problem(cfg: Any, processes: int, available: Optional[int] = None) -> Optional[str]:
    """The problem of host batches that cannot fit in the available memory (``available``: bytes, default this
    host's), naming the keys to lower; None when they fit or the memory is unknown."""
    available = available_host_memory() if available is None else available
    if available is None:
        return None
    one, in_flight = host_batch_bytes(cfg, processes)
    if one * in_flight <= available:
        return None
    return (
        f"data.max_len={cfg.data.max_len} x train.global_batch_size={cfg.train.global_batch_size} over {processes} "
        f"process{'es' if processes > 1 else ''}: host batches of {one / 2**30:.1f} GiB ({BATCH_ARRAYS} arrays of "
        f"{BYTES_PER_VALUE} bytes per token, {in_flight} in flight with data.prefetch={cfg.data.prefetch}) cannot "
        f"fit in this host's available memory ({available / 2**30:.1f} GiB): lower data.max_len or "
        f"train.global_batch_size"
    )
