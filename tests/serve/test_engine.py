"""The engine's plans. On a pod slice, without a second process: a failed step is broadcast with the next plan and
every process (process 0 and a follower replaying the same plans) starts its batch anew alike; a follower whose
step failed where process 0's did not gives up instead of serving from rows out of step. And how many tokens a plan
decodes: long device calls only when no request could join sooner and none is streamed."""

from __future__ import annotations

import threading

import openai
import pytest
from flax import nnx

from jaxtune.serve import engine as engine_module
from jaxtune.serve.engine import Batch, Engine
from jaxtune.serve.plan import Admission, Plan
from jaxtune.serve.request import Decoding, ServeRequest

from .conftest import CONTEXT

pytestmark = pytest.mark.timeout(300)


def _ask(server, question: str, **kw):
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=60, max_retries=0)
    return client.chat.completions.create(
        model=server.loaded.model.id, messages=[{"role": "user", "content": question}], **kw
    )


def _twin(batch: Batch) -> Batch:
    """Another process's batch: the same model and settings (the programs are shared, nothing compiles)."""
    return Batch(nnx.merge(batch.graphdef, batch.state), rows=batch.rows, context=batch.context, steps=batch.steps,
                 max_steps=batch.max_steps, bucket_multiple=batch.bucket_multiple,
                 stop_ids=[int(i) for i in batch.stop_table if i >= 0], known_ids=batch.known_ids)  # fmt: skip


def _replaying(plans: list[Plan]):
    """A ``share_plan`` that gives this thread ``plans`` one by one (a follower's broadcasts) and leaves the session
    server's engine thread, which may still plan meanwhile, to its own."""
    replay, me = iter(plans), threading.get_ident()
    return lambda plan: next(replay) if threading.get_ident() == me else plan


def _failing_once(batch: Batch, resets: list[int]):
    """``batch.run`` that raises after applying the first plan admitting a prompt (its rows then hold it), and
    counts the resets plans ask for; returns the outputs of every plan that went through."""
    run, reset, outputs, failed = batch.run, batch.reset, [], []

    def counted_reset():
        resets.append(len(outputs))
        reset()

    def broken_once(plan: Plan):
        out = run(plan)
        if plan.admit and not failed:
            failed.append(True)
            raise RuntimeError("device lost")
        outputs.append(out)
        return out

    batch.reset, batch.run = counted_reset, broken_once
    return outputs


def test_a_failed_step_resets_every_process_with_the_next_plan(server, monkeypatch):
    lead = server.loaded.engine.batch
    follower = _twin(lead)
    plans: list[Plan] = []
    lock = threading.Lock()

    def record(plan: Plan) -> Plan:
        with lock:
            plans.append(plan)
        return plan

    monkeypatch.setattr(engine_module, "share_plan", record)
    lead_resets: list[int] = []
    monkeypatch.setattr(lead, "run", lead.run)  # restored afterwards: the wrappers below replace both
    monkeypatch.setattr(lead, "reset", lead.reset)
    lead_outputs = _failing_once(lead, lead_resets)
    with pytest.raises(openai.InternalServerError, match="device lost"):
        _ask(server, "hi", max_tokens=4)
    after = _ask(server, "hi again", max_tokens=6).choices[0].message.content
    monkeypatch.setattr(engine_module, "share_plan", lambda plan: plan)
    with lock:
        shared = list(plans)
    failed_at = next(i for i, p in enumerate(shared) if p.admit)
    assert [i for i, p in enumerate(shared) if p.reset] == [failed_at + 1]
    assert lead_resets == [failed_at]  # process 0 reset when it applied that plan, not on its own

    # A follower replays the same plans, its step failing alike: it resets at the same plan and then produces
    # what process 0 produced.
    follower_resets: list[int] = []
    follower_outputs = _failing_once(follower, follower_resets)
    monkeypatch.setattr(engine_module, "share_plan", _replaying(shared + [Plan(shutdown=True)]))
    Engine(follower).follow()
    assert follower_resets == lead_resets
    assert follower_outputs == lead_outputs[: len(follower_outputs)] and len(follower_outputs) == len(shared) - 1
    assert not follower.alive.any() and after


