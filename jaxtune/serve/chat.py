"""``jaxtune chat``: a terminal conversation with a checkpoint, its replies streamed as they are decoded.

The engine runs in process (no HTTP); each reply is the checkpoint's template applied to the whole history.
Lines starting with ``/`` are commands: ``/reset`` forgets the history, ``/exit`` (or end of input) leaves. A
conversation that no longer fits the context forgets its oldest turns first.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import TextIO

from jaxtune.serve.openai_api import ApiError, ServedModel, decoding_of
from jaxtune.serve.request import Event, ServeRequest
from jaxtune.serve.server import Loaded

HELP = "type a message; /reset forgets the conversation, /exit leaves"


def reply(loaded: Loaded, history: list[dict[str, str]], out: TextIO, timeout_s: float = 600.0) -> str:
    """Stream the model's reply to ``history`` (ending with the user's turn) to ``out``; the reply's text. The
    oldest turns are dropped while the prompt leaves no room to answer."""
    model: ServedModel = loaded.model
    while True:
        prompt = loaded.codec.prompt_ids(history)
        try:
            decoding = decoding_of({}, model, len(prompt))
            break
        except ApiError:
            if len(history) <= 1:
                raise
            del history[: 2 if len(history) > 2 else 1]
    events: queue.Queue[Event] = queue.Queue()
    stop_ids = frozenset(int(i) for i in loaded.codec.stop_ids)
    job = ServeRequest(prompt, decoding, events.put, loaded.codec.decode, stop_ids=stop_ids, stream=True)
    loaded.engine.submit(job)
    parts = []
    try:
        while True:
            event = events.get(timeout=timeout_s)
            if event.kind == "delta":
                parts.append(event.text)
                out.write(event.text)
                out.flush()
            elif event.kind == "error":
                raise RuntimeError(event.text)
            else:
                break
    finally:
        job.cancel()
    out.write("\n")
    return "".join(parts)


def chat_loop(loaded: Loaded, read: Callable[[str], str] = input, out: TextIO | None = None) -> int:
    """Read user turns with ``read`` until /exit or end of input; 0 when left normally."""
    import sys

    out = out or sys.stdout
    out.write(f"chatting with {loaded.model.id} ({HELP})\n")
    history: list[dict[str, str]] = []
    while True:
        try:
            line = read("> ")
        except EOFError:
            return 0
        text = line.strip()
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history.clear()
            out.write("(conversation forgotten)\n")
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        try:
            answer = reply(loaded, history, out)
        except ApiError as e:  # a message longer than the context on its own
            history.pop()
            out.write(f"(not sent: {e.message})\n")
            continue
        history.append({"role": "assistant", "content": answer})
