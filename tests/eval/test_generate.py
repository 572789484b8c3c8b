"""Batched KV-cache generation against transformers' ``generate`` on the same tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from jaxtune.eval.generate import Generator, cache_length
from jaxtune.eval.sampling import SamplingParams

torch = pytest.importorskip("torch")

PROMPT_LENGTHS = (5, 21, 3, 40, 9, 17)
MAX_NEW = 12
"""One max_new_tokens (and batch size 4, bucket multiple 32) throughout, so tests share compiled decode loops."""


def _prompts(vocab: int, lengths=PROMPT_LENGTHS, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(3, vocab, size=n)] for n in lengths]


def _hf_generate(hf_model, prompt, max_new_tokens, stop_ids, **settings):
    """transformers' greedy generate on one unpadded prompt: (new tokens, logits of the last step)."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = hf_model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=list(stop_ids),
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
            **settings,
        )
    tokens = out.sequences[0, len(prompt) :].tolist()
    # After a stop, generate pads the row: keep up to and including the first stop token.
    for i, t in enumerate(tokens):
        if t in stop_ids:
            tokens = tokens[: i + 1]
            break
    return tokens, out.logits[len(tokens) - 1][0].numpy()


def test_cache_lengths_grow_by_halves_and_thirds():
    assert [cache_length(n) for n in (1, 64, 65, 96, 97, 129, 193, 257, 385, 1500)] == [
        64,
        64,
        96,
        96,
        128,
        192,
        256,
        384,
        512,
        1536,
    ]


def test_greedy_matches_transformers(gqa_pair):
    hf_model, model = gqa_pair
    prompts = _prompts(model.cfg.vocab_size)
    max_new = MAX_NEW
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
    prompts = _prompts(model.cfg.vocab_size)
    generator = Generator(model, batch_size=4, bucket_multiple=32)
    results = generator.generate(prompts, MAX_NEW, stop_ids=[], sampling=SamplingParams(repetition_penalty=1.8))
    plain = generator.generate(prompts, MAX_NEW, stop_ids=[])
    assert sum(r.tokens != p.tokens for r, p in zip(results, plain)) >= 2  # the penalty changes some greedy paths
    for prompt, result in zip(prompts, results):
        expected, _ = _hf_generate(hf_model, prompt, MAX_NEW, [], repetition_penalty=1.8)
        assert list(result.tokens) == expected


def test_sampling_is_reproducible_and_filters_reduce_to_greedy(gqa_pair):
    _, model = gqa_pair
    prompts = _prompts(model.cfg.vocab_size, lengths=(4, 11, 7))
    generator = Generator(model, batch_size=4, bucket_multiple=32)
    greedy = [r.tokens for r in generator.generate(prompts, MAX_NEW, stop_ids=[])]
    hot = SamplingParams(temperature=1.5)
    first = [r.tokens for r in generator.generate(prompts, MAX_NEW, stop_ids=[], sampling=hot, seed=7)]
    again = [r.tokens for r in generator.generate(prompts, MAX_NEW, stop_ids=[], sampling=hot, seed=7)]
    other = [r.tokens for r in generator.generate(prompts, MAX_NEW, stop_ids=[], sampling=hot, seed=8)]
    assert first == again
    assert first != other and first != greedy
    # A prompt's sample depends on the seed and its index, not on its batch mates.
    alone = generator.generate(prompts[:1], MAX_NEW, stop_ids=[], sampling=hot, seed=7)
    assert alone[0].tokens == first[0]
    for sampling in (SamplingParams(temperature=1.5, top_k=1), SamplingParams(temperature=1.5, top_p=1e-6)):
        filtered = generator.generate(prompts, MAX_NEW, stop_ids=[], sampling=sampling, seed=3)
        assert [r.tokens for r in filtered] == greedy


def test_bad_inputs_are_rejected(gqa_pair):
    _, model = gqa_pair
    generator = Generator(model, batch_size=4)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generator.generate([[5], []], 4, [1])
    with pytest.raises(ValueError, match=r"prompt 0 holds token ids outside \[0, 1004\)"):
        generator.generate([[5, 1004]], 4, [1])
    with pytest.raises(ValueError, match="max_new_tokens"):
        generator.generate([[5]], 0, [1])


def test_continuous_batching_on_a_mesh_matches_one_device(gqa_pair):
    """More prompts than rows, replies of different lengths (rows refilled mid-loop, the cache grown and cut), on
    8 simulated devices (data 2 x fsdp 2 x tensor 2) and on one: the same replies and last-step logits."""
    import copy

    from jaxtune.config.schema import MeshConfig
    from jaxtune.eval.loading import shard_model
    from jaxtune.sharding import build_mesh

    hf_model, model = gqa_pair
    prompts = _prompts(model.cfg.vocab_size, lengths=(70, 5, 33, 2, 12, 9, 50, 4, 18), seed=3)
    free_run, _ = _hf_generate(hf_model, prompts[1], 40, stop_ids=[])
    stop_ids = [free_run[2], free_run[9]]
    plain = Generator(model, batch_size=4, bucket_multiple=32).generate(prompts, 40, stop_ids)
    assert len({len(g.tokens) for g in plain}) >= 3  # rows end at different steps
    mesh = build_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    sharded = Generator(shard_model(copy.deepcopy(model), mesh), batch_size=4, bucket_multiple=32, mesh=mesh)
    for a, b, prompt in zip(plain, sharded.generate(prompts, 40, stop_ids), prompts):
        assert a.tokens == b.tokens
        np.testing.assert_allclose(a.last_logits, b.last_logits, atol=1e-4)
    for prompt, result in zip(prompts[:3], plain[:3]):
        expected, expected_logits = _hf_generate(hf_model, prompt, 40, stop_ids)
        assert list(result.tokens) == expected
        np.testing.assert_allclose(result.last_logits, expected_logits, atol=1e-4, rtol=1e-4)
