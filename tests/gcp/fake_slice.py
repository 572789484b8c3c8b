"""A stand-in ``gcloud`` (tests only, installed on PATH by :func:`install`) that emulates Cloud TPU VM slices on this
machine, faithfully enough that what would break on a real slice breaks here too.

Each worker of a slice is a folder, its "local disk" (``DIR/NAME/w<i>/home``, the worker's ``~``), and the processes
started there. ``gcp/tpu.sh setup`` copies the checkout to every worker for real (``scp`` + ``tar``) and runs
``scripts/setup.sh``; the worker's image provides ``python3.11``, whose ``-m venv`` makes a ``.venv`` over this
test's interpreter (its packages stand for the pinned install; ``pip`` is a no-op there) with a ``jaxtune`` entry
point running the worker's own copy of the package. ``ssh --worker=all --command=C`` runs ``bash -c C`` on every
worker at once, in its home, with the environment a TPU VM gives: no cluster variables (no
``JAX_COORDINATOR_ADDRESS``, ``TPU_WORKER_HOSTNAMES``, SLURM or Open MPI), ``JAX_PLATFORMS=cpu`` and 4 CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=4``), ``hostname`` answering ``NAME-w-<i>``; the bucket (the GCS
emulator's settings) is reachable from every worker, as a real slice's service account reaches the bucket.

On a real slice ``jax.distributed.initialize()`` finds the coordinator (worker 0), the process count and this
worker's index in the TPU metadata. CPU devices have no such detection, so the worker's ``jaxtune`` entry point
stands in for it: for ``train`` and ``sweep`` it appends ``mesh.coordinator_address=127.0.0.1:PORT
mesh.num_processes=N mesh.process_id=I`` (PORT fresh for each ``ssh``, as each slice has its own worker 0), which
is the explicit path of :func:`jaxtune.sharding.initialize_distributed`. Nothing else is injected.

State (``DIR/state.json``): ``{"nodes": {NAME: {"state", "accelerator", "workers"}}, "starts": {NAME: N}}``; every
call's argv is appended to ``DIR/calls.jsonl``. A job start is an ``ssh`` whose command holds ``setsid`` and
``job.pid`` (``gcp/tpu.sh run``); the starts on a slice NAME are numbered (1, 2, ...) across its lives.

The fault plan (``FAKE_SLICE_PLAN``, a JSON file) is a list of faults, each fired once during the job start it
names, by a watcher process the fake starts with that job::

    {"start": 2, "when": {"after_s": 1.5}, "do": "preempt"}
    {"start": 2, "when": {"phase": "compiling", "run_dir": "gs://b/run"}, "do": "preempt"}
    {"start": 3, "when": {"saving": "gs://b/run"}, "do": "preempt"}    a step folder without its commit marker
    {"start": 3, "when": {"exists": "gs://b/run/completed.json"}, "do": "preempt"}
    {"start": 4, "when": {"step": 5, "run_dir": "gs://b/run"}, "do": "hang", "worker": 1}
    {"start": 5, "when": {"step": 7, "run_dir": "gs://b/run"}, "do": "fail", "worker": 0}

``preempt``: state STOPPING, SIGTERM to every process of every worker, ``FAKE_SLICE_GRACE`` seconds (default 5),
SIGKILL, the workers' local disks wiped, state PREEMPTED. ``hang``: SIGSTOP to the job's process group on one
worker. ``fail``: the worker's ``jaxtune`` ends its command and exits 1 (what a crash looks like to a supervisor).
``step`` (at least) and ``phase`` read RUN_DIR/heartbeat.json (written since the watcher started); conditions in one ``when`` must all
hold. Which processes belong to a worker is known by an environment tag every
process started there inherits (``FAKE_SLICE_TAG``), as everything on a VM dies with it.

Run as ``python fake_slice.py cleanup DIR`` to kill every process a test's slices left.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: run as the stand-in gcloud too
from compile_level import CPU_SLICE, xla_flags  # noqa: E402

CLUSTER_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "PYTHONPATH")
CLUSTER_PREFIXES = ("SLURM_", "OMPI_", "PMI_")
WATCH_LIMIT_S = 600
TICK_S = 0.1  # a save to the emulator takes a second or more; steps between saves are what the plans wait for

# The worker image's python3.11: `-m venv .venv` makes the venv described in the module docstring.
PYTHON311 = """#!/usr/bin/env bash
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin"
  printf '#!/usr/bin/env bash\\nif [ "$1 $2" = "-m pip" ]; then echo "(emulated image: the pinned packages are installed)"; exit 0; fi\\nPYTHONPATH="$HOME/jaxtune" exec %(python)s "$@"\\n' > "$3/bin/python"
  printf '#!%(python)s\\nimport runpy, sys; sys.argv[0] = "entry"; runpy.run_path("%(entry)s", run_name="__main__")\\n' > "$3/bin/jaxtune"
  chmod +x "$3/bin/python" "$3/bin/jaxtune"
  exit 0
