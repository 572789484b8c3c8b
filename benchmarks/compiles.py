"""Programs compiled per epoch under the study's batching: every multiple of 8 against length buckets, the padding
each costs, and what a warm persistent compilation cache leaves to compile.

A DoIT-like workload: ``--examples`` lengths drawn log-normally (median ``--median`` tokens) and clipped to the
study's spread, 20 to 2048 tokens; one shuffled epoch in global batches of ``--batch`` examples, each example left
padded to its batch's row length. A batch's length is its longest example rounded up to 8 (the study's
``pad_to_multiple: 8``) or the smallest of ``--buckets`` that holds it (``data.length_buckets``); every distinct
length is one compile of the train step. The script compiles the real train step (jaxtune.train.step through
``jaxtune plan``'s ahead-of-time path, a tiny LLaMA on one CPU device) at every length the epoch meets, counting
fresh compiles and their seconds with jaxtune.runtime.compiles.CompileCounter (JAX's monitoring events), first with
an empty persistent cache and then again, freshly built, with the cache warm. It also counts the lengths of the
study's largest run (``--study-examples`` 10,000 examples, batch 64, 15 epochs) without compiling them.

Targets: bucketed programs per epoch <= the number of buckets; padding tokens <= 1.25 x those of exact-length
batches; 0 fresh train-step compiles with the warm cache.

    .venv/bin/python benchmarks/compiles.py                  # 600 examples, batch 64 (the study's)
    .venv/bin/python benchmarks/compiles.py --examples 600 --batch 8 --buckets 256,512,1024,1536,2048
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--median", type=float, default=300.0, help="median example length in tokens")
    p.add_argument("--buckets", default="256,512,1024,1536,2048")
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--study-examples", type=int, default=10_000)
    p.add_argument("--no-compile", action="store_true", help="count lengths and padding only")
    return p.parse_args()


def doit_like_lengths(n: int, median: float, max_len: int, seed: int) -> np.ndarray:
    """Example lengths with the study's spread: log-normal around ``median``, clipped to [20, max_len]."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(median), 0.9, n), 20, max_len).astype(np.int64)


def batch_longest(lengths: np.ndarray, batch: int, seed: int) -> np.ndarray:
    """The longest example of each global batch of one shuffled epoch."""
    order = np.random.default_rng(seed + 1).permutation(len(lengths))
    shuffled = lengths[order]
    return np.array([shuffled[i : i + batch].max() for i in range(0, len(shuffled), batch)])


def row_lengths(longest: np.ndarray, how: str, buckets: list[int], max_len: int) -> np.ndarray:
    if how == "exact":
        return longest
    if how == "multiple of 8":
        return -(-longest // 8) * 8
    return np.array([next((b for b in buckets if b >= x), max_len) for x in longest])


def padding(lengths: np.ndarray, batch: int, seed: int, rows: np.ndarray) -> tuple[int, int]:
    """(padding tokens, token slots) of the epoch: every example (and each last batch's empty rows) padded."""
    slots = int(sum(rows[i] * batch for i in range(len(rows))))
    return slots - int(lengths.sum()), slots


def compile_lengths(distinct: list[int], batch: int, cache: str) -> tuple[int, float, int]:
    """Compile the tiny model's train step at each length; (fresh compiles, their seconds, cache hits)."""
    import jax

    from jaxtune.commands.plan import compiled_train_step
    from jaxtune.config.loading import load_config
    from jaxtune.runtime.compiles import CompileCounter, use_compilation_cache

    use_compilation_cache(cache, min_compile_secs=0.0)
    cfg = load_config(
        None,
        [
            "model.preset=tiny",
            "model.num_layers=2",
            "model.hidden_size=64",
            "model.num_heads=4",
            "model.intermediate_size=128",
            "model.vocab_size=512",
            "model.max_position_embeddings=2048",
            "data.max_len=2048",
            f"train.global_batch_size={batch}",
            "mesh.fsdp=1",
        ],
    )
    with CompileCounter() as counter, counter.program("train_step", function="step"):  # not the helpers
        for length in distinct:
            est, compiled = compiled_train_step(cfg, jax.devices()[:1], length=length)
            assert compiled is not None, est.error
    p = counter.programs.get("train_step")
    return (p.compiles, p.seconds, p.cache_hits) if p else (0, 0.0, 0)


def main() -> None:
    args = parse_args()
    buckets = [int(b) for b in args.buckets.split(",")]
    lengths = doit_like_lengths(args.examples, args.median, args.max_len, args.seed)
    longest = batch_longest(lengths, args.batch, args.seed)
    print(
        f"workload: {args.examples} examples, lengths {lengths.min()}..{lengths.max()} (median "
        f"{int(np.median(lengths))}), batch {args.batch}: {len(longest)} steps per epoch"
    )
    exact_pad = None
    results = {}
    for how in ("exact", "multiple of 8", "buckets"):
        rows = row_lengths(longest, how, buckets, args.max_len)
        pad, slots = padding(lengths, args.batch, args.seed, rows)
        exact_pad = pad if exact_pad is None else exact_pad
        results[how] = sorted(set(rows.tolist()))
        print(
            f"  {how:14s} {len(results[how]):4d} distinct lengths (programs); padding {pad:>10,d} of {slots:>11,d} "
            f"slots = {100 * pad / slots:5.1f}%, x{pad / exact_pad:.3f} the exact-length batches' padding"
        )
    study = doit_like_lengths(args.study_examples, args.median, args.max_len, args.seed)
    seen8, seenb = set(), set()
    for epoch in range(15):
        lo = batch_longest(study, 64, args.seed + 100 * epoch)
        seen8 |= set(row_lengths(lo, "multiple of 8", buckets, args.max_len).tolist())
        seenb |= set(row_lengths(lo, "buckets", buckets, args.max_len).tolist())
    print(
        f"the study's largest run ({args.study_examples} examples, batch 64, 15 epochs): {len(seen8)} train-step "
        f"programs at multiples of 8, {len(seenb)} with buckets {buckets}"
    )
    if args.no_compile:
        return
    with tempfile.TemporaryDirectory() as cache:
        for how in ("multiple of 8", "buckets"):
            started = time.perf_counter()
            fresh, seconds, hits = compile_lengths(results[how], args.batch, str(Path(cache) / how.replace(" ", "_")))
            print(
                f"  compiled ({how}): {fresh} train-step programs, {seconds:.1f} s compiling "
                f"({time.perf_counter() - started:.1f} s in all), {hits} from the cache"
            )
        started = time.perf_counter()
        fresh, seconds, hits = compile_lengths(results["buckets"], args.batch, str(Path(cache) / "buckets"))
        print(
            f"  warm cache (buckets, built again): {fresh} fresh compiles ({seconds:.1f} s), {hits} read from the "
            f"cache ({time.perf_counter() - started:.1f} s in all)"
        )


if __name__ == "__main__":
    main()
