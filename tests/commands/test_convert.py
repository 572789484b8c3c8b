"""``jaxtune export-hf`` into a run directory holds the run's lease: refused in one line while a live training owns
it, given back when done; the hidden partial folders a killed export left are removed by the next export."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from jaxtune.checkpoint.lease import RunLease
from jaxtune.cli import main


def test_export_into_a_run_takes_its_lease(tiny_checkpoint, tmp_path, capsys):
    # Before: export-hf wrote RUN/hf while a training owned RUN, exit 0.
    run = tmp_path / "run"
    training = RunLease(run, timeout_s=300, command="jaxtune train run.yaml").acquire()
    try:
        code = main(["export-hf", str(tiny_checkpoint), str(run / "hf")])
    finally:
        training.release()
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"jaxtune export-hf: error: {run / 'lock'}: the run directory is in use by host ")
    assert sorted(p.name for p in run.iterdir()) == []  # nothing written, not even a partial folder

    assert main(["export-hf", str(tiny_checkpoint), str(run / "hf")]) == 0, capsys.readouterr().err
    assert (run / "hf" / "config.json").is_file() and not (run / "lock").exists()


def test_export_removes_the_partial_folders_a_killed_export_left(tiny_checkpoint, tmp_path, capsys, caplog):
    # Before: each killed export left its hidden .hf.partial-* folder (up to a whole model's weights) for good.
    def leftover(folder: Path, name: str, age_s: float) -> Path:
        stage = folder / f".hf.partial-{name}"
        stage.mkdir(parents=True)
        (stage / "model.safetensors").write_bytes(b"x" * 100)
        for path in (stage / "model.safetensors", stage):
            os.utime(path, (time.time() - age_s, time.time() - age_s))
        return stage

    outside, run = tmp_path / "exports", tmp_path / "run"
    old, young = leftover(outside, "0badf00d", 7200), leftover(outside, "1badf00d", 10)
    run.mkdir()
    (run / "completed.json").write_text("{}")  # a finished run: its lease is free, and the export takes it
    in_run = leftover(run, "2badf00d", 10)
    with caplog.at_level(logging.WARNING, logger="jaxtune.paths"):
        assert main(["export-hf", str(tiny_checkpoint), str(outside / "hf")]) == 0, capsys.readouterr().err
        assert main(["export-hf", str(tiny_checkpoint), str(run / "hf")]) == 0, capsys.readouterr().err
    assert not old.exists() and young.exists()  # outside a run: only one older than the grace (it may be live)
    assert not in_run.exists()  # the run's lease is ours: no other writer can be at work there
    removed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("removed ")]
    assert [m.split(",")[0] for m in removed] == [f"removed {old}", f"removed {in_run}"]
    assert sorted(p.name for p in run.iterdir()) == ["completed.json", "hf"]
