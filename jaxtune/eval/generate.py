"""Batched text generation with the Flax LLaMA: continuous batching over a KV cache that grows with its rows.

How prompts are decoded:

- Prompts are sorted by length (longest first) and wait in a queue. A batch of ``batch_size`` rows decodes them;
  every row has its own slots in the KV cache (a row's tokens sit at slots 0, 1, ..., see
  :class:`jaxtune.models.decoder.KVCache`), so rows start and end independently.
- A free row takes the next waiting prompt: the prompts of all free rows are prefilled together (right-padded to a
  bucket length, powers of two up to ``bucket_multiple`` then multiples of it, so few shapes are compiled; padding
  has segment id 0 and real tokens have positions 0, 1, ..., as transformers derives them from the attention mask)
  and written into their rows of the cache. Their first token comes from the prefill's last-prompt-token logits.
- A jitted ``jax.lax.while_loop`` then decodes one token per row per step. It returns to the host as soon as a
  row finishes (a stop id was produced, or ``max_new_tokens`` were) while prompts still wait, so the row is
  refilled at once: finished rows stop costing. Rows that are done and wait for a prompt are carried along inert.
- The cache holds only as many slots as the rows in flight need for the next steps (``CHUNK_STEPS``), rounded up
  to one of a few sizes (:func:`cache_length`), and is grown or cut between loops, so a step's attention reads
  about the filled part of the cache, whatever ``max_new_tokens`` is.
- A row's result does not depend on the padding, on its batch mates or on when it entered the batch.
- Per row, the tokens produced (the stop token included) and the float32 logits of the last decoding step are kept:
  the raw model logits (before any repetition penalty or temperature) at the step that produced the row's final
  token. This is what the DoIT study kept (``outputs.scores[-1]`` of ``generate`` with batch size 1 and greedy
  decoding, where scores equal the raw logits): for a reply ending in ``<eot>`` they are the logits that chose
  ``<eot>``; the multiple-choice fallback reads ``▁A``..``▁D`` from them.

The model provides the cache and the step: any model with ``init_cache(rows, length)`` and ``__call__(ids,
positions=, segment_ids=, cache=, logit_slots=)`` (see :class:`jaxtune.models.llama.Llama`) decodes here.

The device programs are public: :func:`empty_rows`, :func:`prefill` and :func:`decode_steps`, jitted as the
generator runs them by :func:`generation_programs` (their host inputs: :class:`PromptRows`, :func:`stop_table`), so
that :mod:`jaxtune.eval.aot` compiles the very same programs ahead of time.

With a mesh, decoding runs under jaxtune.sharding's mesh and logical-axis rules, so the model's activation
constraints shard the batch and the heads as in training; parameters are expected already placed on the mesh,
batch rows are split over the data-parallel axes, the KV cache stays sharded between loops (rows over the
data-parallel axes, key/value heads over ``tensor``) and what the host reads comes back replicated (readable by
every process).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Sequence
from typing import Any, NamedTuple, Optional, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxtune.eval.batching import (
    bucket_length,
    jitted,
    keep_default_layout,
    model_context,
    put_rows,
    replicated,
)
from jaxtune.eval.likelihood import prompt_pass, right_pad
from jaxtune.eval.protocol import Generation
from jaxtune.eval.sampling import SamplingParams, select_tokens
from jaxtune.models.axes import KV_CACHE
from jaxtune.models.llama import Llama
from jaxtune.sharding import check_batch_rows

EMPTY_SLOT = -1
"""Value of the token slots a row has not produced (never returned: rows are trimmed to their length)."""

CHUNK_STEPS = 32
"""Decoding steps per device loop at most: the cache is sized for the rows' next CHUNK_STEPS tokens."""


def cache_length(n: int, smallest: int = 64) -> int:
    """Slots of a cache that must hold ``n``: the next of ``smallest`` x 1, 1.5, 2, 3, 4, 6, 8, ... (powers of two
    and halfway between), so a long decode compiles a dozen cache sizes and wastes at most a third of its slots."""
    length = smallest
    while length < n:
        length = length * 3 // 2 if length & (length - 1) == 0 else length * 4 // 3
    return length


