"""Two processes x 4 CPU devices on 127.0.0.1 (jax.distributed, the real multi-host code path): train with a
multi-slice data axis, stop on SIGTERM, resume, and match a one-process 8-device run."""

from __future__ import annotations

import json
import signal
import socket

import jax
import numpy as np
import pytest

from jaxtune.checkpoint.params import load_params
from jaxtune.train.trainer import train

from . import subprocess_runs as runs
from .synthetic_stream import synthetic_data, tiny_config

pytestmark = pytest.mark.long  # two minutes of processes: scheduled first (tests/conftest.py)

DATA = dict(num_rows=96, seq_len=32, global_batch=8, epochs=1, valid_rows=16)
CONFIG = dict(train=dict(epochs=1, eval_every=6), checkpoint=dict(save_every=4, max_to_keep=2, async_save=True))


def _specs(run_dir, port: int, sleep_s: float) -> list[dict]:
    specs = []
    for pid in range(2):
        overrides = [
            f"mesh.coordinator_address=127.0.0.1:{port}",
            "mesh.num_processes=2",
            f"mesh.process_id={pid}",
            "mesh.dcn_data=2",
            "mesh.data=1",
            "mesh.fsdp=-1",
        ]
        specs.append(
            {
                "run_dir": str(run_dir),
                "data": dict(DATA, sleep_s=sleep_s),
                "overrides": overrides,
                "config": CONFIG,
                "devices": 4,
            }
        )
    return specs


def test_two_processes_stop_resume_and_match_one_process(tmp_path, compile_cache):
    if jax.device_count() != 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS for 8 CPU devices)")
    multi = tmp_path / "multi"

    # Run 1: each process feeds its half of every batch; SIGTERM reaches only process 1, and both must stop
    # together at the same step, process 0 writing the message.
    logs = [tmp_path / f"first_{i}.log" for i in range(2)]
    procs = [runs.start(spec, compile_cache, log) for spec, log in zip(_specs(multi, runs.free_port(), 0.05), logs)]
    try:
        runs.wait_for(lambda: len(runs.train_records(multi)) >= 4, procs, "four logged steps")
        runs.send(procs[1], signal.SIGTERM)
        codes = runs.finish(procs)
    finally:
        runs.kill_all(procs)
    assert codes == [75, 75], "\n".join(log.read_text()[-2000:] for log in logs)  # EX_TEMPFAIL: run again
    first = logs[0].read_text()
    assert "stop requested (SIGTERM or Ctrl-C): saved step " in first
    stopped_at = int(first.split("stop requested (SIGTERM or Ctrl-C): saved step ")[1].split()[0])
    assert 4 <= stopped_at < 12 and runs.committed(multi, stopped_at)
    assert sorted(p.name for p in (multi / "checkpoints" / str(stopped_at) / "data_iter").glob("*.json")) == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]

    # Run 2: the same command resumes both processes from that checkpoint and finishes.
    logs = [tmp_path / f"second_{i}.log" for i in range(2)]
    procs = [runs.start(spec, compile_cache, log) for spec, log in zip(_specs(multi, runs.free_port(), 0.0), logs)]
    try:
        codes = runs.finish(procs)
    finally:
        runs.kill_all(procs)
    assert codes == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)
    assert f"resuming from step {stopped_at}" in logs[0].read_text()
    # Every process logs its start-up line: index/count, host, devices, the mesh, the distributed runtime.
    for i, log in enumerate(logs):
        [line] = [x for x in log.read_text().splitlines() if x.startswith("start-up: ")]
        assert line.startswith(f"start-up: process {i}/2 on {socket.gethostname()} | devices 4 local, 8 global (cpu: ")
        assert line.endswith("| mesh data=2 x fsdp=4 x tensor=1 | jax.distributed initialised"), line

    # The reference: one process, eight devices, the same (data=2, fsdp=4) mesh shape, the whole batch.
    single = tmp_path / "single"
    cfg = tiny_config(single, ("mesh.data=2", "mesh.fsdp=4"), **CONFIG)
    result = train(cfg, synthetic_data(**DATA), print_fn=lambda _: None)
    assert result.step == 12

    a, b = runs.train_records(single), runs.train_records(multi)
    assert [r["step"] for r in b] == list(range(1, 13))
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-6)
    np.testing.assert_allclose([r["grad_norm"] for r in b], [r["grad_norm"] for r in a], rtol=1e-5)
    # Validation loss over both processes' halves of the validation set, per ability.
    evals = [
        [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
        for d in (single, multi)
    ]
    assert [r["step"] for r in evals[1]] == [6, 12]
    for ra, rb in zip(*evals):
        assert rb.keys() == ra.keys() and {"loss/alpha", "loss/beta", "loss/gamma"} <= rb.keys()
        for key in (k for k in ra if k.startswith("loss")):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5), key
    _, final_multi = load_params(multi / "checkpoints" / "12")
    _, final_single = load_params(single / "checkpoints" / "12")
    for x, y in zip(jax.tree.leaves(final_multi), jax.tree.leaves(final_single)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
