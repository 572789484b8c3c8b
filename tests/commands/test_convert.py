"""``jaxtune export-hf`` into a run directory holds the run's lease: refused in one line while a live training owns
it, given back when done."""

from __future__ import annotations

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
