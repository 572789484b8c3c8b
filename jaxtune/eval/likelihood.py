"""Batched likelihood scoring with the Flax LLaMA: continuation perplexities and next-token logits.

A context shared by several continuations (a DoIT format-1 item and its three choices) is computed once: the
distinct contexts are sorted by length, cut into batches of ``batch_size`` and prefilled, right-padded to a bucket
length (see :func:`jaxtune.eval.batching.bucket_length`), into a KV cache; the logits of each context's last token
score the first token of its continuations. Every continuation then runs on top of a copy of its context's cached
keys and values (one row per continuation, right-padded to a small bucket), and its later tokens are scored from
there. Padding has segment id 0 and never influences real tokens. A continuation's score is the sum of the token
cross-entropies of its tokens, each predicted from everything before it; the perplexity is ``exp(sum / count)``,
as the DoIT study computed it with ``CrossEntropyLoss`` on labels that mask everything but the choice and its
``<eot>``. The study cut ``context + choice`` to its first 2048 tokens before scoring (see
:func:`jaxtune.eval.suites.doit.truncate_pair`): a context that fills the window leaves an empty continuation,
which scores NaN here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxtune.eval.batching import bucket_length, jitted, model_context, put_rows
from jaxtune.models.llama import Llama
from jaxtune.sharding import check_batch_rows


@dataclass(frozen=True)
class RightPaddedBatch:
    """Rows padded on the right: (rows, length) arrays; ``weights`` is 1.0 where ``targets`` is scored."""

    input_ids: np.ndarray
    positions: np.ndarray
    segment_ids: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    last_index: np.ndarray
    """(rows,) slot of each row's last real token (0 for dummy rows)."""


def prompt_pass(model: Any, input_ids: jnp.ndarray, segment_ids: jnp.ndarray, last_index: jnp.ndarray) -> tuple:
    """Prompts (R, T), right-padded (segment 0), through ``model`` into a fresh cache of T slots: each prompt's
    logits at its last token (R, vocab) and the cache, its index at the next slot to write (right after the prompt).
    The prefill of generation (:func:`jaxtune.eval.generate.prefill`), of ``jaxtune serve`` and of the contexts
    scored here."""
    n, t = input_ids.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32)[None, :], (n, t))
    logits, cache = model(
        input_ids,
        positions=positions,
        segment_ids=segment_ids,
        cache=model.init_cache(n, t),
        logit_slots=last_index[:, None],
    )
    return logits[:, 0, :], cache._replace(index=last_index + 1)


def right_pad(
    contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], length: int, rows: int
) -> RightPaddedBatch:
    """Rows ``context + continuation`` padded to ``length``; targets are the next tokens, weighted on the
    continuation only. Extra rows up to ``rows`` are all padding."""
    ids = np.zeros((rows, length), np.int32)
    positions = np.zeros((rows, length), np.int32)
    segments = np.zeros((rows, length), np.int32)
    targets = np.zeros((rows, length), np.int32)
    weights = np.zeros((rows, length), np.float32)
    last = np.zeros((rows,), np.int32)
    for r, (context, continuation) in enumerate(zip(contexts, continuations)):
        row = [*context, *continuation]
        n = len(row)
        ids[r, :n] = row
        positions[r, :n] = np.arange(n)
        segments[r, :n] = 1
        targets[r, : n - 1] = row[1:]
        # The logits at slot t predict token t + 1: continuation tokens sit at slots len(context)..n-1.
        weights[r, len(context) - 1 : n - 1] = 1.0
        last[r] = n - 1
    return RightPaddedBatch(ids, positions, segments, targets, weights, last)


CONTINUATION_BUCKET = 8
"""Smallest padded length of a continuation batch (choices are short: a letter, a word, a sentence)."""

PAIRS_PER_CONTEXT = 4
"""A scoring batch takes contexts while their continuations fill at most this many times ``batch_size`` rows."""


