"""jaxtune/study/ray_driver.py and ray_tasks.py for real: a local Ray cluster on 127.0.0.1 emulating two 2-host
v5p-16 slices (each host a Ray node with the slice's labels and resources, each jaxtune process with 2 CPU devices)
runs a 4-cell tiny grid while the test preempts one slice (removes its host 0), kills one host's process of another
cell (a failure: retried from the small budget) and starts a second driver mid-way. Every cell trains once (the
preempted one resumes from its checkpoint on the other slice) and the report equals the serial sweep's, item for
item."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from compile_level import CPU_SLICE, xla_flags  # noqa: E402  (tests/ is on sys.path: the rootdir conftest)
from ray.cluster_utils import Cluster  # noqa: E402

from jaxtune.demo.abilities import write_demo_dataset  # noqa: E402
from jaxtune.study.grid import ALREADY_DONE  # noqa: E402

pytestmark = pytest.mark.long  # minutes: scheduled first (tests/conftest.py)

REPO = Path(__file__).resolve().parents[2]
SLICE = "v5p-16"
MODELS = ("t1", "t2", "t3", "t4")


def _write_grid(tmp_path: Path, name: str, run_dir: Path, extra: str) -> Path:
    path = tmp_path / name
    path.write_text(
        f"""
sweep:
  run_dir: {run_dir}
  models:
    t1: {{config: tiny.yaml, eval_accelerator: {SLICE}, overrides: [checkpoint.save_every=2]}}
    t2: tiny.yaml
    t3: tiny.yaml
    t4: tiny.yaml
  data_types: [maximum]
  eval_epochs: last
  suites: [doit]
{extra}""",
        encoding="utf-8",
    )
    return path


def _grids(tmp_path: Path) -> tuple[Path, Path]:
    """The same 4 cells twice: for the serial sweep and for Ray (t1 evaluates in tasks of its own)."""
    data = write_demo_dataset(tmp_path / "data", per_ability=6, eval_per_ability=1, synthetic=20)
    (tmp_path / "tiny.yaml").write_text(
        f"""
model: {{vocab_size: 1004, hidden_size: 32, intermediate_size: 64, num_layers: 1, num_heads: 2,
         max_position_embeddings: 128, param_dtype: float32, compute_dtype: float32}}
data: {{format: doit, path: {data}, tokenizer: {REPO / "jaxtune" / "demo" / "tokenizer"}, template: doit, max_len: 64}}
optim: {{learning_rate: 1.0e-3}}
train: {{global_batch_size: 8, epochs: 2, log_every: 1, compilation_cache_dir: {tmp_path / "cache"},
        compilation_cache_min_secs: 0}}
checkpoint: {{save_every: null, max_to_keep: 2, async_save: false, keep_train_state_when_done: false}}
eval: {{data_dir: {data}, split: test, batch_size: 16, max_new_tokens: 2, max_prompt_len: 128}}
""",
        encoding="utf-8",
    )
    serial = _write_grid(tmp_path, "serial.yaml", tmp_path / "serial", "")
    on_ray = _write_grid(
        tmp_path,
        "ray.yaml",
        tmp_path / "ray",
        f"  backend: ray\n  accelerator: {SLICE}\n  max_failures: 2\n  stop_grace_s: 5\n",
    )
    return serial, on_ray


def _cluster() -> tuple[Cluster, dict]:
    """A head with no CPUs and two slices of two hosts: worker 0 holds TPU-v5p-16-head, both the slice's name."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    hosts = {}
    for name in ("slice-a", "slice-b"):
        for worker in (0, 1):
            resources = {name: 1, **({f"TPU-{SLICE}-head": 1} if worker == 0 else {})}
            labels = {"ray.io/tpu-slice-name": name, "ray.io/tpu-worker-id": str(worker)}
            hosts[name, worker] = cluster.add_node(num_cpus=1, resources=resources, labels=labels, wait=False)
    cluster.wait_for_nodes()
    return cluster, hosts


def _events(run_dir: Path) -> list[dict]:
    out = []
    for path in sorted((run_dir / "ray_drivers").glob("*.events.jsonl")):
        driver = path.name.split(".")[0]
        out += [{**json.loads(line), "driver": driver} for line in path.read_text(encoding="utf-8").splitlines()]
    return sorted(out, key=lambda e: e["time"])


