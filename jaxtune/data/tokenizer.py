"""Tokenizers: a bare SentencePiece ``.model`` or a Hugging Face tokenizer folder, behind one narrow interface.

SentencePiece vocabularies (LLaMA, Chinese-LLaMA-Plus...) are tokenized with the ``sentencepiece`` library itself:
transformers 5's ``LlamaTokenizer`` disagrees with SentencePiece on the extended Chinese vocabularies (see the stack
spec), and the DoIT study used SentencePiece's own segmentation (with its dummy prefix: "A" -> ``▁A``). A folder
holding ``tokenizer.json`` but no SentencePiece model is tokenized by transformers (the ``tokenizers`` backend); that
backend is also the one that renders a tokenizer's own chat template.

Special tokens a chat template needs (DoIT's ``<user>``, ``<assistant>``, ``<eot>``, ``<pad>``) are appended after the
vocabulary, in the order asked, unless the vocabulary already has them; :attr:`Tokenizer.added_tokens` reports the
appended ones so that the model's embedding and LM head are resized to :attr:`Tokenizer.vocab_size`.
Message content is always encoded as plain text: a literal ``<eot>`` in a message never becomes the special token.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

from jaxtune.data.remote import local_input
from jaxtune.errors import JaxtuneError

Backend = Literal["auto", "sentencepiece", "hf"]


class TokenizerError(JaxtuneError, ValueError):
    """A tokenizer path that cannot be loaded, or a token it does not have."""


class Tokenizer(ABC):
    """Text <-> token ids, plus the special tokens appended for a chat template."""

    def __init__(self, path: str):
        self.path = path
        self.added_tokens: dict[str, int] = {}
        """Tokens jaxtune appended beyond the loaded vocabulary (name -> id), in order."""

    # -- the base vocabulary ----------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def base_vocab_size(self) -> int:
        """Size of the loaded vocabulary, including the added tokens it was saved with."""

    @abstractmethod
    def _base_encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    @abstractmethod
    def _base_decode(self, ids: Sequence[int]) -> str: ...

    @abstractmethod
    def _base_piece_to_id(self, piece: str) -> Optional[int]: ...

    @abstractmethod
    def _base_id_to_piece(self, token_id: int) -> str: ...

    bos_id: Optional[int] = None
    eos_id: Optional[int] = None
    unk_id: Optional[int] = None
    _base_pad_id: Optional[int] = None

    # -- public interface -------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included (the model's vocab_size must match)."""
        return self.base_vocab_size + len(self.added_tokens)

    @property
    def pad_id(self) -> Optional[int]:
        if self._base_pad_id is not None:
            return self._base_pad_id
        return self.added_tokens.get("<pad>")

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` as plain text (no BOS/EOS; SentencePiece adds its dummy-prefix ``▁``)."""
        return self._base_encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` of each text (one call into the backend, faster for many short texts)."""
        return self._base_encode_batch(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; added tokens are written as their names."""
        if not self.added_tokens:
            return self._base_decode([int(i) for i in ids])
        names = {v: k for k, v in self.added_tokens.items()}
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            i = int(i)
            if i in names:
                if run:
                    out.append(self._base_decode(run))
                    run = []
                out.append(names[i])
            else:
                run.append(i)
        if run:
            out.append(self._base_decode(run))
        return "".join(out)

    def piece_to_id(self, piece: str) -> Optional[int]:
        """Id of a vocabulary piece (``▁A``) or added token (``<eot>``), None when the vocabulary lacks it."""
        if piece in self.added_tokens:
            return self.added_tokens[piece]
        return self._base_piece_to_id(piece)

    def id_to_piece(self, token_id: int) -> str:
        names = {v: k for k, v in self.added_tokens.items()}
        if token_id in names:
            return names[token_id]
        if not 0 <= token_id < self.base_vocab_size:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary of {self.vocab_size}")
        return self._base_id_to_piece(token_id)

    def token_id(self, token: str) -> int:
        """Id of a token that must exist (raises TokenizerError naming the tokenizer otherwise)."""
        token_id = self.piece_to_id(token)
        if token_id is None:
            raise TokenizerError(f"tokenizer {self.path} has no token {token!r}")
        return token_id

    def add_special_tokens(self, tokens: Sequence[str]) -> dict[str, int]:
        """Make sure each token exists, appending the missing ones in order; returns every token's id."""
        ids = {}
        for token in tokens:
            existing = self.piece_to_id(token)
            if existing is None:
                existing = self.vocab_size
                self.added_tokens[token] = existing
            ids[token] = existing
        return ids

    def special_token_ids(self) -> dict[str, int]:
        """BOS/EOS/UNK/PAD ids that exist, plus every added token."""
        ids = {
            name: i
            for name, i in (("bos", self.bos_id), ("eos", self.eos_id), ("unk", self.unk_id), ("pad", self.pad_id))
            if i is not None
        }
        ids.update(self.added_tokens)
        return ids

    def describe(self) -> str:
        """One line for logs: the backend, the sizes and the appended tokens."""
        added = ", ".join(f"{k}={v}" for k, v in self.added_tokens.items()) or "none"
        return (
            f"{type(self).__name__}({self.path}): vocabulary {self.base_vocab_size} + {len(self.added_tokens)} "
            f"added = {self.vocab_size} (added: {added})"
        )

    def _tokens_state(self) -> dict[str, Any]:
        return {"path": self.path, "added_tokens": dict(self.added_tokens)}


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model, tokenized by the ``sentencepiece`` library."""

    def __init__(self, model_file: Union[str, Path], folder: Optional[Union[str, Path]] = None):
        super().__init__(str(folder if folder is not None else model_file))
        self.model_file = str(model_file)
        self.folder = None if folder is None else str(folder)
        self._load()

    def _load(self) -> None:
        import sentencepiece as spm

        try:
            self._sp = spm.SentencePieceProcessor(model_file=self.model_file)
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"{self.model_file} is not a SentencePiece model: {e}") from None
        n = self._sp.get_piece_size()
        self._n = n
        self.bos_id = _valid_id(self._sp.bos_id(), n)
        self.eos_id = _valid_id(self._sp.eos_id(), n)
        self.unk_id = _valid_id(self._sp.unk_id(), n)
        self._base_pad_id = _valid_id(self._sp.pad_id(), n)
        # A folder saved by transformers after fine-tuning lists the tokens appended then (the study's <user>...).
        self._saved_added = _saved_added_tokens(self.folder, n) if self.folder else {}
        if self._base_pad_id is None and self.folder:
            pad = _configured_pad_token(self.folder)
            if pad is not None:
                pad_id = self._base_piece_to_id(pad)
                self._base_pad_id = pad_id

    @property
    def base_vocab_size(self) -> int:
        return self._n + len(self._saved_added)

    def _base_encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts))

    def _base_decode(self, ids: Sequence[int]) -> str:
        if not self._saved_added:
            return self._sp.decode(list(ids))
        names = {v: k for k, v in self._saved_added.items()}
        parts, run = [], []
        for i in ids:
            if i in names:
                if run:
                    parts.append(self._sp.decode(run))
                    run = []
                parts.append(names[i])
            else:
                run.append(i)
        if run:
            parts.append(self._sp.decode(run))
        return "".join(parts)

    def _base_piece_to_id(self, piece: str) -> Optional[int]:
        if piece in self._saved_added:
            return self._saved_added[piece]
        i = self._sp.piece_to_id(piece)
        return i if self._sp.id_to_piece(i) == piece else None

    def _base_id_to_piece(self, token_id: int) -> str:
        if token_id >= self._n:
            return {v: k for k, v in self._saved_added.items()}[token_id]
        return self._sp.id_to_piece(token_id)

    def __getstate__(self) -> dict:
        return {**self._tokens_state(), "model_file": self.model_file, "folder": self.folder}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self.model_file = state["model_file"]
        self.folder = state["folder"]
        self._load()
        self.added_tokens = dict(state["added_tokens"])


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer folder (``tokenizer.json``), tokenized by transformers' fast tokenizer."""

    def __init__(self, folder: Union[str, Path]):
        super().__init__(str(folder))
        self._load()

    def _load(self) -> None:
        from transformers import AutoTokenizer

        try:
            self.hf = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except Exception as e:  # transformers raises many types for an unusable folder
            raise TokenizerError(f"{self.path}: transformers cannot load this tokenizer folder: {e}") from None
        self.bos_id = self.hf.bos_token_id
        self.eos_id = self.hf.eos_token_id
        self.unk_id = self.hf.unk_token_id
        self._base_pad_id = self.hf.pad_token_id
        self._n = len(self.hf)

    @property
    def base_vocab_size(self) -> int:
        return self._n

    @property
    def chat_template(self) -> Optional[str]:
        template = getattr(self.hf, "chat_template", None)
        return template if isinstance(template, str) else None

    def _base_encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        # split_special_tokens: a "<|im_end|>" typed inside a message stays text.
        return self.hf(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def _base_decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids))

    def _base_piece_to_id(self, piece: str) -> Optional[int]:
        vocab = self.hf.get_vocab()
        return vocab.get(piece)

    def _base_id_to_piece(self, token_id: int) -> str:
        return self.hf.convert_ids_to_tokens(token_id)

    def __getstate__(self) -> dict:
        return self._tokens_state()

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._load()
        self.added_tokens = dict(state["added_tokens"])


