"""The narrow interfaces between evaluation suites and the model.

Suites (``jaxtune.eval.suites``) never touch parameters, devices or JAX: everything model-dependent goes through a
:class:`LanguageModel` (greedy generation, continuation perplexities, next-token logits) and everything
tokenizer-dependent through a :class:`ChatCodec` (chat prompt rendering, plain encoding, decoding, piece ids).
``jaxtune.eval.generate`` / ``likelihood`` implement the first on the Flax model; tests implement both with small
scripted objects.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

Message = Mapping[str, str]
"""One chat turn: ``{"role": "user" | "assistant" | ..., "content": str}``."""


@dataclass(frozen=True)
class Generation:
    """The result of greedy decoding for one prompt."""

    tokens: tuple[int, ...]
    """The new token ids, in order, including the stop token when decoding ended on one."""
    last_logits: np.ndarray
    """float32 logits ``[vocab_size]`` of the last decoding step (the step that produced ``tokens[-1]``)."""


@runtime_checkable
class LanguageModel(Protocol):
    """What evaluation needs from a causal language model. Implementations batch internally."""

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Collection[int]
    ) -> list[Generation]:
        """Greedy-decode each prompt (never truncated) for at most ``max_new_tokens`` tokens, stopping after the
        first token in ``stop_ids``. One :class:`Generation` per prompt, in order."""
        ...

    def continuation_perplexities(
        self, contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]
    ) -> list[float]:
        """``exp(mean token cross-entropy)`` of each continuation given its context (the logits of
        ``context + continuation``, scored on the continuation tokens only). An empty continuation gives NaN.
        Callers truncate; implementations must not."""
        ...

    def next_token_logits(self, prompts: Sequence[Sequence[int]], candidate_ids: Sequence[int]) -> np.ndarray:
        """float32 ``[len(prompts), len(candidate_ids)]``: the logits of the candidate ids for the token right after
        each prompt."""
        ...


@runtime_checkable
class ChatCodec(Protocol):
    """A tokenizer together with the chat template a model was trained with."""

    stop_ids: tuple[int, ...]
    """Token ids that end a generated reply (end of turn, role markers, BOS/EOS/UNK)."""

    def prompt_ids(self, messages: Sequence[Message]) -> list[int]:
        """The rendered turns followed by whatever opens the assistant's reply (DoIT: a bare ``<assistant>``)."""
        ...

    def reply_ids(self, text: str) -> list[int]:
        """An assistant reply as the model was trained to produce it, end-of-turn included (DoIT:
        ``sp(text.strip()) + [<eot>]``)."""
        ...

    def encode(self, text: str) -> list[int]:
        """Plain text to ids (no BOS, no special tokens: a literal ``<eot>`` in text stays text)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Ids to text, skipping special tokens."""
        ...

    def piece_id(self, piece: str) -> int:
        """The id of one vocabulary piece (``"▁A"``, ``"A"``); KeyError if the vocabulary lacks it."""
        ...
