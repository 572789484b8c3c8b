"""jaxtune.models.llama against transformers' PyTorch LlamaForCausalLM (float32, CPU, tiny random models)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_reference import Pair, hf_logits, hf_weights_to_params, jaxtune_model, make_hf_model, tiny_config, torch

from jaxtune.models.llama import Llama, init_cache, resize_token_embeddings

TOL = 1e-4


def logits_of(model: Llama, ids, **kwargs) -> np.ndarray:
    return np.asarray(nnx.jit(lambda m, x, kw: m(x, **kw)[0])(model, jnp.asarray(ids), kwargs))


def random_ids(vocab: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=shape).astype(np.int32)


def test_logits_match_transformers(pair: Pair) -> None:
    ids = random_ids(pair.cfg.vocab_size, (2, 24))
    got = logits_of(pair.model, ids)
    want = hf_logits(pair.hf, ids)
    assert got.shape == want.shape == (2, 24, pair.cfg.vocab_size)
    assert np.max(np.abs(got - want)) < TOL


def greedy_with_cache(model: Llama, prompt: np.ndarray, max_new_tokens: int) -> list[int]:
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


def test_greedy_generation_with_cache_matches_transformers_generate(pair: Pair) -> None:
    prompt = random_ids(pair.cfg.vocab_size, (7,), seed=3)
    n = 12
    got = greedy_with_cache(pair.model, prompt, n)
    ids = torch.from_numpy(prompt[None].astype(np.int64))
    with torch.no_grad():
        out = pair.hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    assert got == out[0, prompt.shape[0] :].tolist()


def test_cached_decoding_logits_match_full_forward(gqa_pair: Pair) -> None:
    """Chunked prefill + single-token steps give the logits of one full forward pass."""
    model = gqa_pair.model
    ids = random_ids(gqa_pair.cfg.vocab_size, (2, 10), seed=5)
    full = logits_of(model, ids)
    run = nnx.jit(lambda m, x, cache: m(x, cache=cache))
    cache = init_cache(model.cfg, 2, 16, jnp.float32)
    first, cache = run(model, jnp.asarray(ids[:, :6]), cache)
    pieces = [np.asarray(first)]
    for t in range(6, 10):
        step, cache = run(model, jnp.asarray(ids[:, t : t + 1]), cache)
        pieces.append(np.asarray(step))
    assert cache.index.tolist() == [10, 10]
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=TOL, rtol=0)


def test_scanned_and_unscanned_layers_agree(gqa_pair: Pair) -> None:
    unscanned_cfg = dataclasses.replace(gqa_pair.cfg, scan_layers=False)
    unscanned = jaxtune_model(unscanned_cfg, gqa_pair.params)
    ids = random_ids(gqa_pair.cfg.vocab_size, (2, 16), seed=7)
    np.testing.assert_allclose(logits_of(unscanned, ids), logits_of(gqa_pair.model, ids), atol=1e-5, rtol=0)
    # With a cache, both paths write the same keys and values.
    caches = []
    for model in (gqa_pair.model, unscanned):
        fill = nnx.jit(lambda m, x, cache: m(x, cache=cache)[1])
        caches.append(fill(model, jnp.asarray(ids), init_cache(model.cfg, 2, 16, jnp.float32)))
    np.testing.assert_allclose(np.asarray(caches[0].k), np.asarray(caches[1].k), atol=1e-5)
    np.testing.assert_allclose(np.asarray(caches[0].v), np.asarray(caches[1].v), atol=1e-5)


def loss_and_grads(model: Llama, ids: np.ndarray) -> tuple[float, dict]:
    def loss_fn(m: Llama):
        logits, _ = m(jnp.asarray(ids[:, :-1]))
        logp = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(ids[:, 1:])[..., None], axis=-1))

    loss, grads = nnx.jit(nnx.value_and_grad(loss_fn))(model)
    return float(loss), nnx.to_pure_dict(grads)


def test_remat_policies_change_memory_not_results(gqa_pair: Pair) -> None:
    ids = random_ids(gqa_pair.cfg.vocab_size, (2, 12), seed=11)
    base_loss, base_grads = loss_and_grads(gqa_pair.model, ids)
    for policy in ("none", "full", "projections"):  # the others only choose other residuals to keep
        model = jaxtune_model(dataclasses.replace(gqa_pair.cfg, remat_policy=policy), gqa_pair.params)
        loss, grads = loss_and_grads(model, ids)
        assert loss == pytest.approx(base_loss, abs=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(base_grads)):
            np.testing.assert_allclose(a, b, atol=1e-5)
    # The gradient itself is the one torch computes.
    hf_ids = torch.from_numpy(ids.astype(np.int64))
    hf_loss = gqa_pair.hf(hf_ids[:, :-1]).logits.log_softmax(-1).gather(-1, hf_ids[:, 1:, None]).mean().neg()
    gqa_pair.hf.zero_grad()
    hf_loss.backward()
    hf_grad = gqa_pair.hf.model.layers[1].mlp.down_proj.weight.grad.numpy().T
    np.testing.assert_allclose(base_grads["layers"]["down_proj"][1], hf_grad, atol=1e-5)
    assert base_loss == pytest.approx(hf_loss.item(), abs=1e-5)


def test_packed_documents_do_not_attend_across_segments(gqa_pair: Pair) -> None:
    """Two documents packed into one row (segment ids 1, 2; positions restarting) give each document's own logits,
    as transformers computes them for the documents separately; padding (segment 0) changes nothing."""
    vocab = gqa_pair.cfg.vocab_size
    doc_a, doc_b = random_ids(vocab, (9,), seed=1), random_ids(vocab, (5,), seed=2)
    pad = 2
    ids = np.concatenate([doc_a, doc_b, np.zeros(pad, np.int32)])[None]
    segment_ids = np.array([[1] * 9 + [2] * 5 + [0] * pad], np.int32)
    positions = np.array([list(range(9)) + list(range(5)) + [0] * pad], np.int32)
    packed = logits_of(gqa_pair.model, ids, positions=jnp.asarray(positions), segment_ids=jnp.asarray(segment_ids))
    np.testing.assert_allclose(packed[0, :9], hf_logits(gqa_pair.hf, doc_a[None])[0], atol=TOL, rtol=0)
    np.testing.assert_allclose(packed[0, 9:14], hf_logits(gqa_pair.hf, doc_b[None])[0], atol=TOL, rtol=0)


def test_left_padding_matches_transformers_attention_mask(gqa_pair: Pair) -> None:
    vocab = gqa_pair.cfg.vocab_size
    doc = random_ids(vocab, (6,), seed=4)
    ids = np.concatenate([np.zeros(3, np.int32), doc])[None]
    segment_ids = np.array([[0, 0, 0] + [1] * 6], np.int32)
    positions = np.array([[0, 0, 0] + list(range(6))], np.int32)
    got = logits_of(gqa_pair.model, ids, positions=jnp.asarray(positions), segment_ids=jnp.asarray(segment_ids))
    mask = torch.from_numpy(segment_ids.astype(np.int64))
    want = hf_logits(gqa_pair.hf, ids, attention_mask=mask, position_ids=torch.from_numpy(positions.astype(np.int64)))
    np.testing.assert_allclose(got[0, 3:], want[0, 3:], atol=TOL, rtol=0)


def test_vocabulary_padding_is_invisible() -> None:
    cfg = tiny_config("mha-untied-default")
    hf_model = make_hf_model(cfg, seed=2)

    params = hf_weights_to_params(hf_model, cfg)
    padded = jaxtune_model(dataclasses.replace(cfg, vocab_pad_multiple=128), params)
    assert padded.embed_tokens[...].shape == (128, cfg.hidden_size)
    assert padded.lm_head[...].shape == (cfg.hidden_size, 128)
    ids = random_ids(cfg.vocab_size, (1, 8))
    got = logits_of(padded, ids)
    assert got.shape == (1, 8, cfg.vocab_size)
    np.testing.assert_allclose(got, hf_logits(hf_model, ids), atol=TOL, rtol=0)


@pytest.mark.parametrize("variant", ["mha-untied-default", "gqa-tied-llama3"])
def test_resize_token_embeddings_matches_mean_initialised_transformers(variant: str) -> None:
    """New rows are the mean of the old ones (the recipe of the study's training code on top of transformers'
    resize_token_embeddings); padding to 128 rows adds zero rows; logits of all ids match transformers."""
    cfg = tiny_config(variant)
    hf_model = make_hf_model(cfg, seed=4)

    model = jaxtune_model(cfg, hf_weights_to_params(hf_model, cfg))
    old, new = cfg.vocab_size, cfg.vocab_size + 4
    resize_token_embeddings(model, new, pad_multiple=128)
    assert model.cfg.vocab_size == new and model.cfg.padded_vocab_size() == -(-new // 128) * 128

    hf_model.resize_token_embeddings(new, mean_resizing=False)
    with torch.no_grad():
        for table in {
            id(t): t for t in (hf_model.get_input_embeddings().weight, hf_model.get_output_embeddings().weight)
        }.values():
            table[old:] = table[:old].mean(dim=0, keepdim=True)
    embed = np.asarray(model.embed_tokens[...])
    np.testing.assert_allclose(embed[old:new], hf_model.get_input_embeddings().weight[old:].detach().numpy(), atol=1e-6)
    assert not embed[new:].any()
    ids = np.concatenate([random_ids(old, (1, 6)), np.arange(old, new, dtype=np.int32)[None]], axis=1)
    got = logits_of(model, ids)
    assert got.shape == (1, 10, new)
    np.testing.assert_allclose(got, hf_logits(hf_model, ids), atol=TOL, rtol=0)


def _random_cache(layers: int, rows: int, slots: int, seed: int):
    from jaxtune.models.llama import KVCache

    rng = np.random.default_rng(seed)
    shape = (layers, rows, slots, 2, 4)
    return KVCache(
        k=jnp.asarray(rng.normal(size=shape), jnp.float32),
        v=jnp.asarray(rng.normal(size=shape), jnp.float32),
        segment_ids=jnp.asarray(rng.integers(1, 3, size=(rows, slots)), jnp.int32),
        index=jnp.asarray(rng.integers(0, slots, size=(rows,)), jnp.int32),
    )


def test_insert_rows_and_replace_rows_write_the_rows_a_reference_writes() -> None:
    """insert_rows (one layer at a time, dummy rows dropped) and replace_rows (row for row) against numpy: the
    target rows hold the new rows' slots 0..n-1 and an empty rest (segment 0), the other rows are untouched."""
    big, small = _random_cache(3, 6, 10, seed=0), _random_cache(3, 3, 4, seed=1)
    rows = np.array([4, 6, 1], np.int32)  # 6 is out of range: a dummy row, dropped
    got = jax.jit(lambda c, r, o: c.insert_rows(r, o))(big, rows, small)
    want = {name: np.array(getattr(big, name)) for name in ("k", "v", "segment_ids", "index")}
    for i, r in enumerate(rows):
        if r >= 6:
            continue
        for name in ("k", "v"):
            want[name][:, r, :4] = np.asarray(getattr(small, name))[:, i]
        want["segment_ids"][r] = 0
        want["segment_ids"][r, :4] = np.asarray(small.segment_ids)[i]
        want["index"][r] = int(small.index[i])
    for name, value in want.items():
        np.testing.assert_array_equal(np.asarray(getattr(got, name)), value, err_msg=name)

    aligned = _random_cache(3, 6, 4, seed=2)  # the same 6 rows, fewer slots
    mask = np.array([True, False, False, True, True, False])
    got = jax.jit(lambda c, m, o: c.replace_rows(m, o))(big, mask, aligned)
    for name in ("k", "v"):
        want = np.array(getattr(big, name))
        want[:, mask] = 0.0
        want[:, mask, :4] = np.asarray(getattr(aligned, name))[:, mask]
        np.testing.assert_array_equal(np.asarray(getattr(got, name)), want, err_msg=name)
    want = np.array(big.segment_ids)
    want[mask] = 0
    want[mask, :4] = np.asarray(aligned.segment_ids)[mask]
    np.testing.assert_array_equal(np.asarray(got.segment_ids), want)
    np.testing.assert_array_equal(np.asarray(got.index), np.where(mask, aligned.index, big.index))
