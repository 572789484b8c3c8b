"""gcp/tpu.sh against a stand-in ``gcloud`` on PATH that records every command it receives and keeps a slice's
state in a JSON file (created, READY, deleted).

What is checked: the gcloud calls of each subcommand, `--worker=all` wherever every worker must act, one start command
for all hosts, quoting (the recorded remote command is run by a real bash and the job sees exactly the arguments it was
given). The supervised mode runs on the emulated slice of fake_slice.py (test_supervise.py, test_rehearsal.py).
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TPU_SH = REPO / "gcp" / "tpu.sh"

# The stand-in: argv of every call appended to $FAKE_GCLOUD_DIR/calls.jsonl; slice state in state.json.
FAKE_GCLOUD = r'''#!PYTHON
import json, os, sys
d = os.environ["FAKE_GCLOUD_DIR"]
args = sys.argv[1:]
with open(os.path.join(d, "calls.jsonl"), "a") as f:
    f.write(json.dumps(args) + "\n")
state_path = os.path.join(d, "state.json")
state = json.load(open(state_path)) if os.path.exists(state_path) else {"nodes": {}}
def save():
    json.dump(state, open(state_path, "w"))
if args[:3] == ["compute", "tpus", "tpu-vm"]:
    verb, name = args[3], args[4]
    nodes = state["nodes"]
    if verb == "create":
        nodes[name] = "READY"
    elif verb == "delete":
        nodes.pop(name, None)
    elif verb == "describe":
        if name not in nodes:
            print("ERROR: NOT_FOUND", file=sys.stderr); sys.exit(1)
        print(nodes[name])
    save()
elif args[:3] == ["compute", "tpus", "queued-resources"]:
    verb, name = args[3], args[4]
    if verb == "create":
        state["nodes"][name] = "ACTIVE"
    elif verb == "describe":
        if name not in state["nodes"]:
            print("ERROR: NOT_FOUND", file=sys.stderr); sys.exit(1)
        print(state["nodes"][name])
    elif verb == "delete":
        state["nodes"].pop(name, None)
    save()
'''


@pytest.fixture
def fake_gcloud(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD.replace("PYTHON", sys.executable))
    gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_GCLOUD_DIR=str(tmp_path), POLL_SECONDS="0")
    env.pop("QUEUED", None)
    env.pop("SPOT", None)

    def run(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(TPU_SH), *args], env={**env, **extra_env}, capture_output=True, text=True, timeout=60
        )

    def calls() -> list[list[str]]:
        path = tmp_path / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    run.calls = calls
    return run


def _opt(call: list[str], name: str):
    return next((a.split("=", 1)[1] for a in call if a.startswith(name + "=")), None)


def test_create_spot_and_queued(fake_gcloud):
    r = fake_gcloud("create", "doit", "v5p-16", "us-east5-a", SPOT="1")
    assert r.returncode == 0, r.stderr
    create = fake_gcloud.calls()[0]
    assert create[:5] == ["compute", "tpus", "tpu-vm", "create", "doit"]
    assert "--accelerator-type=v5p-16" in create and "--zone=us-east5-a" in create and "--spot" in create
    r = fake_gcloud("create", "q", "v5p-16", "us-east5-a", QUEUED="1")
    queued = [c for c in fake_gcloud.calls() if c[2] == "queued-resources"][0]
    assert queued[:5] == ["compute", "tpus", "queued-resources", "create", "q"]
    assert "--node-id=q" in queued and "--runtime-version=v2-alpha-tpuv5" in queued


def test_setup_reaches_every_worker_with_a_pinned_install_and_gcsfuse(fake_gcloud):
    r = fake_gcloud("setup", "doit", "us-east5-a", BUCKET="my-bucket", MOUNT="/mnt/gcs")
    assert r.returncode == 0, r.stderr
    scp, ssh = fake_gcloud.calls()
    assert scp[3] == "scp" and _opt(scp, "--worker") == "all"
    assert ssh[3] == "ssh" and _opt(ssh, "--worker") == "all"
    command = _opt(ssh, "--command")
    assert "bash scripts/setup.sh tpu" in command  # setup.py's exact pins, with the tpu extra
    assert "gcsfuse --implicit-dirs my-bucket /mnt/gcs" in command
    assert "command -v gcsfuse" in command and "apt-get install -y -q gcsfuse" in command  # installed if missing
    assert "mounting gs://my-bucket at /mnt/gcs with gcsfuse on every worker: BUCKET is set" in r.stdout


def test_setup_mounts_gcsfuse_only_for_a_config_that_reads_data_under_the_mount(fake_gcloud, tmp_path):
    in_bucket = tmp_path / "gs.yaml"
    in_bucket.write_text("data:\n  tokenizer: gs://my-bucket/tok\ncheckpoint:\n  init_from: gs://my-bucket/base-7b\n")
    prepared = tmp_path / "array_record.yaml"
    prepared.write_text("data:\n  path: /mnt/gcs/belle-2m\n")
    r = fake_gcloud("setup", "doit", "us-east5-a", BUCKET="my-bucket", CONFIGS=str(in_bucket))
    assert r.returncode == 0, r.stderr
    assert "gcsfuse" not in _opt(fake_gcloud.calls()[-1], "--command")
    assert "no gcsfuse mount (no config reads data under /mnt/gcs; gs:// paths are read directly)" in r.stdout
    r = fake_gcloud("setup", "doit", "us-east5-a", BUCKET="my-bucket", CONFIGS=f"{in_bucket} {prepared}")
    assert r.returncode == 0, r.stderr
    assert "gcsfuse --implicit-dirs my-bucket /mnt/gcs" in _opt(fake_gcloud.calls()[-1], "--command")
    assert f"{prepared} names a path under /mnt/gcs" in r.stdout


def test_train_starts_one_command_on_all_workers_and_quotes_its_arguments(fake_gcloud, tmp_path):
    tricky = [
        "configs/doit-7b.yaml",
        "run_dir=gs://b/runs/a b",
        "data.selection=curated-640",
        "train.note=it's $HOME; `x` \"q\"",
    ]
    r = fake_gcloud("train", "doit", "us-east5-a", *tricky)
    assert r.returncode == 0, r.stderr
    (ssh,) = fake_gcloud.calls()
    assert ssh[3] == "ssh" and _opt(ssh, "--worker") == "all"
    # Run the recorded remote command with a real bash on a stand-in worker whose scripts/train.sh records its argv.
    home = tmp_path / "worker"
    scripts = home / "jaxtune" / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "train.sh").write_text(
        f'#!/usr/bin/env bash\n{shlex.quote(sys.executable)} -c '
        '"import json,sys; print(json.dumps(sys.argv[1:]))" "$@"\n'
    )
    subprocess.run(["bash", "-c", _opt(ssh, "--command")], env=dict(os.environ, HOME=str(home)), check=True, timeout=30)
    logs = home / "jaxtune" / "logs"
    for _ in range(100):
        if (logs / "job.rc").exists():
            break
        subprocess.run(["sleep", "0.1"])
    assert (logs / "job.rc").read_text().strip() == "0"
    assert json.loads((logs / "job.log").read_text()) == tricky
    assert (logs / "job.pid").read_text().strip().isdigit()


def test_stop_sends_sigterm_on_every_worker(fake_gcloud):
    assert fake_gcloud("stop", "doit", "us-east5-a").returncode == 0
    (ssh,) = fake_gcloud.calls()
    assert _opt(ssh, "--worker") == "all" and "kill -TERM" in _opt(ssh, "--command")


def test_usage_errors_name_the_command(fake_gcloud):
    r = fake_gcloud("frobnicate", "x")
    assert r.returncode == 2 and "unknown command 'frobnicate'" in r.stderr
    r = fake_gcloud("run", "doit", "zone")
    assert r.returncode == 2 and "usage" in r.stderr
