"""A committed step whose parts come from different saves is refused (jaxtune/checkpoint/integrity.py), through the
CLI: export-hf names the disagreeing part in one line, and a resume sets the step aside and falls back to the
previous one, as for a damaged step."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import numpy as np
import yaml
from tiny_demo_run import demo_run_config

from jaxtune.checkpoint.integrity import array_fingerprints
from jaxtune.cli import main


def test_a_fingerprint_is_the_same_on_device_and_host_and_sees_a_swap():
    x = jax.random.normal(jax.random.key(0), (4, 8), dtype=jax.numpy.bfloat16)
    on_device = array_fingerprints({"w": x}, "p")
    assert on_device == array_fingerprints({"w": np.asarray(x)}, "p")
    swapped = np.asarray(x)[::-1]
    assert array_fingerprints({"w": swapped}, "p")["p.w"][0] == on_device["p.w"][0]  # same values...
    assert array_fingerprints({"w": swapped}, "p")["p.w"][1] != on_device["p.w"][1]  # ...elsewhere


def _mix(run: Path, item: str, into: int, source: int) -> None:
    """What two writers on one run directory leave: step ``into`` holding ``item`` of another save."""
    target = run / "checkpoints" / str(into) / item
    shutil.rmtree(target)
    shutil.copytree(run / "checkpoints" / str(source) / item, target)


def test_a_step_mixing_two_saves_is_refused_and_resume_falls_back(tmp_path, capsys):
    config = demo_run_config(
        tmp_path,
        train=dict(global_batch_size=8, max_steps=2, log_every=1),
        checkpoint=dict(save_every=1, async_save=False, keep_epoch_checkpoints=False),
    )
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    assert main(["train", str(cfg)]) == 0
    capsys.readouterr()

    _mix(run, "params", into=2, source=1)
    code = main(["export-hf", str(run / "checkpoints" / "2"), str(tmp_path / "hf")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(
        f"jaxtune export-hf: error: {run / 'checkpoints' / '2'}: the step mixes two writers: params ("
    )
    assert "embed_tokens" in err and err.endswith(f"the previous complete step is {run / 'checkpoints' / '1'}")
    assert not (tmp_path / "hf" / "model.safetensors").exists()

    _mix(run, "train_state", into=2, source=1)  # Adam moments of another save too
    assert main(["train", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "skipping checkpoint step 2, it does not restore" in out and "the step mixes two writers" in out
    assert "train_state (" in out and "opt_state" in out
    assert f"resuming from step 1 ({run / 'checkpoints' / '1'})" in out
    assert "training finished at step 2/2" in out
    assert (run / "checkpoints_damaged" / "2").is_dir()
