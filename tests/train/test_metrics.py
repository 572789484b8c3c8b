"""jaxtune.train.metrics: the clu collection's aggregation, the writers (metrics.jsonl, TensorBoard), throughput."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from jaxtune.errors import JaxtuneError
from jaxtune.train import metrics as tm
from jaxtune.train.metrics import MetricsWriter, ThroughputMeter, TrainMetrics, progress_line

from .event_files import scalar_events


def _step(loss: float, grad_norm: float, lr: float, finite: bool, tokens: int = 100, supervised: int = 40):
    return jax.device_get(
        TrainMetrics.single_from_model_output(
            loss=np.float32(loss),
            grad_norm=np.float32(grad_norm),
            learning_rate=np.float32(lr),
            finite=np.bool_(finite),
            tokens=np.int32(tokens),
            supervised_tokens=np.float32(supervised),
            skipped=np.int32(0 if finite else 1),
        )
    )


def test_interval_means_leave_out_skipped_steps_and_sum_counts():
    interval = _step(2.0, 1.0, 3e-4, True)
    interval = interval.merge(_step(float("nan"), float("nan"), 2e-4, False))
    interval = interval.merge(_step(4.0, 3.0, 1e-4, True, tokens=50))
    values = interval.compute()
    assert float(values["loss"]) == pytest.approx(3.0) and float(values["grad_norm"]) == pytest.approx(2.0)
    assert float(values["learning_rate"]) == pytest.approx(1e-4)  # the last value
    assert float(values["tokens"]) == 250 and float(values["supervised_tokens"]) == 120
    assert float(values["skipped_steps"]) == 1


def test_writer_appends_json_lines_and_tensorboard_scalars_and_truncates(tmp_path):
    printed: list[str] = []
    writer = MetricsWriter(tmp_path, enabled=True, print_fn=printed.append)
    for step in (1, 2, 3):
        writer.write(step, "train", {"loss": 1.0 / step, "learning_rate": np.float32(0.5), "odd": float("nan")})
    writer.write(3, "eval", {"loss": 0.25, "loss/alpha": 0.5})
    writer.message("hello")
    writer.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["kind"]) for r in records] == [(1, "train"), (2, "train"), (3, "train"), (3, "eval")]
    assert records[1]["loss"] == 0.5 and records[0]["odd"] == "nan"
    events = scalar_events(tmp_path / "tensorboard")
    assert ("train/loss", 2, 0.5) in events and ("eval/loss/alpha", 3, 0.5) in events
    assert printed == ["hello"]

    writer = MetricsWriter(tmp_path, enabled=True)
    writer.truncate_after(2)  # a run resumed from step 2 redoes step 3
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    writer.close()


def test_the_tensorboard_writer_opens_without_loading_torch_which_still_imports_afterwards(tmp_path):
    """tensorboardX imports torch when installed (seconds at each run start); the writer keeps it out, and torch
    imports normally afterwards. In a fresh process: this one has torch loaded by other tests."""
    pytest.importorskip("torch")
    code = f"""
import sys
from jaxtune.train.metrics import MetricsWriter
writer = MetricsWriter({str(tmp_path)!r}, enabled=True)
writer.start_at(0)
writer.write(1, "train", {{"loss": 0.5}})
writer.close()
assert "torch" not in sys.modules, "tensorboardX loaded torch"
import torch
assert torch.zeros(2).sum().item() == 0.0
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("train/loss", 1, 0.5) in scalar_events(tmp_path / "tensorboard")


