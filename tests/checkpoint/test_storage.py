"""A full disk during a save ends ``jaxtune train`` in one line naming the path and the cause, exit 75
(EX_TEMPFAIL), the previous complete step intact and resumable (jaxtune/checkpoint/storage.py). The run directory
is a small tmpfs (needs root to mount; skipped otherwise)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny_demo_run import demo_run_config

from jaxtune.checkpoint.storage import StorageUnavailableError, storage_cause

REPO = Path(__file__).resolve().parents[2]


def test_the_causes_are_found_in_a_chain():
    inner = OSError(28, "No space left on device")
    outer = Exception("wrapped")
    outer.__cause__ = inner
    assert storage_cause(outer) == "no space left on device"
    assert storage_cause(ValueError("shape mismatch")) is None
    assert StorageUnavailableError.exit_code == 75


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_a_full_disk_during_a_save_is_one_line_and_exit_75(tmp_path, small_disk, async_save):
    config = demo_run_config(
        tmp_path,
        train=dict(global_batch_size=8, max_steps=40, log_every=1),
        checkpoint=dict(save_every=1, max_to_keep=None, async_save=async_save, keep_epoch_checkpoints=False),
    )
    config["run_dir"] = str(small_disk / "run")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(config))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "jaxtune.cli", "train", str(cfg)]
    proc = subprocess.run(cmd, env=env, cwd=str(REPO), text=True, capture_output=True, timeout=300)
    assert proc.returncode == 75, proc.stderr[-3000:]
    prefix = f"jaxtune train: error: {small_disk / 'run'}: cannot write: "
    # tensorstore's threads write to stderr while the line is printed: take it from where it starts in a line
    found = [line[line.index(prefix) :] for line in proc.stderr.splitlines() if prefix in line]
    assert len(found) == 1, proc.stderr[-3000:]
    last = found[0]
    assert last[len(prefix) :].startswith(("no space left on device; ", "storage exhausted; ")), last
    assert "is intact" in last and "run the same command again to continue" in last
    assert "ERROR:absl" not in proc.stderr and "sys.meta_path is None" not in proc.stderr, proc.stderr[-3000:]
    # Left (see jaxtune/commands/library_logs.py): after a failed save tensorstore's threads print "RuntimeError: Event
    # loop is closed" tracebacks straight to stderr, interleaved with other output (a line may be cut anywhere,
    # "RuntimeError: " alone or glued to jaxtune's line); every other line is gone.
    noise = ("Event loop is closed", "Traceback (most recent call last)", "base_events.py", "_check_closed")
    lines = [ln[: ln.index(prefix)] if prefix in ln else ln for ln in proc.stderr.splitlines()]
    others = [
        ln
        for ln in lines
        if ln.strip()
        and not ln.startswith((" ", "start-up: "))  # the process's start-up line
        and not "RuntimeError".startswith(ln.strip().rstrip(":"))
    ]
    assert [ln for ln in others if not any(n in ln for n in noise)] == [], proc.stderr[-3000:]

    # The intact step resumes once there is room (here: the run moved to a roomy disk).
    shutil.copytree(small_disk / "run", tmp_path / "roomy", ignore=shutil.ignore_patterns("*.orbax-checkpoint-tmp*"))
    step = int(last.split("/checkpoints/")[1].split(",")[0])
    resumed = subprocess.run(
        [*cmd, f"run_dir={tmp_path / 'roomy'}"], env=env, cwd=str(REPO), text=True, capture_output=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from step {step}" in resumed.stdout
