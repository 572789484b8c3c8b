"""``gcp/tpu.sh supervise`` on the emulated slice of fake_slice.py with stand-in jobs (shell scripts, seconds each):
which restarts it makes and from which budget, that it reads every worker, stops the job everywhere before a restart,
needs the completion marker, stops at once on bad input; and that scripts/*.sh hand jaxtune's exit status back
unchanged (the supervisor reads it through them)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import fake_slice
import pytest

REPO = Path(__file__).resolve().parents[2]
TPU_SH = REPO / "gcp" / "tpu.sh"

# A stand-in job: worker W's Nth attempt does what the case for "N:W" says (worker index from the VM's hostname).
JOB = r"""#!/usr/bin/env bash
w=$(hostname); w=${w##*-}; t="$(dirname "$0")"
n=$(( $(cat "$t/attempts.$w" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$t/attempts.$w"
beat() { echo "{\"step\": 3, \"phase\": \"$1\", \"time\": $(date +%s)}" > "$t/run/heartbeat.json"; }
case "$n:$w" in
CASES
esac
"""


@pytest.fixture
def slice_run(tmp_path):
    env = {**os.environ, **fake_slice.install(tmp_path / "bin", tmp_path / "state")}
    env.update(POLL_SECONDS="0.2", HANG_SECONDS="2", COMPILE_HANG_SECONDS="6", STOP_GRACE_SECONDS="1")
    for name in ("RUN_DIR", "SWEEP_DIR", "SPOT", "QUEUED", "MAX_PREEMPTIONS", "MAX_FAILURES", "FAKE_SLICE_PLAN"):
        env.pop(name, None)
    (tmp_path / "run").mkdir()

    def start(cases: str, plan: list | None = None, args: tuple = (), **extra: str) -> subprocess.Popen:
        job = tmp_path / "job.sh"
        job.write_text(JOB.replace("CASES", cases))
        if plan is not None:
            (tmp_path / "plan.json").write_text(json.dumps(plan))
            extra["FAKE_SLICE_PLAN"] = str(tmp_path / "plan.json")
        return subprocess.Popen(
            ["bash", str(TPU_SH), "supervise", "t", "v5p-16", "zone", "--", "bash", str(job), *args, "run_dir=unused"],
            env={**env, "RUN_DIR": str(tmp_path / "run"), **extra},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def wait_for(condition, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.1)

    def run(cases: str, plan: list | None = None, args: tuple = (), **extra: str) -> subprocess.CompletedProcess:
        proc = start(cases, plan, args, **extra)
        try:
            out, err = proc.communicate(timeout=120)
            return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            left = fake_slice.processes_tagged(f"{tmp_path / 'state'}:")
            subprocess.run([sys.executable, fake_slice.__file__, "cleanup", str(tmp_path / "state")], timeout=60)
            run.survivors = left

    def attempts(worker: int) -> int:
        return int((tmp_path / f"attempts.{worker}").read_text())

    def calls() -> list[list[str]]:
        return [json.loads(line) for line in (tmp_path / "state" / "calls.jsonl").read_text().splitlines()]

    run.attempts, run.calls, run.start, run.wait_for = attempts, calls, start, wait_for
    return run


def restarts(out: str) -> list[tuple[str, str]]:
    return re.findall(r"^supervise: \S+ restart \((\w+)\): (.*?); left: (.*)$", out, flags=re.M)


def test_each_kind_of_stop_on_any_worker_restarts_from_its_budget_until_the_marker_exists(slice_run, tmp_path):
    result = slice_run(
        """
  1:1) exit 75;;                                  # worker 1 stopped early, state saved; worker 0 still running
  2:0) exit 1;;                                   # worker 0 failed
  3:0) beat training; sleep 60;;                  # hung: the heartbeat is never refreshed
  4:0) beat done; echo '{}' > "$t/run/completed.json";;
  4:1) ;;
  5:*) exit 3;;
  *) sleep 60;;                                   # the other worker carries on (or waits in a collective)
