"""``jaxtune chat``'s loop on the real engine: replies streamed to the terminal, the history carried into the next
prompt, /reset and /exit."""

from __future__ import annotations

import io

import pytest

from jaxtune.serve.chat import chat_loop

pytestmark = pytest.mark.timeout(300)


def test_a_conversation(server):
    loaded = server.loaded
    lines = iter(["hello", "", "and again", "/reset", "/exit", "never read"])
    out = io.StringIO()
    prompts = []
    encode = loaded.codec.prompt_ids

    def spy(messages):
        prompts.append([dict(m) for m in messages])
        return encode(messages)

    loaded.codec.prompt_ids = spy
    try:
        assert chat_loop(loaded, read=lambda _: next(lines), out=out) == 0
    finally:
        loaded.codec.prompt_ids = encode
    assert next(lines) == "never read"
    first, second = prompts
    assert first == [{"role": "user", "content": "hello"}]
    assert second[:2] == [first[0], {"role": "assistant", "content": second[1]["content"]}] and len(second) == 3
    text = out.getvalue()
    assert second[1]["content"] in text and "(conversation forgotten)" in text
    assert loaded.engine.rows_in_use() == 0
