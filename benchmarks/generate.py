"""Generation speed: jaxtune's batched KV-cache decoding against transformers' ``generate``, same model, same run.

Both decode the same prompts greedily with the same settings (batch size, max new tokens, stop ids) on the CPU, in
float32, from the same random weights (transformers' LlamaForCausalLM, copied into jaxtune). The script exits with
status 1 unless every reply is identical token for token.

The workload is DoIT-like: prompts of ``--min-len`` to ``--max-len`` tokens (8 to 400) whose greedy replies end
after one token to a few hundred. Replies of a random model do not end by themselves, so the script calibrates
them with transformers: it decodes a pool of candidate prompts without stopping, picks a set of stop ids (the first
reply token of a share of the candidates, which then stop at once, plus a random sample of the vocabulary, where
the others stop later) and keeps prompts so that reply lengths cover the bins 1, 2-8, 9-32, 33-100 and 101-240 (see
``LENGTH_BINS``). ``--workload FILE`` stores the chosen prompts and stop ids (and reuses them when the file exists),
so runs on different code see the same workload.

Two comparisons, each timed in alternating blocks (so other load on the machine affects both sides alike) and
reported as medians:

1. jaxtune against transformers on the workload with ``--new-tokens`` (1024 by default, the study's setting);
   target: jaxtune >= 2x transformers.
2. jaxtune alone on the prompts whose replies end within 64 tokens, with ``max_new_tokens`` 64 and 1024 (the same
   replies either way); target: 1024 costs at most 1.2x the time of 64.

Compilation and first-call costs are measured separately (the first call of each setting is not timed).

    .venv/bin/python benchmarks/generate.py --workload /tmp/doit_like.json
    .venv/bin/python benchmarks/generate.py --prompts 96 --batch-size 32 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import add_model_args, model_config, timed

LENGTH_BINS = ((1, 1, 0.3), (2, 8, 0.15), (9, 32, 0.2), (33, 100, 0.2), (101, 240, 0.15))
"""(shortest, longest reply, share of the prompts): most replies short (a letter, a number, one sentence), some
long (an explanation), as in DoIT's test split."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=40, help="number of prompts in the workload")
    p.add_argument("--candidates", type=int, default=128, help="calibration pool (prompts decoded to pick from)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per batch, for both implementations")
    p.add_argument("--min-len", type=int, default=8, help="shortest prompt (tokens)")
    p.add_argument("--max-len", type=int, default=400, help="longest prompt (tokens)")
    p.add_argument("--new-tokens", type=int, default=1024, help="max new tokens of comparison 1")
    p.add_argument("--short-max", type=int, default=64, help="comparison 2: the smaller max_new_tokens")
    p.add_argument("--long-max", type=int, default=1024, help="comparison 2: the larger max_new_tokens")
    p.add_argument("--repeats", type=int, default=3, help="rounds of alternating blocks")
    p.add_argument("--block", type=int, default=1, help="timed runs per block (each run decodes the whole workload)")
    p.add_argument("--part", choices=["all", "transformers", "max-new-tokens"], default="all")
    p.add_argument("--workload", type=Path, default=None, help="JSON file to store / reuse the calibrated workload")
    add_model_args(p, vocab=49957, hidden=256, layers=4, heads=8, mlp=688, kv_heads=True)  # vocabulary: DoIT's
    p.add_argument(
        "--init-std",
        type=float,
        default=0.2,
        help="weight init std; larger than 0.02 so random logits are peaked and greedy choices are not "
        "decided by float noise (speed does not depend on the values)",
    )
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def trim(tokens: list[int], stop_ids) -> list[int]:
    """Up to and including the first stop token (generate pads finished rows after it)."""
    for i, t in enumerate(tokens):
        if t in stop_ids:
            return tokens[: i + 1]
    return tokens


def hf_generate(hf_model, prompts, batch_size: int, max_new_tokens: int, stop_ids) -> list[list[int]]:
    """transformers' generate on the same length-sorted batches jaxtune forms (fair to both), left-padded."""
    import torch

    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    stops = set(stop_ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, i in enumerate(chunk):
            ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i])
            mask[r, width - len(prompts[i]) :] = 1
        with torch.no_grad():
            seq = hf_model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=list(stop_ids) or None,
                pad_token_id=0,
            )
        for r, i in enumerate(chunk):
            out[i] = trim(seq[r, width:].tolist(), stops)
    return out


