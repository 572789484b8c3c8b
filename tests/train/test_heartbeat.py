"""RUN_DIR/heartbeat.json (jaxtune/train/heartbeat.py): the record, its phases, writes off the caller's thread."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

import jaxtune.train.heartbeat as heartbeat_module
from jaxtune.train.heartbeat import Heartbeat


def test_the_last_beat_is_on_disk_after_close_with_step_phase_time_host_and_pid(tmp_path):
    beat = Heartbeat(tmp_path, total_steps=10)
    before = time.time()
    beat.beat("compiling", 0)
    beat.beat("training", 4)
    beat.beat(step=5)  # the current phase, a new step
    beat.close("done")
    record = json.loads((tmp_path / "heartbeat.json").read_text())
    assert record["phase"] == "done" and record["step"] == 5 and record["total_steps"] == 10
    assert before - 0.001 <= record["time"] <= time.time() + 1  # written rounded to the millisecond
    assert (record["host"], record["pid"]) == (socket.gethostname(), os.getpid())
    assert [p.name for p in tmp_path.iterdir()] == ["heartbeat.json"]  # no temporary file left behind


def test_a_slow_store_never_holds_up_a_beat_and_only_the_newest_record_waits(tmp_path, monkeypatch):
    release = threading.Event()
    written: list[str] = []

    def slow_write(path, text):
        release.wait(10)
        written.append(json.loads(text)["phase"])

    monkeypatch.setattr(heartbeat_module, "write_text_atomic", slow_write)
    beat = Heartbeat(tmp_path, total_steps=3)
    started = time.monotonic()
    for phase in ("starting", "compiling", "training", "saving", "training"):
        beat.beat(phase)
        time.sleep(0.01)
    assert time.monotonic() - started < 1.0  # every beat returned at once while the first write hangs
    release.set()
    beat.close("preempted")
    assert written[0] == "starting" and written[-1] == "preempted" and len(written) < 6


def test_an_unwritable_heartbeat_never_stops_the_run(tmp_path):
    (tmp_path / "run").write_text("a file where the run folder should be")
    beat = Heartbeat(tmp_path / "run", total_steps=1)
    beat.beat("training", 1)
    beat.close("done")
    assert beat.failures >= 1


def test_a_disabled_heartbeat_writes_nothing_and_phases_are_checked(tmp_path):
    beat = Heartbeat(tmp_path, enabled=False)
    beat.beat("training", 2)
    beat.close("done")
    assert not (tmp_path / "heartbeat.json").exists() and beat.phase == "done"
    with pytest.raises(ValueError, match="unknown heartbeat phase 'hung'"):
        beat.beat("hung")
