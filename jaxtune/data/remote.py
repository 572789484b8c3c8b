"""Local copies of object-store inputs whose readers take local files only (SentencePiece and transformers
tokenizers, the evaluation suites' readers, Hugging Face weights for ``import-hf``), fetched once per host and
reused by later runs.

``data.tokenizer``, ``eval.tokenizer``, ``eval.data_dir`` and ``import-hf``'s input folder may be ``gs://`` (any
fsspec URL): :func:`local_input` returns a local path holding the same files. The cache lives in
``$JAXTUNE_CACHE_DIR`` (default ``~/.cache/jaxtune/gcs``)::

    CACHE/<key>/<name>    a copy of the file or folder (its whole tree) named <name> at the URL
    CACHE/.tmp-<uuid>/    a copy being fetched: renamed to <key> once complete, so a killed fetch leaves no entry

``<key>`` hashes the URL with the (name, generation, size) of every object under it (GCS's ``generation``
changes on every overwrite; other stores: their ``ETag`` or modification time): a changed object gives a new
key and a new fetch, an unchanged one none (one listing per call, no download). Processes of one host that fetch
at once each write their own temporary copy; the first rename wins, the others drop theirs. Old entries are never
deleted (remove the folder to reclaim the space).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Union

from jaxtune.paths import is_remote

CACHE_ENV = "JAXTUNE_CACHE_DIR"
DEFAULT_CACHE_DIR = "~/.cache/jaxtune/gcs"


def cache_dir() -> Path:
    """Where fetched copies are kept: ``$JAXTUNE_CACHE_DIR``, default ``~/.cache/jaxtune/gcs``."""
    return Path(os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR))


def _version(info: dict[str, Any]) -> str:
    for field in ("generation", "ETag", "etag", "mtime", "LastModified", "updated"):
        if info.get(field) is not None:
            return f"{field}={info[field]}"
    return ""


def local_input(path: Union[str, os.PathLike]) -> Path:
    """A local path for ``path``: itself when local; for a URL, the cached copy of that file or folder (fetched
    now when it is not cached yet or the objects changed). A URL that names nothing raises FileNotFoundError."""
    text = os.fspath(path)
    if not is_remote(text):
        return Path(text)
    import fsspec

    fs, root = fsspec.core.url_to_fs(text.rstrip("/"))
    objects = {
        name: info for name, info in fs.find(root, detail=True, withdirs=False).items() if not name.endswith("/")
    }
    if not objects:
        raise FileNotFoundError(f"{text}: no such file or folder")
    single = set(objects) == {root}
    listing = sorted((name, _version(info), info.get("size")) for name, info in objects.items())
    key = hashlib.sha256(json.dumps([text.rstrip("/"), listing]).encode()).hexdigest()[:24]
    name = root.rsplit("/", 1)[-1]
    entry = cache_dir() / key
    if not entry.is_dir():
        _fetch(fs, root, objects, single, entry, name)
    return entry / name


def _fetch(fs: Any, root: str, objects: dict, single: bool, entry: Path, name: str) -> None:
    """Copy the objects into a temporary folder beside ``entry``, then rename it to ``entry`` (atomic)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    stage = entry.parent / f".tmp-{uuid.uuid4().hex}"
    try:
        for obj in objects:
            rel = name if single else os.path.join(name, os.path.relpath(obj, root))
            dst = stage / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(obj, os.fspath(dst))
        try:
            os.rename(stage, entry)
        except OSError:
            if not entry.is_dir():  # not another process's copy that got there first
                raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
