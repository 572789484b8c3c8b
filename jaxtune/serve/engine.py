"""The serving engine: continuous batching of requests over a fixed batch of rows, on one thread.

- Requests wait in a bounded queue (:meth:`Engine.submit` raises :class:`QueueFull` past ``max_queue``: HTTP 429).
- Each step (a :class:`jaxtune.serve.plan.Plan`) frees the rows of finished, failed or cancelled requests, admits
  waiting requests into free rows (one prefill for all of them, padded to a bucket length; an idle engine first
  waits a few milliseconds while more requests keep arriving, so that clients arriving together share one
  prefill: 32 benchmark clients otherwise came in three, each costing about four decoding steps), then decodes up
  to ``steps`` tokens for every live row (leaving early when a row stops while requests wait), or up to
  ``max_steps`` when every row holds a request that is not streamed and none waits (fewer trips to the host when
  nobody reads the tokens as they come and nobody could be admitted sooner). The tokens go to each request
  (:meth:`jaxtune.serve.request.ServeRequest.feed`), which streams its text.
- The batch has ``rows`` rows for the server's life, and a cache of at most ``context`` slots per row (admission is
  refused upstream for a prompt + ``max_tokens`` beyond it). The cache holds what the live rows need for the next
  call (:func:`jaxtune.eval.generate.cache_length` sizes: 64, 96, 128, 192, ...; the host counts each row's slots),
  grown before a prefill or a decode call that needs more and cut when fewer do: a step's attention reads about
  the filled part of the cache, as ``jaxtune eval``'s does (at a fixed ``context`` of 128 slots, the benchmark's
  decoding took 5-10% longer than the generator's). One decoding program per cache size, and one prefill per
  (prefill rows, bucket length, cache size), the prefill rows being one or the whole batch; each compiles at its
  first use.
- All JAX calls happen on the engine thread (never the HTTP event loop). With several processes, process 0 plans
  and every process runs the same programs (:func:`jaxtune.serve.plan.share_plan`); :meth:`Engine.follow` is the
  loop of the others.
- A step that raises fails the requests it served (HTTP 500) and the server goes on: the next plan says ``reset``,
  and every process (process 0 and the followers alike) frees all rows and renews its device state before it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Collection
from typing import Optional

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxtune.eval.batching import bucket_length, jitted, model_context, put_rows, replicated
from jaxtune.eval.generate import cache_length, resize_cache
from jaxtune.eval.likelihood import right_pad
from jaxtune.serve import programs
from jaxtune.serve.plan import Admission, Plan, share_plan
from jaxtune.serve.request import ServeRequest
from jaxtune.sharding import check_batch_rows

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More requests wait than the queue holds."""


