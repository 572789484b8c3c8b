"""The serving engine's device programs: prefill prompts into rows of a fixed batch, and decode a few tokens for
every live row, each row with its own sampling settings.

Layout (B rows, L cache slots, V the vocabulary; B fixed for the server's life, L grown and cut between calls to what
the live rows need next, as :mod:`jaxtune.eval.generate` does, so the decoding program is compiled once per cache
size and a prefill once per (rows, bucket length, cache size)):

- :class:`ServeRows` is the device state: the model's KV cache (a row's tokens at slots 0, 1, ...), each row's
  latest token, its count of produced tokens and the tokens it has seen (prompt and reply: the repetition penalty).
- :class:`RowSettings` holds one value per row of each decoding setting (temperature, top-k, top-p, repetition
  penalty, seed, max new tokens), so requests with different settings share one batch.

Token selection follows :mod:`jaxtune.eval.sampling` (ids beyond the tokenizer's ``known_ids`` removed, then
transformers' order: penalty, then temperature, top-k, top-p when sampling) with per-row values; a row with
temperature 0 is greedy. A row's key is ``fold_in(key(seed), 0)``
and its step key ``fold_in(row_key, n)`` for its n-th token: the keys :class:`jaxtune.eval.generate.Generator`
gives prompt 0 of a call, so a greedy (or seeded) reply equals what ``jaxtune eval`` decodes for that prompt.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jaxtune.eval.batching import keep_default_layout
from jaxtune.eval.generate import prompt_tokens_seen
from jaxtune.eval.likelihood import prompt_pass
from jaxtune.eval.sampling import apply_repetition_penalty, drop_unknown_ids, top_p_filter
from jaxtune.models.axes import KV_CACHE

NO_TOKEN = -1
"""Token slots of a decode call's output that a row did not produce."""


class ServeRows(NamedTuple):
    """Device state of the serving batch."""

    cache: Any
    """The model's KV cache: B rows of L slots."""
    previous: jnp.ndarray
    """(B,) int32: each row's latest token (the next step's input)."""
    count: jnp.ndarray
    """(B,) int32: tokens each row has produced."""
    seen: jnp.ndarray
    """(B, V) bool: tokens in each row's prompt and reply."""


class RowSettings(NamedTuple):
    """Per-row decoding settings (host numpy arrays of R rows, or B for a decode call)."""

    temperature: Any
    """float32; 0 = greedy."""
    top_k: Any
    """int32; 0 = off."""
    top_p: Any
    """float32; 1 = off."""
    penalty: Any
    """float32 repetition penalty; 1 = off."""
    seed: Any
    """uint32."""
    limit: Any
    """int32: most tokens the row may produce."""


def empty_rows(graphdef: nnx.GraphDef, state: Any, *, rows: int, length: int) -> ServeRows:
    """A batch of ``rows`` free rows with a cache of ``length`` slots."""
    model = nnx.merge(graphdef, state)
    vocab = model.cfg.vocab_size
    return ServeRows(
        cache=model.init_cache(rows, length),
        previous=jnp.zeros((rows,), jnp.int32),
        count=jnp.zeros((rows,), jnp.int32),
        seen=jnp.zeros((rows, vocab), bool),
    )


def _top_k_rows(logits: jnp.ndarray, k: jnp.ndarray) -> jnp.ndarray:
    """:func:`jaxtune.eval.sampling.top_k_filter` with one k per row (0: the row is left as it is)."""
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]
    kth = jnp.take_along_axis(ordered, jnp.clip(k - 1, 0, logits.shape[-1] - 1)[:, None], axis=-1)
    return jnp.where((k[:, None] > 0) & (logits < kth), -jnp.inf, logits)


def select_rows(
    logits: jnp.ndarray, seen: jnp.ndarray, s: RowSettings, step: jnp.ndarray, known_ids: int = 0
) -> jnp.ndarray:
    """One token per row (B,) int32 from float32 logits (B, V), each row by its own settings; ``step`` (B,): the
    index of the token in the row's reply (its sampling key). Ids at or above ``known_ids`` (the tokenizer's
    vocabulary, when the model's is wider; 0: none) are never chosen, as in ``jaxtune eval``."""
    logits = drop_unknown_ids(logits, known_ids)
    logits = apply_repetition_penalty(logits, seen, s.penalty[:, None])
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    sampling = s.temperature > 0

    def sample() -> jnp.ndarray:
        x = logits / jnp.where(sampling, s.temperature, 1.0)[:, None]
        x = top_p_filter(_top_k_rows(x, s.top_k), s.top_p[:, None])
        keys = jax.vmap(lambda seed, n: jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 0), n))(
            s.seed, step
        )
        return jax.vmap(jax.random.categorical)(keys, x).astype(jnp.int32)

    # Sorting the vocabulary costs a step of a small model as much as the model: only done when a row samples.
    drawn = jax.lax.cond(jnp.any(sampling), sample, lambda: greedy)
    return jnp.where(sampling, drawn, greedy)


