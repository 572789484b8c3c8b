"""jaxtune.models.bloom against transformers' PyTorch BloomForCausalLM (float32, CPU, tiny random models)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_bloom_reference import BLOOM_VARIANTS, BloomPair, jaxtune_bloom, make_bloom_pair, torch
from hf_reference import hf_logits

from jaxtune.models.bloom import Bloom
from jaxtune.models.llama import init_cache

TOL = 1e-4


@pytest.fixture(scope="module", params=list(BLOOM_VARIANTS))
def bloom_pair(request: pytest.FixtureRequest) -> BloomPair:
    return make_bloom_pair(request.param)


@pytest.fixture(scope="module")
def six_heads() -> BloomPair:
    """Six heads: both of ALiBi's slope sequences."""
    return make_bloom_pair("heads6-vocab131", seed=1)


def logits_of(model: Bloom, ids, **kwargs) -> np.ndarray:
    return np.asarray(nnx.jit(lambda m, x, kw: m(x, **kw)[0])(model, jnp.asarray(ids), kwargs))


def random_ids(vocab: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=shape).astype(np.int32)


def test_logits_match_transformers(bloom_pair: BloomPair) -> None:
    ids = random_ids(bloom_pair.cfg.vocab_size, (2, 24))
    got = logits_of(bloom_pair.model, ids)
    want = hf_logits(bloom_pair.hf, ids)
    assert got.shape == want.shape == (2, 24, bloom_pair.cfg.vocab_size)
    assert np.max(np.abs(got - want)) < TOL


def test_left_padded_batch_matches_transformers_attention_mask(bloom_pair: BloomPair) -> None:
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


def greedy_with_cache(model: Bloom, prompt: np.ndarray, max_new_tokens: int) -> list[int]:
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


def test_greedy_generation_with_cache_matches_transformers_generate(bloom_pair: BloomPair) -> None:
    prompt = random_ids(bloom_pair.cfg.vocab_size, (7,), seed=3)
    n = 12
    got = greedy_with_cache(bloom_pair.model, prompt, n)
    ids = torch.from_numpy(prompt[None].astype(np.int64))
    with torch.no_grad():
        out = bloom_pair.hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=3,
        )
    assert got == out[0, prompt.shape[0] :].tolist()


def test_generator_on_left_padded_prompts_matches_transformers_generate(six_heads: BloomPair) -> None:
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
    with torch.no_grad():
        out = six_heads.hf.generate(
            torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=3,
        )
    for row in range(len(prompts)):
        assert list(got[row].tokens) == out[row, width:].tolist(), row


def test_cached_decoding_logits_match_full_forward(six_heads: BloomPair) -> None:
    """Chunked prefill + single-token steps give the logits of one full forward pass."""
    model = six_heads.model
    ids = random_ids(six_heads.cfg.vocab_size, (2, 10), seed=5)
    full = logits_of(model, ids)
    run = nnx.jit(lambda m, x, cache: m(x, cache=cache))
    cache = init_cache(model.cfg, 2, 16, jnp.float32)
    first, cache = run(model, jnp.asarray(ids[:, :6]), cache)
    pieces = [np.asarray(first)]
    for t in range(6, 10):
        step, cache = run(model, jnp.asarray(ids[:, t : t + 1]), cache)
        pieces.append(np.asarray(step))
    assert np.asarray(cache.index).tolist() == [10] * ids.shape[0]  # per-row cache index
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=TOL, rtol=0)


def test_per_row_cache_indices_and_logit_slots(six_heads: BloomPair) -> None:
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


