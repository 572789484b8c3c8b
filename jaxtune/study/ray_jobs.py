"""The Ray sweep's bookkeeping, without Ray: each cell's state machine, its retry budgets, the grid rebuilt from the
run directories, the live table and ``SWEEP_DIR/sweep_status.json``.

A cell of the grid (aliases share their target's run and are left out) is a :class:`Job` that moves through::

    waiting --submit--> running --exit 0--> (train done, evaluations on slices of their own) waiting, phase eval
                                 --exit 0--> done
                                 --lost slice or exit 75--> waiting (front of the queue; preemptions + 1)
                                 --exit 1 (or killed)--> waiting (failures + 1), or failed past max_failures
                                 --exit 2, the run's lease held by a live writer--> elsewhere
                                 --exit 2--> bad input (never retried)
    waiting --the run's lease held by a live writer (another driver)--> elsewhere --lease gone or stale--> waiting

Phases (``jaxtune sweep SWEEP.yaml --cell MODEL/DATA_TYPE --phase P``): ``all`` (train then evaluate in one task),
or ``train`` then ``eval`` when the model has an ``eval_accelerator``. On start the driver rebuilds every job from
disk: a cell whose chosen epochs all have summaries is done; one whose training completed
(``RUN_DIR/completed.json``) and evaluates on slices of its own waits for its evaluation; the rest wait to train
(and resume from their checkpoints).

``SWEEP_DIR/sweep_status.json`` (SWEEP_DIR: the sweep file's ``run_dir``), rewritten atomically whenever the table
changes::

    {"sweep": "configs/sweeps/doit.yaml", "time": 1796575200.5, "driver": "HOST:PID",
     "cells": [{"cell": "7b/curated-10", "phase": "train", "state": "running", "slice": "tpu-a",
                "accelerator": "v5p-16", "step": 120, "total_steps": 400, "eta_s": 310.0, "attempts": 2,
                "preemptions": 1, "failures": 0, "why": "slice lost (NodeDiedError)", "log_tail": [...]}]}

Each driver also keeps its timeline in ``SWEEP_DIR/ray_drivers/HOST-PID.events.jsonl`` (one JSON object a line:
``{"time", "cell", "phase", "event", "slice", "detail"}``; events: submitted, started, finished (a train phase),
done, retry, elsewhere, back from elsewhere, done elsewhere, failed, bad input), rewritten atomically.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from jaxtune.checkpoint.layout import COMPLETED_FILE, HEARTBEAT_FILE, complete_steps, train_checkpoint_dir
from jaxtune.checkpoint.lease import LOCK_FILE
from jaxtune.paths import as_path, write_text_atomic
from jaxtune.study.grid import EVAL_LOCK_DIR, Cell, GridSpec, cell_states, train_done

WAITING, RUNNING, ELSEWHERE, DONE, FAILED, BAD_INPUT = "waiting", "running", "elsewhere", "done", "failed", "bad input"
"""A job's states (the table shows a running job that Ray has not placed on a slice yet as ``queued``)."""
FINAL = (DONE, FAILED, BAD_INPUT)
STATUS_FILE = "sweep_status.json"
DRIVERS_DIR = "ray_drivers"

OK, RESUMABLE, LOST, FAILURE, REFUSED = "ok", "resumable", "lost", "failure", "refused"
"""Outcome kinds of one attempt: exit 0, exit 75, the slice lost (a Ray node/worker error), exit 1 (or any other
status, a signal included), exit 2."""


@dataclass
class Outcome:
    """How one attempt of a job ended (what the slice task reports, or the Ray error the driver caught)."""

    kind: str
    detail: str = ""
    """The exit status or the Ray error's name."""
    log_tail: list[str] = field(default_factory=list)


def outcome_of_exit(status: int, detail: str = "", log_tail: Sequence[str] = ()) -> Outcome:
    """The outcome of a command's exit status (:mod:`jaxtune.errors`): 0, 75, 2, anything else a failure."""
    kind = {0: OK, 75: RESUMABLE, 2: REFUSED}.get(status, FAILURE)
    return Outcome(kind, detail or f"exit {status}", list(log_tail))


@dataclass
class Job:
    """One run of the grid and where it stands."""

    cell: Cell
    phase: str
    """The next (or running) phase: ``all``, ``train`` or ``eval``."""
    state: str = WAITING
    slice: str = ""
    attempts: int = 0
    preemptions: int = 0
    failures: int = 0
    why: str = ""
    """Why it was last retried, refused or failed."""
    log_tail: list[str] = field(default_factory=list)
    ran_here: bool = False
    """An attempt of this driver ran it: a lease still held is presumably that attempt's (its takeover rules
    apply), not another driver's."""
    epochs: list[int] = field(default_factory=list)
    """The epochs its evaluation covers (the sweep's eval_epochs of its model)."""
    started: Optional[float] = None
    first_beat: Optional[tuple[int, float]] = None
    """(step, time) of the first progress this attempt showed: the ETA's rate starts there."""

    @property
    def accelerator(self) -> Optional[str]:
        model = self.cell.model
        return model.eval_accelerator if self.phase == "eval" else model.accelerator

    @property
    def lock_dirs(self) -> list[Path]:
        """The folders whose leases the phase takes: the run's (training) and RUN_DIR/eval (evaluations)."""
        run_dir = self.cell.run_dir
        return {"train": [run_dir], "eval": [run_dir / EVAL_LOCK_DIR]}.get(
            self.phase, [run_dir, run_dir / EVAL_LOCK_DIR]
        )


