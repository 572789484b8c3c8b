"""Batched likelihood scoring against transformers' PyTorch LLaMA on the same tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxtune.eval.likelihood import LikelihoodScorer, right_pad

torch = pytest.importorskip("torch")


def _format1_items(vocab: int, seed: int = 0) -> list[tuple[list[int], list[list[int]]]]:
    """DoIT format-1-shaped items: a context ending in a role token and three choices of different lengths."""
    rng = np.random.default_rng(seed)

    def ids(n: int) -> list[int]:
        return [int(t) for t in rng.integers(3, vocab, size=n)]

    items = []
    for context_len in (7, 30, 12, 55):
        choice_lens = rng.integers(1, 20, size=3)
        items.append((ids(context_len), [ids(int(n)) for n in choice_lens]))
    return items


def _study_ppl(hf_model, context: list[int], choice: list[int]) -> float:
    """The study's formula (evaluate/pred.py): CrossEntropyLoss over the choice tokens only, exponentiated."""
    input_ids = torch.tensor([context + choice])
    labels = input_ids.clone()
    labels[0, : len(context)] = -100
    with torch.no_grad():
        logits = hf_model(input_ids=input_ids).logits
    loss = torch.nn.CrossEntropyLoss()(logits[0, :-1], labels[0, 1:])
    return math.exp(loss.item())


def test_right_pad_weights_only_the_continuation():
    batch = right_pad([[5, 6], [9]], [[7, 8], [4]], length=5, rows=3)
    np.testing.assert_array_equal(batch.input_ids, [[5, 6, 7, 8, 0], [9, 4, 0, 0, 0], [0] * 5])
    np.testing.assert_array_equal(batch.targets, [[6, 7, 8, 0, 0], [4, 0, 0, 0, 0], [0] * 5])
    # Slot t predicts token t + 1: the continuation [7, 8] is predicted at slots 1 and 2.
    np.testing.assert_array_equal(batch.weights, [[0, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0] * 5])
    np.testing.assert_array_equal(batch.segment_ids, [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0] * 5])
    np.testing.assert_array_equal(batch.last_index, [3, 1, 0])


@pytest.mark.parametrize("pair_name", ["gqa_pair", "tied_pair"])
def test_format1_perplexities_match_transformers(pair_name, request):
    hf_model, model = request.getfixturevalue(pair_name)
    items = _format1_items(model.cfg.vocab_size)
    contexts = [context for context, choices in items for _ in choices]
    continuations = [choice for _, choices in items for choice in choices]
    # All choices of all items scored together: 12 rows in batches of 5 (three buckets, dummy rows in the last).
    ours = LikelihoodScorer(model, batch_size=5, bucket_multiple=32).continuation_perplexities(contexts, continuations)
    theirs = [_study_ppl(hf_model, c, k) for c, k in zip(contexts, continuations)]
    assert len(ours) == 12
    # Within 1e-4 on the scale of the mean cross-entropy (log-perplexity), i.e. a relative 1e-4 on perplexity.
    np.testing.assert_allclose(np.log(ours), np.log(theirs), atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)


def test_scores_do_not_depend_on_batch_mates(gqa_pair):
    _, model = gqa_pair
    items = _format1_items(model.cfg.vocab_size, seed=1)
    contexts = [items[0][0], items[1][0], items[2][0]]
    continuations = [items[0][1][0], items[1][1][1], items[2][1][2]]
    scorer = LikelihoodScorer(model, batch_size=3, bucket_multiple=64)
    together = scorer.continuation_nll(contexts, continuations)
    alone = [scorer.continuation_nll([c], [k])[0] for c, k in zip(contexts, continuations)]
    for (a, n), (b, m) in zip(together, alone):
        assert n == m and a == pytest.approx(b, rel=1e-5)


def test_next_token_logits_match_transformers(gqa_pair):
    hf_model, model = gqa_pair
    rng = np.random.default_rng(4)
    prompts = [[int(t) for t in rng.integers(3, model.cfg.vocab_size, size=n)] for n in (3, 40, 18)]
    candidates = [272, 274, 1002, 3]
    ours = LikelihoodScorer(model, batch_size=2).next_token_logits(prompts, candidates)
    assert ours.shape == (3, 4) and ours.dtype == np.float32
    for prompt, row in zip(prompts, ours):
        with torch.no_grad():
            expected = hf_model(input_ids=torch.tensor([prompt])).logits[0, -1, candidates].numpy()
        np.testing.assert_allclose(row, expected, atol=1e-4, rtol=1e-4)


def test_empty_and_bad_inputs(gqa_pair):
    _, model = gqa_pair
    scorer = LikelihoodScorer(model, batch_size=2)
    ppl = scorer.continuation_perplexities([[5, 6], [7]], [[], [8]])
    assert math.isnan(ppl[0]) and math.isfinite(ppl[1])
    with pytest.raises(ValueError, match="context 0 is empty"):
        scorer.continuation_perplexities([[]], [[5]])
    with pytest.raises(ValueError, match="2 contexts but 1 continuations"):
        scorer.continuation_perplexities([[1], [2]], [[3]])
    with pytest.raises(ValueError, match=r"continuation 0 holds token ids outside \[0, 1004\)"):
        scorer.continuation_perplexities([[1]], [[1004]])
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        scorer.next_token_logits([[]], [1])


def _row_nll(model, context: list[int], continuation: list[int]) -> float:
    """The scoring before prefix caching: one unpadded forward pass over ``context + continuation``."""
    import jax.numpy as jnp
    from flax import nnx

    row = context + continuation
    logits = np.asarray(nnx.jit(lambda m, x: m(x)[0])(model, jnp.asarray([row])))[0].astype(np.float64)
    logp = (
        logits
        - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    return -sum(logp[t - 1, row[t]] for t in range(len(context), len(row)))


def test_shared_contexts_are_scored_once_and_match_per_row_scoring(gqa_pair):
    """Three choices per context (and a context repeated across items) scored from one cached prefix equal a full
    forward pass per row within 1e-5 on the log-perplexity; an empty continuation (the 2048-token cut) is NaN."""
    _, model = gqa_pair
    items = _format1_items(model.cfg.vocab_size, seed=2)
    contexts = [context for context, choices in items for _ in choices] + [items[0][0]]
    continuations = [choice for _, choices in items for choice in choices] + [[]]
    contexts.append(items[1][0])
    continuations.append(items[1][1][0])  # the same pair twice
    scorer = LikelihoodScorer(model, batch_size=2, bucket_multiple=32)
    got = scorer.continuation_nll(contexts, continuations)
    assert got[12] == (0.0, 0)
    for (total, count), context, continuation in zip(got, contexts, continuations):
        assert count == len(continuation)
        if count:
            want = _row_nll(model, context, continuation)
            assert abs(total / count - want / count) < 1e-5
    assert got[13] == got[3]
    assert math.isnan(scorer.continuation_perplexities(contexts, continuations)[12])