def calibrate(args, hf_model, vocab: int) -> dict:
    """Candidate prompts decoded by transformers without stopping; stop ids and prompts picked so that reply lengths
    fill LENGTH_BINS (see the module docstring)."""
    rng = np.random.default_rng(args.seed)
    longest = max(b[1] for b in LENGTH_BINS)
    lengths = np.exp(rng.uniform(np.log(args.min_len), np.log(args.max_len + 1), size=args.candidates)).astype(int)
    lengths = np.clip(lengths, args.min_len, args.max_len)
    candidates = [[int(t) for t in rng.integers(3, vocab, size=n)] for n in lengths]
    print(
        f"calibrating the workload: {len(candidates)} candidate prompts decoded {longest} tokens by transformers ...",
        flush=True,
    )
    start = time.perf_counter()
    streams = hf_generate(hf_model, candidates, 2 * args.batch_size, longest, [])
    print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    # A share of the candidates stop at their first token; a random sample of the vocabulary ends the others.
    immediate = rng.choice(len(candidates), size=int(len(candidates) * LENGTH_BINS[0][2]), replace=False)
    stop_ids = {streams[i][0] for i in immediate} | {int(t) for t in rng.integers(3, vocab, size=vocab // 150)}
    reply_len = []
    for stream in streams:
        hit = next((i + 1 for i, t in enumerate(stream) if t in stop_ids), None)
        reply_len.append(hit)
    chosen: list[int] = []
    for lo, hi, share in LENGTH_BINS:
        want = max(1, round(args.prompts * share))
        pool = [i for i, n in enumerate(reply_len) if n is not None and lo <= n <= hi and i not in chosen]
        chosen += pool[:want]
    spare = [i for i, n in enumerate(reply_len) if n is not None and i not in chosen]
    chosen += spare[: max(0, args.prompts - len(chosen))]
    chosen = chosen[: args.prompts]
    return {
        "prompts": [candidates[i] for i in chosen],
        "stop_ids": sorted(stop_ids),
        "reply_lengths": [reply_len[i] for i in chosen],
    }


def alternate(runs: dict, repeats: int, block: int) -> dict[str, list[float]]:
    """Seconds of each named run, timed in alternating blocks of ``block`` consecutive runs."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            for _ in range(block):
                times[name].append(timed(fn)[0])
    return times


def main() -> int:
    args = parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import torch
    import transformers
    from flax import nnx

    import jaxtune
    from jaxtune.convert.hf_config import hf_config_dict
    from jaxtune.eval.generate import Generator
    from jaxtune.models.llama import Llama

    torch.set_num_threads(args.threads)
    cfg = model_config(args, max_position_embeddings=4096, rms_norm_eps=1e-6, initializer_range=args.init_std)
    # transformers' generate needs a pad id for the rows that finished first.
    hf_cfg = transformers.LlamaConfig(**{**hf_config_dict(cfg, "float32"), "pad_token_id": 0})
    torch.manual_seed(args.seed)
    hf_model = transformers.LlamaForCausalLM(hf_cfg).eval()
    model = Llama(cfg, rngs=nnx.Rngs(args.seed))
    copy_weights(hf_model, model)
    params = sum(p.numel() for p in hf_model.parameters())

    if args.workload is not None and args.workload.exists():
        workload = json.loads(args.workload.read_text())
    else:
        workload = calibrate(args, hf_model, cfg.vocab_size)
        if args.workload is not None:
            args.workload.write_text(json.dumps(workload))
    prompts, stop_ids, reply_lengths = workload["prompts"], workload["stop_ids"], workload["reply_lengths"]
    prompt_lengths = [len(p) for p in prompts]
    print(f"jaxtune from {Path(jaxtune.__file__).parent}")
    print(
        f"model: {params / 1e6:.1f}M parameters ({cfg.num_layers} layers, hidden {cfg.hidden_size}, vocabulary "
        f"{cfg.vocab_size}); batch {args.batch_size}, greedy, float32, CPU (jax {jax.__version__} on "
        f"{jax.device_count()} device(s), torch {torch.__version__} with {torch.get_num_threads()} threads); "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )
    print(
        f"workload: {len(prompts)} prompts of {min(prompt_lengths)}..{max(prompt_lengths)} tokens (median "
        f"{int(np.median(prompt_lengths))}), replies of {min(reply_lengths)}..{max(reply_lengths)} tokens (median "
        f"{int(np.median(reply_lengths))}, {sum(reply_lengths)} in all), {len(stop_ids)} stop ids"
    )

    generator = Generator(model, batch_size=args.batch_size)

    def run_jax(batch_prompts, max_new):
        return [list(g.tokens) for g in generator.generate(batch_prompts, max_new, stop_ids)]

    status = 0
    if args.part in ("all", "transformers"):
        n = args.new_tokens
        jax_first, jax_out = timed(lambda: run_jax(prompts, n))
        hf_first, hf_out = timed(lambda: hf_generate(hf_model, prompts, args.batch_size, n, stop_ids))
        times = alternate(
            {
                "jaxtune": lambda: run_jax(prompts, n),
                "transformers": lambda: hf_generate(hf_model, prompts, args.batch_size, n, stop_ids),
            },
            args.repeats,
            args.block,
        )
        jax_s, hf_s = statistics.median(times["jaxtune"]), statistics.median(times["transformers"])
        tokens = sum(len(t) for t in jax_out)
        identical = sum(a == b for a, b in zip(jax_out, hf_out))
        print(
            f"\n1. jaxtune vs transformers, max_new_tokens {n}: median of {args.repeats} x {args.block} runs in "
            f"alternating blocks, {tokens} generated tokens per run"
        )
        print(
            f"jaxtune:      {tokens / jax_s:8.1f} tokens/s  ({jax_s:.2f} s; first call with compilation "
            f"{jax_first:.2f} s; all runs {' '.join(f'{t:.2f}' for t in times['jaxtune'])})"
        )
        print(
            f"transformers: {tokens / hf_s:8.1f} tokens/s  ({hf_s:.2f} s; first call {hf_first:.2f} s; all runs "
            f"{' '.join(f'{t:.2f}' for t in times['transformers'])})"
        )
        ratio = hf_s / jax_s
        print(f"speed ratio jaxtune / transformers: {ratio:.2f}x (target >= 2x: {'met' if ratio >= 2 else 'NOT met'})")
        print(f"identical greedy replies: {identical}/{len(prompts)}")
        if identical != len(prompts):
            bad = next(i for i, (a, b) in enumerate(zip(jax_out, hf_out)) if a != b)
            print(f"first mismatch, prompt {bad}:\n  jaxtune      {jax_out[bad]}\n  transformers {hf_out[bad]}")
            status = 1

    if args.part in ("all", "max-new-tokens"):
        short = [p for p, n in zip(prompts, reply_lengths) if n <= args.short_max]
        lo, hi = args.short_max, args.long_max
        first_lo, out_lo = timed(lambda: run_jax(short, lo))
        first_hi, out_hi = timed(lambda: run_jax(short, hi))
        times = alternate(
            {"lo": lambda: run_jax(short, lo), "hi": lambda: run_jax(short, hi)}, args.repeats, args.block
        )
        lo_s, hi_s = statistics.median(times["lo"]), statistics.median(times["hi"])
        same = sum(a == b for a, b in zip(out_lo, out_hi))
        print(
            f"\n2. jaxtune, max_new_tokens {hi} vs {lo} on the {len(short)} prompts whose replies end within {lo} "
            f"tokens ({sum(len(t) for t in out_lo)} tokens): median of {args.repeats} x {args.block} runs in "
            f"alternating blocks"
        )
        print(
            f"max_new_tokens {lo:5d}: {lo_s:.2f} s (first call {first_lo:.2f} s; all runs "
            f"{' '.join(f'{t:.2f}' for t in times['lo'])})"
        )
        print(
            f"max_new_tokens {hi:5d}: {hi_s:.2f} s (first call {first_hi:.2f} s; all runs "
            f"{' '.join(f'{t:.2f}' for t in times['hi'])})"
        )
        ratio = hi_s / lo_s
        print(f"time ratio {hi} / {lo}: {ratio:.2f}x (target <= 1.2x: {'met' if ratio <= 1.2 else 'NOT met'})")
        print(f"identical replies: {same}/{len(short)}")
        if same != len(short):
            status = 1
    return status


def copy_weights(hf_model, model) -> None:
    """transformers' (out, in) Linear weights into jaxtune's (in, ...) layout, layers stacked."""
    cfg = model.cfg
    h, kv, d, e = cfg.num_heads, cfg.resolved_num_kv_heads(), cfg.resolved_head_dim(), cfg.hidden_size
    sd = {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}

    def stack(suffix: str, transform) -> np.ndarray:
        return np.stack([transform(sd[f"model.layers.{i}.{suffix}"]) for i in range(cfg.num_layers)])

    layers = model.layers
    layers.attn_norm[...] = stack("input_layernorm.weight", lambda w: w)
    layers.mlp_norm[...] = stack("post_attention_layernorm.weight", lambda w: w)
    layers.q_proj[...] = stack("self_attn.q_proj.weight", lambda w: w.T.reshape(e, h, d))
    layers.k_proj[...] = stack("self_attn.k_proj.weight", lambda w: w.T.reshape(e, kv, d))
    layers.v_proj[...] = stack("self_attn.v_proj.weight", lambda w: w.T.reshape(e, kv, d))
    layers.o_proj[...] = stack("self_attn.o_proj.weight", lambda w: w.T.reshape(h, d, e))
    layers.gate_proj[...] = stack("mlp.gate_proj.weight", lambda w: w.T)
    layers.up_proj[...] = stack("mlp.up_proj.weight", lambda w: w.T)
    layers.down_proj[...] = stack("mlp.down_proj.weight", lambda w: w.T)
    model.embed_tokens[...] = sd["model.embed_tokens.weight"]
    model.norm[...] = sd["model.norm.weight"]
    model.lm_head[...] = sd["lm_head.weight"].T


if __name__ == "__main__":
    sys.exit(main())
