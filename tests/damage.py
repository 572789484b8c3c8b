"""Ways a checkpoint folder gets damaged on disk (a kill mid-copy, a full disk, a bad sector), for the restore
tests: each takes the folder of an Orbax item (params/ or train_state/) or of a whole step."""

from __future__ import annotations

import os
from pathlib import Path


def _data_files(item: Path) -> list[Path]:
    item = Path(os.fspath(item))  # a local epath from jaxtune's path helpers: walk it with pathlib
    return [p for p in item.rglob("*") if p.is_file() and p.parent.name == "d"]


def _largest_data_file(item: Path) -> Path:
    return max(_data_files(item), key=lambda p: p.stat().st_size)


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def truncate_data_file(item: Path) -> None:
    # Every array data file (the per-process databases' d/ files; the item's own d/ holds the merged index) loses its
    # second half: with only the largest one cut, a full-suite run once restored the step anyway, and the fallback
    # went untested.
    files = _data_files(item)
    arrays = [p for p in files if p.parent.parent.name.startswith("ocdbt.process")]
    for path in arrays or files:
        _cut(path)


def delete_data_file(item: Path) -> None:
    _largest_data_file(item).unlink()


def cut_manifest(item: Path) -> None:
    _cut(item / "manifest.ocdbt")


def delete_manifest(item: Path) -> None:
    (item / "manifest.ocdbt").unlink()


def delete_metadata(item: Path) -> None:
    (item / "_METADATA").unlink()


def cut_metadata(item: Path) -> None:
    _cut(item / "_METADATA")


DAMAGES = {
    "data-file-truncated": truncate_data_file,
    "data-file-deleted": delete_data_file,
    "manifest-cut": cut_manifest,
    "manifest-deleted": delete_manifest,
    "metadata-deleted": delete_metadata,
    "metadata-cut": cut_metadata,
}
"""name -> damage(item folder)."""