class Batch:
    """The device side of the engine (every process holds one): the rows, their settings and the programs."""

    def __init__(self, model: nnx.Module, *, rows: int, context: int, steps: int, bucket_multiple: int, stop_ids,
                 max_steps: Optional[int] = None, known_ids: int = 0, mesh: Optional[Mesh] = None):  # fmt: skip
        """steps: tokens per device call while tokens are streamed or requests wait; max_steps: otherwise (default
        ``steps``). known_ids: ids at or above it are never sampled (the tokenizer's vocabulary; 0: none)."""
        check_batch_rows(rows, mesh)
        self.cfg = model.cfg
        self.graphdef, self.state = nnx.split(model)
        self.rows, self.context, self.steps, self.bucket_multiple, self.mesh = (
            rows,
            context,
            steps,
            bucket_multiple,
            mesh,
        )
        self.max_steps = max(steps, max_steps or steps)
        self.known_ids = known_ids
        self.pad_id = model.cfg.pad_token_id or 0
        table = sorted({int(s) for s in stop_ids})
        self.stop_table = np.full((max(8, len(table)),), -1, np.int32)
        self.stop_table[: len(table)] = table
        dp = 1
        if mesh is not None:
            from jaxtune.sharding import data_parallel_size

            dp = data_parallel_size(mesh)
        # Prefills of one row (one per data-parallel device) or of the whole batch: two compiled sizes per prompt
        # bucket. Halving further (as the evaluator does) saved little once arrivals are gathered (see _gather), and
        # each size is a compilation a server meets at some later request (7 s each on a loaded 2-core CPU).
        self.group_sizes = sorted({dp, rows})
        keep = (None, replicated(mesh))
        self._empty = jitted(programs.empty_rows, self.graphdef, self.cfg, mesh, ("rows", "length"), out_shardings=None)
        self._prefill = jitted(programs.prefill, self.graphdef, self.cfg, mesh, ("known_ids", "mesh"), ("rows",), keep)
        self._decode = jitted(programs.decode, self.graphdef, self.cfg, mesh, ("steps", "known_ids", "mesh"), ("rows",),
                              (None, replicated(mesh), replicated(mesh)))  # fmt: skip
        self._resize = jax.jit(resize_cache, static_argnames=("length",))
        self.alive = np.zeros((rows,), bool)
        self.index = np.zeros((rows,), np.int64)  # each row's next cache slot (prompt + tokens fed back)
        self.last_slot = np.zeros((rows,), np.int64)  # the slots a row fills at most: prompt + max_tokens - 1
        self.settings = programs.RowSettings(
            np.zeros((rows,), np.float32), np.zeros((rows,), np.int32), np.ones((rows,), np.float32),
            np.ones((rows,), np.float32), np.zeros((rows,), np.uint32), np.ones((rows,), np.int32),
        )  # fmt: skip
        self.reset()

    def reset(self) -> None:
        """Every row free, the device state new (after a failed step, whose buffers may be gone)."""
        self.alive[:] = False
        self.index[:] = self.last_slot[:] = 0
        with model_context(self.mesh):
            self.device = self._empty(self.state, rows=self.rows, length=self._cache_size(1))

    def _cache_size(self, slots: int) -> int:
        return min(cache_length(slots), self.context)

    def _fit(self, slots: int, shrink: bool = False) -> None:
        """The batch in the cache size holding ``slots`` when it holds fewer (or, with ``shrink``, more)."""
        length, current = self._cache_size(slots), self.device.cache.length
        if length > current or (shrink and length < current):
            self.device = self._resize(self.device, length=length)

    def warm_up(self) -> None:
        """Compile the decoding program of the smallest cache and the one-row prefill of the shortest bucket (twice
        through: the batch's arrays come back from the first calls in the layout later calls see); larger caches
        compile when a request first needs them."""
        for _ in range(2):
            self.run(Plan(admit=(Admission(0, (self.pad_id,), 0.0, 0, 1.0, 1.0, 0, 2),)))
            self.run(Plan(release=(0,)))

    def run(self, plan: Plan) -> dict[int, tuple[list[int], bool]]:
        """Apply one plan; the tokens each row produced in it and whether the row stopped."""
        if plan.reset:
            log.warning("the previous step failed: every row is freed and the batch starts anew")
            self.reset()
        for slot in plan.release:
            self.alive[slot] = False
        out: dict[int, tuple[list[int], bool]] = {}
        with model_context(self.mesh):
            if plan.admit:
                out.update(self._admit(plan.admit))
            if self.alive.any():
                for slot, (tokens, ended) in self._step(plan.waiting, plan.steps or self.steps).items():
                    before = out.get(slot, ([], False))[0]
                    out[slot] = (before + tokens, ended)
        return out

    def _admit(self, admit: Collection[Admission]) -> dict[int, tuple[list[int], bool]]:
        for a in admit:
            values = (a.temperature, a.top_k, a.top_p, a.repetition_penalty, a.seed, a.max_tokens)
            for array, value in zip(self.settings, values):
                array[a.slot] = value
        admit = list(admit)
        group = next(size for size in self.group_sizes if size >= len(admit))
        length = min(bucket_length(max(len(a.prompt_ids) for a in admit), self.bucket_multiple), self.context)
        batch = right_pad([a.prompt_ids for a in admit], [[] for _ in admit], length, group)
        batch.input_ids[batch.segment_ids == 0] = self.pad_id
        self._fit(length)
        slots = np.array([a.slot for a in admit] + [self.rows] * (group - len(admit)), np.int32)
        picked = np.where(slots < self.rows, slots, 0)
        settings = programs.RowSettings(*(np.asarray(a)[picked] for a in self.settings))
        inputs = put_rows([slots, batch.input_ids, batch.segment_ids, batch.last_index], self.mesh)
        self.device, first = self._prefill(
            self.state, self.device, *inputs, programs.RowSettings(*put_rows(list(settings), self.mesh)),
            known_ids=self.known_ids, mesh=self.mesh,
        )  # fmt: skip
        first = np.asarray(jax.device_get(first))
        out = {}
        for k, a in enumerate(admit):
            token = int(first[k])
            ended = token in self.stop_table or a.max_tokens <= 1
            self.alive[a.slot] = not ended
            self.index[a.slot], self.last_slot[a.slot] = len(a.prompt_ids), len(a.prompt_ids) + a.max_tokens - 1
            out[a.slot] = ([token], ended)
        return out

    def _step(self, waiting: bool, steps: int) -> dict[int, tuple[list[int], bool]]:
        steps = min(steps, self.max_steps)
        live = np.flatnonzero(self.alive)
        self._fit(int(np.max(np.minimum(self.index[live] + steps, self.last_slot[live]))), shrink=True)
        alive, settings = put_rows([self.alive], self.mesh)[0], put_rows(list(self.settings), self.mesh)
        self.device, tokens, stopped = self._decode(
            self.state, self.device, alive, programs.RowSettings(*settings), self.stop_table, np.bool_(waiting),
            np.int32(steps), steps=self.max_steps, known_ids=self.known_ids, mesh=self.mesh,
        )  # fmt: skip
        tokens, stopped = (np.asarray(a) for a in jax.device_get((tokens, stopped)))
        if not ((tokens[live] != programs.NO_TOKEN).any() or stopped.any()):
            # Only a cache too small for a live row stops a call before its first token: a fault of _fit's sizing,
            # which would otherwise repeat the call forever.
            raise RuntimeError(f"a decode call made no progress (cache of {self.device.cache.length} slots)")
        out = {}
        for slot in live:
            produced = [int(t) for t in tokens[slot] if t != programs.NO_TOKEN]
            self.index[slot] += len(produced)  # each token came from a step that wrote the row's previous one
            out[int(slot)] = (produced, bool(stopped[slot]))
            if stopped[slot]:
                self.alive[slot] = False
        return out


