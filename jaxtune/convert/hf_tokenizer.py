"""Tokenizer files for Hugging Face folders: what ``transformers.AutoTokenizer.from_pretrained`` loads.

A jaxtune checkpoint's ``tokenizer/`` folder holds the files it was given (a Hugging Face tokenizer folder, or a
bare SentencePiece ``tokenizer.model``) plus ``added_tokens.json`` ({token: id}) for special tokens added on top
(DoIT's ``<user>``, ``<assistant>``, ``<eot>``, ``<pad>``). Exporting keeps ``tokenizer.model`` (the exact
SentencePiece vocabulary) and writes transformers' own ``tokenizer_config.json``/``tokenizer.json`` carrying the
added tokens at their ids.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

from jaxtune.checkpoint.layout import TOKENIZER_FILE_NAMES
from jaxtune.checkpoint.tokenizer_files import copy_tokenizer_files, read_added_tokens
from jaxtune.errors import JaxtuneError

HF_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")
SENTENCEPIECE_FILE = "tokenizer.model"


class HFTokenizerError(JaxtuneError, ValueError):
    """A tokenizer folder cannot be turned into Hugging Face tokenizer files; the message names the folder."""


def has_tokenizer(directory: str | Path) -> bool:
    """Whether a folder holds any tokenizer file."""
    d = Path(directory)
    return any((d / name).is_file() for name in TOKENIZER_FILE_NAMES)


def load_hf_tokenizer(directory: str | Path) -> Any:
    """A transformers tokenizer for a folder (or a SentencePiece ``.model`` file): AutoTokenizer on Hugging Face files, LlamaTokenizer on a bare
    ``tokenizer.model`` (AutoTokenizer would pick a generic class that drops SentencePiece's leading ``▁``)."""
    d = Path(directory)
    from transformers import AutoTokenizer, LlamaTokenizer

    if d.is_file() and d.suffix == ".model":  # a bare SentencePiece file: load it from a folder of its own
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copyfile(d, Path(tmp) / SENTENCEPIECE_FILE)
            return LlamaTokenizer.from_pretrained(tmp)
    if any((d / name).is_file() for name in HF_TOKENIZER_FILES):
        return AutoTokenizer.from_pretrained(str(d))
    if (d / SENTENCEPIECE_FILE).is_file():
        return LlamaTokenizer.from_pretrained(str(d))
    raise HFTokenizerError(f"{d}: no tokenizer.json, tokenizer_config.json or tokenizer.model")


def add_special_tokens(tokenizer: Any, tokens: Sequence[str], where: str) -> dict[str, int]:
    """Append the tokens the tokenizer lacks as special tokens, in order; return {token: id} for all of them.

    ``<pad>`` becomes the pad token when the tokenizer has none (DoIT adds it only then).
    """
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    if "<pad>" in tokens and tokenizer.pad_token is None:
        tokenizer.pad_token = "<pad>"
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in tokens}
    for t in missing:
        if ids[t] is None or ids[t] < 0:
            raise HFTokenizerError(f"{where}: adding token {t!r} failed")
    return ids


def write_hf_tokenizer(src: str | Path, dst: str | Path, vocab_size: Optional[int] = None) -> int:
    """Write Hugging Face tokenizer files for the jaxtune tokenizer folder ``src`` into ``dst``; return its length.

    Tokens listed in ``src/added_tokens.json`` are added at their ids (an id that comes out different is an
    error). With ``vocab_size`` (the model's), a tokenizer longer than the model is an error: its ids would index
    past the embedding.
    """
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    added = read_added_tokens(src)
    sentencepiece_only = not any((src / name).is_file() for name in HF_TOKENIZER_FILES)
    if not added and not sentencepiece_only:
        copy_tokenizer_files(src, dst)
        length = len(load_hf_tokenizer(dst))
    else:
        tokenizer = load_hf_tokenizer(src)
        ordered = sorted(added, key=added.get)
        ids = add_special_tokens(tokenizer, ordered, str(src))
        wrong = {t: (ids[t], added[t]) for t in ordered if ids[t] != added[t]}
        if wrong:
            details = ", ".join(f"{t!r} got id {got}, expected {want}" for t, (got, want) in wrong.items())
            raise HFTokenizerError(f"{src}: added tokens do not land at their recorded ids: {details}")
        tokenizer.save_pretrained(str(dst))
        if (src / SENTENCEPIECE_FILE).is_file():  # keep the exact SentencePiece model beside them
            shutil.copyfile(src / SENTENCEPIECE_FILE, dst / SENTENCEPIECE_FILE)
        length = len(tokenizer)
    if vocab_size is not None and length > vocab_size:
        raise HFTokenizerError(
            f"{src}: the tokenizer has {length} tokens but the model's vocabulary has only {vocab_size} rows"
        )
    return length
