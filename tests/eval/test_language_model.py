"""JaxLanguageModel: the suites' protocol on the Flax model, with the eval config's decoding settings."""

from __future__ import annotations

import numpy as np

from jaxtune.config.schema import EvalConfig
from jaxtune.eval.generate import Generator
from jaxtune.eval.language_model import JaxLanguageModel, sampling_from_config
from jaxtune.eval.protocol import LanguageModel
from jaxtune.eval.sampling import SamplingParams


def test_sampling_settings_come_from_the_eval_config():
    cfg = EvalConfig(temperature=0.7, top_k=5, top_p=0.9, repetition_penalty=1.1)
    assert sampling_from_config(cfg) == SamplingParams(temperature=0.7, top_k=5, top_p=0.9, repetition_penalty=1.1)
    assert sampling_from_config(EvalConfig()).greedy


def test_protocol_methods_on_the_model(gqa_pair):
    _, model = gqa_pair
    lm = JaxLanguageModel(model, batch_size=4, bucket_multiple=32)
    assert isinstance(lm, LanguageModel)
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13]]
    greedy = Generator(model, batch_size=4, bucket_multiple=32).generate(prompts, 12, [])
    assert [g.tokens for g in lm.generate(prompts, 12, [])] == [g.tokens for g in greedy]
    hot = JaxLanguageModel(model, batch_size=4, bucket_multiple=32, sampling=SamplingParams(temperature=1.5), seed=7)
    assert [g.tokens for g in hot.generate(prompts, 12, [])] != [g.tokens for g in greedy]
    ppl = lm.continuation_perplexities(prompts, [[8], [14, 15]])
    assert len(ppl) == 2 and all(np.isfinite(ppl))
    assert lm.next_token_logits(prompts, [1, 2, 3]).shape == (2, 3)
