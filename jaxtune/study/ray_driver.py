"""``jaxtune sweep SWEEP.yaml --ray [ADDRESS]`` (or ``backend: ray``): the grid on a Ray cluster's pool of slices.

The driver connects to the cluster (``ADDRESS``, default ``auto``: the one this machine belongs to), rebuilds the
grid's state from the run directories (:func:`jaxtune.study.ray_jobs.rebuild`) and submits, in the grid's order,
as many cells as the cluster has slices of each cell's type (``TPU-<type>-head`` resources): each a
:func:`jaxtune.study.ray_tasks.slice_task` running ``python -m jaxtune.cli sweep SWEEP.yaml --cell MODEL/DATA_TYPE
--phase P`` on every host of its slice. The rest wait; a retry goes first. Each attempt's end moves its cell on
(:func:`jaxtune.study.ray_jobs.apply`: the retry budgets ``max_preemptions``/``max_failures``, exit 2 not retried,
another writer's lease waited out). The live table is printed when it changes and ``SWEEP_DIR/sweep_status.json``
kept; once every cell is done the report over all of them is drawn as the local grid draws it.

Stopping the driver (Ctrl-C) cancels its tasks (their processes stop with them) and exits 75; starting it again
continues from the run directories. A second driver on the same grid runs nothing twice: the runs' leases refuse
it and it waits for their holders (state ``elsewhere``).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from jaxtune.errors import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, EXIT_RESUMABLE
from jaxtune.hardware import parse_accelerator
from jaxtune.study import ray_jobs as book
from jaxtune.study.grid import ALREADY_DONE, GridError, GridSpec, report_grid


@dataclass
class DriverOptions:
    """How the driver polls and stops."""

    address: Optional[str] = None
    """The Ray cluster (``auto`` when None: the one this machine belongs to; ``ray://HOST:10001`` from outside)."""
    poll_s: float = 1.0
    recheck_every_s: float = 5.0
    """How often a job run elsewhere looks at that writer's lease again."""
    table_every_s: float = 30.0
    """Reprint the table this often while only steps change (a state change prints it at once)."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables added to every cell command."""


def cell_argv(spec: GridSpec, job: book.Job) -> list[str]:
    """The command each host runs (its Python is the Ray worker's own): one cell's phase of the sweep file."""
    return ["-m", "jaxtune.cli", "sweep", str(spec.path.resolve()), "--cell", job.cell.name, "--phase", job.phase]


def check_accelerators(jobs: list[book.Job]) -> None:
    missing = sorted({j.cell.model.label for j in jobs if j.state not in book.FINAL and not j.accelerator})
    if missing:
        raise GridError(f"backend ray: models {missing} have no accelerator (sweep.accelerator or the model's own)")


def dry_run(spec: GridSpec, print_fn: Callable[[str], None] = print) -> int:
    """List what the driver would submit (no cluster needed)."""
    jobs = book.rebuild(spec)
    check_accelerators(jobs)
    print_fn(f"grid {spec.path} on Ray: {len(jobs)} runs, {sum(j.state == book.DONE for j in jobs)} done")
    for job in jobs:
        if job.state == book.DONE:
            print_fn(f"  {job.cell.name}: done")
            continue
        hosts = parse_accelerator(job.accelerator).hosts
        then = " (then --phase eval on a " + str(job.cell.model.eval_accelerator) + ")" if job.phase == "train" else ""
        print_fn(
            f"  {job.cell.name}: --phase {job.phase} on a {job.accelerator} slice ({hosts} hosts, resource "
            f"{book.head_resource(job.accelerator)}){then}"
        )
    return EXIT_OK


class Driver:
    """The driver's loop over the jobs and their in-flight slice tasks (see the module docstring)."""

    def __init__(self, spec: GridSpec, options: DriverOptions, print_fn: Callable[[str], None] = print):
        self.spec, self.options, self.print_fn = spec, options, print_fn
        self.jobs = book.rebuild(spec)
        check_accelerators(self.jobs)
        self.timeline = book.Timeline(spec, print_fn)
        self.inflight: dict[Any, book.Job] = {}
        self.shown_states: tuple = ()
        self.shown_steps: tuple = ()
        self.shown_at = 0.0
        self.written: list = []
        self.rechecked_at = 0.0

    def free_slices(self) -> dict[Optional[str], int]:
        import ray

        total = ray.cluster_resources()
        free = {}
        for accelerator in {j.accelerator for j in self.jobs}:
            busy = sum(j.accelerator == accelerator for j in self.inflight.values())
            free[accelerator] = int(total.get(book.head_resource(accelerator or ""), 0)) - busy
        return free

    def submit(self) -> None:
        """Start the next waiting jobs on the free slices. A job found done on disk, or leased by a live writer,
        is not started (looked at only when a slice is free for it: on gs:// each look is a request)."""
        from jaxtune.study.ray_tasks import slice_task

        for job in book.to_submit(self.jobs, self.free_slices()):
            if book.is_done_on_disk(job):  # another driver did it meanwhile
                phase = job.phase
                book.apply(self.spec, job, book.Outcome(book.OK))
                self.timeline.add(job, "done elsewhere", f"{phase}: found done on disk")
                continue
            if not job.ran_here and book.job_lease(job):
                job.state, job.why = book.ELSEWHERE, "leased by another writer"
                self.timeline.add(job, book.ELSEWHERE)
                continue
            hosts = parse_accelerator(job.accelerator).hosts
            task = slice_task.options(resources={book.head_resource(job.accelerator): 1})
            argv = cell_argv(self.spec, job)
            gen = task.remote(argv, self.options.env, hosts, self.spec.stop_grace_s, book.done_markers(job))
            job.state, job.attempts, job.ran_here, job.started = book.RUNNING, job.attempts + 1, True, time.time()
            self.inflight[gen] = job
            self.timeline.add(job, "submitted", f"attempt {job.attempts}")

    def collect(self, gen: Any) -> None:
        """Take the next item of a slice task: where it runs, or how it ended."""
        import ray

        from jaxtune.study.ray_tasks import LOST_ERRORS

        job = self.inflight[gen]
        try:
            item = ray.get(next(gen))
        except StopIteration:
            item = {"exit": None, "lost": "the slice task ended without a result", "log_tail": []}
        except LOST_ERRORS as e:
            item = {"exit": None, "lost": type(e).__name__, "log_tail": [str(e).splitlines()[0]]}
        except ray.exceptions.RayTaskError as e:
            item = {"exit": EXIT_FAILURE, "lost": "", "log_tail": str(e).splitlines()[-20:]}
        if "slice" in item:
            job.slice = item["slice"]
            self.timeline.add(job, "started", f"on {item['slice']} ({', '.join(item['hosts'])})")
            return
        del self.inflight[gen]
        if item["exit"] is None:
            outcome = book.Outcome(book.LOST, item["lost"], item["log_tail"])
        else:
            where = f" on host {item['host']}" if item.get("host", -1) >= 0 else ""
            outcome = book.outcome_of_exit(item["exit"], f"exit {item['exit']}{where}", item["log_tail"])
        leased = book.job_lease(job) if outcome.kind == book.REFUSED else None
        phase, where = job.phase, job.slice
        if outcome.kind == book.OK and any(ALREADY_DONE in line for line in outcome.log_tail):
            outcome.detail += f" ({ALREADY_DONE})"  # another driver's attempt did it first
        resumed = [line.strip() for line in outcome.log_tail if line.strip().startswith("resumed from step")]
        if outcome.kind == book.OK and resumed:
            outcome.detail += f" ({resumed[-1]})"
        event = book.apply(self.spec, job, outcome, leased)
        why = job.why if event in ("retry", book.FAILED, book.BAD_INPUT, book.ELSEWHERE) else outcome.detail
        self.timeline.add(job, event, f"{phase} on {where}: {why}")

    def show(self, force: bool = False) -> None:
        """Rewrite sweep_status.json when a record changed; print the table as DriverOptions says."""
        records = book.rows(self.jobs)
        if force or records != self.written:
            book.write_status(self.spec, records)
            self.written = records
        states = tuple((r["cell"], r["phase"], r["state"], r["slice"], r["attempts"]) for r in records)
        steps = tuple(r["step"] for r in records)
        now = time.time()
        if (
            force
            or states != self.shown_states
            or (steps != self.shown_steps and now - self.shown_at > self.options.table_every_s)
        ):
            self.print_fn(book.format_table(records))
            self.shown_states, self.shown_steps, self.shown_at = states, steps, now

    def run(self) -> int:
        import ray

        while any(j.state not in book.FINAL for j in self.jobs):
            if time.time() - self.rechecked_at > self.options.recheck_every_s:
                self.rechecked_at = time.time()
                for job in self.jobs:
                    phase = job.phase
                    event = book.recheck_elsewhere(self.spec, job)
                    if event:
                        self.timeline.add(job, event, f"{phase}: {job.why}")
            self.submit()
            if self.inflight:
                ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=self.options.poll_s)
                for gen in ready:
                    self.collect(gen)
            else:
                time.sleep(self.options.poll_s)
            self.show()
        self.show(force=True)
        return self.finish()

    def finish(self) -> int:
        if all(j.state == book.DONE for j in self.jobs):
            self.print_fn(report_grid(self.spec).summary())
            return EXIT_OK
        for job in self.jobs:
            if job.state in (book.FAILED, book.BAD_INPUT):
                self.print_fn(f"{job.cell.name} {job.state}: {job.why}\n  " + "\n  ".join(job.log_tail))
        return EXIT_BAD_INPUT if any(j.state == book.BAD_INPUT for j in self.jobs) else EXIT_FAILURE

    def cancel(self) -> None:
        import ray

        for gen in self.inflight:
            with contextlib.suppress(Exception):
                ray.cancel(gen)


def run_on_ray(spec: GridSpec, options: DriverOptions, print_fn: Callable[[str], None] = print) -> int:
    """Run the grid on the cluster at ``options.address``; the exit status of :mod:`jaxtune.errors` (0: every cell
    done and the report drawn; 75: stopped by Ctrl-C, run again to continue)."""
    import ray

    driver = Driver(spec, options, print_fn)
    ray.init(address=options.address or "auto", log_to_driver=False, logging_level="warning")
    try:
        return driver.run()
    except KeyboardInterrupt:
        driver.cancel()
        print_fn("stopped: the cells in flight were cancelled; run the same command again to continue")
        return EXIT_RESUMABLE
    finally:
        ray.shutdown()
