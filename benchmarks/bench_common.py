"""What the CPU benchmarks share: the model-shape flags (--vocab, --hidden, --layers, --heads, optionally --kv-heads,
--mlp), the jaxtune ModelConfig they describe, a random transformers LlamaForCausalLM of that shape imported with
jaxtune's converter (so both sides run the same weights), and a wall-clock timer.

The benchmarks import it as a sibling module (``python benchmarks/x.py`` puts this folder first on sys.path).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any, Callable


def add_model_args(
    p: argparse.ArgumentParser, *, vocab: int, hidden: int, layers: int, heads: int, mlp: int, kv_heads: bool = False
) -> None:
    """The model-shape flags with this benchmark's defaults; ``kv_heads`` adds --kv-heads (grouped-query heads)."""
    p.add_argument("--vocab", type=int, default=vocab, help="vocabulary size")
    p.add_argument("--hidden", type=int, default=hidden)
    p.add_argument("--layers", type=int, default=layers)
    p.add_argument("--heads", type=int, default=heads)
    if kv_heads:
        p.add_argument("--kv-heads", type=int, default=None, help="grouped-query heads (default: heads)")
    p.add_argument("--mlp", type=int, default=mlp)


def model_config(args: argparse.Namespace, **fields: Any):
    """The jaxtune ModelConfig of the model-shape flags; ``fields`` set the others."""
    from jaxtune.config.schema import ModelConfig

    return ModelConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.mlp,
        num_layers=args.layers,
        num_heads=args.heads,
        num_kv_heads=getattr(args, "kv_heads", None),
        **fields,
    )


def random_hf_llama(args: argparse.Namespace, max_position_embeddings: int, attn: str) -> tuple[Any, Any, dict]:
    """A random transformers LlamaForCausalLM of the flags' shape (``attn``: its attention implementation), saved and
    read back with jaxtune's converter: (the transformers model, jaxtune's ModelConfig, float32 params)."""
    import transformers

    from jaxtune.convert.hf import load_hf_params

    hf_cfg = transformers.LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.mlp,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=getattr(args, "kv_heads", None) or args.heads,
        max_position_embeddings=max_position_embeddings,
        attn_implementation=attn,
    )
    hf_model = transformers.LlamaForCausalLM(hf_cfg)
    with tempfile.TemporaryDirectory() as tmp:
        hf_model.save_pretrained(tmp)
        cfg, params = load_hf_params(tmp, param_dtype="float32")
    return hf_model, cfg, params


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall-clock seconds of ``fn()``, its result)."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out
