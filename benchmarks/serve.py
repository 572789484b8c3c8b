"""Serving speed: ``jaxtune serve`` under concurrent clients, against one client at a time and against the in-process
generator (what ``jaxtune eval`` decodes with) on the same prompts.

A random LLaMA of the flags' shape (the demo tokenizer's vocabulary and DoIT's tokens) is saved as a jaxtune
checkpoint and served on 127.0.0.1 with ``--rows`` rows; clients are the official ``openai`` client, greedy,
``max_tokens=--new-tokens``, one chat request each (DoIT's template). Aggregate generated tokens/s (completion
tokens as the server counts them, over the wall time of the whole set):

1. ``--clients`` clients at once against the same requests sent one at a time; target: >= 4x.
2. the server with all clients at once against ``Generator.generate`` on the same prompt ids, ``batch_size=--rows``,
   same max new tokens and stop ids (the same greedy replies, checked); target: the server at most 15% slower.

Each side is run once untimed first (compilation), then timed ``--repeats`` times alternating (so other load on
the machine falls on both alike); medians are reported beside ``os.getloadavg()``.

    .venv/bin/python benchmarks/serve.py
    .venv/bin/python benchmarks/serve.py --hidden 512 --layers 4 --clients 32 --new-tokens 64 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_common import add_model_args, model_config, timed

DOIT_ADDED = {"<user>": 1000, "<assistant>": 1001, "<eot>": 1002, "<pad>": 1003}


def _checkpoint(args: argparse.Namespace, root: Path) -> Path:
    from flax import nnx

    from jaxtune.checkpoint.train_state import save_params
    from jaxtune.demo import DEMO_TOKENIZER
    from jaxtune.models.llama import Llama

    cfg = model_config(args, max_position_embeddings=1024, compute_dtype="float32", initializer_range=0.2)
    model = Llama(cfg, nnx.Rngs(0))
    path = root / "ckpt"
    save_params(path, nnx.state(model, nnx.Param), cfg, tokenizer_dir=DEMO_TOKENIZER, added_tokens=DOIT_ADDED)
    return path


def _questions(n: int) -> list[str]:
    return [f"question number {i}: tell me about item {i * 7 % 13} and the {i}th colour" for i in range(n)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(p, vocab=1004, hidden=256, layers=4, heads=8, mlp=688)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.vocab != 1004:
        p.error("--vocab must be 1004 (the demo tokenizer's 1000 pieces and DoIT's 4 tokens)")

    import openai

    from jaxtune.config.schema import EvalConfig
    from jaxtune.eval.generate import Generator
    from jaxtune.eval.loading import load_model
    from jaxtune.serve.server import RunningServer, free_port, load_for_serving

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = _checkpoint(args, Path(tmp))
        eval_cfg = EvalConfig(batch_size=args.rows, max_new_tokens=args.new_tokens, max_prompt_len=64,
                              bucket_multiple=64, compute_dtype="float32")  # fmt: skip
        load_s, loaded = timed(lambda: load_for_serving(ckpt, eval_cfg, max_queue=4 * args.clients))
        codec = loaded.codec
        questions = _questions(args.clients)
        prompts = [codec.prompt_ids([{"role": "user", "content": q}]) for q in questions]
        generator = Generator(load_model(ckpt, compute_dtype="float32"), batch_size=args.rows, pad_id=0)

        with RunningServer(loaded, port=free_port()) as server:
            client = openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=600, max_retries=0)

            def ask(q: str):
                r = client.chat.completions.create(model=loaded.model.id, messages=[{"role": "user", "content": q}],
                                                   max_tokens=args.new_tokens, temperature=0)  # fmt: skip
                return r.choices[0].message.content, r.usage.completion_tokens

            def together():
                with ThreadPoolExecutor(args.clients) as pool:
                    return list(pool.map(ask, questions))

            def one_at_a_time():
                return [ask(q) for q in questions]

            def in_process():
                return generator.generate(prompts, args.new_tokens, codec.stop_ids)

            runs: dict[str, list[float]] = {"together": [], "one_at_a_time": [], "in_process": []}
            sides = {"together": together, "one_at_a_time": one_at_a_time, "in_process": in_process}
            first = {name: fn() for name, fn in sides.items()}  # compiles
            served = [text for text, _ in first["together"]]
            expected = [codec.decode(g.tokens) for g in first["in_process"]]
            tokens = sum(n for _, n in first["together"])
            if served != expected or tokens != sum(len(g.tokens) for g in first["in_process"]):
                print("the server's replies differ from the generator's", file=sys.stderr)
                return 1
            for _ in range(args.repeats):
                for name, fn in sides.items():
                    runs[name].append(timed(fn)[0])
        load = os.getloadavg()
        rate = {name: tokens / statistics.median(times) for name, times in runs.items()}
        print(f"model: hidden {args.hidden}, layers {args.layers}, heads {args.heads}, vocab {args.vocab}; "
              f"{args.clients} requests of up to {args.new_tokens} tokens ({tokens} generated), {args.rows} rows; "
              f"load and compile {load_s:.1f} s")  # fmt: skip
        print(f"load average (1, 5, 15 min) after the runs: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
              f"on {os.cpu_count()} CPUs")  # fmt: skip
        for name in runs:
            times = ", ".join(f"{t:.2f}" for t in runs[name])
            print(f"  {name:14s} {rate[name]:8.1f} tokens/s   (s per set: {times})")
        ratio = rate["together"] / rate["one_at_a_time"]
        overhead = 1 - rate["together"] / rate["in_process"]
        print(f"{args.clients} clients at once vs one at a time: {ratio:.2f}x (target >= 4x)")
        print(f"server vs in-process generator: {100 * overhead:+.1f}% slower (target <= 15%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
