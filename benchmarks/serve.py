"""Serving speed: ``jaxtune serve`` under concurrent clients, against one client at a time and against the in-process
generator (what ``jaxtune eval`` decodes with) on the same prompts.

A random LLaMA of the flags' shape (the demo tokenizer's vocabulary and DoIT's tokens) is saved as a jaxtune
checkpoint and served on 127.0.0.1 with ``--rows`` rows; clients post one chat request each (DoIT's template;
greedy, ``max_tokens=--new-tokens``) from a process of their own (see :func:`client_set`). Aggregate generated tokens/s (completion
tokens as the server counts them, over the wall time of the whole set):

1. ``--clients`` clients at once against requests sent one at a time (the first ``--sequential`` of the same
   requests: tokens/s is a rate, and a set of 32 in a row would take most of the benchmark's time); target: >= 4x.
2. the server with all clients at once against ``Generator.generate`` on the same prompt ids, ``batch_size=--rows``,
   same max new tokens and stop ids (the same greedy replies, checked); target: the server at most 15% slower.

Each side is run once untimed first (compilation), then timed ``--repeats`` times alternating (so other load on
the machine falls on all alike); medians are reported beside ``os.getloadavg()``. The client process keeps one
HTTP client (its connections kept alive, as a real client's) across sets: building one is the client's time, not the
server's. With the defaults the whole benchmark took 136-149 s on 2 cores shared at a load of 8-10, 70 s on an idle
machine.

    .venv/bin/python benchmarks/serve.py
    .venv/bin/python benchmarks/serve.py --hidden 512 --layers 4 --clients 32 --new-tokens 64 --repeats 3
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench_common import add_model_args, model_config, timed

DOIT_ADDED = {"<user>": 1000, "<assistant>": 1001, "<eot>": 1002, "<pad>": 1003}


def _checkpoint(args: argparse.Namespace, root: Path) -> Path:
    from flax import nnx

    from jaxtune.checkpoint.params import save_params
    from jaxtune.demo import DEMO_TOKENIZER
    from jaxtune.models.llama import Llama

    cfg = model_config(args, max_position_embeddings=1024, compute_dtype="float32", initializer_range=0.2)
    model = Llama(cfg, nnx.Rngs(0))
    path = root / "ckpt"
    save_params(path, nnx.state(model, nnx.Param), cfg, tokenizer_dir=DEMO_TOKENIZER, added_tokens=DOIT_ADDED)
    return path


def _questions(n: int) -> list[str]:
    return [f"question number {i}: tell me about item {i * 7 % 13} and the {i}th colour" for i in range(n)]


_CLIENTS: dict = {}


def client_set(base_url: str, model: str, questions: list[str], max_tokens: int, at_once: bool):
    """(wall seconds, [(reply, completion tokens)]) of one set of requests, all at once or one at a time. Run in a
    process of its own: the clients' work does not share the server's interpreter. The clients post the OpenAI
    protocol's JSON with ``aiohttp``, coroutines on one event loop, as vLLM's serving benchmark does: the openai
    client's own work (about 1.5 ms of Python per request) made 32 clients in one process take 50 ms to send their
    requests, 8% of a set. (The tests talk to the server with the openai client.)"""
    import asyncio
    import time

    if base_url not in _CLIENTS:
        loop = asyncio.new_event_loop()
        # Made on the loop it runs on: its pool of kept-alive connections belongs to that loop.
        _CLIENTS[base_url] = loop, loop.run_until_complete(_session())
    loop, session = _CLIENTS[base_url]

    async def ask(q: str):
        body = {"model": model, "messages": [{"role": "user", "content": q}], "max_tokens": max_tokens,
                "temperature": 0}  # fmt: skip
        async with session.post(f"{base_url}/chat/completions", json=body) as r:
            r.raise_for_status()
            reply = await r.json()
        return reply["choices"][0]["message"]["content"], reply["usage"]["completion_tokens"]

    async def ask_all():
        if at_once:
            return await asyncio.gather(*(ask(q) for q in questions))
        return [await ask(q) for q in questions]

    start = time.perf_counter()
    out = loop.run_until_complete(ask_all())
    return time.perf_counter() - start, list(out)


async def _session():
    import aiohttp

    return aiohttp.ClientSession()


def close_clients() -> None:
    """Close the client process's sessions (run in it before it exits)."""
    for loop, session in _CLIENTS.values():
        loop.run_until_complete(session.close())
    _CLIENTS.clear()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(p, vocab=1004, hidden=256, layers=4, heads=8, mlp=688)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--sequential", type=int, default=8, help="requests of the one-at-a-time set")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.vocab != 1004:
        p.error("--vocab must be 1004 (the demo tokenizer's 1000 pieces and DoIT's 4 tokens)")

    from jaxtune.config.schema import EvalConfig
    from jaxtune.eval.generate import Generator
    from jaxtune.eval.loading import load_model
    from jaxtune.serve.server import RunningServer, free_port, load_for_serving

    began, load_before = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = _checkpoint(args, Path(tmp))
        eval_cfg = EvalConfig(batch_size=args.rows, max_new_tokens=args.new_tokens, max_prompt_len=64,
                              bucket_multiple=64, compute_dtype="float32")  # fmt: skip
        load_s, loaded = timed(lambda: load_for_serving(ckpt, eval_cfg, max_queue=4 * args.clients))
        codec = loaded.codec
        questions = _questions(args.clients)
        prompts = [codec.prompt_ids([{"role": "user", "content": q}]) for q in questions]
        generator = Generator(load_model(ckpt, compute_dtype="float32"), batch_size=args.rows, pad_id=0)

        clients = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        with RunningServer(loaded, port=free_port()) as server, clients:
            request = (server.base_url, loaded.model.id, questions, args.new_tokens)

            def together():
                return clients.submit(client_set, *request, True).result()

            def one_at_a_time():
                return clients.submit(client_set, *request[:2], questions[: args.sequential], args.new_tokens,
                                      False).result()  # fmt: skip

            def in_process():
                return timed(lambda: generator.generate(prompts, args.new_tokens, codec.stop_ids))

            runs: dict[str, list[float]] = {"together": [], "one_at_a_time": [], "in_process": []}
            sides = {"together": together, "one_at_a_time": one_at_a_time, "in_process": in_process}
            first = {name: fn()[1] for name, fn in sides.items()}  # compiles
            together()  # arrivals differ from run to run: a second pass meets the other prefill size
            served = [text for text, _ in first["together"]]
            expected = [codec.decode(g.tokens) for g in first["in_process"]]
            tokens = sum(n for _, n in first["together"])
            if served != expected or tokens != sum(len(g.tokens) for g in first["in_process"]):
                print("the server's replies differ from the generator's", file=sys.stderr)
                return 1
            if [text for text, _ in first["one_at_a_time"]] != served[: args.sequential]:
                print("the replies sent one at a time differ from those sent together", file=sys.stderr)
                return 1
            counts = {"together": tokens, "in_process": tokens}
            counts["one_at_a_time"] = sum(n for _, n in first["one_at_a_time"])
            for _ in range(args.repeats):
                for name, fn in sides.items():
                    runs[name].append(fn()[0])
            clients.submit(close_clients).result()
        load = os.getloadavg()
        rate = {name: counts[name] / statistics.median(times) for name, times in runs.items()}
        print(f"model: hidden {args.hidden}, layers {args.layers}, heads {args.heads}, vocab {args.vocab}; "
              f"{args.clients} requests of up to {args.new_tokens} tokens ({tokens} generated; {args.sequential} of "
              f"them one at a time), {args.rows} rows; "
              f"load and compile {load_s:.1f} s")  # fmt: skip
        print(f"os.getloadavg() (1, 5, 15 min) before: {' '.join(f'{x:.2f}' for x in load_before)}, after: "
              f"{' '.join(f'{x:.2f}' for x in load)} on {os.cpu_count()} CPUs")  # fmt: skip
        for name in runs:
            times = ", ".join(f"{t:.2f}" for t in runs[name])
            print(f"  {name:14s} {rate[name]:8.1f} tokens/s   (s per set: {times}; median of {len(runs[name])})")
        ratio = rate["together"] / rate["one_at_a_time"]
        overhead = 1 - rate["together"] / rate["in_process"]
        print(f"{args.clients} clients at once vs one at a time: {ratio:.2f}x (target >= 4x)")
        print(f"server vs in-process generator: {100 * overhead:+.1f}% slower (target <= 15%)")
        print(f"benchmark wall time {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
