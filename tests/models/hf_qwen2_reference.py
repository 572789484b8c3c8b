"""The Qwen2 reference of the model tests (hf_pairs.py pairs it with jaxtune models): tiny transformers
``Qwen2ForCausalLM`` models and their weights as jaxtune's params tree.

The config is written here field by field as transformers' ``Qwen2Config``; the weights are LLaMA's mapping
(hf_reference.py, written from transformers' documented layout) plus the q/k/v biases, whose rows are (head,
head_dim) flattened. Independent of jaxtune.convert, so model parity does not rest on the converter.
"""

from __future__ import annotations

from typing import Any

import hf_reference as llama_ref
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the parity tests need PyTorch (pip install jaxtune[test])")
transformers = pytest.importorskip("transformers")

from jaxtune.config.schema import ModelConfig  # noqa: E402

# Grouped-query and multi-head attention, tied and untied, Qwen's rope base, odd vocabularies.
QWEN2_VARIANTS: dict[str, dict[str, Any]] = {
    "gqa-tied": dict(vocab_size=131, num_heads=4, num_kv_heads=2, tie_word_embeddings=True, rope_theta=1000000.0),
    "mha-untied": dict(vocab_size=97, num_heads=4, num_kv_heads=None, tie_word_embeddings=False),
}


def tiny_qwen2_config(variant: str, **overrides: Any) -> ModelConfig:
    """A float32 jaxtune Qwen2 config of a named test variant (hidden 64, 2 layers, head_dim 16)."""
    values = dict(
        family="qwen2",
        hidden_size=64,
        intermediate_size=160,
        num_layers=2,
        rms_norm_eps=1e-6,
        max_position_embeddings=256,
        initializer_range=0.2,
    )
    values.update(QWEN2_VARIANTS[variant])
    values.update(overrides)
    return ModelConfig(**values)


def hf_qwen2_config(cfg: ModelConfig) -> Any:
    """The transformers Qwen2Config of the same model."""
    return transformers.Qwen2Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.resolved_num_kv_heads(),
        rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        max_position_embeddings=cfg.max_position_embeddings,
        initializer_range=cfg.initializer_range,
        tie_word_embeddings=cfg.tie_word_embeddings,
        use_sliding_window=False,
        bos_token_id=1,
        eos_token_id=2,
    )


def hf_weights_to_params(hf_model: Any, cfg: ModelConfig) -> dict:
    """jaxtune's Qwen2 params tree: LLaMA's, plus the q/k/v biases as (L, heads, D)."""
    params = llama_ref.hf_weights_to_params(hf_model, cfg)
    sd = {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}
    d = cfg.resolved_head_dim()
    for name in ("q", "k", "v"):
        biases = [sd[f"model.layers.{i}.self_attn.{name}_proj.bias"] for i in range(cfg.num_layers)]
        params["layers"][f"{name}_bias"] = np.stack([b.reshape(-1, d) for b in biases])
    return params


def make_hf_qwen2(cfg: ModelConfig, seed: int = 0) -> Any:
    """A random Qwen2ForCausalLM in eval mode (eager attention), norms and biases jittered away from transformers'
    1 / 0 initialisation so that a wrong mapping of either cannot pass unnoticed."""
    torch.manual_seed(seed)
    hf_model = transformers.Qwen2ForCausalLM(hf_qwen2_config(cfg)).eval()
    hf_model.config._attn_implementation = "eager"
    with torch.no_grad():
        for name, param in hf_model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    return hf_model
