"""Which model a server serves: its checkpoint's content hash, its name, and its chat template.

- The content hash is the SHA-256 of every file of the checkpoint folder in sorted relative-path order, each as
  ``path NUL bytes NUL size NUL`` (read in 1 MiB chunks) (so a renamed, moved or changed file changes it, and a copy elsewhere keeps it).
- The served model's name (OpenAI's ``model`` id) is ``PATH@sha256:HASH12``: the checkpoint's path as given and
  the first 12 hex digits of its hash. Requests may name the model by that id or by the path alone.
- The template: ``eval.template`` when given on the command line, else the ``data.template`` of the run the
  checkpoint belongs to (``RUN_DIR/config.yaml`` above ``RUN_DIR/epochs/N`` or ``RUN_DIR/checkpoints/STEP``), else
  ``hf_chat`` for a Hugging Face folder carrying a chat template, else the eval default.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import yaml

from jaxtune.paths import as_path

CHUNK = 1 << 20


def _files(folder) -> list:
    """Every file under ``folder`` (listed folder by folder: object stores refuse a recursive glob)."""
    out = []
    for p in folder.iterdir():
        out.extend(_files(p) if p.is_dir() else [p])
    return out


def checkpoint_sha256(checkpoint: str | Path) -> str:
    """The content hash of a checkpoint folder (see the module docstring)."""
    root = as_path(checkpoint)
    files = sorted(_files(root), key=lambda p: str(p.relative_to(root)))
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode("utf-8") + b"\0")
        size = 0
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
        digest.update(b"\0" + str(size).encode() + b"\0")
    return digest.hexdigest()


def model_id(checkpoint: str | Path, sha256: str) -> str:
    """The served model's name: ``PATH@sha256:HASH12``."""
    return f"{checkpoint}@sha256:{sha256[:12]}"


def checkpoint_template(checkpoint: str | Path) -> Optional[str]:
    """The chat template the checkpoint was trained with, when its run says so (None otherwise)."""
    root = as_path(checkpoint)
    run_config = root.parent.parent / "config.yaml"
    if root.parent.name in ("epochs", "checkpoints") and run_config.is_file():
        data = yaml.safe_load(run_config.read_text()) or {}
        template = (data.get("data") or {}).get("template")
        if template:
            return str(template)
    if (root / "config.json").is_file() and any(
        (root / name).is_file() for name in ("chat_template.jinja", "chat_template.json")
    ):
        return "hf_chat"
    return None