class Engine:
    """Requests in, streamed tokens out, on a thread of its own (process 0; :meth:`follow` elsewhere)."""

    def __init__(self, batch: Batch, *, max_queue: int = 64, admit_window_s: float = 0.02):
        """max_queue: requests that may wait for a row (more: :class:`QueueFull`). admit_window_s: an idle engine
        that receives a request waits while more keep arriving (each within this of the last, 5 windows at most),
        so that clients arriving together share one prefill."""
        self.batch = batch
        self.max_queue = max_queue
        self.admit_window_s = admit_window_s
        self._waiting: deque[ServeRequest] = deque()
        self._owner: list[Optional[ServeRequest]] = [None] * batch.rows
        self._released: list[int] = []
        self._reset = False  # the last step failed: the next plan renews every process's batch
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self.steps_run = 0

    # -- the HTTP side ----------------------------------------------------------------------------------------------

    def submit(self, request: ServeRequest) -> None:
        """Queue a request (its prompt and max_tokens already checked against the context)."""
        with self._wake:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (the server's --max-queue)")
            self._waiting.append(request)
            self._wake.notify()

    def rows_in_use(self) -> int:
        """Rows holding a request (a test's check that nothing leaks)."""
        return sum(r is not None for r in self._owner)

    def queued(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="jaxtune-serve-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the engine thread ------------------------------------------------------------------------------------------

    def _plan(self) -> Plan:
        with self._wake:
            while not (self._stopping or self._waiting or self._released or self._reset or self.rows_in_use()):
                self._wake.wait(1.0)
            if not self.rows_in_use():
                self._gather()
            if self._stopping:
                return Plan(shutdown=True)
            for slot, request in enumerate(self._owner):
                if request is not None and request.cancelled:
                    self._free(slot)
            self._waiting = deque(r for r in self._waiting if not r.cancelled)
            admit = []
            for slot in range(self.batch.rows):
                if self._owner[slot] is None and self._waiting:
                    request = self._waiting.popleft()
                    self._owner[slot] = request
                    d = request.decoding
                    admit.append(Admission(slot, tuple(request.prompt_ids), d.temperature, d.top_k, d.top_p,
                                           d.repetition_penalty, d.seed, d.max_tokens))  # fmt: skip
            release, self._released = tuple(self._released), []
            reset, self._reset = self._reset, False
            waiting = bool(self._waiting)
            # Long device calls only when no request could join before their end anyway (every row busy; a request
            # arriving meanwhile waits for a row to free) and nobody reads the tokens as they come.
            long = all(r is not None and not r.stream for r in self._owner) and not waiting
            steps = self.batch.max_steps if long else self.batch.steps
            return Plan(release=release, admit=tuple(admit), waiting=waiting, steps=steps, reset=reset)

    def _gather(self) -> None:
        """Wait (lock held) while requests keep arriving, up to a batch of them (see ``admit_window_s``)."""
        end = time.monotonic() + 5 * self.admit_window_s
        while not self._stopping and len(self._waiting) < self.batch.rows:
            seen, left = len(self._waiting), end - time.monotonic()
            if left <= 0:
                return
            self._wake.wait(min(self.admit_window_s, left))
            if len(self._waiting) == seen:
                return

    def _free(self, slot: int) -> None:
        self._owner[slot] = None
        self._released.append(slot)

    def _loop(self) -> None:
        while True:
            plan = self._plan()
            plan = share_plan(plan)
            if plan.shutdown:
                break
            try:
                produced = self.batch.run(plan)
            except Exception as e:  # a failed step fails its requests, not the server
                log.exception("engine step failed")
                self._fail_all(f"the engine failed: {type(e).__name__}: {e}")
                with self._wake:
                    self._reset = True
                continue
            self.steps_run += 1
            for slot, (tokens, ended) in produced.items():
                request = self._owner[slot]
                if request is None:
                    continue
                try:
                    done = request.feed(tokens, ended)
                except Exception as e:
                    log.exception("a request's reply could not be decoded")
                    request.fail(f"{type(e).__name__}: {e}")
                    done = True
                if done:
                    with self._wake:
                        self._free(slot)
        self._fail_all("the server is shutting down")

    def _fail_all(self, message: str) -> None:
        with self._wake:
            for slot, request in enumerate(self._owner):
                if request is not None:
                    request.fail(message)
                    self._free(slot)
            while self._waiting:
                self._waiting.popleft().fail(message)

    def follow(self) -> None:
        """The loop of a process other than 0: run every plan process 0 shares until it shuts down. A step that
        fails here is logged and the next plan's ``reset`` starts the batch anew, as on process 0; if process 0's
        step went through instead, the processes no longer hold the same rows and this one gives up."""
        failed = False
        while True:
            plan = share_plan(None)
            if plan.shutdown:
                return
            if failed and not plan.reset:
                raise RuntimeError("a step failed on this process but not on process 0: the batch is out of step")
            try:
                self.batch.run(plan)
                failed = False
            except Exception:
                log.exception("engine step failed")
                failed = True
