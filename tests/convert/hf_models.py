"""Helpers of the conversion tests: tiny random transformers LlamaForCausalLM, BloomForCausalLM and Qwen2ForCausalLM
folders saved by transformers itself, and their tensors read and rewritten with the safetensors library."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the conversion tests build reference models with PyTorch")
transformers = pytest.importorskip("transformers")

from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def build_hf_model(seed: int = 0, dtype: Any = None, **config: Any) -> Any:
    """A random LlamaForCausalLM (hidden 64, 2 layers unless overridden), norms jittered away from one."""
    values = dict(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        initializer_range=0.2,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    values.update(config)
    return _random_model("Llama", values, seed, dtype, jittered=lambda name: "norm" in name)


def save_hf_model(model: Any, path: Path, **save_kwargs: Any) -> Path:
    model.save_pretrained(path, **save_kwargs)
    return path


def hf_logits(model: Any, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(ids, np.int64))).logits.float().numpy()


def build_hf_bloom(seed: int = 0, dtype: Any = None, **config: Any) -> Any:
    """A random BloomForCausalLM (hidden 64, 2 layers, 4 heads unless overridden), every LayerNorm weight and bias
    jittered away from transformers' 1 / 0 initialisation."""
    values = dict(
        vocab_size=97,
        hidden_size=64,
        n_layer=2,
        n_head=4,
        layer_norm_epsilon=1e-5,
        initializer_range=0.2,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    values.update(config)
    return _random_model(
        "Bloom",
        values,
        seed,
        dtype,
        jittered=lambda name: "layernorm" in name or "ln_f" in name or name.endswith("bias"),
    )


def build_hf_qwen2(seed: int = 0, dtype: Any = None, **config: Any) -> Any:
    """A random Qwen2ForCausalLM (hidden 64, 2 layers, 4 heads, 2 key/value heads unless overridden), norms and the
    q/k/v biases jittered away from transformers' 1 / 0 initialisation."""
    values = dict(
        vocab_size=131,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        initializer_range=0.2,
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    values.update(config)
    return _random_model("Qwen2", values, seed, dtype, jittered=lambda name: "norm" in name or name.endswith("bias"))


def _random_model(arch: str, config: dict, seed: int, dtype: Any, jittered: Callable[[str], bool]) -> Any:
    """transformers' ``{arch}ForCausalLM`` of ``{arch}Config(**config)`` seeded, in eval mode, the parameters
    ``jittered`` names moved by N(0, 0.1) (so that a wrong mapping of a norm or bias cannot pass unnoticed)."""
    torch.manual_seed(seed)
    cfg = getattr(transformers, f"{arch}Config")(**config)
    model = getattr(transformers, f"{arch}ForCausalLM")(cfg).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if jittered(name):
                param.add_(0.1 * torch.randn_like(param))
    if dtype is not None:
        model = model.to(dtype)
    return model


def stored_tensors(hf_dir: Path) -> dict[str, Any]:
    """Every tensor of a folder's safetensors files, read with the reference library."""
    out = {}
    for file in sorted(hf_dir.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            out.update({name: f.get_tensor(name) for name in f.keys()})
    return out


def rewrite(hf_dir: Path, change: Callable[[dict], Any]) -> None:
    """Rewrite the single model.safetensors with ``change(tensors)`` applied."""
    tensors = stored_tensors(hf_dir)
    change(tensors)
    save_file(tensors, hf_dir / "model.safetensors", metadata={"format": "pt"})
