"""Shared fixtures for the inference tests: a tiny transformers LlamaForCausalLM and the same weights in jaxtune.

The config is jaxtune's (:func:`jaxtune.convert.hf_config.hf_config_dict`); the weights are mapped by a small
independent function written here (HF Linear weights are (out, in); jaxtune keeps
(in, ...) layouts), so the parity tests do not rest on jaxtune's own converter.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxtune.demo
from jaxtune.convert.hf_config import hf_config_dict
from jaxtune.models.configs import model_config
from jaxtune.models.llama import Llama


def _torch_and_transformers() -> tuple[Any, Any]:
    """torch and transformers, or a skip (the parity tests need the test extra: pip install jaxtune[test])."""
    torch = pytest.importorskip("torch", reason="the parity tests need PyTorch (pip install jaxtune[test])")
    return torch, pytest.importorskip("transformers")


def hf_config(cfg: Any) -> Any:
    """A transformers LlamaConfig with the same shape as a jaxtune ModelConfig (jaxtune's own mapping, which
    tests/convert/test_hf_config.py checks against transformers)."""
    _, transformers = _torch_and_transformers()
    return transformers.LlamaConfig(**hf_config_dict(cfg, "float32"))


def jaxtune_params_from_hf(hf_model: Any, cfg: Any) -> dict:
    """A LlamaForCausalLM's weights as jaxtune's parameter tree (nested dict of numpy arrays)."""
    h, kv, d, e = cfg.num_heads, cfg.resolved_num_kv_heads(), cfg.resolved_head_dim(), cfg.hidden_size
    sd = {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}

    def stack(suffix: str, transform: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        return np.stack([transform(sd[f"model.layers.{i}.{suffix}"]) for i in range(cfg.num_layers)])

    params = {
        "embed_tokens": sd["model.embed_tokens.weight"],
        "norm": sd["model.norm.weight"],
        "layers": {
            "attn_norm": stack("input_layernorm.weight", lambda w: w),
            "mlp_norm": stack("post_attention_layernorm.weight", lambda w: w),
            "q_proj": stack("self_attn.q_proj.weight", lambda w: w.T.reshape(e, h, d)),
            "k_proj": stack("self_attn.k_proj.weight", lambda w: w.T.reshape(e, kv, d)),
            "v_proj": stack("self_attn.v_proj.weight", lambda w: w.T.reshape(e, kv, d)),
            "o_proj": stack("self_attn.o_proj.weight", lambda w: w.T.reshape(h, d, e)),
            "gate_proj": stack("mlp.gate_proj.weight", lambda w: w.T),
            "up_proj": stack("mlp.up_proj.weight", lambda w: w.T),
            "down_proj": stack("mlp.down_proj.weight", lambda w: w.T),
        },
    }
    if not cfg.tie_word_embeddings:
        params["lm_head"] = sd["lm_head.weight"].T
    return params


def model_from_params(cfg: Any, params: dict) -> Llama:
    """A jaxtune Llama holding ``params`` (built abstractly: no random initialisation to pay for)."""
    model = nnx.eval_shape(lambda: Llama(cfg, nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    nnx.update(model, state)
    return model


def tiny_pair(preset: str = "tiny-gqa", seed: int = 0, init_std: float = 0.2, **overrides: Any) -> tuple[Any, Llama]:
    """(transformers model, jaxtune model) with identical random weights, float32, eval mode.

    ``init_std`` is larger than the usual 0.02 so that random logits are peaked and greedy choices are far from
    ties (parity of argmax then tests the numerics, not float noise).
    """
    cfg = model_config(preset, initializer_range=init_std, **overrides)
    torch, transformers = _torch_and_transformers()
    torch.manual_seed(seed)
    hf_cfg = hf_config(cfg)
    hf_cfg.initializer_range = init_std
    hf_model = transformers.LlamaForCausalLM(hf_cfg).eval()
    # Norm weights start at one; jitter them so a wrong norm mapping cannot pass unnoticed.
    with torch.no_grad():
        for name, param in hf_model.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    return hf_model, model_from_params(cfg, jaxtune_params_from_hf(hf_model, cfg))


GQA_VOCAB = 1004
"""The demo SentencePiece vocabulary (1000 pieces) plus DoIT's <user>, <assistant>, <eot>, <pad>."""


@pytest.fixture(scope="session")
def gqa_pair() -> tuple[Any, Llama]:
    """A grouped-query tiny model pair (2 layers, vocabulary of the demo tokenizer + DoIT's special tokens)."""
    return tiny_pair("tiny-gqa", vocab_size=GQA_VOCAB, max_position_embeddings=512)


@pytest.fixture(scope="session")
def tied_pair() -> tuple[Any, Llama]:
    """A tiny model pair with tied input/output embeddings."""
    return tiny_pair("tiny-tied", seed=1)


DEMO_TOKENIZER = Path(jaxtune.demo.__file__).parent / "tokenizer" / "tokenizer.model"
"""The demo SentencePiece vocabulary (1000 pieces) shipped with jaxtune."""
DOIT_ADDED = {"<user>": 1000, "<assistant>": 1001, "<eot>": 1002, "<pad>": 1003}
"""DoIT's special tokens appended after the demo vocabulary, in the study's order."""


@pytest.fixture(scope="session")
def jaxtune_checkpoint(gqa_pair, tmp_path_factory) -> Path:
    """The gqa_pair model as a jaxtune params checkpoint carrying the demo tokenizer and DoIT's tokens."""
    from jaxtune.checkpoint.params import save_params

    _, model = gqa_pair
    path = tmp_path_factory.mktemp("ckpt") / "jaxtune"
    save_params(path, nnx.state(model, nnx.Param), model.cfg, tokenizer_dir=DEMO_TOKENIZER, added_tokens=DOIT_ADDED)
    return path


@pytest.fixture(scope="session")
def hf_checkpoint(gqa_pair, tmp_path_factory) -> Path:
    """The gqa_pair model as a Hugging Face folder (safetensors, tokenizer.model, added_tokens.json)."""
    hf_model, _ = gqa_pair
    path = tmp_path_factory.mktemp("ckpt") / "hf"
    hf_model.save_pretrained(path, safe_serialization=True)
    shutil.copyfile(DEMO_TOKENIZER, path / "tokenizer.model")
    (path / "added_tokens.json").write_text(json.dumps(DOIT_ADDED), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def doit_codec() -> Any:
    """The study's rendering of DoIT prompts on the demo vocabulary (independent of jaxtune's template codec)."""
    from .study_doit import StudyDoitRendering

    return StudyDoitRendering(DEMO_TOKENIZER, DOIT_ADDED)