def _prefix_nll(
    graphdef,
    state,
    ctx_ids,
    ctx_segment_ids,
    ctx_last,
    pair_context,
    first_target,
    cont_ids,
    cont_segment_ids,
    cont_targets,
    cont_weights,
):
    """Per-continuation sum of token cross-entropies (P,), float32: contexts (C, Tc) prefilled once, continuations
    (P, Tk) run on their context's cached keys and values (``pair_context`` (P,) indexes the contexts)."""
    model = nnx.merge(graphdef, state)
    tc = ctx_ids.shape[1]
    tk = cont_ids.shape[1]
    last, cache = prompt_pass(model, ctx_ids, ctx_segment_ids, ctx_last)
    last = last[pair_context]
    first = jax.nn.logsumexp(last, axis=-1) - jnp.take_along_axis(last, first_target[:, None], axis=-1)[:, 0]
    # Each continuation writes from right after its context's last token (over the context's padding).
    cache = cache.resized(tc + tk).take_rows(pair_context)
    positions = cache.index[:, None] + jnp.arange(tk, dtype=jnp.int32)[None, :]
    logits, _ = model(cont_ids, positions=positions, segment_ids=cont_segment_ids, cache=cache)
    target_logits = jnp.take_along_axis(logits, cont_targets[..., None], axis=-1)[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - target_logits
    return first + jnp.sum(nll * cont_weights, axis=-1)


def _next_token_logits(graphdef, state, input_ids, positions, segment_ids, last_index, candidates):
    """Logits (rows, candidates) of the token after each row's last real token."""
    model = nnx.merge(graphdef, state)
    logits, _ = model(input_ids, positions=positions, segment_ids=segment_ids, logit_slots=last_index[:, None])
    return jnp.take(logits[:, 0, :], candidates, axis=-1)


class LikelihoodScorer:
    """Teacher-forced scoring of many sequences with one Flax LLaMA, batched across items and choices."""

    def __init__(
        self,
        model: Llama,
        *,
        batch_size: int = 8,
        bucket_multiple: int = 64,
        mesh: Optional[Mesh] = None,
    ):
        """model: the Llama to score with (parameters placed on ``mesh`` when one is given).
        batch_size: rows per compiled batch; bucket_multiple: see :func:`bucket_length`.
        mesh: run under this mesh with jaxtune.sharding's rules (rows split over 'data' x 'fsdp')."""
        check_batch_rows(batch_size, mesh)
        self.cfg = model.cfg
        self.graphdef, self.state = nnx.split(model)
        self.batch_size = batch_size
        self.bucket_multiple = bucket_multiple
        self.mesh = mesh
        self._nll = jitted(_prefix_nll, self.graphdef, self.cfg, mesh)
        self._next = jitted(_next_token_logits, self.graphdef, self.cfg, mesh)

    def _check_ids(self, what: str, i: int, ids: Sequence[int]) -> None:
        vocab = self.cfg.vocab_size
        bad = [t for t in ids if not 0 <= int(t) < vocab]
        if bad:
            raise ValueError(f"{what} {i} holds token ids outside [0, {vocab}): {bad[:5]}")

    def _batches(self, lengths: Sequence[int]):
        """Batches of row indices, longest rows first, with the bucket length of each batch."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            yield chunk, bucket_length(max(lengths[i] for i in chunk), self.bucket_multiple)

    def continuation_nll(
        self, contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]
    ) -> list[tuple[float, int]]:
        """(sum of token cross-entropies, number of tokens) of each continuation given its context. Contexts must
        be non-empty (the first continuation token needs something to be predicted from); an empty continuation
        gives (0.0, 0). Nothing is truncated."""
        if len(contexts) != len(continuations):
            raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
        for i, (context, continuation) in enumerate(zip(contexts, continuations)):
            if len(context) == 0:
                raise ValueError(f"context {i} is empty: its continuation's first token cannot be scored")
            self._check_ids("context", i, context)
            self._check_ids("continuation", i, continuation)
        scored = [i for i, c in enumerate(continuations) if len(c) > 0]
        results: list[tuple[float, int]] = [(0.0, 0)] * len(contexts)
        by_context: dict[tuple[int, ...], list[int]] = {}
        for i in scored:
            by_context.setdefault(tuple(int(t) for t in contexts[i]), []).append(i)
        with model_context(self.mesh):
            for group in self._context_batches(list(by_context.items())):
                sums = self._score_group(group, continuations)
                for total, i in zip(sums, (i for _, pairs in group for i in pairs)):
                    results[i] = (float(total), len(continuations[i]))
        return results

    def _context_batches(self, items: list[tuple[tuple[int, ...], list[int]]]):
        """Batches of (context, its pair indices): longest contexts first, at most ``batch_size`` contexts and (but
        for a lone context with more) PAIRS_PER_CONTEXT x ``batch_size`` continuations each."""
        items = sorted(items, key=lambda item: -len(item[0]))
        batch: list[tuple[tuple[int, ...], list[int]]] = []
        pairs = 0
        for item in items:
            if batch and (len(batch) == self.batch_size or pairs + len(item[1]) > PAIRS_PER_CONTEXT * self.batch_size):
                yield batch
                batch, pairs = [], 0
            batch.append(item)
            pairs += len(item[1])
        if batch:
            yield batch

    def _score_group(
        self, group: list[tuple[tuple[int, ...], list[int]]], continuations: Sequence[Sequence[int]]
    ) -> np.ndarray:
        """Continuation NLL sums of one batch of contexts, in the order of their pair lists."""
        contexts = [list(context) for context, _ in group]
        ctx = right_pad(
            contexts,
            [[] for _ in contexts],
            bucket_length(max(len(c) for c in contexts), self.bucket_multiple),
            self.batch_size,
        )
        pair_context = [j for j, (_, pairs) in enumerate(group) for _ in pairs]
        conts = [list(continuations[i]) for _, pairs in group for i in pairs]
        rows = -(-len(conts) // self.batch_size) * self.batch_size
        length = bucket_length(max(len(c) for c in conts), self.bucket_multiple, smallest=CONTINUATION_BUCKET)
        # Rows ``continuation``, each scoring its tokens after the first (the first is scored from the context).
        cont = right_pad([c[:1] for c in conts], [c[1:] for c in conts], length, rows)
        first_target = np.zeros((rows,), np.int32)
        first_target[: len(conts)] = [c[0] for c in conts]
        pair_index = np.zeros((rows,), np.int32)
        pair_index[: len(conts)] = pair_context
        ctx_in = put_rows([ctx.input_ids, ctx.segment_ids, ctx.last_index], self.mesh)
        cont_in = put_rows(
            [pair_index, first_target, cont.input_ids, cont.segment_ids, cont.targets, cont.weights], self.mesh
        )
        return jax.device_get(self._nll(self.state, *ctx_in, *cont_in))[: len(conts)]

    def continuation_perplexities(
        self, contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]
    ) -> list[float]:
        """``exp(mean token cross-entropy)`` of each continuation given its context; NaN for an empty one."""
        return [
            math.exp(total / count) if count else math.nan
            for total, count in self.continuation_nll(contexts, continuations)
        ]

    def next_token_logits(self, prompts: Sequence[Sequence[int]], candidate_ids: Sequence[int]) -> np.ndarray:
        """float32 (len(prompts), len(candidate_ids)): logits of the candidates for the token after each prompt."""
        if len(candidate_ids) == 0:
            raise ValueError("next_token_logits needs at least one candidate id")
        self._check_ids("candidate list", 0, candidate_ids)
        for i, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ValueError(f"prompt {i} is empty: there is no position to read next-token logits from")
            self._check_ids("prompt", i, prompt)
        candidates = np.asarray(candidate_ids, np.int32)
        out = np.zeros((len(prompts), len(candidates)), np.float32)
        with model_context(self.mesh):
            for chunk, length in self._batches([len(p) for p in prompts]):
                batch = right_pad([prompts[i] for i in chunk], [[] for _ in chunk], length, self.batch_size)
                rows_in = put_rows([batch.input_ids, batch.positions, batch.segment_ids, batch.last_index], self.mesh)
                logits = jax.device_get(self._next(self.state, *rows_in, candidates))
                out[chunk] = logits[: len(chunk)]
        return out
