"""Shared fixtures for the inference tests: a tiny transformers LlamaForCausalLM and the same weights in jaxtune.

The weights are copied by a small independent mapping written here (HF Linear weights are (out, in); jaxtune keeps
(in, ...) layouts), so the parity tests do not rest on jaxtune's own converter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the parity tests need PyTorch (pip install jaxtune[test])")
transformers = pytest.importorskip("transformers")

from flax import nnx  # noqa: E402

from jaxtune.models.configs import model_config  # noqa: E402
from jaxtune.models.llama import Llama  # noqa: E402


def hf_config(cfg: Any) -> Any:
    """A transformers LlamaConfig with the same shape as a jaxtune ModelConfig."""
    return transformers.LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.resolved_num_kv_heads(),
        head_dim=cfg.resolved_head_dim(),
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_word_embeddings,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
    )


def copy_hf_weights(hf_model: Any, model: Llama) -> None:
    """Write a LlamaForCausalLM's weights into a jaxtune Llama of the same shape."""
    cfg = model.cfg
    h, kv, d, e = cfg.num_heads, cfg.resolved_num_kv_heads(), cfg.resolved_head_dim(), cfg.hidden_size
    sd = {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}
    layers = range(cfg.num_layers)

    def stack(fn: Callable[[int], np.ndarray]) -> np.ndarray:
        return np.stack([fn(i) for i in layers])

    p = "model.layers.{}."
    weights = {
        "attn_norm": stack(lambda i: sd[p.format(i) + "input_layernorm.weight"]),
        "mlp_norm": stack(lambda i: sd[p.format(i) + "post_attention_layernorm.weight"]),
        "q_proj": stack(lambda i: sd[p.format(i) + "self_attn.q_proj.weight"].T.reshape(e, h, d)),
        "k_proj": stack(lambda i: sd[p.format(i) + "self_attn.k_proj.weight"].T.reshape(e, kv, d)),
        "v_proj": stack(lambda i: sd[p.format(i) + "self_attn.v_proj.weight"].T.reshape(e, kv, d)),
        "o_proj": stack(lambda i: sd[p.format(i) + "self_attn.o_proj.weight"].T.reshape(h, d, e)),
        "gate_proj": stack(lambda i: sd[p.format(i) + "mlp.gate_proj.weight"].T),
        "up_proj": stack(lambda i: sd[p.format(i) + "mlp.up_proj.weight"].T),
        "down_proj": stack(lambda i: sd[p.format(i) + "mlp.down_proj.weight"].T),
    }
    for name, value in weights.items():
        getattr(model.layers, name)[...] = value
    model.embed_tokens[...] = sd["model.embed_tokens.weight"]
    model.norm[...] = sd["model.norm.weight"]
    if not cfg.tie_word_embeddings:
        model.lm_head[...] = sd["lm_head.weight"].T


def tiny_pair(preset: str = "tiny-gqa", seed: int = 0, init_std: float = 0.2, **overrides: Any) -> tuple[Any, Llama]:
    """(transformers model, jaxtune model) with identical random weights, float32, eval mode.

    ``init_std`` is larger than the usual 0.02 so that random logits are peaked and greedy choices are far from
    ties (parity of argmax then tests the numerics, not float noise).
    """
    cfg = model_config(preset, initializer_range=init_std, **overrides)
    torch.manual_seed(seed)
    hf_cfg = hf_config(cfg)
    hf_cfg.initializer_range = init_std
    hf_model = transformers.LlamaForCausalLM(hf_cfg).eval()
    # Norm weights start at one; jitter them so a wrong norm mapping cannot pass unnoticed.
    with torch.no_grad():
        for name, param in hf_model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    model = Llama(cfg, rngs=nnx.Rngs(seed))
    copy_hf_weights(hf_model, model)
    return hf_model, model


@pytest.fixture(scope="session")
def gqa_pair() -> tuple[Any, Llama]:
    """A grouped-query tiny model pair (vocab 1000, 2 layers)."""
    return tiny_pair("tiny-gqa")


@pytest.fixture(scope="session")
def tied_pair() -> tuple[Any, Llama]:
    """A tiny model pair with tied input/output embeddings."""
    return tiny_pair("tiny-tied", seed=1)
