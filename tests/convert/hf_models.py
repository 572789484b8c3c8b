"""Helpers of the conversion tests: tiny random transformers LlamaForCausalLM folders saved by transformers itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the conversion tests build reference models with PyTorch")
transformers = pytest.importorskip("transformers")

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
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**values)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    if dtype is not None:
        model = model.to(dtype)
    return model


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
    torch.manual_seed(seed)
    model = transformers.BloomForCausalLM(transformers.BloomConfig(**values)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" in name or "ln_f" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    if dtype is not None:
        model = model.to(dtype)
    return model