def _valid_id(i: int, n: int) -> Optional[int]:
    return i if 0 <= i < n else None


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{path}: cannot read as JSON: {e}") from None
    if not isinstance(value, dict):
        raise TokenizerError(f"{path}: expected a JSON object")
    return value


def _saved_added_tokens(folder: str, base: int) -> dict[str, int]:
    """Tokens above the SentencePiece vocabulary that a saved transformers folder declares (added_tokens.json or
    tokenizer_config.json's added_tokens_decoder); they must be contiguous from ``base``."""
    root = Path(folder)
    tokens: dict[str, int] = {}
    if (root / "added_tokens.json").is_file():
        for name, i in _read_json(root / "added_tokens.json").items():
            tokens[name] = int(i)
    if (root / "tokenizer_config.json").is_file():
        decoder = _read_json(root / "tokenizer_config.json").get("added_tokens_decoder") or {}
        for i, spec in decoder.items():
            if isinstance(spec, dict) and "content" in spec:
                tokens[spec["content"]] = int(i)
    tokens = {k: v for k, v in tokens.items() if v >= base}
    ids = sorted(tokens.values())
    if ids != list(range(base, base + len(ids))):
        raise TokenizerError(
            f"{folder}: added tokens above the SentencePiece vocabulary ({base}) must have ids {base}, {base + 1}, ...; "
            f"got {sorted(tokens.items(), key=lambda kv: kv[1])}"
        )
    return dict(sorted(tokens.items(), key=lambda kv: kv[1]))


