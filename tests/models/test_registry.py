"""Every family of jaxtune.models.registry against its transformers PyTorch reference (float32, CPU, tiny random
models): logits, greedy KV-cache decoding, chunked prefill, scanned layers and packed documents through the one
interface the registry promises. Each family's own behaviour is tested in test_llama.py and test_bloom.py (Qwen2 is LLaMA plus biases)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx
from hf_pairs import TOL, Pair, greedy_with_cache, hf_greedy, hf_logits, jaxtune_model, logits_of, random_ids

from jaxtune.models.decoder import init_cache
from jaxtune.models.registry import MODEL_CLASSES


def test_logits_match_transformers(pair: Pair) -> None:
    assert type(pair.model) is MODEL_CLASSES[pair.cfg.family]
    ids = random_ids(pair.cfg.vocab_size, (2, 24))
    got = logits_of(pair.model, ids)
    want = hf_logits(pair.hf, ids)
    assert got.shape == want.shape == (2, 24, pair.cfg.vocab_size)
    assert np.max(np.abs(got - want)) < TOL


def test_greedy_generation_with_cache_matches_transformers_generate(pair: Pair) -> None:
    prompt = random_ids(pair.cfg.vocab_size, (7,), seed=3)
    n = 12
    got = greedy_with_cache(pair.model, prompt, n)
    want = hf_greedy(pair.hf, prompt[None], np.ones((1, 7)), n, pair.pad_id)
    assert got == want[0, prompt.shape[0] :].tolist()


def test_cached_decoding_logits_match_full_forward(decoding_pair: Pair) -> None:
    """Chunked prefill + single-token steps give the logits of one full forward pass."""
    model = decoding_pair.model
    ids = random_ids(decoding_pair.cfg.vocab_size, (2, 10), seed=5)
    full = logits_of(model, ids)
    run = nnx.jit(lambda m, x, cache: m(x, cache=cache))
    cache = init_cache(model.cfg, 2, 16, jnp.float32)
    first, cache = run(model, jnp.asarray(ids[:, :6]), cache)
    pieces = [np.asarray(first)]
    for t in range(6, 10):
        step, cache = run(model, jnp.asarray(ids[:, t : t + 1]), cache)
        pieces.append(np.asarray(step))
    assert np.asarray(cache.index).tolist() == [10, 10]  # per-row cache index
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=TOL, rtol=0)


def test_scanned_and_unscanned_layers_agree(decoding_pair: Pair) -> None:
    unscanned = jaxtune_model(dataclasses.replace(decoding_pair.cfg, scan_layers=False), decoding_pair.params)
    ids = random_ids(decoding_pair.cfg.vocab_size, (2, 16), seed=7)
    np.testing.assert_allclose(logits_of(unscanned, ids), logits_of(decoding_pair.model, ids), atol=1e-5, rtol=0)
    # With a cache, both paths write the same keys and values.
    caches = []
    for model in (decoding_pair.model, unscanned):
        fill = nnx.jit(lambda m, x, cache: m(x, cache=cache)[1])
        caches.append(fill(model, jnp.asarray(ids), init_cache(model.cfg, 2, 16, jnp.float32)))
    np.testing.assert_allclose(np.asarray(caches[0].k), np.asarray(caches[1].k), atol=1e-5)
    np.testing.assert_allclose(np.asarray(caches[0].v), np.asarray(caches[1].v), atol=1e-5)


def test_packed_documents_do_not_attend_across_segments(decoding_pair: Pair) -> None:
    """Two documents packed into one row (segment ids 1, 2; positions restarting, ALiBi distances within each
    segment) give each document's own logits, as transformers computes them for the documents separately; padding
    (segment 0) changes nothing."""
    vocab = decoding_pair.cfg.vocab_size
    doc_a, doc_b = random_ids(vocab, (9,), seed=1), random_ids(vocab, (5,), seed=2)
    pad = 2
    ids = np.concatenate([doc_a, doc_b, np.zeros(pad, np.int32)])[None]
    segment_ids = np.array([[1] * 9 + [2] * 5 + [0] * pad], np.int32)
    positions = np.array([list(range(9)) + list(range(5)) + [0] * pad], np.int32)
    packed = logits_of(decoding_pair.model, ids, positions=jnp.asarray(positions), segment_ids=jnp.asarray(segment_ids))
    np.testing.assert_allclose(packed[0, :9], hf_logits(decoding_pair.hf, doc_a[None])[0], atol=TOL, rtol=0)
    np.testing.assert_allclose(packed[0, 9:14], hf_logits(decoding_pair.hf, doc_b[None])[0], atol=TOL, rtol=0)
