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
    # Exactly one line besides the start-up line: before, tensorstore's callbacks into the closed event loop printed
    # "RuntimeError: Event loop is closed" tracebacks (through sys.unraisablehook) around it; now in the log file.
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("start-up: ")]
    assert len(lines) == 1 and lines[0].startswith(prefix), proc.stderr[-3000:]
    last = lines[0]
    assert last[len(prefix) :].startswith(("no space left on device; ", "storage exhausted; ")), last
    assert "is intact" in last and "run the same command again to continue" in last

    # The intact step resumes once there is room (here: the run moved to a roomy disk).
    shutil.copytree(small_disk / "run", tmp_path / "roomy", ignore=shutil.ignore_patterns("*.orbax-checkpoint-tmp*"))
    step = int(last.split("/checkpoints/")[1].split(",")[0])
    resumed = subprocess.run(
        [*cmd, f"run_dir={tmp_path / 'roomy'}"], env=env, cwd=str(REPO), text=True, capture_output=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from step {step}" in resumed.stdout
