"""jaxtune.models.bloom against transformers' PyTorch BloomForCausalLM (float32, CPU, tiny random models): what is
BLOOM's own (ALiBi under left padding, per-row cache indices, gradients of the biases and LayerNorms, bf16 compute);
the parity every family shares is in test_registry.py."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_bloom_reference import BLOOM_VARIANTS, torch
from hf_pairs import (
    TOL,
    Pair,
    hf_greedy,
    hf_logits,
    hf_loss_backward,
    jaxtune_model,
    logits_of,
    loss_and_grads,
    make_pair,
    random_ids,
)


@pytest.fixture(scope="module", params=list(BLOOM_VARIANTS))
def bloom_pair(request: pytest.FixtureRequest) -> Pair:
    return make_pair("bloom", request.param)


def test_left_padded_batch_matches_transformers_attention_mask(bloom_pair: Pair) -> None:
    """Rows padded on the left by different amounts: ALiBi positions count from the attention mask, as in
    transformers, so every real token's logits match."""
    vocab = bloom_pair.cfg.vocab_size
    ids = random_ids(vocab, (3, 11), seed=4)
    pads = [0, 3, 7]
    segment_ids = np.ones((3, 11), np.int32)
    for row, pad in enumerate(pads):
        segment_ids[row, :pad] = 0
        ids[row, :pad] = 3
    got = logits_of(bloom_pair.model, ids, segment_ids=jnp.asarray(segment_ids))
    want = hf_logits(bloom_pair.hf, ids, attention_mask=torch.from_numpy(segment_ids.astype(np.int64)))
    for row, pad in enumerate(pads):
        assert np.max(np.abs(got[row, pad:] - want[row, pad:])) < TOL, row
    # ... and equal the logits of the unpadded prompt on its own.
    alone = logits_of(bloom_pair.model, ids[2:, 7:])
    np.testing.assert_allclose(got[2, 7:], alone[0], atol=TOL, rtol=0)


def test_generator_on_left_padded_prompts_matches_transformers_generate(six_heads: Pair) -> None:
    """jaxtune.eval's Generator (left-padded batch, prefill + while-loop decode) gives each prompt the tokens
    transformers' generate gives it with a left-padded attention mask."""
    from jaxtune.eval.generate import Generator

    vocab = six_heads.cfg.vocab_size
    prompts = [random_ids(vocab, (n,), seed=10 + n).tolist() for n in (9, 4, 6)]
    n = 8
    got = Generator(six_heads.model, batch_size=4, pad_id=3).generate(prompts, n, stop_ids=())
    width = max(map(len, prompts))
    ids = np.full((len(prompts), width), 3, np.int64)
    mask = np.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :], mask[row, width - len(p) :] = p, 1
    out = hf_greedy(six_heads.hf, ids, mask, n, six_heads.pad_id)
    for row in range(len(prompts)):
        assert list(got[row].tokens) == out[row, width:].tolist(), row


def test_per_row_cache_indices_and_logit_slots(six_heads: Pair) -> None:
    """A cache whose rows fill independently (index (B,)): row 1's prompt is shorter and its decoded tokens overwrite
    the padding after it; each row gets the logits it gets alone. logit_slots picks the prefill's last positions."""
    model = six_heads.model
    vocab = six_heads.cfg.vocab_size
    rows = [random_ids(vocab, (9,), seed=20), random_ids(vocab, (7,), seed=21)]
    prompt_len = (6, 4)
    ids = np.zeros((2, 6), np.int32)
    segments = np.zeros((2, 6), np.int32)
    for r, n in enumerate(prompt_len):
        ids[r, :n], segments[r, :n] = rows[r][:n], 1
    cache = model.init_cache(2, 12)._replace(index=jnp.zeros((2,), jnp.int32))
    run = nnx.jit(lambda m, x, s, c, ls: m(x, segment_ids=s, cache=c, logit_slots=ls))
    last, cache = run(model, jnp.asarray(ids), jnp.asarray(segments), cache, jnp.asarray([[5], [3]]))
    cache = cache._replace(index=jnp.asarray(prompt_len, jnp.int32))
    alone = [logits_of(model, row[None])[0] for row in rows]
    for r, n in enumerate(prompt_len):
        np.testing.assert_allclose(np.asarray(last)[r, 0], alone[r][n - 1], atol=TOL, rtol=0)
    step = nnx.jit(lambda m, x, c: m(x, segment_ids=jnp.ones_like(x), cache=c))
    for i in range(3):
        token = np.array([[rows[r][prompt_len[r] + i]] for r in range(2)], np.int32)
        logits, cache = step(model, jnp.asarray(token), cache)
        for r, n in enumerate(prompt_len):
            np.testing.assert_allclose(np.asarray(logits)[r, 0], alone[r][n + i], atol=TOL, rtol=0)
    np.testing.assert_array_equal(np.asarray(cache.index), [9, 7])