def _host_pids(cell: str, process_id: int) -> list[int]:
    """Pids of jaxtune processes running ``cell`` as mesh.process_id=``process_id`` (from /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cell.encode() in argv and f"mesh.process_id={process_id}".encode() in argv:
            pids.append(int(proc.name))
    return pids


def _driver(grid: Path, address: str, log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "jaxtune.cli", "sweep", str(grid), "--ray", address],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
    )


def _items(run_dir: Path, model: str) -> list[dict]:
    path = run_dir / model / "maximum" / "eval" / "epoch-2" / "doit-test.items.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _same_item(ours: dict, theirs: dict) -> bool:
    """Every field equal; logits and perplexities (float lists) to 1e-5: 2 processes x 2 devices sum in another
    order than 1 x 2 (seen: differences of 1e-7)."""
    if ours.keys() != theirs.keys():
        return False
    for key, value in ours.items():
        if isinstance(value, list) and value and all(isinstance(v, float) for v in value):
            if value != pytest.approx(theirs[key], rel=1e-5):
                return False
        elif value != theirs[key]:
            return False
    return True


def _train_steps(run_dir: Path, model: str) -> list[int]:
    lines = (run_dir / model / "maximum" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r["step"] for r in map(json.loads, lines) if r.get("kind") == "train"]


class _Plot:
    """What the test does to the grid while it runs, in order: preempt, kill a host, start a second driver."""

    def __init__(self, cluster: Cluster, hosts: dict, on_ray: Path, address: str, tmp_path: Path, env: dict):
        self.cluster, self.hosts, self.on_ray, self.address, self.tmp, self.env = (
            cluster,
            hosts,
            on_ray,
            address,
            tmp_path,
            env,
        )
        self.run_dir = tmp_path / "ray"
        self.preempted: tuple[str, str] | None = None
        self.killed: str | None = None
        self.second: subprocess.Popen | None = None
        self.log: list[str] = []

    def step(self, started: float) -> None:
        events = _events(self.run_dir)
        running = {}
        for e in events:
            if e["event"] == "started":
                running[e["cell"]] = e["slice"]
            elif e["event"] in ("retry", "finished", "done", "failed"):
                running.pop(e["cell"], None)
        # Preempt t1's slice while it trains (t1 saves every 2 steps; its 2nd checkpoint goes once step 6 is saved).
        if self.preempted is None and "t1/maximum" in running:
            if (self.run_dir / "t1" / "maximum" / "checkpoints" / "2" / "commit_success.txt").is_file():
                slice_name = running["t1/maximum"]
                self.cluster.remove_node(self.hosts[slice_name, 0])
                self.preempted = ("t1", slice_name)
                self.log.append(f"{time.time() - started:6.1f}s test: removed host 0 of {slice_name} (t1/maximum)")
                return
        if self.killed is None and self.preempted and "t4/maximum" in running:
            pids = _host_pids("t4/maximum", 1)
            if pids:
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                self.killed = "t4/maximum"
                self.log.append(f"{time.time() - started:6.1f}s test: SIGKILL host 1 of t4/maximum (pid {pids})")
        if self.second is None and self.preempted and any(e["event"] == "done" for e in events):
            self.second = _driver(self.on_ray, self.address, self.tmp / "driver2.log", self.env)
            self.log.append(f"{time.time() - started:6.1f}s test: started a second driver")


@pytest.mark.timeout(600)
def test_a_grid_on_two_slices_survives_a_preemption_a_failure_and_a_second_driver(tmp_path, monkeypatch):
    serial, on_ray = _grids(tmp_path)
    env = {
        **os.environ,
        # tests/cpu_slice: the hosts of a slice share compilation-cache entries, as on TPU (see its sitecustomize)
        "PYTHONPATH": os.pathsep.join([str(REPO), CPU_SLICE]),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": xla_flags(2),
    }
    for key in ("PYTHONPATH", "JAX_PLATFORMS", "XLA_FLAGS"):
        monkeypatch.setenv(key, env[key])  # the Ray nodes (and so every host's jaxtune) inherit them
    started = time.time()
    reference = subprocess.Popen(
        [sys.executable, "-m", "jaxtune.cli", "sweep", str(serial)],
        stdout=(tmp_path / "serial.log").open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO,
    )
    cluster, hosts = _cluster()
    try:
        address = cluster.address
        first = _driver(on_ray, address, tmp_path / "driver1.log", env)
        plot = _Plot(cluster, hosts, on_ray, address, tmp_path, env)
        while first.poll() is None or (plot.second is not None and plot.second.poll() is None):
            plot.step(started)
            time.sleep(0.2)
            assert time.time() - started < 560, (tmp_path / "driver1.log").read_text()
        ray_wall = time.time() - started
    finally:
        cluster.shutdown()
        for proc in (reference, locals().get("first"), getattr(locals().get("plot"), "second", None)):
            if proc is not None and proc.poll() is None and proc is not reference:
                proc.kill()
    assert reference.wait(timeout=300) == 0, (tmp_path / "serial.log").read_text()[-3000:]
    logs = {n: (tmp_path / f"{n}.log").read_text() for n in ("driver1", "driver2") if (tmp_path / f"{n}.log").exists()}
    timeline = [
        f"{e['time'] - started:6.1f}s {e['driver']} {e['cell']} {e['phase']}: {e['event']} {e['slice']} {e['detail']}"
        for e in _events(tmp_path / "ray")
    ]
    print("\n".join(sorted(timeline + plot.log)), f"\nRay grid + serial reference: {ray_wall:.0f} s", sep="\n")
    print(logs["driver1"][-4000:])
    assert first.returncode == 0, logs["driver1"][-4000:]
    assert plot.preempted and plot.killed and plot.second, plot.log
    assert plot.second.returncode == 0, logs["driver2"][-4000:]
    events = _events(tmp_path / "ray")

    # The preempted cell: its slice lost (Ray's NodeDiedError), retried on the other slice, resumed there.
    model, lost_slice = plot.preempted
    cell = f"{model}/maximum"
    retries = [e for e in events if e["cell"] == cell and e["event"] == "retry"]
    assert any("slice lost" in e["detail"] for e in retries), retries
    later = [e for e in events if e["cell"] == cell and e["event"] == "started"][1:]
    assert later and all(e["slice"] != lost_slice for e in later), later
    finished = [e for e in events if e["cell"] == cell and e["event"] == "finished"]
    assert len(finished) == 1 and re.search(r"\(resumed from step [2-7]\)", finished[0]["detail"]), finished

    # The killed host: a failure (status -9), retried once from the small budget, then done.
    assert any(e["cell"] == "t4/maximum" and e["event"] == "retry" and "failed" in e["detail"] for e in events)

    # Every cell trained once (the preempted one's steps after its checkpoint aside) and each phase ended well once,
    # across both drivers; the second driver started nothing that the first was running.
    for m in MODELS:  # (metrics.jsonl drops the steps after the checkpoint a run resumes from)
        assert _train_steps(tmp_path / "ray", m) == list(range(1, 9)), m
    assert not any("resumed" in e["detail"] for e in events if e["cell"] != cell), events
    ended = [
        (e["cell"], e["detail"].split(" ")[0])
        for e in events
        if e["event"] in ("finished", "done") and ALREADY_DONE not in e["detail"]
    ]
    assert sorted(ended) == sorted({*ended}) and len(ended) == 5, ended  # t1: train then eval; 3 x all
    status = json.loads((tmp_path / "ray" / "sweep_status.json").read_text(encoding="utf-8"))
    assert {c["cell"]: c["state"] for c in status["cells"]} == {f"{m}/maximum": "done" for m in MODELS}

    # The report equals the serial sweep's, item for item.
    for m in MODELS:
        ours, theirs = _items(tmp_path / "ray", m), _items(tmp_path / "serial", m)
        assert len(ours) == len(theirs) == 10 and all(map(_same_item, ours, theirs)), m
    files = sorted(p.name for p in (tmp_path / "serial" / "report").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "ray" / "report").iterdir()) and "report.md" in files
    for name in files:
        ours, theirs = tmp_path / "ray" / "report" / name, tmp_path / "serial" / "report" / name
        assert ours.read_bytes() == theirs.read_bytes(), name


def _processes_with(marker: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if marker.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.timeout(120)
def test_a_cancelled_host_task_stops_its_whole_process_group():
    """What a slice task does to the other hosts when one fails: ray.cancel; the command and its children go. The
    node is started with SIGINT ignored (as from a background job of a script), which Ray's workers inherit: the
    task must listen to the cancel all the same."""
    from jaxtune.study.ray_tasks import host_task

    marker = f"{time.time():.6f}"  # a child's argument no other process has
    code = f"import subprocess, time; subprocess.Popen(['sleep', '300', '{marker}']); time.sleep(300)"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        ref = host_task.remote(["-c", code], {}, 2.0)
        deadline = time.time() + 60
        while len(_processes_with(marker)) < 2 and time.time() < deadline:  # the command and its sleep
            time.sleep(0.2)
        assert len(_processes_with(marker)) == 2
        started = time.time()
        ray.cancel(ref)
        with pytest.raises(ray.exceptions.TaskCancelledError):
            ray.get(ref, timeout=30)
        assert time.time() - started < 10
        deadline = time.time() + 10
        while _processes_with(marker) and time.time() < deadline:
            time.sleep(0.2)
        assert _processes_with(marker) == []
    finally:
        ray.shutdown()
