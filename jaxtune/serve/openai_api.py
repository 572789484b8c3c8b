"""The OpenAI protocol's request checks and response bodies, without any HTTP: parsed requests in, JSON dicts out.

A bad request raises :class:`ApiError`, whose body is OpenAI's ``{"error": {"message", "type", "param", "code"}}``.
Accepted fields (others are ignored, as OpenAI-compatible servers do):

- ``/v1/chat/completions``: ``model``, ``messages`` (``role`` + ``content``: a string or a list of ``{"type":
  "text", "text": ...}`` parts), ``stream``, ``stream_options.include_usage``, ``max_tokens`` (or
  ``max_completion_tokens``), ``temperature``, ``top_p``, ``top_k``, ``repetition_penalty``, ``seed``, ``stop``
  (a string or up to 4), ``n`` (1 only).
- ``/v1/completions``: the same with ``prompt`` (a string, or a list of one string) for ``messages``.

Defaults are the server's (``eval.temperature``, ``eval.top_p``, ``eval.top_k``, ``eval.repetition_penalty``,
``eval.seed``); an absent ``max_tokens`` is the room the context leaves, at most ``eval.max_new_tokens``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Optional

from jaxtune.serve.request import Decoding


class ApiError(Exception):
    """An HTTP error with OpenAI's error body."""

    def __init__(self, status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = {
            400: "invalid_request_error",
            404: "invalid_request_error",
            429: "rate_limit_exceeded",
        }.get(self.status, "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ServedModel:
    """What the server knows of its model to check requests against."""

    id: str
    checkpoint: str
    context: int
    """Cache slots per row: prompt + max_tokens must fit."""
    defaults: Decoding
    """Decoding when a request says nothing (its max_tokens: the most a reply may have by default)."""


@dataclass(frozen=True)
class Parsed:
    """A checked request."""

    prompt_ids: list[int]
    decoding: Decoding
    stream: bool
    include_usage: bool


def _number(body: dict, name: str, default, kind: type, ok: Callable[[Any], bool], rule: str):
    value = body.get(name)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not float(value).is_integer())
    ):
        raise ApiError(
            400, f"'{name}' must be {'an integer' if kind is int else 'a number'}, got {value!r}", param=name
        )
    value = kind(value)
    if not ok(value):
        raise ApiError(400, f"'{name}' must be {rule}, got {value!r}", param=name)
    return value


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > 4:
        raise ApiError(400, "'stop' must be a non-empty string or a list of at most 4 of them", param="stop")
    return tuple(stops)


def check_model(body: dict, model: ServedModel) -> None:
    name = body.get("model")
    if not isinstance(name, str):
        raise ApiError(400, "'model' is required (see GET /v1/models)", param="model")
    if name not in (model.id, model.checkpoint):
        raise ApiError(
            404, f"the model {name!r} does not exist; this server serves {model.id!r}", code="model_not_found"
        )


def decoding_of(body: dict, model: ServedModel, prompt_tokens: int) -> Decoding:
    """The request's decoding settings, checked against the context for a prompt of ``prompt_tokens``."""
    d = model.defaults
    room = model.context - prompt_tokens
    if room < 1:
        raise ApiError(
            400,
            f"the prompt has {prompt_tokens} tokens; the model's context holds {model.context} "
            "(prompt and reply together): shorten the prompt",
            param="messages" if "messages" in body else "prompt",
            code="context_length_exceeded",
        )
    name = "max_completion_tokens" if body.get("max_tokens") is None else "max_tokens"
    max_tokens = _number(body, name, min(d.max_tokens, room), int, lambda v: v >= 1, "at least 1")
    if max_tokens > room:
        raise ApiError(
            400,
            f"the context holds {model.context} tokens, but {prompt_tokens + max_tokens} were asked for "
            f"({prompt_tokens} in the prompt, {max_tokens} in the reply): lower {name} to at most {room}",
            param=name,
            code="context_length_exceeded",
        )
    _number(body, "n", 1, int, lambda v: v == 1, "1 (one choice per request)")
    return replace(
        d,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", d.temperature, float, lambda v: 0 <= v <= 2, "in [0, 2]"),
        top_p=_number(body, "top_p", d.top_p, float, lambda v: 0 < v <= 1, "in (0, 1]"),
        top_k=_number(body, "top_k", d.top_k, int, lambda v: v >= 0, ">= 0 (0 = off)"),
        repetition_penalty=_number(body, "repetition_penalty", d.repetition_penalty, float, lambda v: v > 0, "> 0"),
        seed=_number(body, "seed", d.seed, int, lambda v: True, "an integer") % (1 << 32),
        stop=_stop(body),
    )


def chat_messages(body: dict) -> list[dict[str, str]]:
    """``messages`` as plain ``{"role", "content"}`` turns."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content}", param="messages")
    turns = []
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise ApiError(400, f"messages[{i}]: only text content parts are served", param="messages")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(content, str):
            raise ApiError(400, f"messages[{i}] needs a string 'role' and a string 'content'", param="messages")
        turns.append({"role": m["role"], "content": content})
    return turns


def completion_prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "'prompt' must be a non-empty string (one prompt per request)", param="prompt")
    return prompt


def parse(body: Any, model: ServedModel, encode: Callable[[dict], Sequence[int]]) -> Parsed:
    """A checked request; ``encode(body)`` gives its prompt ids (the chat template or plain text)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    check_model(body, model)
    try:
        prompt_ids = [int(i) for i in encode(body)]
    except ValueError as e:  # a conversation the template cannot render
        raise ApiError(400, f"the prompt cannot be rendered: {e}", param="messages" if "messages" in body else "prompt")
    if not prompt_ids:
        raise ApiError(400, "the prompt renders to no tokens", param="prompt")
    options = body.get("stream_options") or {}
    return Parsed(
        prompt_ids=prompt_ids,
        decoding=decoding_of(body, model, len(prompt_ids)),
        stream=bool(body.get("stream", False)),
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
    )


# -- response bodies -------------------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def chat_body(rid: str, model: str, text: str, finish: str, usage: dict) -> dict:
    message = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
    return _envelope(rid, "chat.completion", model, [choice], usage)


def chat_chunk(rid: str, model: str, delta: dict, finish: Optional[str], usage: Optional[dict] = None) -> dict:
    choices = [] if usage is not None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    return _envelope(rid, "chat.completion.chunk", model, choices, usage)


def completion_body(rid: str, model: str, text: str, finish: Optional[str], usage: Optional[dict]) -> dict:
    choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
    return _envelope(rid, "text_completion", model, [choice], usage)


def _envelope(rid: str, kind: str, model: str, choices: list, usage: Optional[dict]) -> dict:
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": choices, "usage": usage}
