"""User paths that may be local or in an object store (``gs://bucket/...``, ``s3://...``), through etils' epath.

Every file jaxtune writes or reads at a user-given location goes through :func:`as_path`: a local path becomes an
``epath.Path`` with pathlib semantics, a URL stays a URL (``pathlib.Path("gs://b/run")`` would silently turn
into the local folder ``gs:/b/run``). epath reaches Google Cloud Storage with gcsfs (fsspec), and Orbax writes
arrays there with tensorstore, so no gcsfuse mount is needed.

Object stores have no append, no rename and no empty folders: :func:`append_text` rewrites the object,
:func:`write_text_atomic` writes it in one upload (an object appears whole or not at all), and folders exist once
they hold an object.

Pointing the stack at a GCS emulator (tests): ``STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT`` (gcsfs and
google-cloud-storage), ``FSSPEC_GS_TOKEN=anon`` (gcsfs without credentials), ``TENSORSTORE_GCS_HTTP_URL=
http://127.0.0.1:PORT`` (Orbax's array store) and ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` (otherwise gcsfs
first probes each bucket's storage layout over gRPC/TLS, which an emulator never answers: a 60 s timeout per bucket).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from typing import Iterator, Union

from etils import epath

from jaxtune.errors import JaxtuneError

PathLike = Union[str, os.PathLike]

log = logging.getLogger(__name__)

PARTIAL_GRACE_S = 3600.0
"""Age after which a ``.NAME.partial-XXXXXXXX`` folder left by a killed :func:`staged_folder` is removed by the next
write of NAME (a younger one may belong to a writer still at work)."""

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: PathLike) -> bool:
    """Whether ``path`` names an object store location (``scheme://...``) rather than a local file."""
    return bool(_URL.match(os.fspath(path)))


def as_path(path: PathLike) -> epath.Path:
    """An ``epath.Path`` for a user path (local, as given, or a URL)."""
    if isinstance(path, epath.Path):
        return path
    return epath.Path(os.fspath(path))


def absolute_path(path: PathLike) -> epath.Path:
    """:func:`as_path`, with a local path made absolute (Orbax and multi-process runs need absolute ones)."""
    if is_remote(path):
        return as_path(path)
    return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` so that readers see the old file or the new one, never a torn one."""
    path = as_path(path)
    if is_remote(path):
        path.write_text(text, encoding="utf-8")  # one upload: an object is replaced whole
        return
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(os.fspath(tmp), os.fspath(path))


def append_text(path: PathLike, text: str) -> None:
    """Append ``text`` to a file (an object store has no append: the object is rewritten with ``text`` added)."""
    path = as_path(path)
    if is_remote(path):
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        path.write_text(old + text, encoding="utf-8")
        return
    with open(os.fspath(path), "a", encoding="utf-8") as f:
        f.write(text)


def copy_file(src: PathLike, dst: PathLike) -> None:
    """Copy one file between any two locations (local or object store), streaming (a weights shard never has to
    fit in memory)."""
    dst = as_path(dst)
    if not is_remote(dst):
        dst.parent.mkdir(parents=True, exist_ok=True)
    with as_path(src).open("rb") as reader, dst.open("wb") as writer:
        shutil.copyfileobj(reader, writer, 64 * 2**20)


def local_path(path: PathLike) -> str:
    """``path`` as a local file name for libraries that only open local files; a URL is an error naming it."""
    if is_remote(path):
        raise JaxtuneError(
            f"{os.fspath(path)}: this path must be local (or on a gcsfuse mount of the bucket), not an object store URL"
        )
    return os.fspath(as_path(path))


def local_copy(folder: PathLike) -> epath.Path:
    """A local temporary copy of a folder's files (not its subfolders), for readers of local files only."""
    folder = as_path(folder)
    dst = epath.Path(tempfile.mkdtemp(prefix="jaxtune-"))
    for item in folder.iterdir():
        if item.is_file():
            copy_file(item, dst / item.name)
    return dst


def _last_modified(folder: str) -> float:
    """The newest modification time of a folder and everything in it (a shard being written changes only its own)."""
    newest = os.stat(folder).st_mtime
    for root, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                newest = max(newest, os.stat(os.path.join(root, name)).st_mtime)
    return newest


def remove_leftover_stages(dst: PathLike, grace_s: float = PARTIAL_GRACE_S) -> list[str]:
    """Remove the ``.NAME.partial-*`` siblings of the local folder ``dst`` that a killed :func:`staged_folder` left,
    those last modified more than ``grace_s`` seconds ago (0: every one, for a writer that holds the destination's
    lease), with a log line each; returns their paths."""
    dst = absolute_path(dst)
    removed = []
    prefix = f".{dst.name}.partial-"
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(os.fspath(dst.parent)):
            if not entry.name.startswith(prefix) or not entry.is_dir(follow_symlinks=False):
                continue
            age = time.time() - _last_modified(entry.path)
            if age < grace_s:
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            log.warning("removed %s, left by an interrupted write of %s (%.0f s old)", entry.path, dst, age)
            removed.append(entry.path)
    return removed


@contextlib.contextmanager
def staged_folder(dst: PathLike, partial_grace_s: float = PARTIAL_GRACE_S) -> Iterator[str]:
    """A local folder to write ``dst``'s files into, for writers of local files only (safetensors, transformers'
    ``save_pretrained``); ``dst`` appears complete or not at all, replacing what was there, once the block ends
    without error (an error or a kill leaves ``dst`` as it was).

    Local: a sibling ``.NAME.partial-XXXXXXXX`` renamed to ``dst`` last (a kill leaves only that, named partial;
    such leftovers older than ``partial_grace_s`` are removed first: :func:`remove_leftover_stages`).
    Object store (no renames): a local temporary folder (needs local disk for it) whose files are uploaded once the
    block ends, ``config.json`` last, so a folder cut short by a kill has no config and loads nowhere."""
    if not is_remote(dst):
        dst = absolute_path(dst)
        dst.parent.mkdir(parents=True, exist_ok=True)
        remove_leftover_stages(dst, partial_grace_s)
        stage = os.fspath(dst.parent / f".{dst.name}.partial-{uuid.uuid4().hex[:8]}")
        os.mkdir(stage)
        try:
            yield stage
            if dst.is_dir():
                dst.rmtree()
            elif dst.exists():
                dst.unlink()
            os.rename(stage, os.fspath(dst))
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return
    stage = tempfile.mkdtemp(prefix="jaxtune-stage-")
    try:
        yield stage
        dst = as_path(dst)
        if dst.exists():
            dst.rmtree()
        files = [os.path.relpath(os.path.join(root, n), stage) for root, _, names in os.walk(stage) for n in names]
        for rel in sorted(files, key=lambda rel: rel == "config.json"):  # the file that makes a folder loadable
            copy_file(os.path.join(stage, rel), dst / rel)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def canonical_path(path: PathLike) -> epath.Path:
    """One spelling per file, to recognise duplicates: a local path resolved (symlinks too), a URL as it is."""
    if is_remote(path):
        return as_path(path)
    return epath.Path(os.path.realpath(os.fspath(path)))


def files_under(folder: PathLike, suffix: str) -> list[epath.Path]:
    """Files under ``folder`` (recursively) whose names end with ``suffix``, sorted (epath has no ``rglob``, and
    its ``walk`` on gs:// yields folders without their ``gs://``)."""
    found, folders = [], [as_path(folder)]
    while folders:
        for item in folders.pop().iterdir():
            if item.is_dir():
                folders.append(item)
            elif item.name.endswith(suffix):
                found.append(item)
    return sorted(found, key=str)
