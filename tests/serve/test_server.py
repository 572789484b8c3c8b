"""The real server on 127.0.0.1 with a tiny model, the official ``openai`` client as its client: greedy replies
equal ``jaxtune eval``'s generation, a stream equals the whole reply, the settings are honoured, and bad requests
get their HTTP errors while the server keeps serving without leaking rows."""

from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from jaxtune.eval.language_model import JaxLanguageModel
from jaxtune.eval.loading import load_codec, load_model, tokenizer_location

from .conftest import CONTEXT, ROWS

pytestmark = pytest.mark.timeout(300)

QUESTIONS = ["what is two plus two", "name a colour", "write one word", "say hello"]


def _client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=60, max_retries=0)


def _ask(server, question: str, **kw):
    return _client(server).chat.completions.create(
        model=server.loaded.model.id, messages=[{"role": "user", "content": question}], **kw
    )


def _rows_free(server, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.loaded.engine.rows_in_use() == 0 and server.loaded.engine.queued() == 0:
            return True
        time.sleep(0.05)
    return False


def test_greedy_replies_equal_eval_generation(server, random_checkpoint):
    codec = load_codec(tokenizer_location(random_checkpoint), "doit", 1004)
    lm = JaxLanguageModel(load_model(random_checkpoint, compute_dtype="float32"), batch_size=ROWS, bucket_multiple=32)
    prompts = [codec.prompt_ids([{"role": "user", "content": q}]) for q in QUESTIONS]
    expected = [codec.decode(g.tokens) for g in lm.generate(prompts, 24, codec.stop_ids)]
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:  # together: they share the batch
        replies = list(pool.map(lambda q: _ask(server, q, max_tokens=24), QUESTIONS))
    assert [r.choices[0].message.content for r in replies] == expected
    for r, p in zip(replies, prompts):
        assert r.usage.prompt_tokens == len(p) and 1 <= r.usage.completion_tokens <= 24
        assert r.choices[0].finish_reason in ("stop", "length")
    assert _rows_free(server)


def test_a_stream_equals_the_whole_reply(server):
    whole = _ask(server, QUESTIONS[0], max_tokens=20)
    chunks = list(_ask(server, QUESTIONS[0], max_tokens=20, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2  # streamed, not in one piece


def test_completions_models_and_health(server):
    client = _client(server)
    done = client.completions.create(model=str(server.loaded.model.checkpoint), prompt="one two three", max_tokens=5)
    assert done.usage.completion_tokens <= 5 and done.choices[0].finish_reason in ("stop", "length")
    (entry,) = client.models.list().data
    assert entry.id == server.loaded.model.id and entry.id.endswith("@sha256:" + entry.checkpoint_sha256[:12])
    assert entry.context == CONTEXT and entry.decoding["temperature"] == 0.0 and entry.template == "doit"
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    connection.request("GET", "/health")
    assert json.loads(connection.getresponse().read())["status"] == "ok"


def test_settings_are_honoured(server):
    greedy = _ask(server, QUESTIONS[1], max_tokens=12).choices[0].message.content
    extra = {"top_k": 50, "repetition_penalty": 1.3}
    first, again, other = (
        _ask(server, QUESTIONS[1], max_tokens=12, temperature=1.5, top_p=0.95, seed=seed, extra_body=extra)
        for seed in (7, 7, 8)
    )
    assert first.choices[0].message.content == again.choices[0].message.content  # one seed, one reply
    assert {greedy, other.choices[0].message.content} != {first.choices[0].message.content}
    one = _ask(server, QUESTIONS[1], max_tokens=1)
    assert one.usage.completion_tokens == 1
    # A stop string cuts the reply before it and ends it with reason "stop".
    words = greedy.split()
    if len(words) > 1:
        cut = _ask(server, QUESTIONS[1], max_tokens=12, stop=[words[1]])
        assert cut.choices[0].message.content == greedy[: greedy.find(words[1])]
        assert cut.choices[0].finish_reason == "stop"
    assert _rows_free(server)


def _raw(server, body: bytes | str, path: str = "/v1/chat/completions") -> tuple[int, dict]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def test_bad_requests_get_their_errors_and_the_server_keeps_serving(server):
    model = server.loaded.model.id
    status, body = _raw(server, b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        _client(server).chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    long = " ".join(["word"] * CONTEXT)
    with pytest.raises(openai.BadRequestError, match="context holds") as e:
        _ask(server, long)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="'max_tokens' must be at least 1"):
        _ask(server, "hi", max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="lower max_tokens to at most"):
        _ask(server, "hi", max_tokens=CONTEXT)
    status, body = _raw(server, json.dumps({"model": model, "messages": []}))
    assert status == 400 and body["error"]["param"] == "messages"
    status, body = _raw(server, json.dumps({"model": model, "prompt": "x", "temperature": -1}), "/v1/completions")
    assert status == 400 and body["error"]["param"] == "temperature"
    assert _rows_free(server)
    assert _ask(server, "still there?", max_tokens=4).usage.completion_tokens >= 1


def test_a_full_queue_answers_429(server):
    engine = server.loaded.engine
    engine.max_queue, before = 0, engine.max_queue
    try:
        with pytest.raises(openai.RateLimitError, match="busy"):
            _ask(server, "hi", max_tokens=4)
    finally:
        engine.max_queue = before
    assert _ask(server, "hi", max_tokens=4).usage.completion_tokens >= 1


def test_a_client_leaving_mid_stream_frees_its_row(server):
    engine = server.loaded.engine
    steps = engine.steps_run
    body = {"model": server.loaded.model.id, "messages": [{"role": "user", "content": "go"}], "stream": True,
            "max_tokens": CONTEXT - 32, "temperature": 1.0, "seed": 3}  # fmt: skip
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    connection.request("POST", "/v1/chat/completions", body=json.dumps(body))
    response = connection.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: ")  # the stream began
    connection.sock.close()
    connection.close()
    assert _rows_free(server)
    assert engine.steps_run > steps
    assert _ask(server, "next", max_tokens=4).usage.completion_tokens >= 1


def test_a_failed_engine_step_fails_its_requests_and_the_server_goes_on(server, monkeypatch):
    batch = server.loaded.engine.batch
    run = batch.run

    def broken_once(plan):
        if not plan.admit:  # a step that only frees rows
            return run(plan)
        monkeypatch.setattr(batch, "run", run)
        raise RuntimeError("device lost")

    monkeypatch.setattr(batch, "run", broken_once)
    with pytest.raises(openai.InternalServerError, match="device lost"):
        _ask(server, "hi", max_tokens=4)
    assert _rows_free(server)
    assert _ask(server, "hi again", max_tokens=4).usage.completion_tokens >= 1


def test_the_serve_command_loads_onto_the_mesh(server, random_checkpoint):
    """``jaxtune serve``'s loading: the config's overrides, the mesh over every (here 8 CPU) device, the batch's rows
    sharded over it; its greedy replies equal the unsharded server's."""
    import queue

    from jaxtune.cli import build_parser
    from jaxtune.commands import serve as serve_command
    from jaxtune.serve.request import Decoding, ServeRequest

    argv = ["serve", str(random_checkpoint), "eval.batch_size=8", "eval.max_new_tokens=16", "eval.max_prompt_len=48",
            "eval.compute_dtype=float32", "eval.bucket_multiple=32"]  # fmt: skip
    loaded = serve_command.load(build_parser().parse_args(argv))
    assert loaded.engine.batch.mesh is not None and loaded.engine.batch.mesh.size == 8
    assert loaded.model.context == 64 and loaded.card["template"] == "doit"
    events: queue.Queue = queue.Queue()
    jobs = [ServeRequest(loaded.codec.prompt_ids([{"role": "user", "content": q}]), Decoding(max_tokens=16),
                         events.put, loaded.codec.decode, stop_ids=frozenset(loaded.codec.stop_ids))
            for q in QUESTIONS]  # fmt: skip
    loaded.engine.start()
    try:
        for job in jobs:
            loaded.engine.submit(job)
        for _ in jobs:
            while events.get(timeout=240).kind == "delta":
                pass
    finally:
        loaded.engine.stop()
    texts = [loaded.codec.decode(job.tokens) for job in jobs]
    assert texts == [_ask(server, q, max_tokens=16).choices[0].message.content for q in QUESTIONS]