def _steps_in(path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_resume_drops_a_torn_last_line_and_rewrites_atomically(tmp_path, monkeypatch):
    writer = MetricsWriter(tmp_path, enabled=True)
    for step in (1, 2, 3):
        writer.write(step, "train", {"loss": 1.0})
    writer.close()
    path = tmp_path / "metrics.jsonl"
    with path.open("a") as f:
        f.write('{"step": 4, "kind": "tr')  # a kill during the write of step 4
    printed: list[str] = []
    writer = MetricsWriter(tmp_path, enabled=True, print_fn=printed.append)
    writer.start_at(3)
    assert _steps_in(path) == [1, 2, 3]
    assert len(printed) == 1 and f"{path}: dropped the torn last line 4" in printed[0]
    writer.write(4, "train", {"loss": 0.5})
    writer.close()
    assert _steps_in(path) == [1, 2, 3, 4]

    # The rewrite goes through a temporary file and os.replace: failing there leaves the file as it was.
    before = path.read_text()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(tm.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        MetricsWriter(tmp_path, enabled=True).truncate_after(1)
    assert path.read_text() == before
    monkeypatch.undo()

    # A damaged line elsewhere is not guessed at: it is named.
    path.write_text(before.replace('{"step": 2', '{"step": 2,,', 1))
    with pytest.raises(JaxtuneError, match=r"metrics.jsonl, line 2: not a JSON object"):
        MetricsWriter(tmp_path, enabled=True).truncate_after(3)


def test_resume_purges_the_redone_steps_from_tensorboard(tmp_path):
    writer = MetricsWriter(tmp_path, enabled=True)
    writer.start_at(0)
    for step in (1, 2, 3, 4):
        writer.write(step, "train", {"loss": float(step)})
    writer.close()
    writer = MetricsWriter(tmp_path, enabled=True)
    writer.start_at(2)  # resumed from the checkpoint of step 2: steps 3 and 4 are done again
    for step in (3, 4):
        writer.write(step, "train", {"loss": 10.0 * step})
    writer.close()
    seen = [
        (step, value) for tag, step, value in scalar_events(tmp_path / "tensorboard", purge=True) if tag == "train/loss"
    ]
    assert seen == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    assert len(scalar_events(tmp_path / "tensorboard")) == 6  # without the purge TensorBoard would show both


def test_a_disabled_writer_writes_nothing(tmp_path):
    printed: list[str] = []
    writer = MetricsWriter(tmp_path / "run", enabled=False, print_fn=printed.append)
    writer.write(1, "train", {"loss": 1.0})
    writer.message("hello")
    writer.close()
    assert not (tmp_path / "run").exists() and printed == []


def test_throughput_mfu_and_eta(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(tm.time, "perf_counter", lambda: clock[0])
    meter = ThroughputMeter(peak_flops_total=1e10, total_steps=50)
    meter.reset(step=10)
    assert meter.measure(10) == {}  # nothing timed yet
    for _ in range(10):
        meter.add_step(tokens=1000, flops=1000 * 6e6)
    clock[0] += 4.0
    out = meter.measure(20)  # 10 steps of 1000 tokens in 4 s
    assert out["tokens_per_s"] == pytest.approx(2500) and out["step_time_s"] == pytest.approx(0.4)
    assert out["mfu"] == pytest.approx(2500 * 6e6 / 1e10) and out["eta_s"] == pytest.approx(30 * 0.4)
    no_peak = ThroughputMeter(None, 50)
    clock[0] += 1.0
    assert "mfu" not in no_peak.measure(5)


def test_peak_flops_lookup():
    assert tm.peak_flops_per_device(types.SimpleNamespace(device_kind="TPU v5p")) == 459e12
    assert tm.peak_flops_per_device(types.SimpleNamespace(device_kind="TPU v5 lite")) == 197e12
    assert tm.peak_flops_per_device(types.SimpleNamespace(device_kind="NVIDIA H200")) == 989e12
    assert tm.peak_flops_per_device(types.SimpleNamespace(device_kind="cpu")) is None
    assert tm.peak_flops_per_device(types.SimpleNamespace(device_kind="cpu"), configured=1e11) == 1e11


def test_progress_line_and_durations():
    line = progress_line(
        120,
        1500,
        1.6,
        {
            "loss": 1.23456,
            "learning_rate": 9.2e-6,
            "grad_norm": 0.8123,
            "tokens_per_s": 12345.6,
            "mfu": 0.412,
            "eta_s": 751,
            "skipped_steps": 2,
        },
    )
    assert line == (
        "step 120/1500 | epoch 1.60 | loss 1.2346 | lr 9.200e-06 | grad_norm 0.812 | 12,346 tok/s | "
        "MFU 41.2% | skipped 2 | ETA 0:12:31"
    )
    assert tm.format_duration(90061) == "1d 1:01:01" and tm.format_duration(math.inf) == "?"
