"""The LLaMA reference of the model tests (hf_pairs.py pairs it with jaxtune models): tiny transformers
``LlamaForCausalLM`` models and their weights as jaxtune's params tree.

The config comes from jaxtune's own mapping (:func:`jaxtune.convert.hf_config.hf_config_dict`, checked against
transformers in tests/convert/test_hf_config.py); the weights are copied by a mapping written here from
transformers' documented layout (Linear weights are (out, in), heads flattened into rows), independent of
jaxtune.convert's tensor layout, so model parity does not rest on the converter under test elsewhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the parity tests need PyTorch (pip install jaxtune[test])")
transformers = pytest.importorskip("transformers")

from jaxtune.config.schema import ModelConfig, RopeScalingConfig  # noqa: E402
from jaxtune.convert.hf_config import hf_config_dict  # noqa: E402

# The shapes the parity tests cover: MHA and GQA, tied and untied, default and llama3 rope, odd vocabularies.
VARIANTS: dict[str, dict[str, Any]] = {
    "mha-untied-default": dict(vocab_size=97, num_heads=4, num_kv_heads=None, tie_word_embeddings=False),
    "gqa-tied-llama3": dict(
        vocab_size=131,
        num_heads=4,
        num_kv_heads=2,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        rope_scaling=RopeScalingConfig(
            "llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64
        ),
    ),
    "gqa-untied-default": dict(vocab_size=113, num_heads=4, num_kv_heads=1, tie_word_embeddings=False),
    "mha-tied-linear": dict(
        vocab_size=89,
        num_heads=2,
        num_kv_heads=None,
        tie_word_embeddings=True,
        rope_scaling=RopeScalingConfig("linear", factor=2.0),
    ),
}


def tiny_config(variant: str, **overrides: Any) -> ModelConfig:
    """A float32 jaxtune config of a named test variant (hidden 64, 2 layers, head_dim 16 or 32)."""
    values = dict(
        hidden_size=64,
        intermediate_size=160,
        num_layers=2,
        rms_norm_eps=1e-5,
        max_position_embeddings=256,
        initializer_range=0.2,
    )
    values.update(VARIANTS[variant])
    values.update(overrides)
    return ModelConfig(**values)


def hf_config(cfg: ModelConfig) -> Any:
    """The transformers LlamaConfig of the same model (jaxtune's mapping, checked by tests/convert/test_hf_config.py)."""
    return transformers.LlamaConfig(**hf_config_dict(cfg, "float32"))


def hf_weights_to_params(hf_model: Any, cfg: ModelConfig) -> dict:
    """jaxtune's params tree (nested dict of float32 numpy arrays) from a LlamaForCausalLM state dict."""
    sd = {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}
    e, h, kv, d = cfg.hidden_size, cfg.num_heads, cfg.resolved_num_kv_heads(), cfg.resolved_head_dim()

    def per_layer(suffix: str, convert) -> np.ndarray:
        return np.stack([convert(sd[f"model.layers.{i}.{suffix}"]) for i in range(cfg.num_layers)])

    def rows_to_heads(heads: int):
        # Rows of q/k/v are (head, head_dim) flattened; the input dimension is the column.
        return lambda w: np.einsum("hde->ehd", w.reshape(heads, d, e))

    params = {
        "embed_tokens": sd["model.embed_tokens.weight"],
        "norm": sd["model.norm.weight"],
        "layers": {
            "attn_norm": per_layer("input_layernorm.weight", lambda w: w),
            "mlp_norm": per_layer("post_attention_layernorm.weight", lambda w: w),
            "q_proj": per_layer("self_attn.q_proj.weight", rows_to_heads(h)),
            "k_proj": per_layer("self_attn.k_proj.weight", rows_to_heads(kv)),
            "v_proj": per_layer("self_attn.v_proj.weight", rows_to_heads(kv)),
            "o_proj": per_layer("self_attn.o_proj.weight", lambda w: np.einsum("ehd->hde", w.reshape(e, h, d))),
            "gate_proj": per_layer("mlp.gate_proj.weight", np.transpose),
            "up_proj": per_layer("mlp.up_proj.weight", np.transpose),
            "down_proj": per_layer("mlp.down_proj.weight", np.transpose),
        },
    }
    if not cfg.tie_word_embeddings:
        params["lm_head"] = sd["lm_head.weight"].T
    return params


def make_hf_model(cfg: ModelConfig, seed: int = 0) -> Any:
    """A random LlamaForCausalLM in eval mode (eager attention), with jittered norm weights so that a wrong norm
    mapping cannot pass unnoticed."""
    torch.manual_seed(seed)
    hf_model = transformers.LlamaForCausalLM(hf_config(cfg)).eval()
    hf_model.config._attn_implementation = "eager"
    with torch.no_grad():
        for name, param in hf_model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return hf_model
