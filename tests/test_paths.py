"""jaxtune.paths and the gs:// support it gives the whole tool: local semantics first, then, against a GCS emulator
started on 127.0.0.1 (tests/gcs_emulator.py), the helpers themselves, a sweep that trains two epochs, evaluates
and reports with everything in the bucket, and a SIGTERM save to gs:// resumed exactly.

Everything that touches gs:// runs in child processes: gcsfs and fsspec read their settings (the emulator, no
credentials, no gRPC probe) when first imported.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from gcs_emulator import gcs, run_python  # noqa: F401  (gcs: the fixture)
from train import subprocess_runs as runs

from jaxtune.checkpoint.layout import epoch_checkpoint_dir, train_checkpoint_dir
from jaxtune.checkpoint.params import load_params
from jaxtune.paths import (
    absolute_path,
    append_text,
    as_path,
    files_under,
    is_remote,
    staged_folder,
    write_text_atomic,
)

REPO = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory) -> Path:
    """A JAX persistent compilation cache shared by this module's training subprocesses."""
    return tmp_path_factory.mktemp("jax-compile-cache")


def test_a_bucket_url_stays_a_url():
    # pathlib.Path("gs://bucket/run") is the local folder "gs:/bucket/run": every run-directory path must keep it.
    assert os.fspath(as_path("gs://bucket/run") / "metrics.jsonl") == "gs://bucket/run/metrics.jsonl"
    assert os.fspath(train_checkpoint_dir("gs://bucket/run")) == "gs://bucket/run/checkpoints"
    assert os.fspath(epoch_checkpoint_dir("gs://bucket/run")) == "gs://bucket/run/epochs"
    assert is_remote("gs://bucket/run") and is_remote(as_path("s3://b/x")) and not is_remote("runs/gs:/x")
    assert os.fspath(absolute_path("runs/a")) == os.path.abspath("runs/a")


def test_local_files(tmp_path):
    target = tmp_path / "sub" / "metrics.jsonl"
    target.parent.mkdir()
    append_text(target, "a\n")
    append_text(target, "b\n")
    assert target.read_text() == "a\nb\n"
    write_text_atomic(target, "c\n")
    assert target.read_text() == "c\n" and sorted(p.name for p in target.parent.iterdir()) == ["metrics.jsonl"]
    (tmp_path / "x" / "y").mkdir(parents=True)
    (tmp_path / "x" / "y" / "r.summary.json").write_text("{}")
    (tmp_path / "x" / "r.items.jsonl").write_text("")
    assert [os.fspath(p) for p in files_under(tmp_path / "x", ".summary.json")] == [
        os.fspath(tmp_path / "x" / "y" / "r.summary.json")
    ]
    with staged_folder(tmp_path / "out") as stage:  # local: a partial sibling, renamed at the end
        assert Path(stage).parent == tmp_path and Path(stage).name.startswith(".out.partial-")
        assert not (tmp_path / "out").exists()
        Path(stage, "config.json").write_text("{}")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json"]
    assert not list(tmp_path.glob(".out.partial-*"))


def test_leftover_partial_folders_of_a_killed_write_are_removed_by_the_next(tmp_path, caplog):
    # Before: every killed export left its .NAME.partial-* folder for good (20 kills: 20 folders, up to a full model).
    old, young = tmp_path / ".out.partial-0badf00d", tmp_path / ".out.partial-1badf00d"
    for stage in (old, young):
        (stage / "model.safetensors").parent.mkdir()
        (stage / "model.safetensors").write_bytes(b"x" * 10)
    two_hours_ago = time.time() - 7200
    for path in (old / "model.safetensors", old):
        os.utime(path, (two_hours_ago, two_hours_ago))
    (tmp_path / ".other.partial-2badf00d").mkdir()  # another destination's
    with caplog.at_level(logging.WARNING, logger="jaxtune.paths"):
        with staged_folder(tmp_path / "out") as stage:
            Path(stage, "config.json").write_text("{}")
    assert not old.exists() and young.exists() and (tmp_path / ".other.partial-2badf00d").exists()
    assert [r.getMessage() for r in caplog.records] == [
        f"removed {old}, left by an interrupted write of {tmp_path / 'out'} (7200 s old)"
    ]
    with staged_folder(tmp_path / "out", partial_grace_s=0) as stage:  # the writer holds the folder's lease
        pass
    assert not young.exists() and (tmp_path / ".other.partial-2badf00d").exists()


def _failure(proc: subprocess.CompletedProcess) -> str:
    """What a failed child printed: its output's end and every error line of its log."""
    errors = [line for line in proc.stderr.splitlines() if "Error" in line and "sys.meta_path" not in line]
    return proc.stdout[-2000:] + "\n".join(errors[:20])