class Rows(NamedTuple):
    """Device state of the decoding batch (B rows; V the vocabulary)."""

    cache: Any
    """The model's KV cache (B rows)."""
    tokens: jnp.ndarray
    """(B, max_new_tokens) int32: each row's reply so far, EMPTY_SLOT after its end."""
    count: jnp.ndarray
    """(B,) int32: tokens produced by each row."""
    last_logits: jnp.ndarray
    """(B, V) float32: the raw logits of each row's latest step."""
    done: jnp.ndarray
    """(B,) bool: the row stopped (or holds no prompt)."""
    previous: jnp.ndarray
    """(B,) int32: each row's latest token (the next step's input)."""
    prompt_ids: jnp.ndarray
    """(B,) uint32: index of each row's prompt in the call (its sampling key is fold_in(key(seed), index))."""
    seen: Optional[jnp.ndarray]
    """(B, V) bool: tokens of the prompt and the reply (only with a repetition penalty)."""


class HostView(NamedTuple):
    """What the host reads after each device call (small, replicated)."""

    done: jnp.ndarray
    count: jnp.ndarray
    index: jnp.ndarray


def _view(rows: Rows) -> HostView:
    return HostView(rows.done, rows.count, rows.cache.index)


def _is_stop(tokens: jnp.ndarray, stop_ids: jnp.ndarray) -> jnp.ndarray:
    return jnp.any(tokens[:, None] == stop_ids[None, :], axis=-1)


