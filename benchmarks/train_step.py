"""Train-step speed on CPU: jaxtune's jitted step (forward, backward, clipping, AdamW) against transformers' PyTorch
LlamaForCausalLM with torch.optim.AdamW, same model, weights, batch and length, measured in one run.

One random transformers model is saved and imported with jaxtune's converter, so both sides train the same weights;
the script checks that their first losses agree, then times warm steps of each in alternating blocks of consecutive
steps, so that other load on the machine affects both alike (median; the first step of each block is not timed).
jaxtune runs with the remat policy ``projections`` (the backward pass recomputes norms, RoPE and activations: its
fastest step on CPU; ``--remat`` picks another). It also measures the CPU's own float32 matmul peak with JAX in the
same run and reports each side's MFU against it:

    MFU = training FLOPs per token x tokens/s / matmul peak FLOP/s,

with training FLOPs per token from jaxtune.models.stats.model_info (3 x forward; forward = 2 x every matmul weight,
LM head included, embedding lookup excluded, plus causal attention 4 x layers x heads x head_dim x (L + 1) / 2).
Targets: ratio jaxtune / transformers >= 1.0 and jaxtune's CPU MFU >= 60%.

    .venv/bin/python benchmarks/train_step.py                   # 58M-parameter LLaMA, batch 8 x 256, float32
    .venv/bin/python benchmarks/train_step.py --batch 4 --length 512 --repeats 5 --block 4
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
    add_model_args(p, vocab=32000, hidden=512, layers=8, heads=8, mlp=1408)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3, help="rounds of alternating blocks")
    p.add_argument("--block", type=int, default=3, help="consecutive steps per block (the first is not timed)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="transformers attention implementation")
    p.add_argument("--remat", default="projections", help="jaxtune model.remat_policy")
    p.add_argument("--matmul-size", type=int, default=2048, help="size of the square matmul timing the CPU peak")
    return p.parse_args()


def matmul_timer(n: int = 2048):
    """A function timing one float32 n x n matmul with JAX; returns its FLOP/s (the CPU's matmul peak: the best
    large-matmul throughput XLA reaches here)."""
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    b = jnp.asarray(np.random.default_rng(1).normal(size=(n, n)), jnp.float32)
    mm = jax.jit(lambda x, y: x @ y)
    mm(a, b).block_until_ready()

    def flops_per_s() -> float:
        return 2 * n**3 / min(timed(lambda: mm(a, b).block_until_ready())[0] for _ in range(3))

    return flops_per_s


def make_batch(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """One packed-format batch: every row one example, all targets supervised but the last position."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, args.vocab, (args.batch, args.length + 1)).astype(np.int32)
    weights = np.ones((args.batch, args.length), np.float32)
    weights[:, -1] = 0.0
    return {
        "input_ids": ids[:, :-1],
        "targets": ids[:, 1:],
        "loss_weights": weights,
        "segment_ids": np.ones((args.batch, args.length), np.int32),
        "positions": np.broadcast_to(np.arange(args.length, dtype=np.int32), (args.batch, args.length)).copy(),
    }


