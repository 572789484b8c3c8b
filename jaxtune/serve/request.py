"""One generation request as the engine sees it: its prompt ids and settings, and the text it streams back.

The engine thread feeds a request its tokens (:meth:`ServeRequest.feed`); the request turns them into text deltas
for its ``sink`` (a callable the HTTP side gives, run on the engine thread: it must only hand the event over, e.g.
``loop.call_soon_threadsafe``). A streamed request's text is decoded from all tokens so far and sent as it grows,
holding back a tail that may still become a stop string or that ends in an incomplete UTF-8 character; a request
that is not streamed gets its whole text in one delta when it ends (its tokens are decoded only then, or at each
feed when a stop string must be looked for). Events:

- ``Event("delta", text=...)``: more reply text;
- ``Event("done", text="", finish_reason="stop" | "length", usage={prompt_tokens, completion_tokens, total_tokens})``;
- ``Event("error", text=message)``: the request failed (its row is freed).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class Event:
    """Something a request reports to its client."""

    kind: str
    text: str = ""
    finish_reason: Optional[str] = None
    usage: Optional[dict[str, int]] = None


@dataclass(frozen=True)
class Decoding:
    """A request's decoding settings (OpenAI's names; validated by :mod:`jaxtune.serve.openai_api`)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()


@dataclass
class ServeRequest:
    """A prompt to complete and where its events go."""

    prompt_ids: Sequence[int]
    decoding: Decoding
    sink: Callable[[Event], None]
    decode_text: Callable[[Sequence[int]], str]
    """Token ids -> text (special tokens, stop tokens included, dropped)."""
    stop_ids: frozenset[int] = frozenset()
    """The template's stop tokens (a reply that ends on one finished with reason ``stop``)."""
    stream: bool = False
    """Text is sent as it is decoded (else all at the end; the engine then decodes more tokens per device call)."""
    tokens: list[int] = field(default_factory=list)
    sent: str = ""
    finished: bool = False
    _cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """The client went away: the engine frees the request's row (or drops it from the queue) at its next step."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def usage(self) -> dict[str, int]:
        n, m = len(self.prompt_ids), len(self.tokens)
        return {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m}

    def feed(self, tokens: Sequence[int], ended: bool) -> bool:
        """New tokens (``ended``: the row stopped on a stop token or its limit); True once the request is finished
        (also when a stop string ends it early, the row then to be freed by the caller)."""
        if self.finished:
            return True
        self.tokens.extend(int(t) for t in tokens)
        if not (ended or self.stream or self.decoding.stop):
            return False
        text = self.decode_text(self.tokens)
        cut = min((i for i in (text.find(s) for s in self.decoding.stop) if i >= 0), default=-1)
        if cut >= 0:
            return self._finish(text[:cut], "stop")
        if ended:
            reason = "length" if len(self.tokens) >= self.decoding.max_tokens and not self._ends_on_stop() else "stop"
            return self._finish(text, reason)
        if not self.stream:
            return False
        safe = text.rstrip("\ufffd")
        hold = max((k for s in self.decoding.stop for k in range(1, len(s)) if safe.endswith(s[:k])), default=0)
        self._send(safe[: len(safe) - hold])
        return False

    def _ends_on_stop(self) -> bool:
        return bool(self.tokens) and self.tokens[-1] in self.stop_ids

    def _send(self, text: str) -> None:
        if text.startswith(self.sent) and len(text) > len(self.sent):
            self.sink(Event("delta", text=text[len(self.sent) :]))
            self.sent = text

    def _finish(self, text: str, reason: str) -> bool:
        self._send(text)
        self.finished = True
        self.sink(Event("done", finish_reason=reason, usage=self.usage()))
        return True

    def fail(self, message: str) -> None:
        if not self.finished:
            self.finished = True
            self.sink(Event("error", text=message))