def head_resource(accelerator: str) -> str:
    """The resource Ray gives host 0 of a slice of ``accelerator``: ``TPU-<Cloud TPU's type>-head`` (``v5p-16`` ->
    ``TPU-v5p-16-head``; jaxtune's ``v5e-8`` is Cloud TPU's ``v5litepod-8``)."""
    kind, _, count = accelerator.partition("-")
    return f"TPU-{'v5litepod' if kind == 'v5e' else kind}-{count}-head"


def done_markers(job: Job) -> list[str]:
    """The files whose presence means the job's phase is finished (:func:`is_done_on_disk`): a slice task checks
    them before it starts anything, so a second driver's late attempt costs no host a jaxtune start."""
    from jaxtune.study.sweep import EVALUATED_FILE, eval_dir_of

    if job.phase == "train":
        return [str(job.cell.run_dir / COMPLETED_FILE)]
    return [str(eval_dir_of(job.cell.run_dir, e) / EVALUATED_FILE) for e in job.epochs]


def first_phase(cell: Cell) -> str:
    return "train" if cell.model.eval_accelerator else "all"


def rebuild(spec: GridSpec) -> list[Job]:
    """Every run of the grid (aliases left out) with its state read from disk; see the module docstring."""
    jobs = []
    for s in cell_states(spec, measure=False):
        if s.cell.alias:
            continue
        job = Job(s.cell, first_phase(s.cell), epochs=list(s.epochs))
        if s.state == "done":
            job.state = DONE
        elif job.phase == "train" and train_done(s.cell.run_dir):
            job.phase = "eval"
        jobs.append(job)
    return jobs


def is_done_on_disk(job: Job) -> bool:
    """Whether the run directories say the job's current phase is finished (another driver may have done it):
    training by RUN_DIR/completed.json, evaluations by every chosen epoch's summaries."""
    from jaxtune.study.sweep import eval_dir_of, has_summaries

    if job.phase == "train":
        return train_done(job.cell.run_dir)
    return bool(job.epochs) and all(has_summaries(eval_dir_of(job.cell.run_dir, e)) for e in job.epochs)


def live_lease(lock_dir: Path, now: Optional[float] = None) -> Optional[dict]:
    """The lock record of ``lock_dir`` when its heartbeat is younger than its lease timeout (a live writer), else
    None (no lock, a stale one, or an unreadable one)."""
    path = as_path(lock_dir) / LOCK_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    age = (now or time.time()) - float(record.get("heartbeat", 0))
    return record if age < float(record.get("lease_timeout_s", 300.0)) else None


def job_lease(job: Job, now: Optional[float] = None) -> Optional[dict]:
    """The live lease of any folder the job's phase writes (see :func:`live_lease`), or None."""
    return next((r for d in job.lock_dirs if (r := live_lease(d, now)) is not None), None)


def apply(spec: GridSpec, job: Job, outcome: Outcome, leased: Optional[dict] = None) -> str:
    """Move ``job`` on after an attempt ended with ``outcome``; ``leased``: the live lease of its run when the
    attempt was refused (another writer). Returns the event for the timeline."""
    job.slice, job.started, job.first_beat = "", None, None
    job.log_tail = outcome.log_tail[-20:]
    if outcome.kind == OK:
        if job.phase == "train":
            job.phase, job.state, job.ran_here = "eval", WAITING, False
            return "finished"
        job.state = DONE
        return DONE
    if outcome.kind in (RESUMABLE, LOST):
        job.preemptions += 1
        job.why = f"{'slice lost' if outcome.kind == LOST else 'stopped early, state saved'} ({outcome.detail})"
        job.state = WAITING if job.preemptions <= spec.max_preemptions else FAILED
        return "retry" if job.state == WAITING else FAILED
    if outcome.kind == REFUSED:
        if leased is not None:
            job.state, job.why, job.ran_here = ELSEWHERE, f"run by {leased.get('host')} pid {leased.get('pid')}", False
            return ELSEWHERE
        if is_done_on_disk(job):  # the other writer finished between its refusal and our look
            apply(spec, job, Outcome(OK))
            return "done elsewhere"
        job.state, job.why = BAD_INPUT, f"bad input ({outcome.detail})"
        return BAD_INPUT
    job.failures += 1
    job.why = f"failed ({outcome.detail})"
    job.state = WAITING if job.failures <= spec.max_failures else FAILED
    return "retry" if job.state == WAITING else FAILED


