"""ChatCodec implementations: the DoIT role-token template over a SentencePiece vocabulary.

The rendering is the study's (``inference.py``/``pred.py``): each turn is ``[<user>]`` (or ``[<assistant>]`` for any
other role) + ``sp(content.strip())`` + ``[<eot>]``; the prompt ends with a bare ``<assistant>``; no BOS, no EOS.
Content is always plain text: a literal ``"<eot>"`` inside a message is tokenized as characters, never as the
special token (the study's tokenizer turned it into the special token; jaxtune closes that hole).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jaxtune.eval.protocol import Message

DOIT_USER_ID = 49953
DOIT_ASSISTANT_ID = 49954
DOIT_EOT_ID = 49955
DOIT_PAD_ID = 49956


@dataclass
class DoitChatCodec:
    """The DoIT chat template over plain-text ``encode``/``decode`` callables (SentencePiece semantics)."""

    encode_text: Callable[[str], list[int]]
    """Plain text to ids, SentencePiece dummy prefix included, no BOS."""
    decode_text: Callable[[list[int]], str]
    """Ids of ordinary pieces (no special ids) to text."""
    piece_to_id: Callable[[str], int]
    """Vocabulary lookup; must raise KeyError or return ``unk_id`` for a missing piece."""
    user_id: int = DOIT_USER_ID
    assistant_id: int = DOIT_ASSISTANT_ID
    eot_id: int = DOIT_EOT_ID
    pad_id: int | None = DOIT_PAD_ID
    bos_id: int | None = 1
    eos_id: int | None = 2
    unk_id: int | None = 0
    stop_ids: tuple[int, ...] = field(init=False)
    """Generation stops at ``<eot>``, ``<user>``, ``<assistant>``, BOS, EOS or UNK (the study's list)."""

    def __post_init__(self) -> None:
        stops = [self.eot_id, self.user_id, self.assistant_id, self.bos_id, self.eos_id, self.unk_id]
        self.stop_ids = tuple(dict.fromkeys(i for i in stops if i is not None))
        self._special = {i for i in (*self.stop_ids, self.pad_id) if i is not None}

    @classmethod
    def from_sentencepiece(cls, model_file: str | Path, **special_ids: int | None) -> DoitChatCodec:
        """Build from a SentencePiece ``.model``; role tokens default to the ids right after its vocabulary
        (``<user>``, ``<assistant>``, ``<eot>``, ``<pad>`` in that order, as the study appended them)."""
        import sentencepiece as spm

        path = Path(model_file)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model {path} does not exist")
        sp = spm.SentencePieceProcessor(model_file=str(path))
        n = sp.get_piece_size()
        unk = sp.unk_id()

        def piece_to_id(piece: str) -> int:
            i = sp.piece_to_id(piece)
            if i == unk and piece != sp.id_to_piece(unk):
                raise KeyError(f"piece {piece!r} is not in {path}")
            return i

        defaults: dict[str, int | None] = {
            "user_id": n,
            "assistant_id": n + 1,
            "eot_id": n + 2,
            "pad_id": n + 3,
            "bos_id": sp.bos_id() if sp.bos_id() >= 0 else None,
            "eos_id": sp.eos_id() if sp.eos_id() >= 0 else None,
            "unk_id": unk if unk >= 0 else None,
        }
        defaults.update(special_ids)
        return cls(
            encode_text=lambda text: list(sp.encode(text)),
            decode_text=lambda ids: sp.decode(list(ids)),
            piece_to_id=piece_to_id,
            **defaults,
        )

    def _turn(self, role: str, content: str) -> list[int]:
        marker = self.user_id if role == "user" else self.assistant_id
        return [marker, *self.encode_text(content.strip()), self.eot_id]

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        ids: list[int] = []
        for i, message in enumerate(messages):
            if "role" not in message or "content" not in message:
                raise ValueError(f"message {i} needs 'role' and 'content' keys, got {sorted(message)}")
            ids.extend(self._turn(message["role"], message["content"]))
        ids.append(self.assistant_id)
        return ids

    def reply_ids(self, text: str) -> list[int]:
        return [*self.encode_text(text.strip()), self.eot_id]

    def encode(self, text: str) -> list[int]:
        return self.encode_text(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_text([int(i) for i in ids if int(i) not in self._special])

    def piece_id(self, piece: str) -> int:
        return self.piece_to_id(piece)