def prefill(
    graphdef: nnx.GraphDef,
    state: Any,
    rows: ServeRows,
    slots: jnp.ndarray,
    input_ids: jnp.ndarray,
    segment_ids: jnp.ndarray,
    last_index: jnp.ndarray,
    settings: RowSettings,
    *,
    known_ids: int = 0,
    mesh: Optional[Mesh] = None,
) -> tuple[ServeRows, jnp.ndarray]:
    """Prompts (R, T), right-padded (segment 0), into rows ``slots`` (R,; B for a dummy row: dropped); returns the
    batch and each prompt's first token (R,). ``known_ids``: as for :func:`select_rows`."""
    model = nnx.merge(graphdef, state)
    n = input_ids.shape[0]
    logits, cache = prompt_pass(model, input_ids, segment_ids, last_index)
    seen = prompt_tokens_seen(input_ids, segment_ids, model.cfg.vocab_size)
    first = select_rows(logits, seen, settings, jnp.zeros((n,), jnp.int32), known_ids)
    seen = seen.at[jnp.arange(n), first].set(True)
    pin = lambda a: keep_default_layout(a, mesh, KV_CACHE)  # noqa: E731
    return (
        ServeRows(
            cache=rows.cache.insert_rows(slots, cache, pin=pin),
            previous=rows.previous.at[slots].set(first, mode="drop"),
            count=rows.count.at[slots].set(1, mode="drop"),
            seen=rows.seen.at[slots].set(seen, mode="drop"),
        ),
        first,
    )


def decode(
    graphdef: nnx.GraphDef,
    state: Any,
    rows: ServeRows,
    alive: jnp.ndarray,
    settings: RowSettings,
    stop_ids: jnp.ndarray,
    exit_on_finish: jnp.ndarray,
    max_steps: jnp.ndarray,
    *,
    steps: int,
    known_ids: int = 0,
    mesh: Optional[Mesh] = None,
) -> tuple[ServeRows, jnp.ndarray, jnp.ndarray]:
    """Up to ``max_steps`` (a scalar, at most the static ``steps``) tokens for each row in ``alive`` (B,); a row
    stops on a token of ``stop_ids`` or at its ``settings.limit``. Leaves early once no row is alive, when a live row's
    cache is full (the host sizes it for the call: see :class:`jaxtune.serve.engine.Batch`) or, with
    ``exit_on_finish``, as soon as a row stops (so a waiting request takes its place). Returns the batch, the tokens
    (B, steps; NO_TOKEN where none) and which rows stopped (B,). ``known_ids``: as for :func:`select_rows`."""
    model = nnx.merge(graphdef, state)
    b = alive.shape[0]
    every_row = jnp.arange(b)

    def cond(loop):
        step, r, out, live, stopped = loop
        room = jnp.all(jnp.where(live, r.cache.index < r.cache.length, True))
        return (step < jnp.minimum(max_steps, steps)) & jnp.any(live) & room & ~(exit_on_finish & jnp.any(stopped))

    def body(loop):
        step, r, out, live, stopped = loop
        logits, cache = model(
            r.previous[:, None],
            positions=r.cache.index[:, None],
            segment_ids=jnp.ones((b, 1), jnp.int32),
            cache=r.cache,
        )
        cache = cache._replace(
            k=keep_default_layout(cache.k, mesh, KV_CACHE),
            v=keep_default_layout(cache.v, mesh, KV_CACHE),
            index=jnp.where(live, cache.index, r.cache.index),
        )
        token = jnp.where(live, select_rows(logits[:, 0, :], r.seen, settings, r.count, known_ids), r.previous)
        count = r.count + live.astype(jnp.int32)
        ends = live & (jnp.any(token[:, None] == stop_ids[None, :], axis=-1) | (count >= settings.limit))
        seen = r.seen.at[every_row, token].set(r.seen[every_row, token] | live)
        out = out.at[:, step].set(jnp.where(live, token, NO_TOKEN))
        return step + 1, ServeRows(cache, token, count, seen), out, live & ~ends, stopped | ends

    out = jnp.full((b, steps), NO_TOKEN, jnp.int32)
    _, rows, out, _, stopped = jax.lax.while_loop(cond, body, (jnp.int32(0), rows, out, alive, jnp.zeros((b,), bool)))
    return rows, out, stopped
