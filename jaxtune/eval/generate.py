"""Batched text generation with the Flax LLaMA: left-padded prefill, then KV-cache decoding in one jitted loop.

How a batch is decoded:

- Prompts are sorted by length and cut into batches of ``batch_size`` rows; each batch is left-padded to a bucket
  length (powers of two up to ``bucket_multiple``, then multiples of it) so that only a few shapes are compiled.
  A short last batch is filled with inactive dummy rows (same compiled shape; they never hold up the loop).
- Padding slots carry segment id 0, so real tokens never attend to them; the real tokens of a row have positions
  0, 1, ... wherever they sit, as transformers' ``generate`` derives position ids from the attention mask. A row's
  result therefore does not depend on the padding or on its batch mates.
- The prompt is prefilled into a cache of ``bucket + max_new_tokens`` slots, then a ``jax.lax.while_loop`` writes
  one token per step and exits as soon as every row has stopped (a stop id was produced) or ``max_new_tokens`` were
  produced.
- Per row, the tokens produced (the stop token included) and the float32 logits of the last decoding step are kept:
  the raw model logits (before any repetition penalty or temperature) at the step that produced the row's final
  token. This is what the DoIT study kept (``outputs.scores[-1]`` of ``generate`` with batch size 1 and greedy
  decoding, where scores equal the raw logits): for a reply ending in ``<eot>`` they are the logits that chose
  ``<eot>``; the multiple-choice fallback reads ``▁A``..``▁D`` from them.

With a mesh, decoding runs under jaxtune.sharding's mesh and logical-axis rules, so the model's activation
constraints shard the batch and the heads as in training; parameters are expected already placed on the mesh,
batch rows are split over the data-parallel axes and results come back replicated (readable by every process).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxtune.eval.batching import bucket_length, check_batch_rows, jitted, model_context, put_rows
from jaxtune.eval.protocol import Generation
from jaxtune.eval.sampling import SamplingParams, select_tokens
from jaxtune.models.llama import DTYPES, Llama, init_cache

EMPTY_SLOT = -1
"""Value of the token slots after a row stopped (never returned: rows are trimmed to their length)."""


@dataclass(frozen=True)
class PaddedBatch:
    """One batch of prompts, left-padded: every array is (rows, length) except ``active`` (rows,)."""

    input_ids: np.ndarray
    positions: np.ndarray
    segment_ids: np.ndarray
    active: np.ndarray
    """False for dummy rows that only fill the batch up to its compiled size."""


def left_pad(prompts: Sequence[Sequence[int]], length: int, rows: int, pad_id: int = 0) -> PaddedBatch:
    """Left-pad ``prompts`` to ``length`` tokens in a batch of ``rows`` rows (extra rows are inactive dummies)."""
    if len(prompts) > rows:
        raise ValueError(f"{len(prompts)} prompts do not fit in a batch of {rows} rows")
    ids = np.full((rows, length), pad_id, np.int32)
    positions = np.zeros((rows, length), np.int32)
    segments = np.zeros((rows, length), np.int32)
    active = np.zeros((rows,), bool)
    for r, prompt in enumerate(prompts):
        n = len(prompt)
        if n > length:
            raise ValueError(f"prompt of {n} tokens is longer than the padded length {length}")
        ids[r, length - n:] = np.asarray(prompt, np.int32)
        positions[r, length - n:] = np.arange(n, dtype=np.int32)
        segments[r, length - n:] = 1
        active[r] = True
    return PaddedBatch(ids, positions, segments, active)


def _decode(
    graphdef: nnx.GraphDef,
    state: Any,
    input_ids: jnp.ndarray,
    positions: jnp.ndarray,
    segment_ids: jnp.ndarray,
    active: jnp.ndarray,
    row_ids: jnp.ndarray,
    seed: jnp.ndarray,
    stop_ids: jnp.ndarray,
    *,
    max_new_tokens: int,
    sampling: SamplingParams,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Prefill then decode; returns tokens (B, max_new_tokens) (EMPTY_SLOT after a row's end), lengths (B,) and the
    last-step logits (B, V)."""
    model = nnx.merge(graphdef, state)
    cfg = model.cfg
    rows, prompt_len = input_ids.shape
    base_key = jax.random.key(seed)
    row_keys = jax.vmap(lambda i: jax.random.fold_in(base_key, i))(row_ids)
    vocab = cfg.vocab_size
    # Sharded by the rules' cache axes (rows over the data-parallel axes, key/value heads over tensor).
    cache = init_cache(cfg, rows, prompt_len + max_new_tokens, DTYPES[cfg.compute_dtype])
    logits, cache = model(input_ids, positions=positions, segment_ids=segment_ids, cache=cache)
    logits = logits[:, -1, :]  # left padding puts every row's last prompt token in the last slot

    seen = None
    if sampling.uses_penalty:
        # Prompt tokens count as seen (padding does not: its ids are sent past the end and dropped).
        marked = jnp.where(segment_ids > 0, input_ids, vocab)
        seen = jnp.zeros((rows, vocab), bool).at[jnp.arange(rows)[:, None], marked].set(True, mode="drop")

    def is_stop(tokens: jnp.ndarray) -> jnp.ndarray:
        return jnp.any(tokens[:, None] == stop_ids[None, :], axis=-1)

    def record(step, token, logits, carry):
        tokens, lengths, last_logits, done, seen = carry
        alive = ~done
        tokens = jax.lax.dynamic_update_slice(
            tokens, jnp.where(alive, token, EMPTY_SLOT)[:, None], (0, step)
        )
        lengths = lengths + alive.astype(jnp.int32)
        last_logits = jnp.where(alive[:, None], logits, last_logits)
        done = done | (alive & is_stop(token))
        if seen is not None:
            seen = seen.at[jnp.arange(rows), token].set(True)
        return tokens, lengths, last_logits, done, seen

    first = select_tokens(logits, seen, row_keys, jnp.int32(0), sampling)
    carry = (
        jnp.full((rows, max_new_tokens), EMPTY_SLOT, jnp.int32),
        jnp.zeros((rows,), jnp.int32),
        jnp.zeros((rows, vocab), jnp.float32),
        ~active,
        seen,
    )
    carry = record(0, first, logits, carry)
    next_positions = positions[:, -1] + 1

    def cond(loop):
        step, _, _, _, carry = loop
        return (step < max_new_tokens) & ~jnp.all(carry[3])

    def body(loop):
        step, cache, previous, next_positions, carry = loop
        logits, cache = model(
            previous[:, None], positions=next_positions[:, None], segment_ids=jnp.ones((rows, 1), jnp.int32),
            cache=cache,
        )
        logits = logits[:, 0, :]
        token = select_tokens(logits, carry[4], row_keys, step, sampling)
        carry = record(step, token, logits, carry)
        return step + 1, cache, token, next_positions + 1, carry

    loop = (jnp.int32(1), cache, first, next_positions, carry)
    _, _, _, _, (tokens, lengths, last_logits, _, _) = jax.lax.while_loop(cond, body, loop)
    return tokens, lengths, last_logits