def _child(gcs, code: str, timeout: float = CHILD_TIMEOUT_S) -> str:
    """Run ``code`` in a fresh Python pointed at the emulator; its stdout (a failure shows its output)."""
    proc = run_python(gcs, code, timeout=timeout)
    assert proc.returncode == 0, _failure(proc)
    return proc.stdout


def test_the_helpers_on_a_bucket(gcs, tmp_path):
    gcs.make_bucket("helpers")
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.model").write_bytes(b"\x00\x01spm")
    out = _child(
        gcs,
        f"""
        from jaxtune.paths import *
        base = as_path("gs://helpers/run")
        append_text(base / "metrics.jsonl", "1\\n")
        append_text(base / "metrics.jsonl", "2\\n")
        write_text_atomic(base / "config.yaml", "a: 1\\n")
        copy_file({str(tmp_path / "tok" / "tokenizer.model")!r}, base / "ckpt" / "tokenizer" / "tokenizer.model")
        with staged_folder(base / "hf") as stage:
            open(stage + "/config.json", "w").write("{{}}")
        print(local_copy(base / "ckpt" / "tokenizer"))
        print([str(p) for p in files_under(base, ".json")])
    """,
    )
    local_tok, found = out.strip().splitlines()[-2:]
    assert gcs.read("helpers", "run/metrics.jsonl") == b"1\n2\n"
    assert gcs.read("helpers", "run/config.yaml") == b"a: 1\n"
    assert gcs.read("helpers", "run/ckpt/tokenizer/tokenizer.model") == b"\x00\x01spm"
    assert gcs.read("helpers", "run/hf/config.json") == b"{}"
    assert (Path(local_tok) / "tokenizer.model").read_bytes() == b"\x00\x01spm"
    assert found == str(["gs://helpers/run/hf/config.json"])