"""
    )
    assert result.returncode == 0, result.stdout + result.stderr
    got = restarts(result.stdout)
    assert [(kind, reason) for kind, reason, _ in got] == [
        ("preemption", "exit 75 (state saved) on t-w-1"),
        ("failure", "exit status on t-w-0 (exit 1)"),
        ("hang", got[2][1]),
    ]
    assert re.fullmatch(r"no heartbeat for \d+s \(phase training, step 3; limit 2s\)", got[2][1])
    assert [left for _, _, left in got] == ["99 preemptions, 3 failures", "99 preemptions, 2 failures"] + [
        "99 preemptions, 1 failures"
    ]
    assert re.search(r"finished on t after \d+s: 3 restarts \(preemption 1, failure 1, hang 1\)", result.stdout)
    # The stopped worker's job was ended before each restart (the sleeping attempts did not survive), on one slice.
    assert slice_run.attempts(0) == slice_run.attempts(1) == 4 and slice_run.survivors == []
    assert sum(c[3] == "create" for c in slice_run.calls()) == 1
    # One `ssh --worker=all` reads every worker's job per poll; nothing polls worker 0 alone but the markers probe.
    probes = [c for c in slice_run.calls() if c[3] == "ssh" and "job.rc" in (fake_slice.opt(c, "--command") or "")]
    assert probes and all(fake_slice.opt(c, "--worker") == "all" for c in probes)


def test_exit_0_without_the_marker_is_a_failure_and_the_failure_budget_ends_it(slice_run):
    result = slice_run("  *) exit 0;;", MAX_FAILURES="1")
    assert result.returncode == 1
    assert [kind for kind, _, _ in restarts(result.stdout)] == ["failure"]
    assert "exit 0 on every worker but no " in result.stdout and "giving up" in result.stderr
    assert re.search(r"gave up after \d+s: 2 restarts \(preemption 0, failure 2, hang 0\)", result.stderr)


def test_bad_input_on_one_worker_stops_everything_at_once(slice_run):
    result = slice_run("  1:1) echo 'jaxtune train: error: data.path: no such folder'; exit 2;;\n  *) sleep 60;;")
    assert result.returncode == 2, result.stdout + result.stderr
    assert restarts(result.stdout) == [] and "exit 2 (bad input) on t-w-1: not restarting" in result.stderr
    assert "[t-w-1] jaxtune train: error: data.path: no such folder" in result.stderr
    assert slice_run.attempts(0) == 1 and slice_run.survivors == []


def test_a_preempted_slice_is_recreated_set_up_again_and_the_job_restarted(slice_run):
    plan = [{"start": 1, "when": {"after_s": 0.5}, "do": "preempt"}]
    result = slice_run(
        "  1:*) sleep 60;;\n  *) echo '{}' > \"$t/run/completed.json\";;", plan=plan, FAKE_SLICE_GRACE="1"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert restarts(result.stdout) == [
        ("preemption", "slice t is PREEMPTED; recreating it", "99 preemptions, 3 failures")
    ]
    verbs = [c[3] for c in slice_run.calls() if c[3] in ("create", "delete", "scp")]
    assert verbs == ["create", "scp", "delete", "create", "scp"]  # the new slice's disks are set up again
    starts = [c for c in slice_run.calls() if "setsid" in (fake_slice.opt(c, "--command") or "")]
    assert len(starts) == 2 and starts[0] == starts[1]  # not a jaxtune command: nothing added


def test_restarts_of_jaxtune_take_the_lease_over_since_the_previous_job_is_gone(slice_run, tmp_path):
    # A `train` argument makes the stand-in job a jaxtune train to supervise: restarts add the override.
    result = slice_run(
        """  1:*) echo "$*" > "$t/args.$w.1"; exit 75;;
  *) echo "$*" > "$t/args.$w.2"; echo '{}' > "$t/run/completed.json";;""",
        args=["train", "cfg.yaml"],
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "args.1.1").read_text().split() == ["train", "cfg.yaml", "run_dir=unused"]
    assert (tmp_path / "args.1.2").read_text().split() == [
        "train",
        "cfg.yaml",
        "run_dir=unused",
        "checkpoint.force_takeover=true",
    ]


def test_a_supervisor_started_again_takes_over_the_running_job(slice_run, tmp_path):
    cases = """  1:*) sleep 4; [ "$w" = 0 ] && echo '{}' > "$t/run/completed.json"; exit 0;;\n  *) exit 1;;"""
    first = slice_run.start(cases)
    try:
        slice_run.wait_for(lambda: (tmp_path / "attempts.0").exists() and (tmp_path / "attempts.1").exists())
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the supervisor dies; the slice and its job go on
        first.wait()
    result = slice_run(cases)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the job is running on every worker of t; supervising it" in result.stdout
    assert slice_run.attempts(0) == slice_run.attempts(1) == 1 and restarts(result.stdout) == []


def test_the_run_dir_comes_from_the_command_unless_named(slice_run, tmp_path):
    env = {**os.environ, **fake_slice.install(tmp_path / "bin", tmp_path / "state")}
    env.pop("RUN_DIR", None)
    r = subprocess.run(
        ["bash", str(TPU_SH), "supervise", "t", "v5p-16", "zone", "--", "true"], env=env, capture_output=True, text=True
    )
    assert r.returncode == 2 and "cannot tell the run directory" in r.stderr


@pytest.mark.parametrize("script", ["train", "sweep", "eval", "convert"])
@pytest.mark.parametrize("status", [0, 1, 2, 75])
def test_the_scripts_return_jaxtunes_exit_status_unchanged(tmp_path, script, status):
    shutil.copytree(REPO / "scripts", tmp_path / "scripts")
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "jaxtune").write_text(f"#!/bin/sh\nexit {status}\n")
    (venv / "jaxtune").chmod(0o755)
    args = ["import-hf", "x", "y"] if script == "convert" else ["x"]
    r = subprocess.run(
        ["bash", str(tmp_path / "scripts" / f"{script}.sh"), *args], env={**os.environ, "JAXTUNE_EXTRA": ""}
    )
    assert r.returncode == status
