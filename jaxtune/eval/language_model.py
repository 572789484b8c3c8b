"""The suites' language model on the Flax LLaMA: :class:`JaxLanguageModel` implements
:class:`jaxtune.eval.protocol.LanguageModel` with batched, bucketed (and, given a mesh, sharded) generation
(:mod:`jaxtune.eval.generate`) and likelihood scoring (:mod:`jaxtune.eval.likelihood`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Optional

import numpy as np
from jax.sharding import Mesh

from jaxtune.config import EvalConfig
from jaxtune.eval.generate import Generator
from jaxtune.eval.likelihood import LikelihoodScorer
from jaxtune.eval.protocol import Generation
from jaxtune.eval.sampling import SamplingParams
from jaxtune.models.llama import Llama


class JaxLanguageModel:
    """The suites' :class:`~jaxtune.eval.protocol.LanguageModel` on a Flax LLaMA: bucketed, batched (and sharded
    when given a mesh) generation and likelihood scoring."""

    def __init__(
        self,
        model: Llama,
        *,
        batch_size: int = 8,
        bucket_multiple: int = 64,
        sampling: SamplingParams = SamplingParams(),
        seed: int = 0,
        mesh: Optional[Mesh] = None,
    ):
        """model: parameters already placed on ``mesh`` when one is given
        (see :func:`jaxtune.eval.loading.shard_model`).
        batch_size: rows per compiled batch for generation and scoring.
        sampling: how ``generate`` picks tokens (greedy by default, as the DoIT study decoded).
        seed: base PRNG seed of sampling (prompt i of a call draws from ``fold_in(key(seed), i)``)."""
        self.cfg = model.cfg
        self.sampling = sampling
        self.seed = seed
        pad_id = self.cfg.pad_token_id if self.cfg.pad_token_id is not None else 0
        self.generator = Generator(model, batch_size=batch_size, bucket_multiple=bucket_multiple, pad_id=pad_id,
                                   mesh=mesh)
        self.scorer = LikelihoodScorer(model, batch_size=batch_size, bucket_multiple=bucket_multiple, mesh=mesh)

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Collection[int]
    ) -> list[Generation]:
        return self.generator.generate(prompts, max_new_tokens, stop_ids, sampling=self.sampling, seed=self.seed)

    def continuation_perplexities(
        self, contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]
    ) -> list[float]:
        return self.scorer.continuation_perplexities(contexts, continuations)

    def next_token_logits(self, prompts: Sequence[Sequence[int]], candidate_ids: Sequence[int]) -> np.ndarray:
        return self.scorer.next_token_logits(prompts, candidate_ids)


def sampling_from_config(eval_cfg: EvalConfig) -> SamplingParams:
    """The decoding settings of an :class:`~jaxtune.config.EvalConfig` (temperature 0 = greedy)."""
    return SamplingParams(temperature=eval_cfg.temperature, top_k=eval_cfg.top_k, top_p=eval_cfg.top_p,
                          repetition_penalty=eval_cfg.repetition_penalty)
