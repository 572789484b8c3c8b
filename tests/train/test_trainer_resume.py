"""jaxtune.train.trainer at the edges of a resume: a damaged newest checkpoint, a torn metrics line, a changed
config, TensorBoard's duplicate steps, throughput at checkpoint steps and a SIGTERM during start-up (8 simulated CPU
devices)."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import jax
import numpy as np
import pytest
from damage import DAMAGES

from jaxtune.checkpoint.params import load_params
from jaxtune.config.loading import load_config
from jaxtune.config.schema import ConfigError
from jaxtune.train.trainer import train

from . import subprocess_runs as runs
from .event_files import scalar_events
from .synthetic_stream import synthetic_data, tiny_config

DATA = dict(num_rows=96, seq_len=32, global_batch=8, epochs=1)  # 12 steps
SECTIONS = dict(train=dict(epochs=1), checkpoint=dict(save_every=4, max_to_keep=3))


@pytest.fixture(autouse=True)
def _eight_devices():
    if jax.device_count() != 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS for 8 CPU devices)")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A whole 12-step run logging every step, with checkpoints at steps 4, 8 and 12."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    result = train(tiny_config(run_dir, **SECTIONS), synthetic_data(**DATA), print_fn=lambda _: None)
    assert result.checkpoint_steps == [4, 8, 12]
    return run_dir


def _copy(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to)
    return to


def test_throughput_is_measured_at_checkpoint_steps_too(finished_run):
    records = runs.train_records(finished_run)
    assert [r["step"] for r in records] == list(range(1, 13))
    # Step 1 compiles and is not timed; every later step, checkpoint steps included, did real work.
    rates = {r["step"]: r["tokens_per_s"] for r in records[1:]}
    assert all(rate > 0 for rate in rates.values()), rates


# Two kinds of damage (every kind's restore error is covered in tests/checkpoint/test_train_state.py): Orbax's bare Exception
# for a truncated array file, and a JSON error from the data iterator's state.
@pytest.mark.parametrize("item, damage", [("params", "data-file-truncated"), ("data_iter", None)])
def test_resume_falls_back_from_a_damaged_newest_step_and_ends_bitwise_equal(finished_run, tmp_path, item, damage):
    run_dir = _copy(finished_run, tmp_path / "run")
    newest = run_dir / "checkpoints" / "12"
    if damage is None:
        (newest / "data_iter" / "process_0-of-1.json").write_text('{"next_ind')  # the iterator's state cut short
    else:
        DAMAGES[damage](newest / item)
    damaged_bytes = {p.relative_to(newest): p.read_bytes() for p in newest.rglob("*") if p.is_file()}
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 13, "kind": "train", "lo')  # and a kill during a metrics write
    lines: list[str] = []

    result = train(tiny_config(run_dir, **SECTIONS), synthetic_data(**DATA), print_fn=lines.append)

    assert (result.resumed_from, result.step, result.stopped) == (8, 12, "completed")
    skipped = [line for line in lines if line.startswith("skipping checkpoint step 12")]
    assert len(skipped) == 1 and f"{newest}: damaged checkpoint" in skipped[0], lines
    kept = run_dir / "checkpoints_damaged" / "12"
    assert f"kept as {kept}" in skipped[0]
    assert {p.relative_to(kept): p.read_bytes() for p in kept.rglob("*") if p.is_file()} == damaged_bytes
    assert any("dropped the torn last line" in line for line in lines)
    # Steps 9-12 again, exactly as the uninterrupted run did them.
    a, b = runs.train_records(finished_run), runs.train_records(run_dir)
    assert [r["step"] for r in b] == list(range(1, 13))
    assert [(r["loss"], r["grad_norm"]) for r in a] == [(r["loss"], r["grad_norm"]) for r in b]
    _, want = load_params(finished_run / "checkpoints" / "12")
    _, got = load_params(newest)
    for x, y in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # TensorBoard shows each step once: the resumed writer purges the steps it re-does.
    events = [(tag, step) for tag, step, _ in scalar_events(run_dir / "tensorboard", purge=True)]
    assert len(events) == len(set(events)) and ("train/loss", 12) in events


def test_resume_refuses_a_changed_data_order_batch_or_schedule_unless_allowed(finished_run, tmp_path):
    run_dir = _copy(finished_run, tmp_path / "run")
    saved_yaml = (run_dir / "config.yaml").read_text()
    changed = tiny_config(run_dir, ("data.shuffle_seed=3", "optim.learning_rate=0.001"), **SECTIONS)
    with pytest.raises(
        ConfigError,
        match=r"resuming from step 12 with a config that changes .*\(data\.shuffle_seed: "
        r"0 -> 3; optim\.learning_rate: 0\.003 -> 0\.001\)",
    ):
        train(changed, synthetic_data(**DATA), print_fn=lambda _: None)
    assert (run_dir / "config.yaml").read_text() == saved_yaml  # nothing overwritten
    assert sorted(p.name for p in (run_dir / "configs").iterdir()) == ["config.1.yaml"]

    # Keys that only change speed or logging pass; an explicit override passes and is recorded.
    allowed = tiny_config(
        run_dir,
        ("data.shuffle_seed=3", "data.num_workers=2", "train.log_every=2", "checkpoint.allow_config_change=true"),
        **SECTIONS,
    )
    lines: list[str] = []
    result = train(allowed, synthetic_data(**DATA), print_fn=lines.append)
    assert result.resumed_from == 12
    assert any(
        "allow_config_change: resuming from step 12 with changed data.shuffle_seed (0 -> 3)" in line for line in lines
    )
    configs = run_dir / "configs"
    assert sorted(p.name for p in configs.iterdir()) == ["changes.jsonl", "config.1.yaml", "config.2.yaml"]
    assert (configs / "config.1.yaml").read_text() == saved_yaml
    assert load_config(configs / "config.2.yaml") == allowed == load_config(run_dir / "config.yaml")
    assert '"changed": {"data.shuffle_seed": {"saved": 0, "new": 3}}' in (configs / "changes.jsonl").read_text()


def test_sigterm_during_start_up_stops_cleanly(tmp_path, compile_cache):
    run_dir = tmp_path / "run"
    spec = {
        "run_dir": str(run_dir),
        "data": dict(DATA, sleep_s=0.05),
        "overrides": [],
        "config": SECTIONS,
        "devices": 8,
    }
    proc = runs.start(spec, compile_cache, tmp_path / "run.log")
    # train() creates the checkpoint folder early in its start-up, before the state is built and the step compiled.
    runs.wait_for(lambda: (run_dir / "checkpoints").is_dir(), [proc], "the start of the run")
    runs.send(proc, signal.SIGTERM)
    assert runs.finish([proc]) == [75], (tmp_path / "run.log").read_text()[-3000:]
    log = (tmp_path / "run.log").read_text()
    assert "stop requested (SIGTERM or Ctrl-C)" in log and "stopped on SIGTERM or Ctrl-C (resumable)" in log