def test_gradients_match_torch_under_every_remat_policy(six_heads: Pair) -> None:
    """Gradients of every parameter agree with torch's autograd, with and without rematerialisation (rows of 16
    tokens: the causal query blocks of the attention run too)."""
    ids = random_ids(six_heads.cfg.vocab_size, (2, 17), seed=11)
    base_loss, base_grads = loss_and_grads(six_heads.model, ids)
    for policy in ("projections",):  # saves named residuals; "full" recomputes everything (both tested on LLaMA)
        model = jaxtune_model(dataclasses.replace(six_heads.cfg, remat_policy=policy), six_heads.params)
        loss, grads = loss_and_grads(model, ids)
        assert loss == pytest.approx(base_loss, abs=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads)):
            np.testing.assert_allclose(a, b, atol=1e-5)
    hf = six_heads.hf
    assert base_loss == pytest.approx(hf_loss_backward(hf, ids), abs=1e-5)
    h, d, e = six_heads.cfg.num_heads, six_heads.cfg.resolved_head_dim(), six_heads.cfg.hidden_size
    block = hf.transformer.h[1]
    checks = {
        ("layers", "qkv_proj"): np.einsum(
            "hcde->ehcd", block.self_attention.query_key_value.weight.grad.numpy().reshape(h, 3, d, e)
        ),
        ("layers", "qkv_bias"): block.self_attention.query_key_value.bias.grad.numpy().reshape(h, 3, d),
        ("layers", "o_bias"): block.self_attention.dense.bias.grad.numpy(),
        ("layers", "attn_norm_bias"): block.input_layernorm.bias.grad.numpy(),
        ("layers", "down_proj"): block.mlp.dense_4h_to_h.weight.grad.numpy().T,
        ("layers", "up_bias"): block.mlp.dense_h_to_4h.bias.grad.numpy(),
        ("embed_norm",): hf.transformer.word_embeddings_layernorm.weight.grad.numpy(),
        ("norm_bias",): hf.transformer.ln_f.bias.grad.numpy(),
    }
    for path, want in checks.items():
        got = base_grads[path[0]][path[1]][1] if len(path) == 2 else base_grads[path[0]]
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=".".join(path))
    np.testing.assert_allclose(
        base_grads["embed_tokens"], hf.transformer.word_embeddings.weight.grad.numpy(), atol=1e-5
    )


def test_bfloat16_compute_stays_close_to_float32(six_heads: Pair) -> None:
    """bf16 matmuls with fp32 norms, softmax and ALiBi: logits within bf16 rounding of the fp32 model."""
    bf16 = jaxtune_model(dataclasses.replace(six_heads.cfg, compute_dtype="bfloat16"), six_heads.params)
    ids = random_ids(six_heads.cfg.vocab_size, (2, 12), seed=8)
    got, want = logits_of(bf16, ids), logits_of(six_heads.model, ids)
    assert got.dtype == np.float32
    assert np.max(np.abs(got - want)) < 0.1 * np.max(np.abs(want))