def recheck_elsewhere(spec: GridSpec, job: Job, now: Optional[float] = None) -> Optional[str]:
    """A job run elsewhere comes back once that writer's lease is gone or stale: done if it finished, else
    waiting. Returns the event, or None while the other writer holds it."""
    if job.state != ELSEWHERE or job_lease(job, now) is not None:
        return None
    if is_done_on_disk(job):
        apply(spec, job, Outcome(OK))
        return "done elsewhere"
    job.state = WAITING
    return "back from elsewhere"


def to_submit(jobs: Sequence[Job], free: dict[Optional[str], int]) -> list[Job]:
    """The waiting jobs to start now, in the grid's order (retries first), as many per slice type as ``free``
    has slices (``free`` is decremented)."""
    chosen = []
    for job in sorted((j for j in jobs if j.state == WAITING), key=lambda j: j.attempts == 0):
        if free.get(job.accelerator, 0) > 0:
            free[job.accelerator] -= 1
            chosen.append(job)
    return chosen


# --------------------------------------------------------------------------------------------------------------------
# Progress, the table and the status file
# --------------------------------------------------------------------------------------------------------------------


def progress(job: Job, now: Optional[float] = None) -> tuple[Optional[int], Optional[int], Optional[float]]:
    """(step, total steps, ETA in seconds) of a running job: RUN_DIR/heartbeat.json, else its last checkpoint's
    step (no total, no ETA)."""
    now = now or time.time()
    run_dir = as_path(job.cell.run_dir)
    try:
        beat = json.loads((run_dir / HEARTBEAT_FILE).read_text(encoding="utf-8"))
        step, total = int(beat["step"]), int(beat["total_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        steps = complete_steps(train_checkpoint_dir(run_dir))
        return (steps[-1] if steps else None), None, None
    if job.state != RUNNING:
        return step, total, None
    if job.first_beat is None:
        job.first_beat = (step, now)
    step0, t0 = job.first_beat
    eta = (total - step) * (now - t0) / (step - step0) if step > step0 else None
    return step, total, eta


def rows(jobs: Sequence[Job], now: Optional[float] = None) -> list[dict[str, Any]]:
    """One status record per job (the ``cells`` of sweep_status.json)."""
    out = []
    for job in jobs:
        step, total, eta = progress(job, now) if job.state == RUNNING else (None, None, None)
        out.append(
            {
                "cell": job.cell.name,
                "phase": job.phase,
                "state": "queued" if job.state == RUNNING and not job.slice else job.state,
                "slice": job.slice,
                "accelerator": job.accelerator,
                "step": step,
                "total_steps": total,
                "eta_s": None if eta is None else round(eta, 1),
                "attempts": job.attempts,
                "preemptions": job.preemptions,
                "failures": job.failures,
                "why": job.why,
                "log_tail": job.log_tail if job.state in (FAILED, BAD_INPUT) else [],
            }
        )
    return out


def format_table(records: Sequence[dict[str, Any]]) -> str:
    """The live table: cell, phase, state, slice, step, ETA, retries (preemptions/failures), why."""
    lines = [("cell", "phase", "state", "slice", "step", "ETA", "retries", "why")]
    for r in records:
        step = "" if r["step"] is None else f"{r['step']}" + (f"/{r['total_steps']}" if r["total_steps"] else "")
        eta = "" if r["eta_s"] is None else f"{r['eta_s'] / 60:.1f} min"
        retries = f"{r['preemptions']}p {r['failures']}f"
        lines.append((r["cell"], r["phase"], r["state"], r["slice"], step, eta, retries, r["why"]))
    widths = [max(len(line[i]) for line in lines) for i in range(7)]
    return "\n".join(("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[7]).rstrip() for line in lines)


def driver_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def write_status(spec: GridSpec, records: Sequence[dict[str, Any]]) -> Path:
    """SWEEP_DIR/sweep_status.json, atomically (schema in the module docstring)."""
    path = as_path(spec.run_dir) / STATUS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"sweep": str(spec.path), "time": time.time(), "driver": driver_id(), "cells": list(records)}
    write_text_atomic(path, json.dumps(body, indent=1) + "\n")
    return path


class Timeline:
    """This driver's events (SWEEP_DIR/ray_drivers/HOST-PID.events.jsonl), rewritten atomically on each one."""

    def __init__(self, spec: GridSpec, print_fn: Any = print):
        self.path = as_path(spec.run_dir) / DRIVERS_DIR / f"{driver_id().replace(':', '-')}.events.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.events: list[dict[str, Any]] = []
        self.print_fn = print_fn

    def add(self, job: Job, event: str, detail: str = "") -> None:
        record = {"time": time.time(), "cell": job.cell.name, "phase": job.phase, "event": event}
        record.update(slice=job.slice, detail=detail or job.why)
        self.events.append(record)
        self.print_fn(f"[{time.strftime('%H:%M:%S')}] {job.cell.name} {job.phase}: {event} {detail}".rstrip())
        write_text_atomic(self.path, "".join(json.dumps(e) + "\n" for e in self.events))
