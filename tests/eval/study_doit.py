"""The study's DoIT prompt rendering written out from its ``inference.py``/``pred.py``, straight on SentencePiece:
the independent reference that jaxtune's template codec (and the runner behind it) is checked against. It shares no
code with :mod:`jaxtune.data.templates`.

Each turn is ``[<user>]`` (``[<assistant>]`` for any other role) + ``sp.encode(content.strip())`` + ``[<eot>]``; the
prompt ends with a bare ``<assistant>``; no BOS, no EOS; a reply is ``sp.encode(text.strip()) + [<eot>]``; generation
stops at ``<eot>``, ``<user>``, ``<assistant>``, BOS, EOS or UNK.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import sentencepiece as spm


class StudyDoitRendering:
    """The study's rendering over a SentencePiece model with the role tokens at ``added`` (name -> id)."""

    def __init__(self, model_file: str | Path, added: Mapping[str, int]):
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.user, self.assistant, self.eot = added["<user>"], added["<assistant>"], added["<eot>"]
        sp = self.sp
        stops = [self.eot, self.user, self.assistant, sp.bos_id(), sp.eos_id(), sp.unk_id()]
        self.stop_ids = tuple(dict.fromkeys(i for i in stops if i >= 0))

    def prompt_ids(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        ids: list[int] = []
        for m in messages:
            ids += [self.user if m["role"] == "user" else self.assistant, *self.sp.encode(m["content"].strip())]
            ids.append(self.eot)
        return [*ids, self.assistant]

    def reply_ids(self, text: str) -> list[int]:
        return [*self.sp.encode(text.strip()), self.eot]

    def decode(self, ids: Sequence[int]) -> str:
        n = self.sp.get_piece_size()
        return self.sp.decode([int(i) for i in ids if int(i) < n and int(i) not in self.stop_ids])

    def piece_id(self, piece: str) -> int:
        i = self.sp.piece_to_id(piece)
        if i == self.sp.unk_id() and piece != self.sp.id_to_piece(i):
            raise KeyError(f"piece {piece!r} is not in the vocabulary")
        return i
