"""One writer per run directory: the lease ``RUN_DIR/lock``.

``jaxtune train`` (and so each sweep cell) takes the lease before it writes anything into its run directory and
gives it back when it ends. The lock file is one JSON object::

    {"token": "4f0c...",            a random id of this holder (each launch draws a new one)
     "host": "worker-3", "pid": 1234,
     "command": "jaxtune train run.yaml optim.learning_rate=1e-4",
     "started_at": "2026-12-06T16:40:00Z",
     "heartbeat": 1796575200.5,     unix seconds of the last refresh (the holder's clock)
     "lease_timeout_s": 300.0}

Creation is atomic: locally ``open(O_CREAT | O_EXCL)``; on ``gs://`` an upload with the precondition
``ifGenerationMatch=0`` (the object must not exist). A background thread refreshes ``heartbeat`` every quarter of
``checkpoint.lease_timeout_s`` (on ``gs://`` as a compare-and-swap on the object's generation).

The takeover rule: a second writer refuses (a :class:`RunLeaseError`, exit 2, naming the owner and its heartbeat's
age) unless

- the heartbeat is older than ``checkpoint.lease_timeout_s`` (the holder is presumed dead or cut off), or
- the holder ran on this host and its pid no longer exists (a killed run: no need to wait), or
- ``checkpoint.force_takeover=true``;

then it takes the lease over (replacing the lock atomically: a rename aside locally, a generation-matched overwrite
on ``gs://``) and logs whose lease it took. A holder whose lease was taken notices at its next heartbeat and stops
before its next checkpoint (:meth:`RunLease.check`). A multi-host run takes the lease once, on process 0, before
any host writes.

``jaxtune eval --out`` and ``jaxtune export-hf`` writing into a run directory (:func:`enclosing_run_dir`: the output
or a folder above it holds ``lock``, ``heartbeat.json`` or ``completed.json``) hold the same lease while they write
(:func:`hold_enclosing_run_lease`), so they refuse in one line while a live training owns the run.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any, Callable, Iterator, Optional

from jaxtune.checkpoint.layout import COMPLETED_FILE, HEARTBEAT_FILE
from jaxtune.errors import JaxtuneError
from jaxtune.paths import PathLike, absolute_path, is_remote

LOCK_FILE = "lock"
HELD_RETRY_S = 10.0
"""Seconds for which a request on a held ``gs://`` lease (a heartbeat, the release) is retried, not
google-cloud-storage's 120 s: a store that is down must not hold up the exit of a run that stops because of it (a
heartbeat missed is written at the next one; a lock left behind is taken over once its holder's pid is gone)."""


class RunLeaseError(JaxtuneError):
    """The run directory is held by another writer (or cannot be used at all); the message names the owner."""


def describe(record: dict, now: Optional[float] = None) -> str:
    """``host H pid P (COMMAND, started T), heartbeat N s old`` for a lock record."""
    age = (now or time.time()) - float(record.get("heartbeat", 0))
    return (
        f"host {record.get('host')} pid {record.get('pid')} ({record.get('command')!r}, started "
        f"{record.get('started_at')}), heartbeat {age:.0f} s old"
    )


class _LocalLock:
    """The lock as a local file: O_EXCL creation, replacement by rename."""

    def __init__(self, path: str):
        self.path = path

    def read(self) -> Optional[tuple[dict, Any]]:
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        return _parse(text, self.path), text

    def create(self, text: str) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        return True

    def replace(self, version: Any, text: str) -> bool:
        """Write ``text`` if the lock still reads ``version`` (a refresh: only the holder writes, so the window
        between the check and the rename only matters against a takeover, which the holder then sees next time)."""
        current = self.read()
        if current is None or current[1] != version:
            return False
        tmp = f"{self.path}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, self.path)
        return True

    def take_over(self, version: Any, text: str) -> bool:
        """Move the stale lock aside (a rename: of two takers, one wins), check it was the one judged stale, then
        create ours exclusively."""
        aside = f"{self.path}.taken-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return self.create(text)
        with open(aside, encoding="utf-8") as f:
            moved = f.read()
        if moved != version:  # refreshed meanwhile: put it back (unless a new lock appeared) and refuse
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            os.unlink(aside)
            return False
        os.unlink(aside)
        return self.create(text)

    def delete(self, version: Any) -> None:
        current = self.read()
        if current is not None and current[1] == version:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