def _row_keys(seed: jnp.ndarray, prompt_ids: jnp.ndarray) -> jnp.ndarray:
    base = jax.random.key(seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(prompt_ids)


def _layout_pin(mesh: Optional[Mesh]):
    """What keeps the KV cache's keys and values in their between-calls layout inside a loop."""
    return lambda a: keep_default_layout(a, mesh, KV_CACHE)


class PromptRows(NamedTuple):
    """The host arrays of a prefill of R prompts right-padded to T tokens (:func:`prefill`'s ``prompts``)."""

    slots: Any
    """(R,) int32: the batch row each prompt goes to (B, one past the last row, for a dummy row: dropped)."""
    input_ids: Any
    """(R, T) int32: the prompts, right-padded."""
    segment_ids: Any
    """(R, T) int32: 1 on prompt tokens, 0 on padding."""
    last_index: Any
    """(R,) int32: position of each prompt's last token."""
    prompt_ids: Any
    """(R,) uint32: each prompt's index in the call (its sampling key)."""


PROMPT_ROW_DTYPES = PromptRows(np.int32, np.int32, np.int32, np.int32, np.uint32)
"""The dtype of each of :class:`PromptRows`' arrays."""


def prompt_rows_spec(rows: int, length: int) -> PromptRows:
    """The shapes and dtypes (``jax.ShapeDtypeStruct``) of a prefill of ``rows`` prompts of ``length`` tokens."""
    shapes = PromptRows((rows,), (rows, length), (rows, length), (rows,), (rows,))
    return PromptRows(*(jax.ShapeDtypeStruct(s, d) for s, d in zip(shapes, PROMPT_ROW_DTYPES)))


STOP_TABLE_MIN = 8
"""Entries of the stop table at least (-1 pads it, never a token): one compiled shape for small stop sets."""


def stop_table(stop_ids: Collection[int]) -> np.ndarray:
    """The stop ids as the programs take them: int32, sorted, padded with -1 to at least :data:`STOP_TABLE_MIN`."""
    stops = sorted({int(s) for s in stop_ids})
    table = np.full((max(STOP_TABLE_MIN, len(stops)),), -1, np.int32)
    table[: len(stops)] = stops
    return table


def empty_rows(
    graphdef: nnx.GraphDef, state: Any, *, rows: int, length: int, max_new_tokens: int, uses_penalty: bool
) -> Rows:
    """A batch of ``rows`` done rows holding nothing, with a KV cache of ``length`` slots (the program that starts
    every :meth:`Generator.generate`)."""
    model = nnx.merge(graphdef, state)
    vocab = model.cfg.vocab_size
    return Rows(
        cache=model.init_cache(rows, length),
        tokens=jnp.full((rows, max_new_tokens), EMPTY_SLOT, jnp.int32),
        count=jnp.zeros((rows,), jnp.int32),
        last_logits=jnp.zeros((rows, vocab), jnp.float32),
        done=jnp.ones((rows,), bool),
        previous=jnp.zeros((rows,), jnp.int32),
        prompt_ids=jnp.zeros((rows,), jnp.uint32),
        seen=jnp.zeros((rows, vocab), bool) if uses_penalty else None,
    )


def prompt_tokens_seen(input_ids: jnp.ndarray, segment_ids: jnp.ndarray, vocab: int) -> jnp.ndarray:
    """(R, vocab) bool: the tokens of each prompt, for the repetition penalty (padding does not count: its ids are
    sent past the end and dropped)."""
    n = input_ids.shape[0]
    marked = jnp.where(segment_ids > 0, input_ids, vocab)
    return jnp.zeros((n, vocab), bool).at[jnp.arange(n)[:, None], marked].set(True, mode="drop")


def prefill(
    graphdef: nnx.GraphDef,
    state: Any,
    rows: Rows,
    prompts: PromptRows,
    seed: jnp.ndarray,
    stop_ids: jnp.ndarray,
    *,
    max_new_tokens: int,
    sampling: SamplingParams,
    aligned: bool = False,
    mesh: Optional[Mesh] = None,
) -> tuple[Rows, HostView]:
    """Prompts (R, T), right-padded, into rows ``prompts.slots`` (R,) of the batch (B for a dummy row: dropped),
    each with its first token: the program that refills free rows.

    ``aligned``: R == B and prompt k goes to row k (``slots[k]`` is k, or B for a row left as it is), so every
    field is replaced row for row where it is refilled, which keeps each device to its own rows under a mesh;
    otherwise the prompts are scattered into their rows (:meth:`KVCache.insert_rows`). ``mesh``: the mesh the
    program runs on (static), whose device layout the cache keeps (:func:`keep_default_layout`)."""
    model = nnx.merge(graphdef, state)
    slots, input_ids, segment_ids, last_index, prompt_ids = prompts
    n = input_ids.shape[0]
    logits, cache = prompt_pass(model, input_ids, segment_ids, last_index)
    seen = prompt_tokens_seen(input_ids, segment_ids, model.cfg.vocab_size) if sampling.uses_penalty else None
    first = select_tokens(logits, seen, _row_keys(seed, prompt_ids), jnp.zeros((n,), jnp.int32), sampling)
    done = _is_stop(first, stop_ids) | (max_new_tokens == 1)
    if aligned:
        refill = slots == jnp.arange(n)

        def put(old, new):
            return jnp.where(refill.reshape((n,) + (1,) * (old.ndim - 1)), new, old)

        new_cache = rows.cache.replace_rows(refill, cache)
    else:

        def put(old, new):
            return old.at[slots].set(new, mode="drop")

        new_cache = rows.cache.insert_rows(slots, cache, pin=_layout_pin(mesh))
    if seen is not None:
        seen = put(rows.seen, seen.at[jnp.arange(n), first].set(True))
    tokens = jnp.full((n, max_new_tokens), EMPTY_SLOT, jnp.int32).at[:, 0].set(first)
    rows = Rows(
        cache=new_cache,
        tokens=put(rows.tokens, tokens),
        count=put(rows.count, jnp.ones((n,), jnp.int32)),
        last_logits=put(rows.last_logits, logits),
        done=put(rows.done, done),
        previous=put(rows.previous, first),
        prompt_ids=put(rows.prompt_ids, prompt_ids),
        seen=seen,
    )
    return rows, _view(rows)


def decode_steps(
    graphdef: nnx.GraphDef,
    state: Any,
    rows: Rows,
    seed: jnp.ndarray,
    stop_ids: jnp.ndarray,
    exit_on_finish: jnp.ndarray,
    *,
    max_new_tokens: int,
    sampling: SamplingParams,
    mesh: Optional[Mesh] = None,
) -> tuple[Rows, HostView]:
    """Up to CHUNK_STEPS decoding steps of every row (the decoding program); stops early when every row is done,
    when a row would outgrow the cache, or (``exit_on_finish``) as soon as a row finishes, so the host can refill it.
    ``mesh``: as for :func:`prefill`."""
    model = nnx.merge(graphdef, state)
    pin = _layout_pin(mesh)
    b = rows.done.shape[0]
    keys = _row_keys(seed, rows.prompt_ids)
    started_done = rows.done
    every_row = jnp.arange(b)

    def cond(loop):
        step, r = loop
        alive = ~r.done
        room = jnp.all(jnp.where(alive, r.cache.index < r.cache.length, True))
        finished = jnp.any(r.done & ~started_done)
        return (step < CHUNK_STEPS) & jnp.any(alive) & room & ~(exit_on_finish & finished)

    def body(loop):
        step, r = loop
        alive = ~r.done
        logits, cache = model(
            r.previous[:, None],
            positions=r.cache.index[:, None],
            segment_ids=jnp.ones((b, 1), jnp.int32),
            cache=r.cache,
        )
        logits = logits[:, 0, :]
        cache = cache._replace(k=pin(cache.k), v=pin(cache.v))
        token = select_tokens(logits, r.seen, keys, r.count, sampling)
        token = jnp.where(alive, token, r.previous)
        # Done rows write nothing: their slot index points past the tokens (dropped).
        tokens = r.tokens.at[every_row, jnp.where(alive, r.count, max_new_tokens)].set(token, mode="drop")
        count = r.count + alive.astype(jnp.int32)
        done = r.done | (alive & (_is_stop(token, stop_ids) | (count >= max_new_tokens)))
        seen = None if r.seen is None else r.seen.at[every_row, token].set(True)
        return step + 1, Rows(
            cache=cache._replace(index=jnp.where(alive, cache.index, r.cache.index)),
            tokens=tokens,
            count=count,
            last_logits=jnp.where(alive[:, None], logits, r.last_logits),
            done=done,
            previous=token,
            prompt_ids=r.prompt_ids,
            seen=seen,
        )

    _, rows = jax.lax.while_loop(cond, body, (jnp.int32(0), rows))
    return rows, _view(rows)


def _take(rows: Rows, slots: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Replies (R, max_new_tokens) and last-step logits (R, V) of rows ``slots``."""
    return rows.tokens[slots], rows.last_logits[slots]


RowsWithCache = TypeVar("RowsWithCache", bound=NamedTuple)


def resize_cache(rows: RowsWithCache, *, length: int) -> RowsWithCache:
    """A batch's state (any NamedTuple with a ``cache`` field: :class:`Rows`, the server's rows) with its KV cache in
    ``length`` slots, cut at the end or padded with empty slots: the caller keeps every live row's slots within it."""
    return rows._replace(cache=rows.cache.resized(length))


class GenerationPrograms(NamedTuple):
    """The jitted programs of generation, with the model's graphdef bound (each takes the model state first)."""

    empty_rows: Any
    """:func:`empty_rows`; its rows are left where XLA puts them."""
    prefill: Any
    """:func:`prefill`, the rows donated."""
    decode_steps: Any
    """:func:`decode_steps`, the rows donated."""


PROGRAM_STATICS = ("max_new_tokens", "sampling", "mesh")
"""The static arguments of :func:`prefill` and :func:`decode_steps` (prefill adds ``aligned``)."""


def generation_programs(
    graphdef: nnx.GraphDef, cfg: Any, mesh: Optional[Mesh], rows_sharding: Any = None
) -> GenerationPrograms:
    """The programs as :class:`Generator` runs them (shared by models of an equal config, see
    :func:`jaxtune.eval.batching.jitted`): under a mesh the rows stay sharded between calls (``rows_sharding``, a
    prefix of :class:`Rows`; None lets XLA place them) and what the host reads comes back replicated.
    :mod:`jaxtune.eval.aot` compiles these same programs ahead of time."""
    device_state = (rows_sharding, replicated(mesh)) if mesh is not None else None
    empty = jitted(
        empty_rows, graphdef, cfg, mesh, ("rows", "length", "max_new_tokens", "uses_penalty"), out_shardings=None
    )
    fill = jitted(prefill, graphdef, cfg, mesh, PROGRAM_STATICS + ("aligned",), ("rows",), device_state)
    steps = jitted(decode_steps, graphdef, cfg, mesh, PROGRAM_STATICS, ("rows",), device_state)
    return GenerationPrograms(empty, fill, steps)


class Generator:
    """Continuous-batching generation with one model (bucketed shapes, compiled once per shape and setting)."""

    def __init__(
        self,
        model: Llama,
        *,
        batch_size: int = 8,
        bucket_multiple: int = 64,
        pad_id: int = 0,
        mesh: Optional[Mesh] = None,
    ):
        """model: the Llama (or any model with the same cache interface, see the module docstring) to decode with,
        its parameters already placed on ``mesh`` when one is given.
        batch_size: rows decoded together (a multiple of the mesh's data-parallel size when sharded).
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
        dp = 1
        if mesh is not None:
            from jaxtune.sharding import data_parallel_size

            dp = data_parallel_size(mesh)
        # Prefill and result batches: the batch halved while it stays a whole multiple of the data-parallel size.
        sizes = {batch_size}
        while sizes and min(sizes) % 2 == 0 and (min(sizes) // 2) % dp == 0:
            sizes.add(min(sizes) // 2)
        self._group_sizes = sorted(sizes)
        self._empty, self._prefill, self._steps = generation_programs(self.graphdef, self.cfg, mesh)
        self._resize = jax.jit(resize_cache, static_argnames=("length",))
        self._take = jax.jit(_take, out_shardings=replicated(mesh))

    def _group(self, n: int) -> int:
        """Rows of a prefill or result batch holding ``n`` real rows."""
        return next(size for size in self._group_sizes if size >= n)

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
        stops = stop_table(stop_ids)
        if not prompts:
            return []

        b = self.batch_size
        results: list[Optional[Generation]] = [None] * len(prompts)
        waiting = deque(sorted(range(len(prompts)), key=lambda i: -len(prompts[i])))
        assigned = [-1] * b  # prompt index held by each row, -1 for a free row
        index = np.zeros((b,), np.int32)  # each row's next cache slot, as of the last device call
        seed_in = np.uint32(seed)
        with model_context(self.mesh):
            rows = self._empty(
                self.state,
                rows=b,
                length=cache_length(len(prompts[waiting[0]])),
                max_new_tokens=max_new_tokens,
                uses_penalty=sampling.uses_penalty,
            )
            while waiting or any(i >= 0 for i in assigned):
                free = [r for r in range(b) if assigned[r] < 0]
                if waiting and free:
                    take = [waiting.popleft() for _ in range(min(len(free), len(waiting)))]
                    slots = free[: len(take)]
                    rows = self._fit(rows, bucket_length(max(len(prompts[i]) for i in take), self.bucket_multiple))
                    rows, view = self._fill(rows, prompts, take, slots, seed_in, stops, max_new_tokens, sampling)
                    for r, i in zip(slots, take):
                        assigned[r] = i
                else:
                    alive = [r for r in range(b) if assigned[r] >= 0]
                    need = max(
                        min(int(index[r]) + CHUNK_STEPS, len(prompts[assigned[r]]) + max_new_tokens - 1) for r in alive
                    )
                    rows = self._fit(rows, cache_length(need), shrink=True)
                    rows, view = self._steps(
                        self.state,
                        rows,
                        seed_in,
                        stops,
                        np.bool_(bool(waiting)),
                        max_new_tokens=max_new_tokens,
                        sampling=sampling,
                        mesh=self.mesh,
                    )
                done, count, index = (np.asarray(a) for a in jax.device_get(view))
                ended = [r for r in range(b) if assigned[r] >= 0 and done[r]]
                if ended:
                    group = self._group(len(ended))
                    picked = np.array(ended + [ended[0]] * (group - len(ended)), np.int32)
                    tokens, last_logits = jax.device_get(self._take(rows, picked))
                    for k, r in enumerate(ended):
                        n = int(count[r])
                        results[assigned[r]] = Generation(
                            tokens=tuple(int(t) for t in tokens[k, :n]), last_logits=np.asarray(last_logits[k])
                        )
                        assigned[r] = -1
        return [r for r in results if r is not None]

    def _fit(self, rows: Rows, length: int, shrink: bool = False) -> Rows:
        """The batch in a cache of ``length`` slots when it holds fewer (or, with ``shrink``, more)."""
        current = rows.cache.length
        if length > current or (shrink and length < current):
            rows = self._resize(rows, length=length)
        return rows

    def _fill(
        self,
        rows: Rows,
        prompts,
        take: list[int],
        slots: list[int],
        seed,
        stops,
        max_new_tokens: int,
        sampling: SamplingParams,
    ) -> tuple[Rows, HostView]:
        """Prefill prompts ``take`` into free rows ``slots``. A prefill batch as large as the whole batch is laid
        out row for row (prompt of row r at position r, the rows not refilled padding), so it replaces rows in
        place instead of scattering them (see :func:`prefill`)."""
        b = self.batch_size
        group = self._group(len(take))
        length = bucket_length(max(len(prompts[i]) for i in take), self.bucket_multiple)
        batch = right_pad([prompts[i] for i in take], [[] for _ in take], length, group)
        if self.pad_id:
            batch.input_ids[batch.segment_ids == 0] = self.pad_id
        dummy = group - len(take)
        # A dummy row's slot B is out of range: a scatter drops it, and it is no row's own index.
        slot_ids = np.array(slots + [b] * dummy, PROMPT_ROW_DTYPES.slots)
        prompt_ids = np.array(take + [0] * dummy, PROMPT_ROW_DTYPES.prompt_ids)
        arrays = [slot_ids, batch.input_ids, batch.segment_ids, batch.last_index, prompt_ids]
        aligned = group == b
        if aligned:
            # Rows not refilled take the first dummy row (all padding; there is one whenever a row is not refilled).
            order = np.full((b,), len(take), np.int64)
            order[slots] = np.arange(len(take))
            arrays = [a[order] for a in arrays]
            arrays[0] = np.where(order < len(take), np.arange(b), b).astype(PROMPT_ROW_DTYPES.slots)
        inputs = PromptRows(*put_rows(arrays, self.mesh))
        return self._prefill(
            self.state,
            rows,
            inputs,
            seed,
            stops,
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            aligned=aligned,
            mesh=self.mesh,
        )