def test_scanned_and_unscanned_layers_agree(six_heads: BloomPair) -> None:
    unscanned = jaxtune_bloom(dataclasses.replace(six_heads.cfg, scan_layers=False), six_heads.params)
    ids = random_ids(six_heads.cfg.vocab_size, (2, 16), seed=7)
    np.testing.assert_allclose(logits_of(unscanned, ids), logits_of(six_heads.model, ids), atol=1e-5, rtol=0)
    caches = []
    for model in (six_heads.model, unscanned):
        fill = nnx.jit(lambda m, x, cache: m(x, cache=cache)[1])
        caches.append(fill(model, jnp.asarray(ids), init_cache(model.cfg, 2, 16, jnp.float32)))
    np.testing.assert_allclose(np.asarray(caches[0].k), np.asarray(caches[1].k), atol=1e-5)
    np.testing.assert_allclose(np.asarray(caches[0].v), np.asarray(caches[1].v), atol=1e-5)


def loss_and_grads(model: Bloom, ids: np.ndarray) -> tuple[float, dict]:
    def loss_fn(m: Bloom):
        logits, _ = m(jnp.asarray(ids[:, :-1]))
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(ids[:, 1:])[..., None], axis=-1))

    loss, grads = nnx.jit(nnx.value_and_grad(loss_fn))(model)
    return float(loss), nnx.to_pure_dict(grads)


def test_gradients_match_torch_under_every_remat_policy(six_heads: BloomPair) -> None:
    """Gradients of every parameter agree with torch's autograd, with and without rematerialisation (rows of 16
    tokens: the causal query blocks of the attention run too)."""
    ids = random_ids(six_heads.cfg.vocab_size, (2, 17), seed=11)
    base_loss, base_grads = loss_and_grads(six_heads.model, ids)
    for policy in ("projections",):  # saves named residuals; "full" recomputes everything (both tested on LLaMA)
        model = jaxtune_bloom(dataclasses.replace(six_heads.cfg, remat_policy=policy), six_heads.params)
        loss, grads = loss_and_grads(model, ids)
        assert loss == pytest.approx(base_loss, abs=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads)):
            np.testing.assert_allclose(a, b, atol=1e-5)
    hf = six_heads.hf
    hf_ids = torch.from_numpy(ids.astype(np.int64))
    hf.zero_grad()
    hf_loss = hf(hf_ids[:, :-1]).logits.log_softmax(-1).gather(-1, hf_ids[:, 1:, None]).mean().neg()
    hf_loss.backward()
    assert base_loss == pytest.approx(hf_loss.item(), abs=1e-5)
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


def test_packed_documents_see_alibi_distances_within_their_segment(six_heads: BloomPair) -> None:
    """Two documents packed into one row (segment ids 1, 2) then padding give each document's own logits, as
    transformers computes them for the documents separately."""
    vocab = six_heads.cfg.vocab_size
    doc_a, doc_b = random_ids(vocab, (9,), seed=1), random_ids(vocab, (5,), seed=2)
    ids = np.concatenate([doc_a, doc_b, np.zeros(2, np.int32)])[None]
    segment_ids = np.array([[1] * 9 + [2] * 5 + [0] * 2], np.int32)
    positions = np.array([list(range(9)) + list(range(5)) + [0] * 2], np.int32)
    packed = logits_of(six_heads.model, ids, positions=jnp.asarray(positions), segment_ids=jnp.asarray(segment_ids))
    np.testing.assert_allclose(packed[0, :9], hf_logits(six_heads.hf, doc_a[None])[0], atol=TOL, rtol=0)
    np.testing.assert_allclose(packed[0, 9:14], hf_logits(six_heads.hf, doc_b[None])[0], atol=TOL, rtol=0)


def test_bfloat16_compute_stays_close_to_float32(six_heads: BloomPair) -> None:
    """bf16 matmuls with fp32 norms, softmax and ALiBi: logits within bf16 rounding of the fp32 model."""
    bf16 = jaxtune_bloom(dataclasses.replace(six_heads.cfg, compute_dtype="bfloat16"), six_heads.params)
    ids = random_ids(six_heads.cfg.vocab_size, (2, 12), seed=8)
    got, want = logits_of(bf16, ids), logits_of(six_heads.model, ids)
    assert got.dtype == np.float32
    assert np.max(np.abs(got - want)) < 0.1 * np.max(np.abs(want))
