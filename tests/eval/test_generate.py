"""Batched KV-cache generation against transformers' ``generate`` on the same tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from jaxtune.eval.generate import Generator, bucket_length, left_pad
from jaxtune.eval.sampling import SamplingParams

torch = pytest.importorskip("torch")

PROMPT_LENGTHS = (5, 21, 3, 40, 9, 17)


def _prompts(vocab: int, lengths=PROMPT_LENGTHS, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(3, vocab, size=n)] for n in lengths]


def _hf_generate(hf_model, prompt, max_new_tokens, stop_ids, **settings):
    """transformers' greedy generate on one unpadded prompt: (new tokens, logits of the last step)."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = hf_model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=list(stop_ids), pad_token_id=0, output_logits=True, return_dict_in_generate=True,
            **settings,
        )
    tokens = out.sequences[0, len(prompt):].tolist()
    # After a stop, generate pads the row: keep up to and including the first stop token.
    for i, t in enumerate(tokens):
        if t in stop_ids:
            tokens = tokens[: i + 1]
            break
    return tokens, out.logits[len(tokens) - 1][0].numpy()


def test_bucket_length():
    assert [bucket_length(n) for n in (1, 16, 17, 33, 64, 65, 128, 129, 2000)] == [
        16, 16, 32, 64, 64, 128, 128, 192, 2048]
    assert bucket_length(5, multiple=8) == 8 and bucket_length(9, multiple=8) == 16
    with pytest.raises(ValueError, match="positive"):
        bucket_length(0)


def test_left_pad_layout():
    batch = left_pad([[7, 8, 9], [5]], length=4, rows=3, pad_id=0)
    np.testing.assert_array_equal(batch.input_ids, [[0, 7, 8, 9], [0, 0, 0, 5], [0, 0, 0, 0]])
    np.testing.assert_array_equal(batch.positions, [[0, 0, 1, 2], [0, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(batch.segment_ids, [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]])
    np.testing.assert_array_equal(batch.active, [True, True, False])


@pytest.mark.parametrize("pair_name", ["gqa_pair", "tied_pair"])
def test_greedy_matches_transformers(pair_name, request):
    hf_model, model = request.getfixturevalue(pair_name)
    prompts = _prompts(model.cfg.vocab_size)
    max_new = 12
    # A stop id that transformers produces mid-reply for the first prompt, so that early stopping is exercised
    # (rows stopping at different steps in one batch).
    free_run, _ = _hf_generate(hf_model, prompts[0], max_new, stop_ids=[])
    stop_ids = [free_run[4], 1]
    # batch_size 4 with 6 prompts: two batches with different buckets, the second filled with dummy rows.
    generator = Generator(model, batch_size=4, bucket_multiple=32)
    results = generator.generate(prompts, max_new, stop_ids)
    assert len(results) == len(prompts)
    assert len(results[0].tokens) == 5 and results[0].tokens[-1] == free_run[4]
    for prompt, result in zip(prompts, results):
        expected, expected_logits = _hf_generate(hf_model, prompt, max_new, stop_ids)
        assert list(result.tokens) == expected
        assert result.last_logits.shape == (model.cfg.vocab_size,)
        np.testing.assert_allclose(result.last_logits, expected_logits, atol=1e-4, rtol=1e-4)


def test_repetition_penalty_matches_transformers(gqa_pair):
    hf_model, model = gqa_pair
    prompts = _prompts(model.cfg.vocab_size, lengths=(6, 14))
    generator = Generator(model, batch_size=2)
    results = generator.generate(prompts, 24, stop_ids=[1], sampling=SamplingParams(repetition_penalty=1.8))
    plain = generator.generate(prompts, 24, stop_ids=[1])
    assert [r.tokens for r in results] != [r.tokens for r in plain]  # the penalty changes the greedy path here
    for prompt, result in zip(prompts, results):
        expected, _ = _hf_generate(hf_model, prompt, 24, [1], repetition_penalty=1.8)
        assert list(result.tokens) == expected


def test_sampling_is_reproducible_and_filters_reduce_to_greedy(gqa_pair):
    _, model = gqa_pair
    prompts = _prompts(model.cfg.vocab_size, lengths=(4, 11, 7))
    generator = Generator(model, batch_size=4)
    greedy = [r.tokens for r in generator.generate(prompts, 8, stop_ids=[1])]
    hot = SamplingParams(temperature=1.5)
    first = [r.tokens for r in generator.generate(prompts, 8, stop_ids=[1], sampling=hot, seed=7)]
    again = [r.tokens for r in generator.generate(prompts, 8, stop_ids=[1], sampling=hot, seed=7)]
    other = [r.tokens for r in generator.generate(prompts, 8, stop_ids=[1], sampling=hot, seed=8)]
    assert first == again
    assert first != other and first != greedy
    # A prompt's sample depends on its index and the seed, not on its batch mates or the batch size.
    alone = Generator(model, batch_size=1).generate(prompts, 8, stop_ids=[1], sampling=hot, seed=7)
    assert [r.tokens for r in alone] == first
    for sampling in (SamplingParams(temperature=1.5, top_k=1), SamplingParams(temperature=1.5, top_p=1e-6)):
        assert [r.tokens for r in generator.generate(prompts, 8, stop_ids=[1], sampling=sampling, seed=3)] == greedy


def test_bad_inputs_are_rejected(gqa_pair):
    _, model = gqa_pair
    generator = Generator(model, batch_size=2)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generator.generate([[5], []], 4, [1])
    with pytest.raises(ValueError, match=r"prompt 0 holds token ids outside \[0, 1000\)"):
        generator.generate([[5, 1000]], 4, [1])
    with pytest.raises(ValueError, match="max_new_tokens"):
        generator.generate([[5]], 0, [1])
