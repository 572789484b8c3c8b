"""Format-1 scoring speed: jaxtune's prefix-cached likelihood scorer against scoring every ``context + choice`` row
in full (how jaxtune scored before: the shared context computed once per choice), same model, same run.

A DoIT-like format-1 test split: ``--items`` items, each a context of ``--min-context`` to ``--max-context`` tokens
(log-uniform) and three choices of 1 to ``--max-choice`` tokens. Both sides score every (context, choice) pair in
float32 on the CPU with the same batch size and length buckets; the per-row side is the previous implementation
(rows sorted by length, right-padded to a bucket, one forward pass each, cross-entropy over the choice tokens).
Timed in alternating blocks, medians reported; the script exits with status 1 unless every log-perplexity agrees
within 1e-5. Target: prefix-cached >= 2x per-row.

    .venv/bin/python benchmarks/likelihood.py
    .venv/bin/python benchmarks/likelihood.py --items 128 --batch-size 16 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import add_model_args, model_config, timed


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=64, help="format-1 items (three choices each)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--min-context", type=int, default=40)
    p.add_argument("--max-context", type=int, default=400)
    p.add_argument("--max-choice", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3, help="rounds of alternating blocks")
    add_model_args(p, vocab=49957, hidden=256, layers=4, heads=8, mlp=688)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxtune.eval.batching import bucket_length
    from jaxtune.eval.likelihood import LikelihoodScorer, right_pad
    from jaxtune.models.llama import Llama

    cfg = model_config(args, max_position_embeddings=4096)
    model = Llama(cfg, rngs=nnx.Rngs(args.seed))
    rng = np.random.default_rng(args.seed)
    contexts, choices = [], []
    for _ in range(args.items):
        n = int(np.exp(rng.uniform(np.log(args.min_context), np.log(args.max_context + 1))))
        context = [int(t) for t in rng.integers(3, args.vocab, size=n)]
        for _ in range(3):
            contexts.append(context)
            choices.append([int(t) for t in rng.integers(3, args.vocab, size=int(rng.integers(1, args.max_choice)))])

    scorer = LikelihoodScorer(model, batch_size=args.batch_size)
    graphdef, state = nnx.split(model)

    @jax.jit
    def row_nll(state, input_ids, positions, segment_ids, targets, weights):
        logits, _ = nnx.merge(graphdef, state)(input_ids, positions=positions, segment_ids=segment_ids)
        target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        return jnp.sum((jax.nn.logsumexp(logits, axis=-1) - target_logits) * weights, axis=-1)

    def per_row() -> list[float]:
        lengths = [len(c) + len(k) for c, k in zip(contexts, choices)]
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        out = [0.0] * len(lengths)
        for start in range(0, len(order), args.batch_size):
            chunk = order[start : start + args.batch_size]
            length = bucket_length(max(lengths[i] for i in chunk))
            batch = right_pad([contexts[i] for i in chunk], [choices[i] for i in chunk], length, args.batch_size)
            sums = jax.device_get(
                row_nll(state, batch.input_ids, batch.positions, batch.segment_ids, batch.targets, batch.weights)
            )
            for r, i in enumerate(chunk):
                out[i] = float(sums[r]) / len(choices[i])
        return out

    def prefix_cached() -> list[float]:
        return [total / count for total, count in scorer.continuation_nll(contexts, choices)]

    first_old, old = timed(per_row)
    first_new, new = timed(prefix_cached)
    times = {"per_row": [], "prefix": []}
    for _ in range(args.repeats):
        times["per_row"].append(timed(per_row)[0])
        times["prefix"].append(timed(prefix_cached)[0])
    old_s, new_s = statistics.median(times["per_row"]), statistics.median(times["prefix"])
    worst = max(abs(a - b) for a, b in zip(old, new))
    print(
        f"model: {sum(x.size for x in jax.tree.leaves(state)) / 1e6:.1f}M parameters, float32, CPU "
        f"({jax.device_count()} device(s)); load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{args.items} format-1 items x 3 choices: contexts {args.min_context}..{args.max_context} tokens, choices "
        f"1..{args.max_choice - 1}; batch {args.batch_size}; median of {args.repeats} runs in alternating blocks"
    )
    print(
        f"per-row (before):      {args.items / old_s:7.1f} items/s ({old_s:.2f} s; first call {first_old:.2f} s; "
        f"runs {' '.join(f'{t:.2f}' for t in times['per_row'])})"
    )
    print(
        f"prefix-cached (after): {args.items / new_s:7.1f} items/s ({new_s:.2f} s; first call {first_new:.2f} s; "
        f"runs {' '.join(f'{t:.2f}' for t in times['prefix'])})"
    )
    ratio = old_s / new_s
    print(
        f"speed-up: {ratio:.2f}x (target >= 2x: {'met' if ratio >= 2 else 'NOT met'}); largest log-perplexity "
        f"difference {worst:.1e} (must be < 1e-5)"
    )
    return 0 if worst < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
