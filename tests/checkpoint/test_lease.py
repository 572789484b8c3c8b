"""The run directory's lease (jaxtune/checkpoint/lease.py), through the CLI: a second writer refuses in one line
naming the owner, a stale or dead holder is taken over (logged), force_takeover takes it at once, a holder whose
lease was taken stops writing; and on gs:// against the GCS emulator (create with ifGenerationMatch=0)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from gcs_emulator import gcs  # noqa: F401  (the fixture)
from tiny_demo_run import demo_run_config

from jaxtune.checkpoint.lease import LOCK_FILE, RunLease, RunLeaseError
from jaxtune.cli import main

REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 300


def _config_file(root: Path, **checkpoint) -> Path:
    config = demo_run_config(
        root,
        train=dict(global_batch_size=8, max_steps=2, log_every=1),
        checkpoint=dict(save_every=1, async_save=False, keep_epoch_checkpoints=False, **checkpoint),
    )
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _lock(run_dir: Path, *, host: str, pid: int, age_s: float) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "token": "other",
        "host": host,
        "pid": pid,
        "command": "jaxtune train other.yaml",
        "started_at": "2026-12-06T10:00:00Z",
        "heartbeat": time.time() - age_s,
        "lease_timeout_s": 300.0,
    }
    (run_dir / LOCK_FILE).write_text(json.dumps(record))
    return record


def test_a_second_writer_refuses_in_one_line_naming_the_owner(tmp_path, capsys):
    cfg = _config_file(tmp_path)
    _lock(tmp_path / "run", host="worker-7", pid=4242, age_s=100)  # a live holder elsewhere
    code = main(["train", str(cfg)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"jaxtune train: error: {tmp_path / 'run' / LOCK_FILE}: the run directory is in use by ")
    assert "host worker-7 pid 4242 ('jaxtune train other.yaml', started 2026-12-06T10:00:00Z)" in err
    assert 100 <= int(re.search(r"heartbeat (\d+) s old", err)[1]) < 160
    assert "checkpoint.force_takeover=true" in err
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "manifest.jsonl").exists()


def test_a_run_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    cfg = _config_file(tmp_path)
    (tmp_path / "run").write_text("not a folder")
    code = main(["train", str(cfg)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err == f"jaxtune train: error: run_dir {tmp_path / 'run'} is a file, not a folder: choose another run_dir"


def test_a_stale_lease_is_taken_over_and_logged(tmp_path, capsys):
    cfg = _config_file(tmp_path)
    _lock(tmp_path / "run", host="worker-7", pid=4242, age_s=400)
    code = main(["train", str(cfg)])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    assert "took over the lease of host worker-7 pid 4242" in err
    assert "its heartbeat is older than checkpoint.lease_timeout_s=300" in err
    assert "training finished at step 2/2" in out
    assert not (tmp_path / "run" / LOCK_FILE).exists()  # given back at the end


def test_force_takeover_takes_a_live_lease(tmp_path):
    _lock(tmp_path / "run", host="worker-7", pid=4242, age_s=1)
    logged: list[str] = []
    lease = RunLease(tmp_path / "run", timeout_s=300, force=True, log=logged.append).acquire()
    lease.release()
    assert "took over the lease of host worker-7 pid 4242" in logged[0] and "force_takeover=true" in logged[0]


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _lock(tmp_path / "run", host=socket.gethostname(), pid=int(proc.stdout), age_s=1)
    logged: list[str] = []
    lease = RunLease(tmp_path / "run", timeout_s=300, log=logged.append).acquire()
    try:
        assert "its process no longer exists on this host" in logged[0]
        assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["token"] == lease.token
    finally:
        lease.release()
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_a_holder_whose_lease_was_taken_stops_writing(tmp_path):
    first = RunLease(tmp_path / "run", timeout_s=300, log=lambda _: None).acquire()
    second = RunLease(tmp_path / "run", timeout_s=300, force=True, log=lambda _: None).acquire()
    try:
        first.refresh()  # what its heartbeat thread does
        assert not first.held()
        with pytest.raises(RunLeaseError, match="was taken over; it is now held by host"):
            first.check()
        second.refresh()
        assert second.held()
    finally:
        first.release()  # must not delete the new holder's lock
        assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["token"] == second.token
        second.release()


def test_the_heartbeat_refreshes_the_lock(tmp_path):
    lease = RunLease(tmp_path / "run", timeout_s=0.4, log=lambda _: None).acquire()
    try:
        first = json.loads((tmp_path / "run" / LOCK_FILE).read_text())["heartbeat"]
        time.sleep(0.5)
        assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["heartbeat"] > first
    finally:
        lease.release()


def test_two_launches_at_once_train_once(tmp_path):
    """The issue's first rows: two `jaxtune train` on one empty run_dir at once. One trains (exit 0); the other
    refuses in one line (exit 2); the run's metrics hold each step once."""
    cfg = _config_file(tmp_path)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "jaxtune.cli", "train", str(cfg)]
    procs = [
        subprocess.Popen(cmd, env=env, cwd=str(REPO), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    try:
        outs = [p.communicate(timeout=CHILD_TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], outs
    loser = outs[codes.index(2)][1].strip()
    assert len(loser.splitlines()) == 1 and "the run directory is in use by host" in loser, loser
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]


def test_the_lease_on_a_bucket_uses_a_generation_precondition(gcs, monkeypatch):
    """On gs:// the lock is created with ifGenerationMatch=0 (the emulator honours it: a second create fails),
    refreshed and taken over with the generation it read."""
    for key, value in gcs.env.items():
        monkeypatch.setenv(key, value)
    gcs.make_bucket("leases")
    first = RunLease("gs://leases/run", timeout_s=300, log=lambda _: None).acquire()
    try:
        assert json.loads(gcs.read("leases", "run/lock"))["token"] == first.token
        with pytest.raises(RunLeaseError, match="the run directory is in use by host"):
            RunLease("gs://leases/run", timeout_s=300, log=lambda _: None).acquire()
        logged: list[str] = []
        second = RunLease("gs://leases/run", timeout_s=300, force=True, log=logged.append).acquire()
        assert "took over the lease" in logged[0]
        first.refresh()
        assert not first.held()
        first.release()
        assert json.loads(gcs.read("leases", "run/lock"))["token"] == second.token
        second.release()
        assert "run/lock" not in gcs.names("leases", "run/")
    finally:
        first.release()