def test_a_follower_out_of_step_with_process_0_gives_up(monkeypatch):
    class Failing:
        rows = 1

        def run(self, plan):
            raise RuntimeError("device lost")

    monkeypatch.setattr(engine_module, "share_plan", _replaying([Plan(), Plan(), Plan(shutdown=True)]))
    with pytest.raises(RuntimeError, match="out of step"):
        Engine(Failing()).follow()


def _plan_steps(requests: list[ServeRequest], rows: int = 2) -> tuple[int, bool]:
    class Rows:  # what the engine's planning reads of its batch
        steps, max_steps = 8, 32

    Rows.rows = rows
    engine = Engine(Rows(), admit_window_s=0.001)
    for request in requests:
        engine.submit(request)
    plan = engine._plan()
    return plan.steps, plan.waiting


def test_long_device_calls_only_when_nobody_could_join_sooner_or_reads_the_tokens():
    def request(stream: bool = False) -> ServeRequest:
        return ServeRequest([1, 2], Decoding(max_tokens=40), lambda event: None, lambda ids: "", stream=stream)

    assert _plan_steps([request(), request()]) == (32, False)  # every row busy, nothing streamed
    assert _plan_steps([request()]) == (8, False)  # a free row: a request arriving soon joins within 8 tokens
    assert _plan_steps([request(), request(stream=True)]) == (8, False)  # a stream reads every 8 tokens
    assert _plan_steps([request(), request(), request()]) == (8, True)  # one waits for a row to free


def test_the_cache_grows_with_the_longest_row_and_is_cut_when_it_ends(random_checkpoint):
    # Rows admitted at different times, one reaching past 96 slots: every reply equals the generator's (whose cache
    # grows its own way), the cache grows through the sizes the live rows need and is cut once the long row ends.
    from jaxtune.eval.generate import Generator
    from jaxtune.eval.loading import load_model

    model = load_model(random_checkpoint, compute_dtype="float32")
    batch = Batch(model, rows=2, context=CONTEXT, steps=8, max_steps=32, bucket_multiple=32, stop_ids=[])
    long, short = tuple(range(3, 43)), (5, 6, 7)  # 40 and 3 prompt tokens
    admitted = {0: (long, 70), 1: (short, 20)}  # slot: (prompt, max_tokens); row 0 fills 40 + 70 - 1 = 109 slots
    replies, lengths = {0: [], 1: []}, []

    def run(plan: Plan) -> None:
        for slot, (tokens, _) in batch.run(plan).items():
            replies[slot] += tokens
        lengths.append(batch.device.cache.length)

    run(Plan(admit=(Admission(0, long, 0.0, 0, 1.0, 1.0, 0, 70),), steps=8))
    run(Plan(steps=32))
    run(Plan(admit=(Admission(1, short, 0.0, 0, 1.0, 1.0, 0, 20),), steps=8))
    while batch.alive.any():
        run(Plan(steps=32))
    generator = Generator(model, batch_size=2, pad_id=0)
    for slot, (prompt, max_tokens) in admitted.items():
        assert replies[slot] == list(generator.generate([prompt], max_tokens, [])[0].tokens), slot
    assert lengths[0] == 64 and 96 in lengths and max(lengths) == 128, lengths
    grown = lengths[: lengths.index(128) + 1]
    assert grown == sorted(grown), lengths
    before = len(replies[1])
    run(Plan(admit=(Admission(1, short, 0.0, 0, 1.0, 1.0, 0, 20),), steps=8))  # the long row has ended
    assert batch.device.cache.length == 64 and replies[1][before:] == replies[1][: len(replies[1]) - before]
