"""The protocol's checks without HTTP: each bad field is named, the context bounds prompt + max_tokens, and the
server's defaults fill what a request leaves out."""

from __future__ import annotations

import pytest

from jaxtune.serve.openai_api import ApiError, ServedModel, chat_messages, parse
from jaxtune.serve.request import Decoding

MODEL = ServedModel(id="ck@sha256:abc", checkpoint="ck", context=100, defaults=Decoding(max_tokens=30, top_k=30))


def _parse(prompt_tokens: int = 10, **body):
    return parse({"model": "ck", "prompt": "x", **body}, MODEL, lambda b: list(range(prompt_tokens)))


def test_defaults_and_overrides():
    parsed = _parse()
    assert parsed.decoding == Decoding(max_tokens=30, top_k=30) and not parsed.stream
    assert _parse(95).decoding.max_tokens == 5  # what the context leaves
    d = _parse(temperature=0.5, top_p=0.9, top_k=0, repetition_penalty=1.2, seed=-1, stop="##", max_tokens=7).decoding
    assert d == Decoding(max_tokens=7, temperature=0.5, top_p=0.9, top_k=0, repetition_penalty=1.2, seed=2**32 - 1,
                         stop=("##",))  # fmt: skip
    assert _parse(max_completion_tokens=3).decoding.max_tokens == 3
    assert _parse(stream=True, stream_options={"include_usage": True}).include_usage


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"model": "other"}, 404, None),
        ({"max_tokens": 0}, 400, "max_tokens"),
        ({"max_tokens": 91}, 400, "max_tokens"),
        ({"max_tokens": 2.5}, 400, "max_tokens"),
        ({"temperature": "hot"}, 400, "temperature"),
        ({"top_p": 0}, 400, "top_p"),
        ({"top_k": -1}, 400, "top_k"),
        ({"repetition_penalty": 0}, 400, "repetition_penalty"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"n": 2}, 400, "n"),
    ],
)
def test_bad_fields_are_named(body, status, param):
    with pytest.raises(ApiError) as e:
        _parse(**body)
    assert e.value.status == status and e.value.body()["error"]["param"] == param


def test_the_context_bounds_the_prompt():
    with pytest.raises(ApiError, match="the prompt has 100 tokens; the model's context holds 100") as e:
        _parse(100)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(ApiError, match="lower max_tokens to at most 10"):
        _parse(90, max_tokens=11)


def test_messages():
    assert chat_messages({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text",
                         "text": "b"}]}]}) == [{"role": "user", "content": "ab"}]  # fmt: skip
    for bad in ([], [{"role": "user"}], [{"role": "user", "content": [{"type": "image_url"}]}], "hi"):
        with pytest.raises(ApiError):
            chat_messages({"messages": bad})
    with pytest.raises(ApiError, match="JSON object"):
        parse([1], MODEL, lambda b: [1])
