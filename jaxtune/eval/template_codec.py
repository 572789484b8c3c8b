"""A :class:`~jaxtune.eval.protocol.ChatCodec` over a training chat template (:mod:`jaxtune.data.templates`).

Evaluating a checkpoint must render prompts exactly as its training did, so the codec delegates to the same
template object the data pipeline uses (DoIT role tokens, BELLE's ``Human:/Assistant:``, or a tokenizer's own chat
template). A reply's ids are what the template appends after the prompt when the reply is the assistant's turn
(DoIT: ``sp(text.strip()) + [<eot>]``; BELLE: ``sp(text) + [EOS]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from jaxtune.data.records import Message as TurnRecord
from jaxtune.data.templates import ChatTemplate, make_template
from jaxtune.data.tokenizer import Tokenizer
from jaxtune.eval.protocol import Message

_REPLY_PROBE_QUESTION = "?"
"""The user turn behind which a reply is rendered to find its ids (any text: turns are tokenized separately)."""


class TemplateChatCodec:
    """The suites' chat codec on a jaxtune chat template and its tokenizer."""

    def __init__(self, template: ChatTemplate):
        self.template = template
        self.tokenizer: Tokenizer = template.tokenizer
        self.stop_ids: tuple[int, ...] = tuple(int(i) for i in template.stop_token_ids())
        special = set(self.stop_ids) | set(self.tokenizer.special_token_ids().values()) | {template.pad_id}
        for name in getattr(template, "special_tokens", ()):
            special.add(self.tokenizer.token_id(name))
        self._special = frozenset(special)

    @classmethod
    def create(cls, template_name: str, tokenizer: Tokenizer, model_vocab_size: int) -> TemplateChatCodec:
        """The named template on ``tokenizer``; an error when the template's special tokens are not in the model's
        vocabulary (e.g. a DoIT prompt for a model never fine-tuned with ``<user>``/``<assistant>``/``<eot>``)."""
        before = dict(tokenizer.added_tokens)
        template = make_template(template_name, tokenizer)
        appended = {k: v for k, v in tokenizer.added_tokens.items() if k not in before}
        if appended and max(appended.values()) >= model_vocab_size:
            raise ValueError(
                f"template {template_name!r} needs tokens {sorted(appended)} that tokenizer {tokenizer.path} lacks "
                f"(they would get ids {sorted(appended.values())} beyond the model's vocabulary of "
                f"{model_vocab_size}); evaluate with the tokenizer the model was trained with"
            )
        if tokenizer.vocab_size > model_vocab_size:
            raise ValueError(
                f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} ids but the model only "
                f"{model_vocab_size}: they do not belong together"
            )
        return cls(template)

    @staticmethod
    def _turns(messages: Sequence[Message]) -> list[TurnRecord]:
        turns = []
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
                raise ValueError(f"message {i} needs 'role' and 'content' keys, got {m!r}")
            turns.append(TurnRecord(role=str(m["role"]), content=str(m["content"])))
        return turns

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        return [int(i) for i in self.template.prompt_ids(self._turns(messages))]

    def reply_ids(self, text: str) -> list[int]:
        question = [{"role": "user", "content": _REPLY_PROBE_QUESTION}]
        prompt = self.prompt_ids(question)
        full = [
            int(i)
            for i in self.template.encode(self._turns([*question, {"role": "assistant", "content": text}])).input_ids
        ]
        if full[: len(prompt)] != prompt:
            raise ValueError(
                f"template {type(self.template).__name__} renders a reply that does not extend its "
                "prompt; replies cannot be scored with it"
            )
        return full[len(prompt) :]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids if int(i) not in self._special])

    def piece_id(self, piece: str) -> int:
        i = self.tokenizer.piece_to_id(piece)
        if i is None:
            raise KeyError(f"piece {piece!r} is not in tokenizer {self.tokenizer.path}")
        return i
