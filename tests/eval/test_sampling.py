"""Logits processing against transformers' own processors, and the hand-computed repetition-penalty case."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune.eval.sampling import (
    SamplingParams,
    apply_repetition_penalty,
    process_logits,
    select_tokens,
    top_k_filter,
    top_p_filter,
)

torch = pytest.importorskip("torch")
logits_process = pytest.importorskip("transformers.generation.logits_process")


def _random_logits(rows: int = 4, vocab: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, size=(rows, vocab)).astype(np.float32)


def test_repetition_penalty_hand_case():
    logits = jnp.array([[2.0, -1.0, 0.5, -3.0]])
    seen = jnp.array([[True, True, False, False]])
    out = np.asarray(apply_repetition_penalty(logits, seen, 2.0))
    # Seen: positive halved, negative doubled; unseen untouched.
    np.testing.assert_array_equal(out, [[1.0, -2.0, 0.5, -3.0]])


def test_repetition_penalty_matches_transformers():
    logits = _random_logits()
    history = np.array([[1, 5, 5, 7], [0, 2, 3, 4], [9, 9, 9, 9], [49, 10, 11, 12]])
    seen = np.zeros_like(logits, dtype=bool)
    np.put_along_axis(seen, history, True, axis=1)
    ours = apply_repetition_penalty(jnp.asarray(logits), jnp.asarray(seen), 1.3)
    theirs = logits_process.RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor(history), torch.tensor(logits))
    np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), rtol=1e-6)


@pytest.mark.parametrize("k", [1, 5, 50, 80])
def test_top_k_matches_transformers(k):
    logits = _random_logits(seed=k)
    logits[0, 3] = logits[0, 4] = logits[0].max() + 1  # a tie at the top
    ours = np.asarray(top_k_filter(jnp.asarray(logits), k))
    theirs = logits_process.TopKLogitsWarper(k)(None, torch.tensor(logits)).numpy()
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("p", [1e-6, 0.3, 0.9, 0.999])
def test_top_p_matches_transformers(p):
    logits = _random_logits(seed=1)
    ours = np.asarray(top_p_filter(jnp.asarray(logits), p))
    theirs = logits_process.TopPLogitsWarper(p)(None, torch.tensor(logits)).numpy()
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs))
    np.testing.assert_allclose(ours[~np.isinf(ours)], theirs[~np.isinf(theirs)], rtol=1e-6)


def test_full_pipeline_matches_transformers_order():
    logits = _random_logits(seed=2)
    history = np.array([[1, 2], [3, 4], [5, 6], [7, 8]])
    seen = np.zeros_like(logits, dtype=bool)
    np.put_along_axis(seen, history, True, axis=1)
    params = SamplingParams(temperature=0.7, top_k=10, top_p=0.8, repetition_penalty=1.2)
    ours = np.asarray(process_logits(jnp.asarray(logits), jnp.asarray(seen), params))
    scores = torch.tensor(logits)
    ids = torch.tensor(history)
    for proc in (
        logits_process.RepetitionPenaltyLogitsProcessor(1.2),
        logits_process.TemperatureLogitsWarper(0.7),
        logits_process.TopKLogitsWarper(10),
        logits_process.TopPLogitsWarper(0.8),
    ):
        scores = proc(ids, scores)
    theirs = scores.numpy()
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs))
    np.testing.assert_allclose(ours[~np.isinf(ours)], theirs[~np.isinf(theirs)], rtol=1e-5)


def test_greedy_ignores_temperature_filters_but_not_penalty():
    logits = jnp.array([[3.0, 2.9, -1.0]])
    seen = jnp.array([[True, False, False]])
    keys = jax.random.split(jax.random.key(0), 1)
    assert int(select_tokens(logits, None, keys, jnp.int32(0), SamplingParams())[0]) == 0
    penalised = SamplingParams(repetition_penalty=1.5)
    assert int(select_tokens(logits, seen, keys, jnp.int32(0), penalised)[0]) == 1


def test_sampling_frequencies_follow_the_tempered_softmax():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]])) * 2.0  # temperature 2 gives back these probabilities
    rows = 4000
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(3), i))(jnp.arange(rows))
    tokens = select_tokens(jnp.repeat(logits, rows, axis=0), None, keys, jnp.int32(0), SamplingParams(temperature=2.0))
    freq = np.bincount(np.asarray(tokens), minlength=4) / rows
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.03)


@pytest.mark.parametrize(
    "kwargs", [dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5), dict(repetition_penalty=0.0)]
)
def test_bad_settings_are_rejected(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SamplingParams(**kwargs)
