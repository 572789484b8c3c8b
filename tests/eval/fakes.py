"""Small, real, deterministic stand-ins for the tokenizer and the model, for testing suites and scorers.

``char_codec()`` is jaxtune's real DoIT template (:class:`jaxtune.data.templates.DoitTemplate` behind
:class:`jaxtune.eval.template_codec.TemplateChatCodec`) over :class:`CharTokenizer`, a character vocabulary (one id
per character, assigned on first sight, with ``<user>``, ``<assistant>`` and ``<eot>`` at fixed small ids).
``ScriptedLM`` implements :class:`LanguageModel` by reading the prompt back as text and answering from a per-test
script, so a test decides exactly what the "model" says and checks what the suite made of it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Optional

import numpy as np

from jaxtune.data.templates import DoitTemplate
from jaxtune.data.tokenizer import Tokenizer
from jaxtune.eval.protocol import Generation
from jaxtune.eval.template_codec import TemplateChatCodec

USER, ASSISTANT, EOT, BOS, EOS, UNK = 1, 2, 3, 4, 5, 6
ROLE_TOKENS = {"<user>": USER, "<assistant>": ASSISTANT, "<eot>": EOT}
PREFIXED = {"▁A": 7, "▁B": 8, "▁C": 9, "▁D": 10}
FIRST_CHAR_ID = 16
VOCAB_SIZE = 4096
"""The character vocabulary's size; the template appends ``<pad>`` after it."""
LOGITS_SIZE = VOCAB_SIZE + 1


class CharTokenizer(Tokenizer):
    """A :class:`jaxtune.data.tokenizer.Tokenizer` with one id per character (assigned on first sight), the DoIT
    role tokens at :data:`ROLE_TOKENS`, ``▁A``..``▁D`` at :data:`PREFIXED` and BOS/EOS/UNK at 4, 5, 6."""

    bos_id, eos_id, unk_id = BOS, EOS, UNK

    def __init__(self) -> None:
        super().__init__("<characters>")
        self.ids: dict[str, int] = {}
        self.chars: dict[int, str] = {}

    @property
    def base_vocab_size(self) -> int:
        return VOCAB_SIZE

    def _char_id(self, ch: str) -> int:
        if ch not in self.ids:
            i = FIRST_CHAR_ID + len(self.ids)
            if i >= VOCAB_SIZE:
                raise RuntimeError("character vocabulary full")
            self.ids[ch] = i
            self.chars[i] = ch
        return self.ids[ch]

    def _base_encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [[self._char_id(c) for c in text] for text in texts]

    def _base_decode(self, ids: Sequence[int]) -> str:
        return "".join(self._base_id_to_piece(i).replace("▁", " ") for i in ids)

    def _base_piece_to_id(self, piece: str) -> Optional[int]:
        if piece in ROLE_TOKENS:
            return ROLE_TOKENS[piece]
        if piece in PREFIXED:
            return PREFIXED[piece]
        return self._char_id(piece) if len(piece) == 1 else None

    def _base_id_to_piece(self, token_id: int) -> str:
        names = {v: k for k, v in {**ROLE_TOKENS, **PREFIXED}.items()}
        return names.get(token_id) or self.chars[token_id]


def char_codec() -> TemplateChatCodec:
    return TemplateChatCodec(DoitTemplate(CharTokenizer()))


def _prompt_text(codec: TemplateChatCodec, ids: Sequence[int]) -> str:
    """The prompt as text with role markers, e.g. ``<user>question<eot><assistant>``."""
    names = {USER: "<user>", ASSISTANT: "<assistant>", EOT: "<eot>"}
    out, run = [], []
    for i in ids:
        if i in names:
            out.append(codec.decode(run))
            out.append(names[i])
            run = []
        else:
            run.append(i)
    out.append(codec.decode(run))
    return "".join(out)


class ScriptedLM:
    """A LanguageModel whose outputs a test chooses.

    - ``replies``: prompt substring -> (reply text, {piece: logit} for the last step). The first key found in the
      prompt text wins; the reply is encoded with the codec and ends with ``<eot>`` unless ``max_new_tokens`` cuts it.
    - ``perplexity``: (context text, continuation ids) -> perplexity.
    - ``next_logits``: prompt substring -> {piece: logit}.
    Every call is recorded in ``calls`` for the test to inspect.
    """

    def __init__(
        self,
        codec: TemplateChatCodec,
        replies: Mapping[str, tuple[str, Mapping[str, float]]] | None = None,
        perplexity: Callable[[str, Sequence[int]], float] | None = None,
        next_logits: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        self.codec = codec
        self.replies = dict(replies or {})
        self.perplexity = perplexity
        self.next_logits = dict(next_logits or {})
        self.calls: list[tuple[str, object]] = []

    def _lookup(self, table: Mapping[str, object], ids: Sequence[int]) -> object:
        text = _prompt_text(self.codec, ids)
        for key, value in table.items():
            if key in text:
                return value
        raise KeyError(f"no scripted output for prompt {text!r}")

    def _logits(self, pieces: Mapping[str, float]) -> np.ndarray:
        logits = np.zeros(LOGITS_SIZE, np.float32)
        for piece, value in pieces.items():
            logits[self.codec.piece_id(piece)] = value
        return logits

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Collection[int]
    ) -> list[Generation]:
        self.calls.append(("generate", [list(p) for p in prompts]))
        out = []
        for p in prompts:
            reply, pieces = self._lookup(self.replies, p)  # type: ignore[misc]
            tokens = (self.codec.encode(reply) + [EOT])[:max_new_tokens]
            out.append(Generation(tuple(tokens), self._logits(pieces)))
        return out

    def continuation_perplexities(
        self, contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]
    ) -> list[float]:
        self.calls.append(("perplexities", [(list(c), list(k)) for c, k in zip(contexts, continuations)]))
        assert self.perplexity is not None
        return [
            float("nan") if not k else self.perplexity(_prompt_text(self.codec, c), k)
            for c, k in zip(contexts, continuations)
        ]

    def next_token_logits(self, prompts: Sequence[Sequence[int]], candidate_ids: Sequence[int]) -> np.ndarray:
        self.calls.append(("next_token_logits", [list(p) for p in prompts]))
        rows = [
            self._logits(self._lookup(self.next_logits, p))[list(candidate_ids)]  # type: ignore[arg-type]
            for p in prompts
        ]
        return np.stack(rows)
