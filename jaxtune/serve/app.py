"""The HTTP app (Starlette, run by uvicorn): OpenAI's routes over the engine.

Routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (with
``"stream": true``: server-sent events, ``data: {chunk}`` lines ending with ``data: [DONE]``).

The event loop never calls JAX: a request is checked (:mod:`jaxtune.serve.openai_api`), queued on the engine
(429 when the queue is full) and its events arrive through an asyncio queue fed from the engine thread. A client
that disconnects cancels its request (the engine frees its row at its next step): a stream notices when a write
fails or the server hears the disconnect; a plain request polls for it while it waits.

``GET /v1/models`` lists the one model with jaxtune's fields beside OpenAI's: ``checkpoint``, ``checkpoint_sha256``,
``template``, ``context`` and ``decoding`` (the server's defaults), which a BELLE evaluation records about its judge.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from jaxtune.serve import openai_api as api
from jaxtune.serve.engine import Engine, QueueFull
from jaxtune.serve.request import Event, ServeRequest

DISCONNECT_POLL_S = 0.25


def _error(e: api.ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if e.status == 429 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


class Handlers:
    """The routes' handlers over one engine and one model."""

    def __init__(self, engine: Engine, model: api.ServedModel, codec: Any, card: dict):
        self.engine, self.model, self.codec, self.card = engine, model, codec, card
        self.stop_ids = frozenset(int(i) for i in codec.stop_ids)

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "rows_in_use": self.engine.rows_in_use(), "queued": self.engine.queued()})

    async def models(self, request: Request) -> JSONResponse:
        entry = {"id": self.model.id, "object": "model", "created": 0, "owned_by": "jaxtune", **self.card}
        return JSONResponse({"object": "list", "data": [entry]})

    async def chat(self, request: Request):
        return await self._complete(request, "chat", lambda b: self.codec.prompt_ids(api.chat_messages(b)))

    async def completions(self, request: Request):
        return await self._complete(request, "text", lambda b: self.codec.encode(api.completion_prompt(b)))

    async def _complete(self, request: Request, kind: str, encode: Callable[[dict], Any]):
        try:
            try:
                body = json.loads(await request.body())
            except (ValueError, UnicodeDecodeError) as e:
                raise api.ApiError(400, f"the request body is not valid JSON: {e}") from None
            parsed = api.parse(body, self.model, encode)
            loop = asyncio.get_running_loop()
            events: asyncio.Queue[Event] = asyncio.Queue()

            def sink(event: Event) -> None:
                try:
                    loop.call_soon_threadsafe(events.put_nowait, event)
                except RuntimeError:  # the loop is closed: the server is going away
                    pass

            job = ServeRequest(parsed.prompt_ids, parsed.decoding, sink, self.codec.decode, stop_ids=self.stop_ids,
                               stream=parsed.stream)  # fmt: skip
            try:
                self.engine.submit(job)
            except QueueFull as e:
                raise api.ApiError(429, f"the server is busy: {e}; retry later") from None
        except api.ApiError as e:
            return _error(e)
        rid = api.new_id("chatcmpl" if kind == "chat" else "cmpl")
        if parsed.stream:
            stream = self._stream(job, events, rid, kind, parsed.include_usage)
            return StreamingResponse(stream, media_type="text/event-stream")
        return await self._whole(request, job, events, rid, kind)

    async def _whole(self, request: Request, job: ServeRequest, events: asyncio.Queue, rid: str, kind: str):
        parts = []
        try:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        job.cancel()
                        return JSONResponse({}, status_code=499)
                    continue
                if event.kind == "delta":
                    parts.append(event.text)
                elif event.kind == "error":
                    return _error(api.ApiError(500, event.text))
                else:
                    text = "".join(parts)
                    if kind == "chat":
                        return JSONResponse(api.chat_body(rid, self.model.id, text, event.finish_reason, event.usage))
                    return JSONResponse(api.completion_body(rid, self.model.id, text, event.finish_reason, event.usage))
        finally:
            job.cancel()  # a no-op once finished; frees the row when the handler is cancelled mid-wait

    async def _stream(
        self, job: ServeRequest, events: asyncio.Queue, rid: str, kind: str, include_usage: bool
    ) -> AsyncIterator[str]:
        def chunk(delta: dict, text: str, finish=None, usage=None) -> str:
            if kind == "chat":
                body = api.chat_chunk(rid, self.model.id, delta, finish, usage)
            else:
                body = api.completion_body(rid, self.model.id, text, finish, usage)
                body["choices"] = [] if usage is not None else body["choices"]
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        try:
            if kind == "chat":
                yield chunk({"role": "assistant", "content": ""}, "")
            while True:
                event = await events.get()
                if event.kind == "delta":
                    yield chunk({"content": event.text}, event.text)
                elif event.kind == "error":
                    yield f"data: {json.dumps(api.ApiError(500, event.text).body())}\n\n"
                    break
                else:
                    yield chunk({}, "", finish=event.finish_reason)
                    if include_usage:
                        yield chunk({}, "", usage=event.usage)
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancel()  # the client went away mid-stream (or the reply is over: then a no-op)


def build_app(engine: Engine, model: api.ServedModel, codec: Any, card: dict) -> Starlette:
    """The Starlette app serving ``engine``'s model."""
    h = Handlers(engine, model, codec, {**card, "decoding": asdict(model.defaults), "context": model.context})
    return Starlette(
        routes=[
            Route("/health", h.health, methods=["GET"]),
            Route("/v1/models", h.models, methods=["GET"]),
            Route("/v1/chat/completions", h.chat, methods=["POST"]),
            Route("/v1/completions", h.completions, methods=["POST"]),
        ]
    )
