"""Forward-pass speed: jaxtune's jitted forward against transformers' PyTorch LlamaForCausalLM, same run, CPU, fp32.

One random transformers model is saved and imported with jaxtune's converter, so both run the same weights; the
script checks the logits agree, then times each forward (warm: compilation and first call excluded; median of the
repeats) on the same batch. Prints tokens/s of each and the ratio jaxtune / transformers (target: >= 1.0).

    .venv/bin/python benchmarks/forward.py                               # hidden 512, 8 layers, batch 4 x 256
    .venv/bin/python benchmarks/forward.py --batch 8 --length 512 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import add_model_args, random_hf_llama, timed


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(p, vocab=32000, hidden=512, layers=8, heads=8, mlp=1376, kv_heads=True)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5, help="timed forwards of each implementation")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="transformers attention implementation")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import torch

    from jaxtune.eval.parity import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hf_model, cfg, params = random_hf_llama(args, max(2048, args.length), args.attn)
    hf_model.eval()
    model = build_model(cfg, params)
    forward = jax.jit(lambda m, x: m(x)[0])

    ids = np.random.default_rng(0).integers(0, args.vocab, (args.batch, args.length)).astype(np.int32)
    torch_ids = torch.from_numpy(ids.astype(np.int64))
    tokens = args.batch * args.length

    start = time.perf_counter()
    jax_logits = np.asarray(forward(model, ids))
    compile_s = time.perf_counter() - start
    with torch.inference_mode():
        hf_out = hf_model(torch_ids).logits.numpy()
    diff = float(np.max(np.abs(jax_logits - hf_out)))

    # Interleaved, so that load from other processes on the machine affects both alike.
    jax_times, hf_times = [], []
    with torch.inference_mode():
        hf_model(torch_ids)  # warm-up of the PyTorch side too
        for _ in range(args.repeats):
            jax_times.append(timed(lambda: forward(model, ids).block_until_ready())[0])
            hf_times.append(timed(lambda: hf_model(torch_ids).logits)[0])
    jax_s, hf_s = statistics.median(jax_times), statistics.median(hf_times)

    params_m = sum(p.numel() for p in hf_model.parameters()) / 1e6
    print(
        f"model: hidden {args.hidden}, {args.layers} layers, {args.heads} heads, mlp {args.mlp}, vocab {args.vocab} "
        f"({params_m:.1f}M params), float32, CPU ({os.cpu_count()} cores, torch threads {args.threads})"
    )
    print(f"batch {args.batch} x {args.length} tokens; median of {args.repeats} warm forwards each")
    print(f"largest |logit difference| jaxtune vs transformers: {diff:.2e}")
    print(
        f"jaxtune (jit, xla attention):       {tokens / jax_s:10.0f} tokens/s  ({jax_s * 1e3:.0f} ms/forward; "
        f"first call with compile {compile_s:.1f} s)"
    )
    print(
        f"transformers ({args.attn}, torch {torch.__version__}): {tokens / hf_s:10.0f} tokens/s  "
        f"({hf_s * 1e3:.0f} ms/forward)"
    )
    ratio = hf_s / jax_s
    print(f"ratio jaxtune / transformers: {ratio:.2f} (target >= 1.0: {'met' if ratio >= 1.0 else 'NOT met'})")
    return 0 if diff < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
