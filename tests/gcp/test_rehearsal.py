"""The rehearsal of a spot run on a 2-worker slice (tests/gcp/fake_slice.py: each worker a local process group with
4 CPU devices and its own local disk; the run directory, the data and the tokenizer in a bucket, the GCS emulator).
``gcp/tpu.sh supervise`` drives the real commands through a scripted fault plan to completion:

- ``jaxtune train``: preempted during start-up, preempted during a checkpoint save, one worker hung (SIGSTOP), one
  worker crashed (exit 1); its final parameters and both epoch checkpoints must equal an uninterrupted run's bitwise
  (the sweep's second cell: the same config), and the supervisor's log must name each restart with its reason.
- a 2-cell ``jaxtune sweep`` (a run config with ``--selections``: the emulation adds the coordinator settings as
  overrides, which a sweep file does not take): preempted once its first cell is evaluated, as its second starts;
  it must resume and finish every cell. Its second cell, trained uninterrupted, is the train run's reference.

The two run at once, each supervised on its own slice (as a lab with two slices would), sharing the bucket and its
compilation cache.

The coordinator settings the workers' entry point adds stand in for the TPU metadata (see fake_slice.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fake_slice
import jax
import numpy as np
import pytest
from gcs_emulator import gcs  # noqa: F401  (the fixture)

pytestmark = pytest.mark.long  # minutes: scheduled first (tests/conftest.py)

REPO = Path(__file__).resolve().parents[2]
TPU_SH = REPO / "gcp" / "tpu.sh"
BUCKET = "rehearsal"
SUPERVISE_TIMEOUT_S = 900

# 160 examples pack into 5 steps of 8 rows per epoch (10 steps), 40 into 2 (4 steps); a save every 3 steps.
RUN_ARGS = [
    "jaxtune/demo/quickstart.yaml",
    f"data.path=gs://{BUCKET}/data",
    f"data.tokenizer=gs://{BUCKET}/tokenizer",
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "train.epochs=2",
    "train.log_every=1",
    f"train.compilation_cache_dir=gs://{BUCKET}/compilation_cache",
    "train.compilation_cache_min_secs=0",
    "checkpoint.save_every=3",
    "checkpoint.max_to_keep=null",
    "checkpoint.keep_epoch_checkpoints=true",
    "checkpoint.async_save=false",
    f"eval.data_dir=gs://{BUCKET}/data",
    "eval.max_new_tokens=4",
]
SETTINGS = {
    "POLL_SECONDS": "2",
    # A step takes a fraction of a second, a save to the emulator one to three seconds (up to 12 s on a loaded 2-core
    # machine before the emulator stopped rewriting its metadata at each write, tests/gcs_emulator_server.py).
    "HANG_SECONDS": "20",
    # Start-up on a shared 2-core machine (imports, jax.distributed, data, restore, compiles) took over 2 minutes.
    "COMPILE_HANG_SECONDS": "600",
    "STOP_GRACE_SECONDS": "3",
    "FAKE_SLICE_GRACE": "3",
    "MAX_FAILURES": "3",
}


@pytest.fixture(scope="module")
def slice_env(gcs, tmp_path_factory):  # noqa: F811
    """The environment of a supervisor on this machine: the fake gcloud, the bucket with the demo data (training and
    evaluation) and the demo tokenizer: nothing the workers read is on this machine's disk but their checkout."""
    from jaxtune.demo.abilities import write_demo_dataset

    root = tmp_path_factory.mktemp("slice")
    gcs.make_bucket(BUCKET)
    data = write_demo_dataset(root / "data", per_ability=16, eval_per_ability=1, synthetic=10)
    gcs.upload_tree(data, BUCKET, "data")
    gcs.upload_tree(REPO / "jaxtune" / "demo" / "tokenizer", BUCKET, "tokenizer")
    env = {**os.environ, **gcs.env, **fake_slice.install(root / "bin", root / "state"), **SETTINGS}
    for name in ("RUN_DIR", "SWEEP_DIR", "SPOT", "QUEUED", "MAX_PREEMPTIONS"):
        env.pop(name, None)
    try:
        yield env
    finally:
        subprocess.run([sys.executable, fake_slice.__file__, "cleanup", str(root / "state")], timeout=60)


def supervise(env: dict, name: str, job: list[str], plan: list[dict], tmp_path: Path) -> subprocess.CompletedProcess:
    plan_file = tmp_path / f"{name}.plan.json"
    plan_file.write_text(json.dumps(plan))
    return subprocess.run(
        ["bash", str(TPU_SH), "supervise", name, "v5p-16", "us-east5-a", "--", *job],
        env={**env, "FAKE_SLICE_PLAN": str(plan_file)},
        capture_output=True,
        text=True,
        timeout=SUPERVISE_TIMEOUT_S,
    )