fi
exec %(python)s "$@"
"""

# The worker's `jaxtune` entry point (run by .venv/bin/jaxtune): the coordinator settings TPU detection would find,
# then the real command as a child; SIGUSR1 (the plan's "fail") ends the child and exits 1.
ENTRY = """import os, signal, subprocess, sys
args = sys.argv[1:]
if args and args[0] in ("train", "sweep"):
    args += ["mesh.coordinator_address=" + os.environ["FAKE_SLICE_COORDINATOR"],
             "mesh.num_processes=" + os.environ["FAKE_SLICE_WORKERS"], "mesh.process_id=" + os.environ["FAKE_SLICE_WORKER"]]
# tests/cpu_slice: the workers share compilation-cache entries, as a TPU slice's do (see its sitecustomize).
env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.expanduser("~/jaxtune"), %(cpu_slice)r]))
child = subprocess.Popen([%(python)r, "-m", "jaxtune.cli", *args], env=env)
with open(os.path.expanduser("~/.entry.pid"), "w") as f:
    f.write(str(os.getpid()))
def crash(*_):  # no child.wait() here: the interrupted wait() holds its lock
    os.kill(child.pid, signal.SIGKILL)
    print("(emulated crash: exit 1)", flush=True)
    os._exit(1)
signal.signal(signal.SIGUSR1, crash)
signal.signal(signal.SIGTERM, lambda *_: None)  # the job's process group gets it: the child too
rc = child.wait()
sys.exit(rc if rc >= 0 else 128 - rc)
"""


def install(bin_dir: Path, state_dir: Path) -> dict[str, str]:
    """Write ``gcloud`` into ``bin_dir``; the environment variables that make it use ``state_dir``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(f'#!/usr/bin/env bash\nexec {sys.executable} {Path(__file__).resolve()} "$@"\n')
    gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SLICE_DIR": str(state_dir)}


# ---- state -------------------------------------------------------------------------------------------------------


