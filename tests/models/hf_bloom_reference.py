"""The BLOOM reference of the model tests (hf_pairs.py pairs it with jaxtune models): tiny transformers
``BloomForCausalLM`` models and their weights as jaxtune's params tree.

The weights are copied by a mapping written here from transformers' documented layout (Linear weights are
(out, in); the fused query_key_value rows are (head, q/k/v, head_dim)), independent of jaxtune.convert, so model
parity does not rest on the converter under test elsewhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the parity tests need PyTorch (pip install jaxtune[test])")
transformers = pytest.importorskip("transformers")

from jaxtune.config.schema import ModelConfig  # noqa: E402

# Head counts that are and are not powers of two (ALiBi's second slope sequence), odd vocabularies, tied and not.
BLOOM_VARIANTS: dict[str, dict[str, Any]] = {
    "heads4-vocab97": dict(vocab_size=97, hidden_size=64, num_heads=4),
    "heads6-vocab131": dict(vocab_size=131, hidden_size=96, num_heads=6),
    "heads3-vocab89-untied": dict(vocab_size=89, hidden_size=48, num_heads=3, tie_word_embeddings=False),
}


def tiny_bloom_config(variant: str, **overrides: Any) -> ModelConfig:
    """A float32 jaxtune BLOOM config of a named test variant (2 layers, head_dim 16)."""
    values = dict(
        family="bloom",
        num_layers=2,
        layer_norm_epsilon=1e-5,
        initializer_range=0.2,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    values.update(BLOOM_VARIANTS[variant])
    values.update(overrides)
    values.setdefault("intermediate_size", 4 * values["hidden_size"])
    return ModelConfig(**values)


def hf_bloom_config(cfg: ModelConfig) -> Any:
    """The transformers BloomConfig of the same model."""
    return transformers.BloomConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        n_layer=cfg.num_layers,
        n_head=cfg.num_heads,
        layer_norm_epsilon=cfg.layer_norm_epsilon,
        initializer_range=cfg.initializer_range,
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )


def hf_weights_to_params(hf_model: Any, cfg: ModelConfig) -> dict:
    """jaxtune's BLOOM params tree (nested dict of float32 numpy arrays) from a BloomForCausalLM state dict."""
    sd = {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}
    e, h, d = cfg.hidden_size, cfg.num_heads, cfg.resolved_head_dim()

    def per_layer(suffix: str, convert=lambda w: w) -> np.ndarray:
        return np.stack([convert(sd[f"transformer.h.{i}.{suffix}"]) for i in range(cfg.num_layers)])

    params = {
        "embed_tokens": sd["transformer.word_embeddings.weight"],
        "embed_norm": sd["transformer.word_embeddings_layernorm.weight"],
        "embed_norm_bias": sd["transformer.word_embeddings_layernorm.bias"],
        "norm": sd["transformer.ln_f.weight"],
        "norm_bias": sd["transformer.ln_f.bias"],
        "layers": {
            "attn_norm": per_layer("input_layernorm.weight"),
            "attn_norm_bias": per_layer("input_layernorm.bias"),
            "qkv_proj": per_layer(
                "self_attention.query_key_value.weight", lambda w: np.einsum("hcde->ehcd", w.reshape(h, 3, d, e))
            ),
            "qkv_bias": per_layer("self_attention.query_key_value.bias", lambda b: b.reshape(h, 3, d)),
            "o_proj": per_layer("self_attention.dense.weight", lambda w: np.einsum("ehd->hde", w.reshape(e, h, d))),
            "o_bias": per_layer("self_attention.dense.bias"),
            "mlp_norm": per_layer("post_attention_layernorm.weight"),
            "mlp_norm_bias": per_layer("post_attention_layernorm.bias"),
            "up_proj": per_layer("mlp.dense_h_to_4h.weight", np.transpose),
            "up_bias": per_layer("mlp.dense_h_to_4h.bias"),
            "down_proj": per_layer("mlp.dense_4h_to_h.weight", np.transpose),
            "down_bias": per_layer("mlp.dense_4h_to_h.bias"),
        },
    }
    if not cfg.tie_word_embeddings:
        params["lm_head"] = sd["lm_head.weight"].T
    return params


def make_hf_bloom(cfg: ModelConfig, seed: int = 0) -> Any:
    """A random BloomForCausalLM in eval mode, with every LayerNorm weight and every bias jittered away from
    transformers' 1 / 0 initialisation, so that a wrong mapping of any of them cannot pass unnoticed."""
    torch.manual_seed(seed)
    hf_model = transformers.BloomForCausalLM(hf_bloom_config(cfg)).eval()
    with torch.no_grad():
        for name, param in hf_model.named_parameters():
            if "layernorm" in name or "ln_f" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    return hf_model