def main() -> int:
    args = parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import dataclasses

    import jax
    import torch

    from jaxtune.config.schema import MeshConfig, OptimConfig
    from jaxtune.models.stats import model_info
    from jaxtune.sharding import abstract_model, build_mesh, global_batch, param_shardings
    from jaxtune.train.optim import build_optimizer
    from jaxtune.train.step import init_train_state, make_train_step, train_state_shardings

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    matmul_flops = matmul_timer(args.matmul_size)

    hf_model, cfg, params = random_hf_llama(args, max(2048, args.length), args.attn)
    cfg = dataclasses.replace(cfg, compute_dtype="float32", remat_policy=args.remat)
    optim = OptimConfig(learning_rate=1e-5, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1, max_grad_norm=1.0)
    batch = make_batch(args)
    tokens = args.batch * args.length

    # jaxtune: the trainer's own step on a one-device mesh.
    mesh = build_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    tx, schedule = build_optimizer(optim, 1000)
    graphdef, shapes, axes = abstract_model(cfg)
    shardings = train_state_shardings(tx, shapes, axes, mesh)
    state = init_train_state(jax.device_put(params, param_shardings(axes, mesh)), tx, 0, shardings)
    step = make_train_step(graphdef, tx, schedule, mesh=mesh, state_shardings=shardings)
    jax_batch = global_batch(batch, mesh, microbatches=1)
    start = time.perf_counter()
    state, metrics = step(state, jax_batch)
    jax_first_loss = float(metrics.compute()["loss"])
    compile_s = time.perf_counter() - start

    # transformers: the usual PyTorch training step with the same loss, clipping and AdamW.
    hf_model.train()
    opt = torch.optim.AdamW(
        hf_model.parameters(),
        lr=optim.learning_rate,
        betas=(optim.b1, optim.b2),
        eps=optim.eps,
        weight_decay=optim.weight_decay,
    )
    ids = torch.from_numpy(batch["input_ids"].astype(np.int64))
    targets = torch.from_numpy(batch["targets"].astype(np.int64))
    weights = torch.from_numpy(batch["loss_weights"])

    def torch_step() -> float:
        opt.zero_grad(set_to_none=True)
        logits = hf_model(ids).logits
        ce = torch.nn.functional.cross_entropy(logits.view(-1, args.vocab), targets.view(-1), reduction="none")
        loss = (ce * weights.view(-1)).sum() / weights.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf_model.parameters(), optim.max_grad_norm)
        opt.step()
        return float(loss.detach())

    torch_first_loss = torch_step()
    diff = abs(jax_first_loss - torch_first_loss)

    def run_jax():
        nonlocal state
        state, m = step(state, jax_batch)
        jax.block_until_ready(m)

    # Blocks of consecutive steps, alternating between the two implementations. The first step of every block is
    # dropped on both sides: right after the other framework ran, caches and allocators are cold (measured here:
    # a jaxtune step after a torch step takes ~20% longer than after a jaxtune step), while a training run takes
    # consecutive steps of one framework.
    jax_times, hf_times, peaks = [], [], []
    for _ in range(args.repeats):
        peaks.append(matmul_flops())
        jax_times += [timed(run_jax)[0] for _ in range(args.block)][1:]
        hf_times += [timed(torch_step)[0] for _ in range(args.block)][1:]
    jax_s, hf_s, peak = statistics.median(jax_times), statistics.median(hf_times), statistics.median(peaks)

    flops_per_token = model_info(cfg, args.length).train_flops_per_token
    jax_mfu = flops_per_token * tokens / jax_s / peak
    hf_mfu = flops_per_token * tokens / hf_s / peak
    params_m = sum(p.numel() for p in hf_model.parameters()) / 1e6
    print(
        f"model: hidden {args.hidden}, {args.layers} layers, {args.heads} heads, mlp {args.mlp}, vocab {args.vocab} "
        f"({params_m:.1f}M params), float32, CPU ({os.cpu_count()} cores, torch threads {args.threads})"
    )
    print(
        f"batch {args.batch} x {args.length} tokens; forward + backward + clip + AdamW; median of "
        f"{args.repeats} x {args.block - 1} consecutive warm steps each, in alternating blocks"
    )
    print(f"first-step loss: jaxtune {jax_first_loss:.6f}, transformers {torch_first_loss:.6f} (|diff| {diff:.1e})")
    print(
        f"CPU float32 matmul peak (JAX, {args.matmul_size}^2, median of the repeats): {peak / 1e9:.1f} GFLOP/s; "
        f"training FLOPs/token {flops_per_token / 1e6:.1f} MFLOP"
    )
    print(
        f"jaxtune (jit, xla attention, remat {cfg.remat_policy}): {tokens / jax_s:9.0f} tokens/s  ({jax_s * 1e3:.0f} ms/step, "
        f"MFU {100 * jax_mfu:.1f}%; first step with compile {compile_s:.1f} s)"
    )
    print(
        f"transformers ({args.attn}, torch {torch.__version__}): {tokens / hf_s:9.0f} tokens/s  "
        f"({hf_s * 1e3:.0f} ms/step, MFU {100 * hf_mfu:.1f}%)"
    )
    ratio = hf_s / jax_s
    print(f"ratio jaxtune / transformers: {ratio:.2f} (target >= 1.0: {'met' if ratio >= 1.0 else 'NOT met'})")
    print(f"jaxtune CPU MFU: {100 * jax_mfu:.1f}% (target >= 60%: {'met' if jax_mfu >= 0.6 else 'NOT met'})")
    return 0 if diff < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