class Slices:
    """The state file, read and written under an exclusive lock (the watchers change it too)."""

    def __init__(self, root: Path):
        self.root = root
        self.path = root / "state.json"

    @contextlib.contextmanager
    def locked(self):
        with open(self.root / "state.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = json.loads(self.path.read_text()) if self.path.exists() else {"nodes": {}, "starts": {}}
            yield state
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            os.replace(tmp, self.path)

    def home(self, name: str, worker: int) -> Path:
        return self.root / name / f"w{worker}" / "home"

    def image(self, name: str, worker: int) -> Path:
        """The worker's image (outside its local disk: survives a wipe)."""
        return self.root / name / f"w{worker}" / "image"

    def tag(self, name: str, worker: int) -> str:
        return f"{self.root}:{name}:{worker}"


def processes_tagged(prefix: str) -> list[int]:
    """Pids of processes whose FAKE_SLICE_TAG starts with ``prefix`` (zombies excluded)."""
    found, needle = [], b"FAKE_SLICE_TAG=" + prefix.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            status = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if status.rsplit(")", 1)[-1].split()[0] == "Z":
            continue
        if any(var.startswith(needle) for var in environ.split(b"\0")):
            found.append(int(entry))
    return found


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill_workers(slices: Slices, name: str, workers: int, grace: float) -> None:
    """SIGTERM to every process of every worker, ``grace`` seconds, SIGKILL to what is left."""
    prefix = f"{slices.root}:{name}:"
    signal_all(processes_tagged(prefix), signal.SIGTERM)
    signal_all(processes_tagged(prefix), signal.SIGCONT)
    deadline = time.monotonic() + grace
    while processes_tagged(prefix) and time.monotonic() < deadline:
        time.sleep(0.05)
    for _ in range(100):
        left = processes_tagged(prefix)
        if not left:
            return
        signal_all(left, signal.SIGKILL)
        time.sleep(0.05)


def wipe_disks(slices: Slices, name: str, workers: int) -> None:
    for w in range(workers):
        shutil.rmtree(slices.home(name, w), ignore_errors=True)
        slices.home(name, w).mkdir(parents=True)


def workers_of(accelerator: str) -> int:
    return int(os.environ.get("FAKE_SLICE_WORKERS", "2"))


# ---- gcloud compute tpus tpu-vm ----------------------------------------------------------------------------------


def opt(args: list[str], name: str):
    return next((a.split("=", 1)[1] for a in args if a.startswith(name + "=")), None)


def vm_create(slices: Slices, name: str, args: list[str]) -> int:
    accelerator = opt(args, "--accelerator-type") or "v5p-16"
    workers = workers_of(accelerator)
    with slices.locked() as state:
        if name in state["nodes"]:
            print(f"ERROR: (gcloud) {name} already exists", file=sys.stderr)
            return 1
        state["nodes"][name] = {"state": "READY", "accelerator": accelerator, "workers": workers}
    wipe_disks(slices, name, workers)
    for w in range(workers):
        image = slices.image(name, w) / "bin"
        image.mkdir(parents=True, exist_ok=True)
        (image / "hostname").write_text(f"#!/bin/sh\necho {name}-w-{w}\n")
        entry = slices.image(name, w) / "entry.py"
        entry.write_text(ENTRY % {"python": sys.executable, "cpu_slice": CPU_SLICE})
        (image / "python3.11").write_text(PYTHON311 % {"python": sys.executable, "entry": str(entry)})
        for tool in ("hostname", "python3.11"):
            (image / tool).chmod(0o755)
    return 0


def vm_delete(slices: Slices, name: str) -> int:
    with slices.locked() as state:
        node = state["nodes"].pop(name, None)
    if node is None:
        print(f"ERROR: (gcloud) NOT_FOUND: {name}", file=sys.stderr)
        return 1
    kill_workers(slices, name, node["workers"], grace=0)
    shutil.rmtree(slices.root / name, ignore_errors=True)
    return 0


def vm_describe(slices: Slices, name: str) -> int:
    with slices.locked() as state:
        node = state["nodes"].get(name)
    if node is None:
        print(f"ERROR: (gcloud) NOT_FOUND: {name}", file=sys.stderr)
        return 1
    print(node["state"])
    return 0


def targets(slices: Slices, name: str, args: list[str]) -> tuple[list[int], int]:
    with slices.locked() as state:
        node = state["nodes"].get(name)
    if node is None or node["state"] != "READY":
        print(f"ERROR: (gcloud) {name} is not reachable ({node and node['state']})", file=sys.stderr)
        return [], 0
    worker = opt(args, "--worker") or "0"
    return (list(range(node["workers"])) if worker == "all" else [int(worker)]), node["workers"]


def vm_scp(slices: Slices, args: list[str]) -> int:
    src, dest = [a for a in args[4:] if not a.startswith("--")][:2]
    name, remote = dest.split(":", 1)
    workers, _ = targets(slices, name, args)
    for w in workers:
        target = slices.home(name, w) / remote.removeprefix("~/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    return 0 if workers else 1


def worker_env(slices: Slices, name: str, worker: int, workers: int, coordinator: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in CLUSTER_VARIABLES and not k.startswith(CLUSTER_PREFIXES) and not k.startswith("FAKE_SLICE")
    }
    env.update(
        HOME=str(slices.home(name, worker)),
        PATH=f"{slices.image(name, worker) / 'bin'}:{os.environ['PATH']}",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=xla_flags(4),  # the device count of a worker; the suite's other flags kept
        FAKE_SLICE_TAG=slices.tag(name, worker),
        FAKE_SLICE_WORKER=str(worker),
        FAKE_SLICE_WORKERS=str(workers),
        FAKE_SLICE_COORDINATOR=coordinator,
    )
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_ssh(slices: Slices, name: str, args: list[str]) -> int:
    command = opt(args, "--command") or ""
    workers, count = targets(slices, name, args)
    if not workers:
        return 255
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            ["bash", "-c", command],
            cwd=slices.home(name, w),
            env=worker_env(slices, name, w, count, coordinator),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in workers
    ]
    rcs = []
    for proc in procs:
        out, err = proc.communicate()
        sys.stdout.write(out)
        sys.stderr.write(err)
        rcs.append(proc.returncode)
    if "setsid" in command and "job.pid" in command:
        start_watcher(slices, name)
    return max(rcs)


# ---- the fault plan ----------------------------------------------------------------------------------------------


def start_watcher(slices: Slices, name: str) -> None:
    with slices.locked() as state:
        state["starts"][name] = start = state["starts"].get(name, 0) + 1
    plan = os.environ.get("FAKE_SLICE_PLAN")
    faults = [f for f in json.loads(Path(plan).read_text()) if f["start"] == start] if plan else []
    if not faults:
        return
    env = {k: v for k, v in os.environ.items() if k != "FAKE_SLICE_TAG"}
    env["FAKE_SLICE_WATCHER"] = str(slices.root)
    with open(slices.root / "watch.log", "a") as log:
        subprocess.Popen(
            [sys.executable, __file__, "watch", str(slices.root), name, json.dumps(faults)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def gcs_get(url: str) -> bytes | None:
    """An object of the GCS emulator (STORAGE_EMULATOR_HOST) or a local file; None when missing."""
    if not url.startswith("gs://"):
        p = Path(url)
        return p.read_bytes() if p.exists() else None
    bucket, _, name = url[5:].partition("/")
    host = os.environ["STORAGE_EMULATOR_HOST"]
    try:
        with urllib.request.urlopen(
            f"{host}/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media", timeout=5
        ) as r:
            return r.read()
    except OSError:
        return None


def gcs_names(url: str) -> list[str]:
    """Object names under the folder ``url`` (relative to it)."""
    if not url.startswith("gs://"):
        root = Path(url)
        return [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()] if root.exists() else []
    bucket, _, prefix = url[5:].partition("/")
    prefix = prefix.rstrip("/") + "/"
    host, names, token = os.environ["STORAGE_EMULATOR_HOST"], [], None
    while True:
        query = {"prefix": prefix, **({"pageToken": token} if token else {})}
        try:
            with urllib.request.urlopen(f"{host}/storage/v1/b/{bucket}/o?{urllib.parse.urlencode(query)}") as r:
                page = json.loads(r.read())
        except OSError:
            return names
        names += [item["name"][len(prefix) :] for item in page.get("items", [])]
        token = page.get("nextPageToken")
        if not token:
            return names


def saving(run_dir: str) -> bool:
    """A checkpoint step folder with objects but without its commit marker: a save in progress."""
    steps: dict[str, bool] = {}
    for rel in gcs_names(run_dir.rstrip("/") + "/checkpoints"):
        step, _, rest = rel.partition("/")
        steps[step] = steps.get(step, False) or rest == "commit_success.txt"
    return any(not committed for committed in steps.values())


def triggered(when: dict, started: float, since: float) -> bool:
    if "after_s" in when and time.monotonic() - started < when["after_s"]:
        return False
    if "saving" in when and not saving(when["saving"]):
        return False
    if "exists" in when and gcs_get(when["exists"]) is None:
        return False
    if "step" in when or "phase" in when:
        beat = heartbeat(when["run_dir"], since)
        if beat is None or int(beat.get("step") or 0) < when.get("step", 0):
            return False
        return beat.get("phase") == when.get("phase", beat.get("phase"))
    return True


def heartbeat(run_dir: str, since: float) -> dict | None:
    """RUN_DIR/heartbeat.json when it was written after ``since`` (unix seconds), else None."""
    try:
        beat = json.loads(gcs_get(run_dir.rstrip("/") + "/heartbeat.json") or b"null")
        written = beat["time"]
        if isinstance(written, str):
            written = datetime.datetime.fromisoformat(written.replace("Z", "+00:00")).timestamp()
        return beat if float(written) >= since else None
    except (ValueError, KeyError, TypeError):
        return None


def fire(slices: Slices, name: str, fault: dict) -> None:
    with slices.locked() as state:
        node = state["nodes"].get(name)
        if node is None or node["state"] != "READY":
            return
        if fault["do"] == "preempt":
            node["state"] = "STOPPING"
    home = slices.home(name, fault.get("worker", 0))
    print(f"{time.strftime('%H:%M:%S')} start fault {fault}", flush=True)
    if fault["do"] == "preempt":
        kill_workers(slices, name, node["workers"], float(os.environ.get("FAKE_SLICE_GRACE", "5")))
        wipe_disks(slices, name, node["workers"])
        with slices.locked() as state:
            state["nodes"][name]["state"] = "PREEMPTED"
    elif fault["do"] == "hang":
        pgid = int((home / "jaxtune" / "logs" / "job.pid").read_text())
        os.killpg(pgid, signal.SIGSTOP)
    elif fault["do"] == "fail":
        os.kill(int((home / ".entry.pid").read_text()), signal.SIGUSR1)
    print(f"{time.strftime('%H:%M:%S')} fired {fault['do']}", flush=True)


def watch(root: Path, name: str, faults: list[dict]) -> None:
    slices, started, since = Slices(root), time.monotonic(), time.time()
    pending = list(faults)
    while pending and time.monotonic() - started < WATCH_LIMIT_S:
        for fault in list(pending):
            if triggered(fault["when"], started, since):
                fire(slices, name, fault)
                pending.remove(fault)
        time.sleep(TICK_S)


def cleanup(root: Path) -> None:
    """Kill every process of every slice under ``root`` and its watchers."""
    for _ in range(50):
        left = processes_tagged(f"{root}:") + [
            pid for pid in watchers(root) if pid != os.getpid() and pid != os.getppid()
        ]
        if not left:
            return
        signal_all(left, signal.SIGKILL)
        time.sleep(0.05)


def watchers(root: Path) -> list[int]:
    found, needle = [], f"FAKE_SLICE_WATCHER={root}".encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    found.append(int(entry))
    return found


def main(args: list[str]) -> int:
    if args[:1] == ["watch"]:
        watch(Path(args[1]), args[2], json.loads(args[3]))
        return 0
    if args[:1] == ["cleanup"]:
        cleanup(Path(args[1]))
        return 0
    slices = Slices(Path(os.environ["FAKE_SLICE_DIR"]))
    with open(slices.root / "calls.jsonl", "a") as f:
        f.write(json.dumps(args) + "\n")
    if args[:3] != ["compute", "tpus", "tpu-vm"] or len(args) < 5:
        print(f"ERROR: (fake gcloud) not emulated: {' '.join(args)}", file=sys.stderr)
        return 1
    verb, name = args[3], args[4]
    if verb == "create":
        return vm_create(slices, name, args)
    if verb == "delete":
        return vm_delete(slices, name)
    if verb == "describe":
        return vm_describe(slices, name)
    if verb == "scp":
        return vm_scp(slices, args)
    if verb == "ssh":
        return vm_ssh(slices, name, args)
    print(f"ERROR: (fake gcloud) not emulated: {verb}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
