"""jaxtune/study/ray_jobs.py without Ray: the sweep file's Ray keys, each cell's state machine and retry budgets, the
grid rebuilt from the run directories, leases of other writers, the submission order, the table and status file;
and ``jaxtune sweep --cell`` / ``--ray --dry-run`` (jaxtune/commands/sweep.py), which need no cluster."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from jaxtune.cli import main
from jaxtune.study import ray_jobs as jobs
from jaxtune.study.grid import GridError, load_grid

GRID = """sweep:
  run_dir: {run_dir}
  models:
    t1: {{config: c.yaml, eval_accelerator: v5e-8}}
    t2: {{config: c.yaml, accelerator: v5p-32}}
  data_types: [curated-10, baseline, curated-10000]
  eval_epochs: "1,2"
  backend: ray
  accelerator: v5p-16
  max_preemptions: 2
  max_failures: 1
"""


def _grid(tmp_path: Path, text: str = GRID):
    (tmp_path / "c.yaml").write_text("train:\n  epochs: 2\ncheckpoint:\n  keep_epoch_checkpoints: true\n")
    path = tmp_path / "grid.yaml"
    path.write_text(text.format(run_dir=tmp_path / "runs"))
    return path


def _evaluated(run_dir: Path, *epochs: int, completed: bool = True) -> None:
    if completed:  # the run trained to the end (the evaluations of a cell count only then)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "completed.json").write_text('{"step": 2, "total_steps": 2}')
    for e in epochs:
        (run_dir / "eval" / f"epoch-{e}").mkdir(parents=True, exist_ok=True)
        (run_dir / "eval" / f"epoch-{e}" / "evaluated.json").write_text('{"suites": ["doit-test"]}\n')


def _lock(lock_dir: Path, age_s: float, timeout_s: float = 300.0) -> None:
    lock_dir.mkdir(parents=True, exist_ok=True)
    record = {"host": "other", "pid": 7, "heartbeat": time.time() - age_s, "lease_timeout_s": timeout_s}
    (lock_dir / "lock").write_text(json.dumps(record))


def test_the_ray_keys_of_a_sweep_file(tmp_path):
    spec = load_grid(_grid(tmp_path))
    assert (spec.backend, spec.max_preemptions, spec.max_failures, spec.stop_grace_s) == ("ray", 2, 1, 60)
    t1, t2 = spec.models
    assert (t1.accelerator, t1.eval_accelerator) == ("v5p-16", "v5e-8")  # the sweep's, and its own
    assert (t2.accelerator, t2.eval_accelerator) == ("v5p-32", None)
    assert jobs.head_resource("v5p-16") == "TPU-v5p-16-head"
    assert jobs.head_resource("v5e-8") == "TPU-v5litepod-8-head"  # Cloud TPU's name, as Ray reads it


@pytest.mark.parametrize(
    "line, message",
    [
        ("  backend: slurm\n", "sweep.backend: expected one of ['local', 'ray']"),
        ("  max_failures: -1\n", "sweep.max_failures: expected a count"),
        ("  eval_accelerator: v9z-8\n", "sweep.eval_accelerator"),
    ],
)
def test_bad_ray_keys_name_the_key(tmp_path, line, message):
    text = GRID.replace("  backend: ray\n", "").replace("  max_failures: 1\n", "") + line
    with pytest.raises(GridError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_grid(_grid(tmp_path, text))


def test_the_grid_is_rebuilt_from_the_run_directories(tmp_path):
    spec = load_grid(_grid(tmp_path))
    runs = tmp_path / "runs"
    _evaluated(runs / "t2" / "curated-10", 1, 2)  # done
    _evaluated(runs / "t2" / "curated-10000", 1)  # one epoch of two: not done
    (runs / "t1" / "curated-10").mkdir(parents=True)
    (runs / "t1" / "curated-10" / "completed.json").write_text('{"step": 2, "total_steps": 2}')
    state = {j.cell.name: (j.phase, j.state, j.accelerator) for j in jobs.rebuild(spec)}
    assert state == {  # baseline shares curated-10000's run: left out
        "t1/curated-10": ("eval", "waiting", "v5e-8"),  # trained: its evaluation waits for a v5e-8
        "t1/curated-10000": ("train", "waiting", "v5p-16"),
        "t2/curated-10": ("all", "done", "v5p-32"),
        "t2/curated-10000": ("all", "waiting", "v5p-32"),
    }


def test_retry_budgets_by_exit_status(tmp_path):
    spec = load_grid(_grid(tmp_path))  # max_preemptions 2, max_failures 1
    job = next(j for j in jobs.rebuild(spec) if j.cell.name == "t2/curated-10")
    for i, outcome in enumerate([jobs.outcome_of_exit(75), jobs.Outcome(jobs.LOST, "NodeDiedError")]):
        assert jobs.apply(spec, job, outcome) == "retry" and job.state == jobs.WAITING
        assert job.preemptions == i + 1
    assert job.why == "slice lost (NodeDiedError)"
    assert jobs.apply(spec, job, jobs.outcome_of_exit(75)) == jobs.FAILED  # the third preemption is one too many
    job = next(j for j in jobs.rebuild(spec) if j.cell.name == "t2/curated-10")
    assert jobs.apply(spec, job, jobs.outcome_of_exit(1, log_tail=["Traceback", "boom"])) == "retry"
    assert (job.failures, job.preemptions) == (1, 0)
    assert jobs.apply(spec, job, jobs.outcome_of_exit(-9, "exit -9 on host 1", ["x"])) == jobs.FAILED
    assert job.why == "failed (exit -9 on host 1)" and job.log_tail == ["x"]
    job = next(j for j in jobs.rebuild(spec) if j.cell.name == "t2/curated-10")
    assert (
        jobs.apply(spec, job, jobs.outcome_of_exit(2, log_tail=["error: bad key"])) == jobs.BAD_INPUT
    )  # never retried
    assert job.state == jobs.BAD_INPUT and job.log_tail == ["error: bad key"]


def test_a_train_phase_then_its_evaluation(tmp_path):
    spec = load_grid(_grid(tmp_path))
    job = next(j for j in jobs.rebuild(spec) if j.cell.name == "t1/curated-10")
    assert (job.phase, job.accelerator) == ("train", "v5p-16")
    assert jobs.apply(spec, job, jobs.outcome_of_exit(0)) == "finished"
    assert (job.phase, job.state, job.accelerator) == ("eval", jobs.WAITING, "v5e-8")
    assert jobs.apply(spec, job, jobs.outcome_of_exit(0)) == jobs.DONE and job.state == jobs.DONE


def test_a_refusal_by_another_writers_lease_waits_for_it(tmp_path):
    spec = load_grid(_grid(tmp_path))
    job = next(j for j in jobs.rebuild(spec) if j.cell.name == "t2/curated-10")
    run_dir = tmp_path / "runs" / "t2" / "curated-10"
    _lock(run_dir, age_s=10)
    leased = jobs.job_lease(job)
    assert leased is not None and leased["host"] == "other"
    assert jobs.apply(spec, job, jobs.outcome_of_exit(2), leased) == jobs.ELSEWHERE
    assert job.state == jobs.ELSEWHERE and job.failures == 0
    assert jobs.recheck_elsewhere(spec, job) is None  # still held
    _lock(run_dir, age_s=400)  # its holder stopped refreshing: stale
    assert jobs.job_lease(job) is None
    assert jobs.recheck_elsewhere(spec, job) == "back from elsewhere" and job.state == jobs.WAITING
    # Held again, and this time the other writer finishes: done without running it here.
    _lock(run_dir / "eval", age_s=1)
    jobs.apply(spec, job, jobs.outcome_of_exit(2), jobs.job_lease(job))
    (run_dir / "eval" / "lock").unlink()
    _evaluated(run_dir, 1, 2)
    assert jobs.recheck_elsewhere(spec, job) == "done elsewhere" and job.state == jobs.DONE


def test_submission_follows_the_grid_order_with_retries_first_and_counts_free_slices(tmp_path):
    spec = load_grid(_grid(tmp_path))
    queue = jobs.rebuild(spec)
    queue[2].attempts = 1  # t2/curated-10, retried
    free = {"v5p-16": 1, "v5p-32": 1}
    chosen = jobs.to_submit(queue, free)
    assert [j.cell.name for j in chosen] == ["t2/curated-10", "t1/curated-10"]
    assert free == {"v5p-16": 0, "v5p-32": 0}
    assert jobs.to_submit(queue, {"v5e-8": 4}) == []  # nothing waits for an evaluation slice yet


def test_the_table_and_the_status_file(tmp_path):
    spec = load_grid(_grid(tmp_path))
    queue = jobs.rebuild(spec)
    queue[0].state, queue[0].slice, queue[0].preemptions = jobs.RUNNING, "tpu-a", 1
    ckpt = tmp_path / "runs" / "t1" / "curated-10" / "checkpoints" / "4"
    ckpt.mkdir(parents=True)
    (ckpt / "commit_success.txt").write_text("")
    (ckpt / "model_config.json").write_text("{}")
    records = jobs.rows(queue)
    assert records[0]["step"] == 4 and records[0]["eta_s"] is None  # no heartbeat.json: the last checkpoint's step
    table = jobs.format_table(records).splitlines()
    assert table[0].split() == ["cell", "phase", "state", "slice", "step", "ETA", "retries", "why"]
    assert table[1].split()[:6] == ["t1/curated-10", "train", "running", "tpu-a", "4", "1p"]
    status = json.loads(jobs.write_status(spec, records).read_text())
    assert [c["cell"] for c in status["cells"]] == [j.cell.name for j in queue] and status["cells"][0][
        "slice"
    ] == "tpu-a"


def test_the_eta_comes_from_the_heartbeat(tmp_path):
    spec = load_grid(_grid(tmp_path))
    job = jobs.rebuild(spec)[0]
    job.state = jobs.RUNNING
    beat = job.cell.run_dir / "heartbeat.json"
    beat.parent.mkdir(parents=True)
    beat.write_text(json.dumps({"step": 10, "total_steps": 110, "phase": "train", "time": 0}))
    assert jobs.progress(job, now=1000.0) == (10, 110, None)
    beat.write_text(json.dumps({"step": 20, "total_steps": 110, "phase": "train", "time": 0}))
    assert jobs.progress(job, now=1010.0) == (20, 110, pytest.approx(90.0))  # 1 step/s since the first beat


def test_one_cell_from_the_command_line(tmp_path, capsys):
    grid = _grid(tmp_path)
    _evaluated(tmp_path / "runs" / "t2" / "curated-10", 1, 2)
    assert main(["sweep", str(grid), "--cell", "t2/curated-10", "--phase", "eval"]) == 0
    assert "already done, nothing run" in capsys.readouterr().out
    assert main(["sweep", str(grid), "--cell", "t3/curated-10"]) == 2
    assert "no cell 't3/curated-10'; the grid's cells are t1/curated-10, t1/curated-10000" in capsys.readouterr().err
    assert main(["sweep", str(grid), "train.epochs=3"]) == 2  # key=value only with --cell
    assert "or for one --cell" in capsys.readouterr().err


def test_the_dry_run_on_ray_lists_what_it_would_submit(tmp_path, capsys):
    grid = _grid(tmp_path)
    _evaluated(tmp_path / "runs" / "t2" / "curated-10", 1, 2)
    assert main(["sweep", str(grid), "--ray", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "  t2/curated-10: done\n" in out
    assert (
        "  t1/curated-10: --phase train on a v5p-16 slice (2 hosts, resource TPU-v5p-16-head) "
        "(then --phase eval on a v5e-8)" in out
    )
    assert "  t2/curated-10000: --phase all on a v5p-32 slice (4 hosts" in out
