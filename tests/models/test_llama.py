"""jaxtune.models.llama against transformers' PyTorch LlamaForCausalLM (float32, CPU, tiny random models): what is
LLaMA's own (remat policies, left padding with explicit positions, vocabulary padding and resizing); the parity
every family shares is in test_registry.py."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_pairs import (
    TOL,
    Pair,
    hf_logits,
    hf_loss_backward,
    jaxtune_model,
    logits_of,
    loss_and_grads,
    make_pair,
    random_ids,
)
from hf_reference import torch

from jaxtune.models.decoder import resize_token_embeddings


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
    hf_loss = hf_loss_backward(gqa_pair.hf, ids)
    hf_grad = gqa_pair.hf.model.layers[1].mlp.down_proj.weight.grad.numpy().T
    np.testing.assert_allclose(base_grads["layers"]["down_proj"][1], hf_grad, atol=1e-5)
    assert base_loss == pytest.approx(hf_loss, abs=1e-5)


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
    unpadded = make_pair("llama", "mha-untied-default", seed=2)
    cfg, hf_model = unpadded.cfg, unpadded.hf
    padded = jaxtune_model(dataclasses.replace(cfg, vocab_pad_multiple=128), unpadded.params)
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
    pair = make_pair("llama", variant, seed=4)
    cfg, hf_model, model = pair.cfg, pair.hf, pair.model
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
    from jaxtune.models.decoder import KVCache

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