def _configured_pad_token(folder: str) -> Optional[str]:
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = Path(folder) / name
        if path.is_file():
            pad = _read_json(path).get("pad_token")
            if isinstance(pad, dict):
                pad = pad.get("content")
            if isinstance(pad, str):
                return pad
    return None


def load_tokenizer(path: Union[str, Path], backend: Backend = "auto") -> Tokenizer:
    """Load a tokenizer from a SentencePiece ``.model`` file or a folder.

    ``auto`` uses SentencePiece when the folder holds ``tokenizer.model`` (or exactly one ``*.model``), else the
    Hugging Face backend (``tokenizer.json``); ``hf`` forces the Hugging Face backend (needed to render the
    tokenizer's own chat template); ``sentencepiece`` requires a SentencePiece model. A ``gs://`` path is read from
    this host's cached copy (:func:`jaxtune.data.remote.local_input`).
    """
    try:
        p = local_input(path)
    except FileNotFoundError:
        raise TokenizerError(f"tokenizer path {path} does not exist") from None
    if backend not in ("auto", "sentencepiece", "hf"):
        raise TokenizerError(f"unknown tokenizer backend {backend!r} (expected auto, sentencepiece or hf)")
    if not p.exists():
        raise TokenizerError(f"tokenizer path {p} does not exist")
    if p.is_file():
        if backend == "hf":
            raise TokenizerError(f"{p}: the Hugging Face backend needs a tokenizer folder, not a file")
        return SentencePieceTokenizer(p)
    sp_model = p / "tokenizer.model"
    if not sp_model.is_file():
        models = sorted(p.glob("*.model"))
        sp_model = models[0] if len(models) == 1 else sp_model
    has_hf = (p / "tokenizer.json").is_file() or (p / "tokenizer_config.json").is_file()
    if backend == "hf" or (backend == "auto" and not sp_model.is_file()):
        if not has_hf:
            raise TokenizerError(f"{p} holds neither tokenizer.model nor tokenizer.json/tokenizer_config.json")
        return HFTokenizer(p)
    if not sp_model.is_file():
        raise TokenizerError(f"{p} holds no SentencePiece model (tokenizer.model)")
    return SentencePieceTokenizer(sp_model, folder=p)
