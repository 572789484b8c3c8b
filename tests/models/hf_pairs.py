"""Helpers of the model tests, for every family: a tiny transformers reference and a jaxtune model holding the same
weights (a :class:`Pair`), and the ways the tests run both sides (logits, greedy decoding, loss and gradients).

Each family's reference lives in a module of its own (hf_reference.py: ``LlamaForCausalLM``, hf_bloom_reference.py:
``BloomForCausalLM``, hf_qwen2_reference.py: ``Qwen2ForCausalLM``): its named test variants, its config, its random transformers model and the mapping of its
weights into jaxtune's params tree, written from transformers' documented layout, independent of jaxtune.convert.
:data:`FAMILIES` registers them here; :func:`make_pair` builds a pair of any of them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import hf_bloom_reference as bloom_ref
import hf_qwen2_reference as qwen2_ref
import hf_reference as llama_ref
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from hf_reference import torch

from jaxtune.config.schema import ModelConfig
from jaxtune.models.decoder import init_cache
from jaxtune.models.registry import create_model

TOL = 1e-4
"""Largest absolute float32 logit difference allowed between jaxtune and transformers."""


@dataclasses.dataclass(frozen=True)
class HFReference:
    """One family's transformers reference, as its helper module defines it."""

    variants: dict[str, dict[str, Any]]
    """Named test shapes -> ModelConfig fields."""
    tiny_config: Callable[..., ModelConfig]
    """(variant, **overrides) -> a float32 jaxtune config."""
    make_hf: Callable[[ModelConfig, int], Any]
    """(cfg, seed) -> a random transformers model in eval mode."""
    to_params: Callable[[Any, ModelConfig], dict]
    """(transformers model, cfg) -> jaxtune's params tree of numpy arrays."""
    pad_id: int
    """The pad id transformers' generate is given (no row ends early, so it only silences its warning)."""


FAMILIES: dict[str, HFReference] = {
    "llama": HFReference(
        llama_ref.VARIANTS, llama_ref.tiny_config, llama_ref.make_hf_model, llama_ref.hf_weights_to_params, pad_id=0
    ),
    "bloom": HFReference(
        bloom_ref.BLOOM_VARIANTS,
        bloom_ref.tiny_bloom_config,
        bloom_ref.make_hf_bloom,
        bloom_ref.hf_weights_to_params,
        pad_id=3,
    ),
    "qwen2": HFReference(
        qwen2_ref.QWEN2_VARIANTS,
        qwen2_ref.tiny_qwen2_config,
        qwen2_ref.make_hf_qwen2,
        qwen2_ref.hf_weights_to_params,
        pad_id=0,
    ),
}

ALL_VARIANTS: list[tuple[str, str]] = [(family, v) for family, ref in FAMILIES.items() for v in ref.variants]
"""Every (family, variant) the parity tests cover."""


@dataclasses.dataclass
class Pair:
    """A transformers reference and a jaxtune model with the same weights."""

    cfg: ModelConfig
    hf: Any
    model: nnx.Module
    params: dict

    @property
    def pad_id(self) -> int:
        return FAMILIES[self.cfg.family].pad_id


def jaxtune_model(cfg: ModelConfig, params: dict) -> nnx.Module:
    """A model of ``cfg``'s family holding ``params`` (vocabulary rows beyond the given ones are zero)."""
    model = nnx.eval_shape(lambda: create_model(cfg))  # shapes only: every value is replaced below
    padded = cfg.padded_vocab_size()

    def pad_rows(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a, np.zeros((padded - a.shape[0],) + a.shape[1:], a.dtype)])

    params = dict(params, embed_tokens=pad_rows(params["embed_tokens"]))
    if "lm_head" in params:
        params["lm_head"] = pad_rows(params["lm_head"].T).T
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    nnx.update(model, state)
    return model


def make_pair(family: str, variant: str, seed: int = 0, **overrides: Any) -> Pair:
    ref = FAMILIES[family]
    cfg = ref.tiny_config(variant, **overrides)
    hf_model = ref.make_hf(cfg, seed)
    params = ref.to_params(hf_model, cfg)
    return Pair(cfg, hf_model, jaxtune_model(cfg, params), params)


def hf_logits(hf_model: Any, ids: np.ndarray, **kwargs: Any) -> np.ndarray:
    """float32 logits of the transformers model for int token ids (B, T)."""
    with torch.no_grad():
        out = hf_model(torch.from_numpy(np.asarray(ids, np.int64)), **kwargs)
    return out.logits.float().numpy()


def hf_greedy(hf_model: Any, ids: np.ndarray, mask: np.ndarray, max_new_tokens: int, pad_id: int) -> np.ndarray:
    """transformers' greedy ``generate`` of ``max_new_tokens`` on (B, T) ids under an attention mask, no early stop;
    (B, T + max_new_tokens) ids."""
    with torch.no_grad():
        out = hf_model.generate(
            torch.from_numpy(np.asarray(ids, np.int64)),
            attention_mask=torch.from_numpy(np.asarray(mask, np.int64)),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=pad_id,
        )
    return out.numpy()


def logits_of(model: nnx.Module, ids, **kwargs) -> np.ndarray:
    """jaxtune's logits for (B, T) ids, jitted; ``kwargs`` go to the model call (positions, segment_ids, ...)."""
    return np.asarray(nnx.jit(lambda m, x, kw: m(x, **kw)[0])(model, jnp.asarray(ids), kwargs))


def random_ids(vocab: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=shape).astype(np.int32)


def greedy_with_cache(model: nnx.Module, prompt: np.ndarray, max_new_tokens: int) -> list[int]:
    """Prefill the prompt into a KV cache, then decode one token at a time (argmax)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, ids, cache):
        logits, cache = nnx.merge(graphdef, state)(ids, cache=cache)
        return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), cache

    cache = init_cache(model.cfg, 1, prompt.shape[0] + max_new_tokens, jnp.float32)
    token, cache = step(state, jnp.asarray(prompt)[None], cache)
    tokens = [int(token[0])]
    for _ in range(max_new_tokens - 1):
        token, cache = step(state, token[:, None], cache)
        tokens.append(int(token[0]))
    return tokens


def loss_and_grads(model: nnx.Module, ids: np.ndarray) -> tuple[float, dict]:
    """Mean next-token cross-entropy of (B, T) ids and its gradient (a pure dict of the params tree)."""

    def loss_fn(m: nnx.Module):
        logits, _ = m(jnp.asarray(ids[:, :-1]))
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(ids[:, 1:])[..., None], axis=-1))

    loss, grads = nnx.jit(nnx.value_and_grad(loss_fn))(model)
    return float(loss), nnx.to_pure_dict(grads)


def hf_loss_backward(hf_model: Any, ids: np.ndarray) -> float:
    """transformers' mean next-token cross-entropy of (B, T) ids, its gradient left in the parameters' ``.grad``."""
    hf_ids = torch.from_numpy(ids.astype(np.int64))
    hf_model.zero_grad()
    loss = hf_model(hf_ids[:, :-1]).logits.log_softmax(-1).gather(-1, hf_ids[:, 1:, None]).mean().neg()
    loss.backward()
    return loss.item()
