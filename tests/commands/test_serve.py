"""The ``serve`` and ``chat`` sub-parsers: registered on the ``jaxtune`` command with their flags, bound to their
functions."""

from __future__ import annotations

from jaxtune.cli import build_parser
from jaxtune.commands import chat, serve


def test_serve_and_chat_are_registered():
    args = build_parser().parse_args(["serve", "ck", "eval.temperature=0.3", "--port", "9001", "--max-queue", "3"])
    assert args.fn is serve.run and (args.checkpoint, args.port, args.max_queue) == ("ck", 9001, 3)
    assert args.host == "127.0.0.1" and args.overrides == ["eval.temperature=0.3"]
    args = build_parser().parse_args(["chat", "ck", "--rows", "2", "--context", "512"])
    assert args.fn is chat.run and (args.rows, args.context) == (2, 512)
