"""Generation speed: jaxtune's batched KV-cache decoding against transformers' ``generate``, same model, same run.

Both decode the same prompts greedily with the same settings (batch size, max new tokens, stop ids) on the CPU, in
float32, from the same random weights (transformers' LlamaForCausalLM, copied into jaxtune). Prints tokens/s of each
(warm: compilation and first-call costs measured separately), the speed ratio, and whether every reply is identical
(the greedy outputs must match token for token; the script exits with status 1 when they do not).

    .venv/bin/python benchmarks/generate.py                      # defaults: 32 prompts, batch 16, 64 new tokens
    .venv/bin/python benchmarks/generate.py --prompts 64 --batch-size 32 --new-tokens 128 --hidden 512
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=32, help="number of prompts")
    p.add_argument("--batch-size", type=int, default=16, help="rows per batch, for both implementations")
    p.add_argument("--min-len", type=int, default=8, help="shortest prompt (tokens)")
    p.add_argument("--max-len", type=int, default=96, help="longest prompt (tokens)")
    p.add_argument("--new-tokens", type=int, default=64, help="max new tokens per prompt")
    p.add_argument("--vocab", type=int, default=49957, help="vocabulary size (DoIT's by default)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=None, help="grouped-query heads (default: heads)")
    p.add_argument("--mlp", type=int, default=688)
    p.add_argument("--init-std", type=float, default=0.2,
                   help="weight init std; larger than 0.02 so random logits are peaked and greedy choices are not "
                        "decided by float noise (speed does not depend on the values)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import torch
    import transformers
    from flax import nnx

    from jaxtune.config import ModelConfig
    from jaxtune.eval.generate import Generator
    from jaxtune.models.llama import Llama

    torch.set_num_threads(args.threads)
    cfg = ModelConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.mlp, num_layers=args.layers,
        num_heads=args.heads, num_kv_heads=args.kv_heads, max_position_embeddings=4096, rms_norm_eps=1e-6,
        initializer_range=args.init_std,
    )
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.resolved_num_kv_heads(), max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=False, initializer_range=args.init_std, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    torch.manual_seed(args.seed)
    hf_model = transformers.LlamaForCausalLM(hf_cfg).eval()
    model = Llama(cfg, rngs=nnx.Rngs(args.seed))
    copy_weights(hf_model, model)
    params = sum(p.numel() for p in hf_model.parameters())

    rng = np.random.default_rng(args.seed)
    lengths = rng.integers(args.min_len, args.max_len + 1, size=args.prompts)
    prompts = [[int(t) for t in rng.integers(3, cfg.vocab_size, size=n)] for n in lengths]
    stop_ids = [1, 2]
    print(f"model: {params / 1e6:.1f}M parameters ({cfg.num_layers} layers, hidden {cfg.hidden_size}, vocabulary "
          f"{cfg.vocab_size}); {len(prompts)} prompts of {lengths.min()}..{lengths.max()} tokens, batch "
          f"{args.batch_size}, up to {args.new_tokens} new tokens, greedy, float32, CPU "
          f"(jax {jax.__version__} on {jax.device_count()} device(s), torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads)")

    # transformers: the same length-sorted batches jaxtune forms (fair to both), left-padded as generate expects.
    def run_hf() -> list[list[int]]:
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out: list[list[int]] = [[] for _ in prompts]
        for start in range(0, len(order), args.batch_size):
            chunk = order[start: start + args.batch_size]
            width = max(len(prompts[i]) for i in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, i in enumerate(chunk):
                ids[r, width - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[r, width - len(prompts[i]):] = 1
            with torch.no_grad():
                seq = hf_model.generate(ids, attention_mask=mask, max_new_tokens=args.new_tokens, do_sample=False,
                                        eos_token_id=stop_ids, pad_token_id=0)
            for r, i in enumerate(chunk):
                out[i] = trim(seq[r, width:].tolist(), stop_ids)
        return out

    generator = Generator(model, batch_size=args.batch_size)

    def run_jax() -> list[list[int]]:
        return [list(g.tokens) for g in generator.generate(prompts, args.new_tokens, stop_ids)]

    jax_first, jax_out = timed(run_jax)
    jax_time, jax_out = timed(run_jax)
    hf_first, hf_out = timed(run_hf)
    hf_time, hf_out = timed(run_hf)

    n_tokens = sum(len(t) for t in jax_out)
    identical = sum(a == b for a, b in zip(jax_out, hf_out))
    jax_rate, hf_rate = n_tokens / jax_time, sum(len(t) for t in hf_out) / hf_time
    print(f"generated tokens: {n_tokens} (jaxtune), {sum(len(t) for t in hf_out)} (transformers)")
    print(f"jaxtune:      {jax_rate:10.1f} tokens/s  ({jax_time:.2f} s warm; first call with compilation "
          f"{jax_first:.2f} s)")
    print(f"transformers: {hf_rate:10.1f} tokens/s  ({hf_time:.2f} s warm; first call {hf_first:.2f} s)")
    print(f"speed ratio jaxtune / transformers: {jax_rate / hf_rate:.2f}x (target >= 2x)")
    print(f"identical greedy replies: {identical}/{len(prompts)}")
    if identical != len(prompts):
        first_bad = next(i for i, (a, b) in enumerate(zip(jax_out, hf_out)) if a != b)
        print(f"first mismatch, prompt {first_bad}:\n  jaxtune      {jax_out[first_bad]}\n"
              f"  transformers {hf_out[first_bad]}")
        return 1
    return 0


def trim(tokens: list[int], stop_ids: list[int]) -> list[int]:
    """Up to and including the first stop token (generate pads finished rows after it)."""
    for i, t in enumerate(tokens):
        if t in stop_ids:
            return tokens[: i + 1]
    return tokens


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


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