def restarts(out: str) -> list[tuple[str, str]]:
    """(kind, reason) of each restart line of the supervisor's log."""
    return re.findall(r"^supervise: \S+ restart \((\w+)\): (.*?); left:", out, flags=re.M)


def params(gcs, prefix: str, local: Path) -> list[np.ndarray]:  # noqa: F811
    from jaxtune.checkpoint.params import load_params

    _, tree = load_params(gcs.download_tree(BUCKET, prefix, local / prefix.replace("/", "_")))
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def assert_same_run(gcs, run: str, reference: str, final_step: int, tmp_path: Path) -> None:  # noqa: F811
    """Both epoch checkpoints and the final train state's parameters equal, bit for bit."""
    for part in ("epochs/1", "epochs/2", f"checkpoints/{final_step}"):
        got, want = params(gcs, f"{run}/{part}", tmp_path), params(gcs, f"{reference}/{part}", tmp_path)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), part


def log(result: subprocess.CompletedProcess) -> str:
    return f"stdout:\n{result.stdout[-6000:]}\nstderr:\n{result.stderr[-3000:]}"


SWEEP_JOB = [
    "bash",
    "scripts/sweep.sh",
    *RUN_ARGS,
    "--selections",
    "curated-40,curated-160",
    f"run_dir=gs://{BUCKET}/sweep",
]
# Preempted once its first cell is evaluated, as the second starts; the second cell trains uninterrupted: the
# reference of the train run.
SWEEP_PLAN = [
    {"start": 1, "when": {"exists": f"gs://{BUCKET}/sweep/curated-40/eval/epoch-2/evaluated.json"}, "do": "preempt"}
]
TRAIN_RUN = f"gs://{BUCKET}/train"
TRAIN_JOB = ["bash", "scripts/train.sh", *RUN_ARGS, "data.selection=curated-160", f"run_dir={TRAIN_RUN}"]
TRAIN_PLAN = [
    {"start": 1, "when": {"phase": "starting", "run_dir": TRAIN_RUN}, "do": "preempt"},  # during start-up
    {"start": 2, "when": {"saving": TRAIN_RUN}, "do": "preempt"},  # a step folder without its commit marker
    {"start": 3, "when": {"step": 7, "run_dir": TRAIN_RUN}, "do": "hang", "worker": 1},  # mid-epoch, between saves
    {"start": 4, "when": {"step": 8, "run_dir": TRAIN_RUN}, "do": "fail", "worker": 0},
]


@pytest.fixture(scope="module")
def supervised(slice_env, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """The 2-cell sweep and the train run, each supervised on its own slice, both at once (as a lab runs several
    slices; the emulation keeps each slice's workers, ports and faults apart)."""
    jobs = {"sweep": (SWEEP_JOB, SWEEP_PLAN), "train": (TRAIN_JOB, TRAIN_PLAN)}
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {
            name: pool.submit(supervise, slice_env, name, job, plan, tmp_path_factory.mktemp(name))
            for name, (job, plan) in jobs.items()
        }
        return {name: future.result() for name, future in futures.items()}


def test_a_preempted_sweep_resumes_and_finishes(supervised, gcs):  # noqa: F811
    swept = supervised["sweep"]
    print(swept.stdout)  # the supervisor's log, shown by pytest -rP
    assert swept.returncode == 0, log(swept)
    assert restarts(swept.stdout) == [("preemption", "slice sweep is PREEMPTED; recreating it")], log(swept)
    assert re.search(r"finished on sweep after \d+s: 1 restarts \(preemption 1, failure 0, hang 0\)", swept.stdout)
    names = set(gcs.names(BUCKET, "sweep/"))
    for cell in ("curated-40", "curated-160"):
        assert f"sweep/{cell}/completed.json" in names
        assert f"sweep/{cell}/eval/epoch-2/evaluated.json" in names
        assert f"sweep/{cell}/eval/epoch-2/doit-test.summary.json" in names


def test_a_train_run_through_preemptions_a_hang_and_a_crash_ends_bitwise_equal(supervised, gcs, tmp_path):  # noqa: F811
    result = supervised["train"]
    print(result.stdout)  # the supervisor's log, shown by pytest -rP
    assert result.returncode == 0, log(result)
    got = restarts(result.stdout)
    assert [kind for kind, _ in got] == ["preemption", "preemption", "hang", "failure"], log(result)
    assert got[0][1] == got[1][1] == "slice train is PREEMPTED; recreating it"
    assert re.fullmatch(r"no heartbeat for \d+s \(phase (training|saving), step \d+; limit 20s\)", got[2][1])
    assert got[3][1].startswith("exit status on train-w-0 (exit 1)")  # and worker 1's, if it ended by then
    assert "finished on train" in result.stdout and "(preemption 2, failure 1, hang 1)" in result.stdout
    assert_same_run(gcs, "train", "sweep/curated-160", 10, tmp_path)