class Generator:
    """Batched generation with one Flax LLaMA (bucketed shapes, compiled once per bucket and setting)."""

    def __init__(
        self,
        model: Llama,
        *,
        batch_size: int = 8,
        bucket_multiple: int = 64,
        pad_id: int = 0,
        mesh: Optional[Mesh] = None,
    ):
        """model: the Llama to decode with (its parameters already placed on ``mesh`` when one is given).
        batch_size: rows per compiled batch (a multiple of the mesh's data-parallel size when sharded).
        bucket_multiple: prompt lengths are padded to powers of two up to this, then multiples of it.
        pad_id: token id written into padding slots (masked out; any valid id).
        mesh: decode under this mesh with jaxtune.sharding's rules (rows split over 'data' x 'fsdp')."""
        check_batch_rows(batch_size, mesh)
        if not 0 <= pad_id < model.cfg.vocab_size:
            raise ValueError(f"pad_id {pad_id} is outside the vocabulary of {model.cfg.vocab_size} ids")
        self.cfg = model.cfg
        self.graphdef, self.state = nnx.split(model)
        self.batch_size = batch_size
        self.bucket_multiple = bucket_multiple
        self.pad_id = pad_id
        self.mesh = mesh
        self._decode = jitted(_decode, self.graphdef, self.cfg, mesh, ("max_new_tokens", "sampling"))

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop_ids: Collection[int],
        sampling: SamplingParams = SamplingParams(),
        seed: int = 0,
    ) -> list[Generation]:
        """Decode every prompt (never truncated) for at most ``max_new_tokens`` tokens, ending a reply after the
        first token in ``stop_ids``. Returns one :class:`Generation` per prompt, in the given order; its tokens
        include the stop token when one ended the reply. Sampling is reproducible: prompt ``i`` draws from
        ``fold_in(key(seed), i)`` whatever its batch."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        vocab = self.cfg.vocab_size
        for i, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ValueError(f"prompt {i} is empty: generation needs at least one token")
            bad = [t for t in prompt if not 0 <= int(t) < vocab]
            if bad:
                raise ValueError(f"prompt {i} holds token ids outside [0, {vocab}): {bad[:5]}")
        stops = sorted({int(s) for s in stop_ids})
        # A fixed-size stop table (-1 never matches a token) keeps one compiled shape for small stop sets.
        stop_table = np.full((max(8, len(stops)),), -1, np.int32)
        stop_table[: len(stops)] = stops

        results: list[Optional[Generation]] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        with model_context(self.mesh):
            for start in range(0, len(order), self.batch_size):
                chunk = order[start: start + self.batch_size]
                length = bucket_length(max(len(prompts[i]) for i in chunk), self.bucket_multiple)
                batch = left_pad([prompts[i] for i in chunk], length, self.batch_size, self.pad_id)
                row_ids = np.array(chunk + [0] * (self.batch_size - len(chunk)), np.uint32)
                inputs = put_rows([batch.input_ids, batch.positions, batch.segment_ids, batch.active, row_ids],
                                  self.mesh)
                tokens, lengths, last_logits = jax.device_get(self._decode(
                    self.state, *inputs, np.uint32(seed), stop_table, max_new_tokens=max_new_tokens,
                    sampling=sampling,
                ))
                for r, i in enumerate(chunk):
                    n = int(lengths[r])
                    results[i] = Generation(
                        tokens=tuple(int(t) for t in tokens[r, :n]), last_logits=np.asarray(last_logits[r])
                    )
        return [r for r in results if r is not None]
