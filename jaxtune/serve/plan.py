"""What one step of the serving engine does, decided by process 0 and shared with every process of a pod slice.

Every process runs the same device programs on the same inputs (the batch is sharded over all of them), but only
process 0 hears HTTP requests. So process 0 writes each step's decisions into a :class:`Plan` (whether the batch
starts anew after a failed step, the rows it frees, the prompts it admits with their settings, how many tokens to
decode, whether a request waits) and, with several processes, broadcasts it as JSON bytes before the step
(:func:`share_plan`); the other processes apply the same plan and compute the same outputs, which come back
replicated so every process derives the same row states from them. A step that failed is known to every process
through the next plan's ``reset``, so all of them drop their rows and device state alike.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import jax
import numpy as np


@dataclass(frozen=True)
class Admission:
    """A prompt admitted into a free row."""

    slot: int
    prompt_ids: tuple[int, ...]
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    seed: int
    max_tokens: int


@dataclass(frozen=True)
class Plan:
    """One engine step: with ``reset`` free every row and renew the device state (the previous step failed), free
    ``release`` rows, prefill ``admit``, then decode up to ``steps`` tokens of the live rows (0: the batch's
    streaming chunk; leaving the device loop as soon as a row stops when ``waiting``)."""

    release: tuple[int, ...] = ()
    admit: tuple[Admission, ...] = ()
    waiting: bool = False
    steps: int = 0
    reset: bool = False
    shutdown: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> Plan:
        d = json.loads(text)
        admit = tuple(Admission(**{**a, "prompt_ids": tuple(a["prompt_ids"])}) for a in d.pop("admit"))
        return Plan(admit=admit, release=tuple(d.pop("release")), **d)


def share_plan(plan: Plan | None) -> Plan:
    """Process 0's plan on every process (``plan`` is ignored elsewhere). One process: ``plan`` itself."""
    if jax.process_count() == 1:
        assert plan is not None
        return plan
    from jax.experimental import multihost_utils

    data = np.frombuffer(plan.to_json().encode("utf-8"), np.uint8) if jax.process_index() == 0 else None
    size = int(multihost_utils.broadcast_one_to_all(np.int64(0 if data is None else data.size)))
    # Padded to a power of two: the broadcast compiles once per buffer size.
    width = 1 << max(10, (size - 1).bit_length())
    buffer = np.zeros((width,), np.uint8)
    if data is not None:
        buffer[:size] = data
    buffer = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    return Plan.from_json(buffer[:size].tobytes().decode("utf-8"))
