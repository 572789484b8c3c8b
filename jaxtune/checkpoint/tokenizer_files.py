"""The ``tokenizer/`` folder of a checkpoint (see :mod:`jaxtune.checkpoint.layout`): which tokenizer files travel
with the parameters, and ``added_tokens.json``, the ``{token: id}`` map of special tokens added on top of the
vocabulary (DoIT's role tokens), which export-hf writes into the Hugging Face tokenizer files."""

from __future__ import annotations

import json
from typing import Mapping, Optional

from etils import epath

from jaxtune.checkpoint.errors import CheckpointError
from jaxtune.checkpoint.layout import ADDED_TOKENS_FILE, TOKENIZER_DIR, TOKENIZER_FILE_NAMES
from jaxtune.paths import PathLike, as_path, copy_file, is_remote, local_copy, write_text_atomic


def copy_tokenizer_files(src: PathLike, dst: PathLike) -> list[str]:
    """Copy the tokenizer files of ``src`` (a folder, or a SentencePiece ``.model`` file) into ``dst``."""
    src, dst = as_path(src), as_path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    if src.is_file():
        if src.suffix != ".model":
            raise CheckpointError(f"{src}: expected a tokenizer folder or a SentencePiece .model file")
        copy_file(src, dst / "tokenizer.model")
        return ["tokenizer.model"]
    if not src.is_dir():
        raise CheckpointError(f"{src}: no such tokenizer folder or file")
    copied = [name for name in TOKENIZER_FILE_NAMES if (src / name).is_file()]
    if not copied:
        raise CheckpointError(f"{src}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILE_NAMES)})")
    for name in copied:
        copy_file(src / name, dst / name)
    return copied


def read_added_tokens(directory: PathLike) -> dict[str, int]:
    """The {token: id} map of ``added_tokens.json`` in a tokenizer folder (empty when absent)."""
    path = as_path(directory) / ADDED_TOKENS_FILE
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(values, dict) or not all(isinstance(v, int) for v in values.values()):
        raise CheckpointError(f"{path}: expected an object mapping token strings to integer ids")
    return dict(values)


def write_added_tokens(directory: PathLike, added: Mapping[str, int]) -> None:
    """Merge ``added`` into the folder's ``added_tokens.json``; a token or an id recorded differently is an error."""
    merged = read_added_tokens(directory)
    for token, token_id in added.items():
        if token in merged and merged[token] != token_id:
            raise CheckpointError(f"{directory}: token {token!r} already has id {merged[token]}, not {token_id}")
        merged[token] = int(token_id)
    ids = list(merged.values())
    if len(set(ids)) != len(ids):
        raise CheckpointError(f"{directory}: added tokens share ids: {merged}")
    write_text_atomic(as_path(directory) / ADDED_TOKENS_FILE, json.dumps(merged, ensure_ascii=False, indent=2) + "\n")


def tokenizer_path(path: PathLike) -> Optional[epath.Path]:
    """The checkpoint's ``tokenizer/`` folder, or None when it carries none; from an object store, a local copy
    (SentencePiece and transformers read local files only)."""
    d = as_path(path) / TOKENIZER_DIR
    if not d.is_dir():
        return None
    return local_copy(d) if is_remote(d) else d