class _GcsLock:
    """The lock as a Cloud Storage object: every write carries a generation precondition (0: must not exist)."""

    def __init__(self, url: str):
        from google.cloud import storage

        bucket, _, name = url[len("gs://") :].partition("/")
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            client = storage.Client(project="jaxtune", credentials=AnonymousCredentials())
        else:
            client = storage.Client()
        self.url = url
        self.blob = client.bucket(bucket).blob(name)
        self.retry: Any = None
        """google-cloud-storage's retry of each request; None: its default (taking the lease waits for the store)."""

    def held(self) -> None:
        """From now on retry each request for :data:`HELD_RETRY_S` at most (less when ``checkpoint.store_retries``
        bounds google-cloud-storage's retries to less)."""
        from google.cloud.storage.retry import DEFAULT_RETRY

        self.retry = DEFAULT_RETRY.with_timeout(min(HELD_RETRY_S, DEFAULT_RETRY.timeout or HELD_RETRY_S))

    def _retry(self) -> dict:
        return {} if self.retry is None else {"retry": self.retry}

    def read(self) -> Optional[tuple[dict, Any]]:
        from google.api_core import exceptions

        try:
            text = self.blob.download_as_text(**self._retry())
        except exceptions.NotFound:
            return None
        return _parse(text, self.url), self.blob.generation

    def _upload(self, text: str, generation: int) -> bool:
        from google.api_core import exceptions

        try:
            self.blob.upload_from_string(
                text, content_type="application/json", if_generation_match=generation, **self._retry()
            )
        except exceptions.PreconditionFailed:
            return False
        return True

    def create(self, text: str) -> bool:
        return self._upload(text, 0)

    def replace(self, version: Any, text: str) -> bool:
        return self._upload(text, version)

    def take_over(self, version: Any, text: str) -> bool:
        return self._upload(text, version)

    def delete(self, version: Any) -> None:
        from google.api_core import exceptions

        with contextlib.suppress(exceptions.NotFound, exceptions.PreconditionFailed):
            self.blob.delete(if_generation_match=version, **self._retry())


def _parse(text: str, where: str) -> dict:
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict):  # a torn or foreign file: treat as a lease with no heartbeat
        return {"host": "?", "pid": "?", "command": f"unreadable {where}", "started_at": "?", "heartbeat": 0}
    return record


def _holder_is_dead(record: dict) -> bool:
    """Whether the holder ran on this host and its process is gone."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class RunLease:
    """The lease on one run directory (see the module docstring). ``acquire`` takes it or raises
    RunLeaseError; ``release`` gives it back; :meth:`check` raises once another writer took it over."""

    def __init__(
        self,
        run_dir: PathLike,
        *,
        timeout_s: float,
        force: bool = False,
        command: Optional[str] = None,
        log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
    ):
        self.run_dir = absolute_path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.timeout_s = float(timeout_s)
        self.force = force
        self.log = log
        self.record = {
            "token": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "command": command or " ".join(["jaxtune", *sys.argv[1:]])[:500],
            "started_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "heartbeat": time.time(),
            "lease_timeout_s": self.timeout_s,
        }
        self._store = _GcsLock(str(self.path)) if is_remote(self.path) else _LocalLock(os.fspath(self.path))
        self._version: Any = None
        self._lost: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    @property
    def token(self) -> str:
        """This holder's random id (also recorded with each checkpoint it saves)."""
        return self.record["token"]

    def _text(self) -> str:
        return json.dumps(self.record) + "\n"

    def acquire(self) -> "RunLease":
        if not is_remote(self.run_dir):  # an object store has no folders to make
            if self.run_dir.exists() and not self.run_dir.is_dir():
                raise RunLeaseError(f"run_dir {self.run_dir} is a file, not a folder: choose another run_dir")
            self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # a lock can vanish or change between the read and the write: look again
            self.record["heartbeat"] = time.time()
            if self._store.create(self._text()):
                self._took()
                return self
            current = self._store.read()
            if current is None:
                continue
            other, version = current
            age = time.time() - float(other.get("heartbeat", 0))
            why = (
                "checkpoint.force_takeover=true"
                if self.force
                else f"its heartbeat is older than checkpoint.lease_timeout_s={self.timeout_s:g}"
                if age > self.timeout_s
                else "its process no longer exists on this host"
                if _holder_is_dead(other)
                else None
            )
            if why is None:
                raise RunLeaseError(
                    f"{self.path}: the run directory is in use by {describe(other)} (checkpoint.lease_timeout_s="
                    f"{self.timeout_s:g}): wait for that run to end, or if it is dead, run again once its heartbeat "
                    f"is older than the timeout, or with checkpoint.force_takeover=true"
                )
            if self._store.take_over(version, self._text()):
                self.log(f"{self.path}: took over the lease of {describe(other)}: {why}")
                self._took()
                return self
        raise RunLeaseError(f"{self.path}: the lease changed hands repeatedly while taking it; another writer is busy")

    def _took(self) -> None:
        if isinstance(self._store, _GcsLock):
            self._store.held()
        current = self._store.read()
        self._version = current[1] if current else None
        interval = max(0.05, min(60.0, self.timeout_s / 4))
        self._thread = threading.Thread(target=self._beat, args=(interval,), name="jaxtune-lease", daemon=True)
        self._thread.start()

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.refresh()
            except Exception as e:  # noqa: BLE001 -- a store outage must not kill the heartbeat thread
                self.log(f"{self.path}: could not refresh the lease heartbeat: {type(e).__name__}: {e}")

    def refresh(self) -> None:
        """Write a new heartbeat; notes the loss of the lease if another writer took it over."""
        with self._lock:
            if self._lost is not None:
                return
            self.record["heartbeat"] = time.time()
            if not self._store.replace(self._version, self._text()):
                current = self._store.read()
                holder = describe(current[0]) if current else "nobody (the lock file was deleted)"
                self._lost = (
                    f"{self.path}: this run's lease on its run directory was taken over; it is now held by {holder}"
                )
                return
            current = self._store.read()
            self._version = current[1] if current else None

    def held(self) -> bool:
        """False once another writer took the lease over (seen at a heartbeat)."""
        return self._lost is None

    def check(self) -> None:
        """Raise RunLeaseError if another writer took the lease over (called before each checkpoint)."""
        if self._lost is not None:
            raise RunLeaseError(f"{self._lost}: stopping without writing further checkpoints")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            if self._lost is None and self._version is not None:
                with contextlib.suppress(Exception):
                    self._store.delete(self._version)