def test_a_sweep_trains_evaluates_and_reports_in_a_bucket(gcs, tmp_path):
    """``jaxtune sweep`` with run_dir, training data (JSON Lines, DoIT layout) and every output in gs://: two
    epochs, both epoch checkpoints evaluated, the report drawn; then the bucket's objects are checked over HTTP."""
    from jaxtune.demo.abilities import write_demo_dataset

    gcs.make_bucket("study")
    data = write_demo_dataset(tmp_path / "data", per_ability=4, eval_per_ability=1, synthetic=10)
    gcs.upload_tree(data, "study", "data")
    cmd = [
        sys.executable,
        "-m",
        "jaxtune.cli",
        "sweep",
        "jaxtune/demo/quickstart.yaml",
        "--selections",
        "curated-10",
        "--eval-epochs",
        "all",
        "run_dir=gs://study/runs",
        "data.path=gs://study/data",
        "data.tokenizer=jaxtune/demo/tokenizer",
        f"eval.data_dir={data}",
        "eval.max_new_tokens=4",
        "train.epochs=2",
        "train.log_every=1",
        "checkpoint.keep_epoch_checkpoints=true",
    ]
    env = {**os.environ, **gcs.env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, env=env, cwd=str(REPO), text=True, capture_output=True, timeout=CHILD_TIMEOUT_S)
    assert proc.returncode == 0, _failure(proc)
    assert "report: gs://study/runs/report" in proc.stdout

    run = "runs/curated-10"
    names = set(gcs.names("study", "runs/"))
    assert not any(n.startswith("gs:") or "/gs:/" in n for n in names)
    for name in (
        "config.yaml",
        "manifest.jsonl",
        "metrics.jsonl",
        "checkpoints/2/commit_success.txt",
        "checkpoints/2/train_state/commit_success.txt",
        "epochs/1/model_config.json",
        "epochs/2/model_config.json",
        "epochs/2/tokenizer/tokenizer.model",
        "eval/epoch-1/doit-test.summary.json",
        "eval/epoch-2/doit-test.items.jsonl",
    ):
        assert f"{run}/{name}" in names, name
    assert not any(n.startswith(f"{run}/epochs/2/train_state") for n in names)  # params only
    assert any(n.startswith(f"{run}/tensorboard/events.out.tfevents.") for n in names)
    metrics = [json.loads(line) for line in gcs.read("study", f"{run}/metrics.jsonl").splitlines()]
    assert [r["step"] for r in metrics if r["kind"] == "train"] == [1, 2]
    manifest = gcs.read("study", f"{run}/manifest.jsonl").decode().splitlines()
    assert len(manifest) == 10 and all(
        json.loads(m)["source"].startswith("gs://study/data/curated/1000/") for m in manifest
    )
    summary = json.loads(gcs.read("study", f"{run}/eval/epoch-2/doit-test.summary.json"))
    assert summary["run"]["checkpoint"] == f"gs://study/{run}/epochs/2" and summary["run"]["epoch"] == 2
    for name in ("report.md", "doit-test.png", "doit-test.svg", "doit-test.scores.csv", "best_epochs.csv"):
        assert f"runs/report/{name}" in names, name
    assert gcs.read("study", "runs/report/doit-test.png").startswith(b"\x89PNG")
    # The last epoch checkpoint, read back from the bucket's bytes, holds the final train state's parameters.
    _, epoch = load_params(gcs.download_tree("study", f"{run}/epochs/2", tmp_path / "e2"))
    _, final = load_params(gcs.download_tree("study", f"{run}/checkpoints/2", tmp_path / "c2"))
    for a, b in zip(jax.tree.leaves(epoch), jax.tree.leaves(final)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_sigterm_save_to_a_bucket_resumes_exactly(gcs, tmp_path, compile_cache):
    gcs.make_bucket("preempt")
    data = dict(num_rows=160, seq_len=32, global_batch=8, epochs=1)
    config = dict(train=dict(epochs=1), checkpoint=dict(save_every=None, max_to_keep=2, async_save=True))
    spec = lambda run_dir, **extra: {"run_dir": run_dir, "data": dict(data, **extra), "config": config, "devices": 8}

    local = tmp_path / "straight"
    proc = runs.start(spec(str(local)), compile_cache, tmp_path / "straight.log")
    assert runs.finish([proc]) == [0], (tmp_path / "straight.log").read_text()[-3000:]

    def logged_steps() -> int:
        try:
            text = gcs.read("preempt", "run/metrics.jsonl").decode()
        except OSError:  # not written yet
            return 0
        return sum('"kind": "train"' in line for line in text.splitlines())

    proc = runs.start(spec("gs://preempt/run", sleep_s=0.03), compile_cache, tmp_path / "stopped.log", gcs.env)
    runs.wait_for(lambda: logged_steps() >= 3, [proc], "three logged steps")
    runs.send(proc, signal.SIGTERM)
    assert runs.finish([proc]) == [75], (tmp_path / "stopped.log").read_text()[-3000:]
    assert json.loads(gcs.read("preempt", "run/heartbeat.json"))["phase"] == "preempted"
    assert "run/completed.json" not in gcs.names("preempt", "run/")
    log = (tmp_path / "stopped.log").read_text()
    stopped_at = int(log.split("stop requested (SIGTERM or Ctrl-C): saved step ")[1].split()[0])
    assert 3 <= stopped_at < 20
    assert f"run/checkpoints/{stopped_at}/commit_success.txt" in gcs.names("preempt", "run/checkpoints/")

    proc = runs.start(spec("gs://preempt/run"), compile_cache, tmp_path / "resumed.log", gcs.env)
    assert runs.finish([proc]) == [0], (tmp_path / "resumed.log").read_text()[-3000:]
    assert json.loads(gcs.read("preempt", "run/completed.json"))["step"] == 20
    assert json.loads(gcs.read("preempt", "run/heartbeat.json"))["phase"] == "done"
    assert (
        f"resuming from step {stopped_at} (gs://preempt/run/checkpoints/{stopped_at})"
        in (tmp_path / "resumed.log").read_text()
    )

    remote = [json.loads(line) for line in gcs.read("preempt", "run/metrics.jsonl").splitlines()]
    remote = [r for r in remote if r["kind"] == "train"]
    straight = runs.train_records(local)
    assert [r["step"] for r in remote] == list(range(1, 21))
    assert [(r["loss"], r["grad_norm"]) for r in remote] == [(r["loss"], r["grad_norm"]) for r in straight]
    _, want = load_params(local / "checkpoints" / "20")
    _, got = load_params(gcs.download_tree("preempt", "run/checkpoints/20", tmp_path / "c20"))
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_writers_of_local_files_only_refuse_a_url(tmp_path):
    from jaxtune.commands.quickstart import quickstart
    from jaxtune.data.prepare import prepare_dataset
    from jaxtune.errors import JaxtuneError

    (tmp_path / "a.jsonl").write_text('{"instruction": "q", "output": "a"}\n')
    with pytest.raises(JaxtuneError, match="gs://bucket/prepared: this path must be local"):
        prepare_dataset(tmp_path / "a.jsonl", "gs://bucket/prepared", format="alpaca")
    with pytest.raises(JaxtuneError, match="gs://bucket/qs: this path must be local"):
        quickstart("gs://bucket/qs")
    assert not Path("gs:").exists()