@contextlib.contextmanager
def hold_run_lease(run_dir: PathLike, checkpoint_cfg: Any, command: Optional[str] = None) -> Iterator[Any]:
    """Hold the lease of ``run_dir`` for the block (process 0 takes it for every host; the others get None).

    checkpoint_cfg: the checkpoint section (lease_timeout_s, force_takeover). Every process must enter together."""
    import jax

    lease, error = None, None
    if jax.process_index() == 0:
        lease = RunLease(
            run_dir, timeout_s=checkpoint_cfg.lease_timeout_s, force=checkpoint_cfg.force_takeover, command=command
        )
        try:
            lease.acquire()
        except RunLeaseError as e:
            lease, error = None, e
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        held = multihost_utils.broadcast_one_to_all(np.asarray(error is None, np.int32))
        if not bool(held) and error is None:
            error = RunLeaseError(f"{run_dir}: process 0 could not take the run directory's lease (see its log)")
    if error is not None:
        raise error
    try:
        yield lease
    finally:
        if lease is not None:
            lease.release()


RUN_MARKERS = (LOCK_FILE, HEARTBEAT_FILE, COMPLETED_FILE)
"""Files of which any one marks a folder as a run directory (a live lease, a run's heartbeat, a finished run)."""


def enclosing_run_dir(path: PathLike) -> Optional[Any]:
    """The run directory ``path`` lies in (itself or the nearest folder above it holding one of
    :data:`RUN_MARKERS`), or None."""
    folder = absolute_path(path)
    while True:
        if any((folder / marker).exists() for marker in RUN_MARKERS):
            return folder
        parent = folder.parent
        if parent == folder or (is_remote(folder) and "/" not in str(parent)[len("gs://") :]):
            return None  # the file system's root, or an object store's bucket
        folder = parent


@contextlib.contextmanager
def hold_enclosing_run_lease(out: PathLike, checkpoint_cfg: Any, command: str) -> Iterator[Any]:
    """Hold the lease of the run directory that ``out`` writes into (:func:`enclosing_run_dir`) for the block, as
    :func:`hold_run_lease` does; nothing to hold (None) when ``out`` lies in no run directory."""
    run_dir = enclosing_run_dir(out)
    if run_dir is None:
        yield None
        return
    with hold_run_lease(run_dir, checkpoint_cfg, command=command) as lease:
        yield lease
