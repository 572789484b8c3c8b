"""The grain input pipeline: records -> token rows -> per-host batches, deterministic and resumable.

Source (records in memory, or a prepared ArrayRecord dataset read by random access) -> a first pass that tokenizes
every example once to learn its length and whether anything in its first ``max_len`` tokens is supervised (examples
with nothing supervised are counted, reported and left out) -> a row plan (packing: several examples per row of
``max_len`` with segment ids and positions restarting per example; or one example per row, padded left or right)
-> a grain ``MapDataset`` over row positions: the rows are reshuffled every epoch (grain's per-epoch shuffle),
each epoch's last partial batch is completed with empty rows whose ``loss_weights`` are 0, global batch ``b`` is rows
``b*G .. b*G+G-1`` and host ``h`` of ``P`` takes every P-th of them (``ShardByJaxProcess``) -> each host batch is
built on demand (its records read in one call, tokenized in one call, laid into rows) -> optionally prefetched by
worker processes (``data.num_workers``, which also parallelise the first pass; their lifecycle is
:mod:`jaxtune.data.workers`).

The batch is counted in rows (``batch_unit="rows"``: ``ceil(rows / global batch)`` steps per epoch) or in examples
(``"examples"``: ``ceil(examples / global batch)`` steps per epoch, the study's count). Without packing the two are
the same (one example per row; the study's recipe: left padding to a multiple of 8, 64 examples per step, the last
step holding the remainder; ``data.length_buckets`` pads each batch to the smallest of a few lengths instead, so a
run compiles a handful of train steps, not one per multiple of 8). With packing and examples, each epoch's shuffled rows are dealt round-robin over the
``ceil(examples / global batch)`` steps, every step gets the same number of row slots (``ceil(rows / steps)``,
rounded up to ``row_multiple``, which the trainer sets so the rows divide over microbatches, devices and processes),
so a step carries about ``global batch`` examples and the learning-rate schedule spans the study's number of steps.

Because the plan is fixed before training, the number of steps per epoch is known up front, and the iterator's
state is one index: ``get_state``/``set_state`` (and ``grain.checkpoint.CheckpointSave``/``CheckpointRestore`` in
the trainer's Orbax checkpoint) resume exactly the batches an uninterrupted run would have seen.

Packed examples keep their row neighbours across epochs (the plan is made once; the rows' order changes every
epoch). With attention and positions restarted per segment the neighbours do not affect an example's loss.

Batch (numpy, each [B, L], B = global batch / process count): ``input_ids`` int32, ``targets`` int32 (the next token
of the same example, 0 where none), ``loss_weights`` float32 (1 where the target is supervised), ``segment_ids``
int32 (1, 2, ... per example in the row, 0 = padding), ``positions`` int32 (0.. per example), ``ability_ids`` int32
(index into ``PipelineInfo.ability_names``, -1 on padding).
"""

from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from jaxtune.config.schema import DataConfig
from jaxtune.data.belle_volumes import SelectedRecords, is_belle_selection, select_belle
from jaxtune.data.mixtures import select_records, write_manifest
from jaxtune.data.packing import RowPlan, one_per_row, pack_rows
from jaxtune.data.prepare import PreparedRecords, is_prepared_dataset
from jaxtune.data.records import DataError, Record, SkipReport
from jaxtune.data.templates import ChatTemplate, Encoded, TemplateError, make_template, template_backend
from jaxtune.data.tokenizer import Tokenizer, load_tokenizer
from jaxtune.data.workers import prefetch_in_workers
from jaxtune.errors import JaxtuneError
from jaxtune.paths import is_remote

logger = logging.getLogger(__name__)

BATCH_KEYS: tuple[str, ...] = ("input_ids", "targets", "loss_weights", "segment_ids", "positions", "ability_ids")
_MEASURE_CHUNK = 512


class PipelineError(JaxtuneError, ValueError):
    """A pipeline that cannot be built from this configuration (the message names the setting)."""


class InMemoryRecords:
    """Validated records held in memory (a grain ``RandomAccessDataSource``)."""

    def __init__(self, records: Sequence[Record]):
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.records[int(index)]

    def __getitems__(self, indices: Sequence[int]) -> list[Record]:
        return [self.records[int(i)] for i in indices]


RecordSource = Union[InMemoryRecords, PreparedRecords, SelectedRecords]


@dataclass
class PipelineInfo:
    """What the pipeline will feed, known before the first batch."""

    ability_names: tuple[str, ...]
    """``ability_ids`` index into this tuple."""
    selection: str
    num_records: int
    """Valid records selected."""
    num_examples: int
    """Records trained on (something supervised within max_len)."""
    examples_per_ability: dict[str, int]
    num_unsupervised: int
    """Records left out because their first max_len tokens hold no supervised target."""
    unsupervised_examples: tuple[str, ...]
    """The first few of those, as ``id (file:line)``."""
    num_truncated: int
    """Examples longer than max_len (only their first max_len tokens are used)."""
    rows_per_epoch: int
    """Rows with data per epoch (before completing the last batch with empty rows)."""
    steps_per_epoch: int
    epochs: int
    total_steps: int
    global_batch_size: int
    """Rows per step over all processes (with packing and ``batch_unit="examples"``: the row slots of a step)."""
    host_batch_size: int
    shard_index: int
    shard_count: int
    max_len: int
    packing: bool
    tokens_per_epoch: int
    """Non-padding tokens per epoch."""
    supervised_tokens_per_epoch: int
    packing_efficiency: float
    """Non-padding share of all token slots of an epoch's batches."""
    special_token_ids: dict[str, int]
    vocab_size: int
    """Tokenizer size with added tokens: the model's vocab_size must equal it."""
    added_tokens: dict[str, int]
    skipped: SkipReport = field(default_factory=SkipReport)
    """Invalid records left out (``on_error="skip"``)."""
    batch_unit: str = "rows"
    """What the configured global batch counts: ``rows`` or ``examples``."""
    examples_per_step: Optional[int] = None
    """The configured global batch when it counts examples."""
    batches_per_length: dict[int, int] = field(default_factory=dict)
    """Batches of the first epoch at each row length, shortest first: the run compiles one train step (and one
    evaluation-loss step) per length it meets (``data.length_buckets`` bounds them)."""

    def summary(self) -> str:
        per_ability = ", ".join(f"{k} {v}" for k, v in self.examples_per_ability.items())
        lines = [
            f"data: {self.selection}: {self.num_examples} examples ({per_ability})",
            f"  {self.rows_per_epoch} rows of {self.max_len} per epoch ({'packed' if self.packing else 'padded'}, "
            f"{100 * self.packing_efficiency:.1f}% non-padding), {self.steps_per_epoch} steps/epoch x {self.epochs} "
            f"epochs = {self.total_steps} steps of {self.global_batch_size} rows "
            f"({self.host_batch_size} on each of {self.shard_count} hosts)"
            + (
                f", batch counted in examples: {self.examples_per_step} per step"
                if self.batch_unit == "examples"
                else ", batch counted in rows"
            ),
            f"  vocabulary {self.vocab_size} (added {self.added_tokens or 'none'}); "
            f"{self.num_truncated} examples truncated to {self.max_len}",
        ]
        if len(self.batches_per_length) > 1:
            lines.append(
                "  batches per row length (first epoch): "
                + ", ".join(f"{n} x {length}" for length, n in self.batches_per_length.items())
                + f": {len(self.batches_per_length)} train-step programs to compile (one per length a run meets)"
            )
        if self.num_unsupervised:
            lines.append(
                f"  left out {self.num_unsupervised} examples with nothing supervised in their first "
                f"{self.max_len} tokens: {', '.join(self.unsupervised_examples)}"
            )
        if self.skipped.skipped or self.skipped.unreadable:
            lines.append("  " + self.skipped.summary().replace("\n", "\n  "))
        return "\n".join(lines)


@dataclass
class _ExampleTable:
    """The kept examples: their record index in the source, token length (after truncation) and ability."""

    record_index: np.ndarray  # int32 [N] (int64 beyond 2**31 records)
    lengths: np.ndarray  # int32 [N]
    ability: np.ndarray  # int16 [N]
    supervised_tokens: int  # supervised targets over all examples


@dataclass
class _Measured:
    table: _ExampleTable
    num_unsupervised: int
    unsupervised_examples: list[str]
    num_truncated: int


def _describe(record: Record) -> str:
    return f"{record.id} ({record.source}:{record.line})" if record.source else record.id


def _encode_records(
    template: ChatTemplate, records: Sequence[Record], mask: str
) -> Sequence[Union[Encoded, DataError]]:
    """Encode records in one batch; a record the template rejects becomes a DataError naming its file and line."""
    try:
        return template.encode_batch([r.messages for r in records], mask)
    except TemplateError:
        pass
    out: list[Union[Encoded, DataError]] = []
    for r in records:
        try:
            out.append(template.encode(r.messages, mask))
        except TemplateError as e:
            out.append(DataError(r.source, r.line, "messages", str(e)))
    return out


@dataclass
class _ChunkMeasure:
    """First-pass figures of one chunk of records."""

    kept: np.ndarray  # int64 record indices
    lengths: np.ndarray  # int32
    ability: np.ndarray  # int16
    supervised_tokens: int
    errors: list[DataError]
    num_unsupervised: int
    unsupervised_examples: list[str]
    num_truncated: int


class _ChunkMeasurer:
    """Tokenizes the records of chunk ``c`` (picklable: grain workers can run the first pass in parallel)."""

    def __init__(self, source: RecordSource, template: ChatTemplate, cfg: DataConfig, ability_index: dict[str, int]):
        self.source = source
        self.template = template
        self.mask = cfg.mask
        self.max_len = cfg.max_len
        self.ability_index = ability_index

    def __call__(self, chunk: int) -> _ChunkMeasure:
        start = int(chunk) * _MEASURE_CHUNK
        indices = list(range(start, min(len(self.source), start + _MEASURE_CHUNK)))
        records = self.source.__getitems__(indices)
        kept, lengths, abilities = [], [], []
        supervised = 0
        errors: list[DataError] = []
        unsupervised: list[str] = []
        num_unsupervised = truncated = 0
        for i, record, enc in zip(indices, records, _encode_records(self.template, records, self.mask)):
            if isinstance(enc, DataError):
                errors.append(enc)
                continue
            ability = self.ability_index.get(record.ability)
            if ability is None:
                raise PipelineError(
                    f"{_describe(record)}: ability {record.ability!r} is not among {sorted(self.ability_index)}"
                )
            if len(enc) > self.max_len:
                truncated += 1
                enc = enc.truncated(self.max_len)
            targets = enc.num_supervised_targets()
            if targets == 0:
                num_unsupervised += 1
                if len(unsupervised) < 10:
                    unsupervised.append(_describe(record))
                continue
            kept.append(i)
            lengths.append(len(enc))
            abilities.append(ability)
            supervised += targets
        return _ChunkMeasure(
            np.asarray(kept, np.int64),
            np.asarray(lengths, np.int32),
            np.asarray(abilities, np.int16),
            supervised,
            errors,
            num_unsupervised,
            unsupervised,
            truncated,
        )


def _measure(
    source: RecordSource,
    template: ChatTemplate,
    cfg: DataConfig,
    ability_index: dict[str, int],
    skipped: SkipReport,
) -> _Measured:
    """The first pass: tokenize every record once for its length, supervision and ability (in ``num_workers``
    processes when set)."""
    import grain

    n = len(source)
    measurer = _ChunkMeasurer(source, template, cfg, ability_index)
    num_chunks = -(-n // _MEASURE_CHUNK)
    if cfg.num_workers > 0 and num_chunks > 1:
        chunks: Any = prefetch_in_workers(
            grain.MapDataset.range(num_chunks)
            .map(measurer)
            .to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)),
            cfg.num_workers,
        )
    else:
        chunks = (measurer(c) for c in range(num_chunks))
    # Compact per-example arrays: a 2M-record corpus costs ~20 MB here.
    record_index = np.empty(n, np.int32 if n < 2**31 else np.int64)
    lengths = np.empty(n, np.int32)
    ability = np.empty(n, np.int16)
    kept = num_unsupervised = truncated = supervised = 0
    unsupervised: list[str] = []
    iterator = iter(chunks)
    try:
        for part in iterator:
            for error in part.errors:
                if cfg.on_error == "raise":
                    raise error
                skipped.add(error)
            m = len(part.kept)
            record_index[kept : kept + m] = part.kept
            lengths[kept : kept + m] = part.lengths
            ability[kept : kept + m] = part.ability
            supervised += part.supervised_tokens
            kept += m
            num_unsupervised += part.num_unsupervised
            truncated += part.num_truncated
            unsupervised.extend(part.unsupervised_examples[: 10 - len(unsupervised)])
    finally:
        if hasattr(iterator, "close"):
            iterator.close()
    if kept < n:  # copies only when something was left out
        record_index, lengths, ability = (a[:kept].copy() for a in (record_index, lengths, ability))
    table = _ExampleTable(record_index, lengths, ability, supervised)
    return _Measured(table, num_unsupervised, unsupervised, truncated)


class _BatchBuilder:
    """Builds one host batch from its (global position, row) slots; picklable, so grain workers build batches on
    their own. All records of a batch are read in one call and tokenized in one call (random access to ArrayRecord
    costs far more per call than per record)."""

    def __init__(
        self,
        source: RecordSource,
        template: ChatTemplate,
        table: _ExampleTable,
        plan: RowPlan,
        order: Any,
        cfg: DataConfig,
        global_batch_size: int,
    ):
        self.source = source
        self.template = template
        self.table = table
        self.plan = plan
        self.order = order
        self.mask = cfg.mask
        self.max_len = cfg.max_len
        self.left = (not cfg.packing) and cfg.padding_side == "left"
        self.pad_multiple = 0 if cfg.packing else cfg.pad_to_multiple
        self.buckets = [] if cfg.packing else sorted(cfg.length_buckets)
        self.pad_id = template.pad_id
        self.global_batch = global_batch_size
        self._len_cache: dict[int, int] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_len_cache"] = {}
        return state

    def row_length(self, position: int) -> int:
        """max_len, or (no packing) the longest example of this global batch rounded up to pad_to_multiple or to the
        smallest length bucket that holds it."""
        if not (self.pad_multiple or self.buckets):
            return self.max_len
        batch = position // self.global_batch
        if batch not in self._len_cache:
            if len(self._len_cache) > 64:
                self._len_cache.clear()
            start = batch * self.global_batch
            longest = 1
            for p in range(start, start + self.global_batch):
                row = self.order[p]
                if row < self.plan.num_rows:
                    longest = max(longest, int(self.table.lengths[self.plan.row(row)].sum()))
            self._len_cache[batch] = self.padded_length(longest)
        return self._len_cache[batch]

    def padded_length(self, longest: int) -> int:
        """The row length of a batch whose longest row holds ``longest`` tokens."""
        if self.buckets:
            return next((b for b in self.buckets if b >= longest), self.max_len)
        m = self.pad_multiple
        return -(-longest // m) * m

    def __call__(self, slots: Sequence[tuple[int, int]]) -> dict[str, np.ndarray]:
        shape = (len(slots), self.row_length(slots[0][0]))
        batch = {
            "input_ids": np.full(shape, self.pad_id, np.int32),
            "targets": np.zeros(shape, np.int32),
            "loss_weights": np.zeros(shape, np.float32),
            "segment_ids": np.zeros(shape, np.int32),
            "positions": np.zeros(shape, np.int32),
            "ability_ids": np.full(shape, -1, np.int32),
        }
        rows = [self.plan.row(row) if row < self.plan.num_rows else self.plan.items[:0] for _, row in slots]
        items = np.concatenate(rows)
        if items.size == 0:
            return batch
        records = self.source.__getitems__(self.table.record_index[items])
        encoded = self.template.encode_batch([r.messages for r in records], self.mask)
        k = 0
        for b, row_items in enumerate(rows):
            used = int(self.table.lengths[row_items].sum())
            cursor = shape[1] - used if self.left else 0
            for seg, item in enumerate(row_items, start=1):
                enc, record = encoded[k].truncated(self.max_len), records[k]
                k += 1
                n = len(enc)
                if n != self.table.lengths[item]:
                    raise RuntimeError(
                        f"{_describe(record)}: tokenized to {n} tokens, but {self.table.lengths[item]} "
                        f"in the first pass (the tokenizer or template changed under the pipeline)"
                    )
                end = cursor + n
                batch["input_ids"][b, cursor:end] = enc.input_ids
                batch["targets"][b, cursor : end - 1] = enc.input_ids[1:]
                batch["loss_weights"][b, cursor : end - 1] = enc.loss_mask[1:]
                batch["segment_ids"][b, cursor:end] = seg
                batch["positions"][b, cursor:end] = np.arange(n, dtype=np.int32)
                batch["ability_ids"][b, cursor:end] = self.table.ability[item]
                cursor = end
        return batch


class _DealRows:
    """Position -> row id when an epoch's rows are dealt round-robin over its steps: slot ``j`` of step ``s`` holds
    the ``(j * steps + s)``-th row of the epoch's order, or the empty row id ``rows`` past the last one."""

    def __init__(self, row_ids: Any, rows: int, steps: int, step_rows: int, shuffled: bool):
        self.row_ids, self.rows, self.steps, self.step_rows, self.shuffled = row_ids, rows, steps, step_rows, shuffled

    def __call__(self, position: int) -> int:
        epoch, p = divmod(int(position), self.steps * self.step_rows)
        step, slot = divmod(p, self.step_rows)
        k = slot * self.steps + step
        if k >= self.rows:
            return self.rows
        # a shuffled dataset reshuffles per epoch when indexed past its length
        return int(self.row_ids[epoch * self.rows + k]) if self.shuffled else k


def _position_and_row(position: int, row: int) -> tuple[int, int]:
    return position, int(row)


@dataclass
class TrainData:
    """The training stream: ``iterator`` yields per-host batches; ``dataset`` makes fresh iterators."""

    iterator: Any
    """grain DatasetIterator: next() -> batch dict; get_state()/set_state(); checkpoint with grain.checkpoint."""
    dataset: Any
    """grain IterDataset; ``iter(dataset)`` starts again from the first batch."""
    info: PipelineInfo


@dataclass
class EvalData:
    """Validation batches: iterate ``dataset`` (fresh each time) for one deterministic pass."""

    dataset: Any
    info: PipelineInfo

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.dataset)


def _shard(shard_options: Any) -> tuple[int, int]:
    if shard_options is None:
        import grain

        shard_options = grain.sharding.ShardByJaxProcess()
    index, count = int(shard_options.shard_index), int(shard_options.shard_count)
    if not 0 <= index < count:
        raise PipelineError(f"shard index {index} is not in 0..{count - 1}")
    return index, count


def _load_source(path: Optional[str], cfg: DataConfig, selection: str, key: str):
    if not path:
        raise PipelineError(f"data.{key} is not set: give a data file, a folder of data files or a prepared dataset")
    if is_belle_selection(selection):
        belle = select_belle(
            path,
            selection,
            format=cfg.format,
            seed=cfg.selection_seed,
            on_error=cfg.on_error,
            alpaca_path=cfg.alpaca_path,
        )
        return belle.source, belle.abilities, belle.skipped
    if is_prepared_dataset(path):
        if selection != "all":
            raise PipelineError(
                f"data.selection={selection!r} applies to a DoIT-layout folder; {path} is a prepared "
                f"dataset (prepare the selected records instead, or use selection all)"
            )
        if is_remote(path):  # ArrayRecord's reader opens local files only
            raise PipelineError(
                f"data.{key}={path}: a prepared (ArrayRecord) dataset must be on a local disk or a "
                f"gcsfuse mount of the bucket (JSON Lines data can be read from gs:// directly)"
            )
        source = PreparedRecords(path)
        skipped = SkipReport()
        skipped.seen = len(source)
        return source, source.abilities, skipped
    chosen = select_records(path, selection, format=cfg.format, seed=cfg.selection_seed, on_error=cfg.on_error)
    return InMemoryRecords(chosen.records), sorted({r.ability for r in chosen.records}), chosen.skipped


BATCH_UNITS = ("rows", "examples")


def _check_cfg(cfg: DataConfig, global_batch_size: int, shard_count: int, dealt: bool) -> None:
    cfg.validate()  # DataConfig's rules (max_len, pad_to_multiple, workers, prefetch)
    if dealt:  # rows are dealt over steps and rounded up to a multiple of the processes: any positive count works
        if global_batch_size <= 0:
            raise PipelineError(f"the global batch size must be a positive number of examples, got {global_batch_size}")
    elif global_batch_size <= 0 or global_batch_size % shard_count:
        raise PipelineError(
            f"the global batch size {global_batch_size} must be a positive multiple of the {shard_count} processes"
        )


def _make_tokenizer_and_template(cfg: DataConfig, tokenizer: Optional[Tokenizer]) -> ChatTemplate:
    if tokenizer is None:
        if not cfg.tokenizer:
            raise PipelineError("data.tokenizer is not set: give a SentencePiece .model file or a tokenizer folder")
        tokenizer = load_tokenizer(cfg.tokenizer, template_backend(cfg.template))
    return make_template(cfg.template, tokenizer)


def _build(
    cfg: DataConfig,
    *,
    path: Optional[str],
    key: str,
    selection: str,
    global_batch_size: int,
    epochs: int,
    seed: Optional[int],
    shard_options: Any,
    tokenizer: Optional[Tokenizer],
    ability_names: Optional[Sequence[str]],
    manifest_path: Optional[Union[str, Path]],
    batch_unit: str = "rows",
    row_multiple: int = 1,
):
    """The pipeline of ``data.{key}``: (grain IterDataset of host batches, PipelineInfo)."""
    if batch_unit not in BATCH_UNITS:
        raise PipelineError(f"train.batch_unit must be one of {', '.join(BATCH_UNITS)}, got {batch_unit!r}")
    if row_multiple < 1:
        raise PipelineError(f"row_multiple must be at least 1, got {row_multiple}")
    dealt = batch_unit == "examples" and cfg.packing
    shard_index, shard_count = _shard(shard_options)
    _check_cfg(cfg, global_batch_size, shard_count, dealt)
    if epochs < 1:
        raise PipelineError(f"train.epochs must be at least 1, got {epochs}")
    template = _make_tokenizer_and_template(cfg, tokenizer)
    source, abilities, skipped = _load_source(path, cfg, selection, key)
    names = tuple(ability_names) if ability_names is not None else tuple(abilities)
    missing = sorted(set(abilities) - set(names))
    if missing:
        raise PipelineError(f"abilities {missing} of data.{key} are not in the given ability names {list(names)}")
    measured = _measure(source, template, cfg, {a: i for i, a in enumerate(names)}, skipped)
    table = measured.table
    if len(table.lengths) == 0:
        raise PipelineError(
            f"data.{key}={path}: no example with anything to learn from (of {len(source)} records, "
            f"{measured.num_unsupervised} had nothing supervised in their first {cfg.max_len} tokens, "
            f"{skipped.skipped} were invalid)"
        )
    rows = _order_rows(
        cfg,
        table,
        key=key,
        seed=seed,
        epochs=epochs,
        global_batch_size=global_batch_size,
        dealt=dealt,
        row_multiple=row_multiple,
        shard_count=shard_count,
    )
    builder = _BatchBuilder(source, template, table, rows.plan, rows.order, cfg, rows.global_batch_size)
    iter_ds = _host_batches(rows, builder, cfg, shard_index, shard_count)
    info = PipelineInfo(
        ability_names=names,
        selection=f"{selection} of prepared:{path}" if is_prepared_dataset(path) else selection,
        num_records=len(source),
        num_examples=len(table.lengths),
        examples_per_ability={a: int(c) for a, c in zip(names, np.bincount(table.ability, minlength=len(names)))},
        num_unsupervised=measured.num_unsupervised,
        unsupervised_examples=tuple(measured.unsupervised_examples),
        num_truncated=measured.num_truncated,
        epochs=epochs,
        shard_index=shard_index,
        shard_count=shard_count,
        skipped=skipped,
        batch_unit=batch_unit,
        examples_per_step=global_batch_size if batch_unit == "examples" else None,
        **_row_figures(rows, builder, table, cfg, epochs, shard_count),
        **_tokenizer_figures(template.tokenizer),
    )
    _warn_left_out(measured, skipped, cfg.max_len)
    if manifest_path is not None:
        write_manifest(manifest_path, _kept_records(source, table))
    return iter_ds, info


@dataclass
class _RowOrder:
    """The row plan and the order its rows are fed in over all epochs (position -> row id; ``rows`` is the id of an
    empty row)."""

    plan: RowPlan
    order: Any  # grain MapDataset of row ids, rows_padded per epoch
    rows: int
    """Rows with data per epoch."""
    steps_per_epoch: int
    global_batch_size: int
    """Row slots per step over all processes."""
    rows_padded: int
    """Row slots per epoch: ``steps_per_epoch * global_batch_size``."""


def _order_rows(
    cfg: DataConfig,
    table: _ExampleTable,
    *,
    key: str,
    seed: Optional[int],
    epochs: int,
    global_batch_size: int,
    dealt: bool,
    row_multiple: int,
    shard_count: int,
) -> _RowOrder:
    """Lay the examples into rows (packed or one per row) and fix the order of the rows over all epochs: shuffled
    every epoch when ``seed`` is set, each epoch completed with empty rows to whole steps, or (``dealt``) dealt
    round-robin over the steps an epoch counted in examples has."""
    import grain

    n = len(table.lengths)
    shuffle = seed is not None
    _release_free_memory()
    if cfg.packing:
        plan = pack_rows(table.lengths, cfg.max_len, seed=seed if shuffle else None)
        _release_free_memory()
    else:
        plan = one_per_row(n)
    rows = plan.num_rows
    row_ids = grain.MapDataset.range(rows)
    if shuffle:
        row_ids = row_ids.shuffle(seed=int(seed) % 2**32)
    if dealt:
        steps_per_epoch = -(-n // global_batch_size)
        if rows < steps_per_epoch:
            raise PipelineError(
                f"data.{key}: packing puts {n} examples into {rows} rows, fewer than the {steps_per_epoch} steps of "
                f"an epoch counted in examples ({global_batch_size} per step); lower the global batch, turn packing "
                f"off (data.packing=false) or count the batch in rows (train.batch_unit=rows)"
            )
        multiple = math.lcm(row_multiple, shard_count)
        global_batch_size = -(-(-(-rows // steps_per_epoch)) // multiple) * multiple  # row slots per step
        rows_padded = steps_per_epoch * global_batch_size
        order = grain.MapDataset.range(rows_padded * epochs).map(
            _DealRows(row_ids, rows, steps_per_epoch, global_batch_size, shuffle)
        )
    else:
        steps_per_epoch = -(-rows // global_batch_size)
        rows_padded = steps_per_epoch * global_batch_size
        parts = [row_ids] + ([grain.MapDataset.range(rows, rows_padded)] if rows_padded > rows else [])
        order = grain.MapDataset.concatenate(parts) if len(parts) > 1 else parts[0]
        order = order.repeat(epochs) if epochs > 1 else order
    return _RowOrder(plan, order, rows, steps_per_epoch, global_batch_size, rows_padded)


def _host_batches(rows: _RowOrder, builder: _BatchBuilder, cfg: DataConfig, shard_index: int, shard_count: int) -> Any:
    """This host's batches (every ``shard_count``-th row slot from ``shard_index``), built on demand and prefetched,
    in worker processes when ``data.num_workers`` is set."""
    import grain

    ds = rows.order.map_with_index(_position_and_row)
    ds = ds[shard_index::shard_count] if shard_count > 1 else ds
    ds = ds.batch(rows.global_batch_size // shard_count, batch_fn=list).map(builder)
    iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=cfg.prefetch))
    if cfg.num_workers > 0:
        iter_ds = prefetch_in_workers(iter_ds, cfg.num_workers, per_worker_buffer_size=cfg.prefetch)
    return iter_ds


def _row_figures(
    rows: _RowOrder, builder: _BatchBuilder, table: _ExampleTable, cfg: DataConfig, epochs: int, shard_count: int
) -> dict[str, Any]:
    """The PipelineInfo fields about rows, steps and token slots."""
    tokens = int(table.lengths.sum(dtype=np.int64))
    if cfg.packing or not (cfg.pad_to_multiple or cfg.length_buckets):
        slots = rows.rows_padded * cfg.max_len
        per_length = {cfg.max_len: rows.steps_per_epoch}
    else:  # batch lengths vary with the shuffle; count the slots of the first epoch
        batch = rows.global_batch_size
        lengths = [builder.row_length(b * batch) for b in range(rows.steps_per_epoch)]
        slots = sum(lengths) * batch
        per_length = dict(sorted(collections.Counter(lengths).items()))
    return dict(
        rows_per_epoch=rows.rows,
        steps_per_epoch=rows.steps_per_epoch,
        total_steps=rows.steps_per_epoch * epochs,
        global_batch_size=rows.global_batch_size,
        host_batch_size=rows.global_batch_size // shard_count,
        max_len=cfg.max_len,
        packing=cfg.packing,
        tokens_per_epoch=tokens,
        supervised_tokens_per_epoch=table.supervised_tokens,
        packing_efficiency=tokens / slots if slots else 0.0,
        batches_per_length=per_length,
    )


def _tokenizer_figures(tokenizer: Tokenizer) -> dict[str, Any]:
    """The PipelineInfo fields about the vocabulary."""
    return dict(
        special_token_ids=tokenizer.special_token_ids(),
        vocab_size=tokenizer.vocab_size,
        added_tokens=dict(tokenizer.added_tokens),
    )


def _warn_left_out(measured: _Measured, skipped: SkipReport, max_len: int) -> None:
    if measured.num_unsupervised:
        logger.warning(
            "left out %d examples with nothing supervised in their first %d tokens: %s",
            measured.num_unsupervised,
            max_len,
            ", ".join(measured.unsupervised_examples),
        )
    if skipped.skipped or skipped.unreadable:
        logger.warning("%s", skipped.summary())


def _kept_records(source: RecordSource, table: _ExampleTable) -> Iterator[Record]:
    step = 1024
    for start in range(0, len(table.record_index), step):
        yield from source.__getitems__(table.record_index[start : start + step])


def _release_free_memory() -> None:
    """Return freed heap pages to the OS after the first pass (glibc keeps them otherwise, and a long training run
    would carry the first pass's peak for its whole life). Best effort: a no-op without glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def build_train_pipeline(
    data_cfg: DataConfig,
    *,
    global_batch_size: int,
    epochs: int = 1,
    seed: Optional[int] = None,
    shard_options: Any = None,
    tokenizer: Optional[Tokenizer] = None,
    manifest_path: Optional[Union[str, Path]] = None,
    batch_unit: str = "rows",
    row_multiple: int = 1,
) -> TrainData:
    """The training stream of ``data_cfg`` (``data.path`` with ``data.selection``).

    Args:
      global_batch_size: rows (``batch_unit="rows"``) or examples (``"examples"``) per step over all processes;
        each process yields ``info.global_batch_size / count`` rows.
      batch_unit: what ``global_batch_size`` counts (see the module docstring).
      row_multiple: with packing and ``batch_unit="examples"``, the rows per step are rounded up to a multiple of
        this (and of the process count).
      epochs: passes over the data; the stream ends after ``info.total_steps`` batches.
      seed: shuffle seed (row order each epoch, and the packing order); None uses ``data.shuffle_seed``.
      shard_options: a ``grain.sharding.ShardOptions``; default ``ShardByJaxProcess()``.
      tokenizer: an already loaded tokenizer (the template's special tokens are added to it); default loads
        ``data.tokenizer``.
      manifest_path: when given, the id, ability, file and line of every record trained on are written there
        (JSON Lines); give it on one process only.

    Raises DataError (invalid record, ``on_error="raise"``), SelectionError, PipelineError or TokenizerError with
    messages naming the bad file, line or setting.
    """
    iter_ds, info = _build(
        data_cfg,
        path=data_cfg.path,
        key="path",
        selection=data_cfg.selection,
        global_batch_size=global_batch_size,
        epochs=epochs,
        seed=data_cfg.shuffle_seed if seed is None else seed,
        shard_options=shard_options,
        tokenizer=tokenizer,
        ability_names=None,
        manifest_path=manifest_path,
        batch_unit=batch_unit,
        row_multiple=row_multiple,
    )
    return TrainData(iter(iter_ds), iter_ds, info)


def epoch_plan(
    data_cfg: DataConfig, *, global_batch_size: int, batch_unit: str, epochs: int = 1, row_multiple: int = 1
) -> str:
    """``jaxtune info`` on a config with data: the training stream's plan (examples, rows, steps per epoch) as
    configured, and with packing the steps per epoch the other batch unit would give. Reads and tokenizes the data
    once; builds no batch."""
    import grain

    one = grain.sharding.ShardOptions(shard_index=0, shard_count=1)
    info = build_train_pipeline(
        data_cfg,
        global_batch_size=global_batch_size,
        epochs=epochs,
        shard_options=one,
        batch_unit=batch_unit,
        row_multiple=row_multiple,
    ).info
    lines = [info.summary()]
    if data_cfg.packing:
        other = "rows" if batch_unit == "examples" else "examples"
        try:
            alt = build_train_pipeline(
                data_cfg,
                global_batch_size=global_batch_size,
                epochs=epochs,
                shard_options=one,
                batch_unit=other,
                row_multiple=row_multiple,
            ).info
            lines.append(
                f"  with train.batch_unit={other}: {alt.steps_per_epoch} steps/epoch of {alt.global_batch_size} rows"
            )
        except PipelineError as e:
            lines.append(f"  with train.batch_unit={other}: {e}")
    lines.append(
        f"steps per epoch: {info.steps_per_epoch} (train.batch_unit={batch_unit}, "
        f"{'packed' if data_cfg.packing else 'one example per row'})"
    )
    return "\n".join(lines)


def build_eval_pipeline(
    data_cfg: DataConfig,
    *,
    global_batch_size: int,
    shard_options: Any = None,
    tokenizer: Optional[Tokenizer] = None,
    ability_names: Optional[Sequence[str]] = None,
) -> EvalData:
    """One deterministic pass over ``data.valid_path`` (every record, file order, no shuffle), batched like the
    training stream; ``ability_ids`` per token give the loss per ability. ``ability_names`` (e.g. the training
    stream's) fixes the ability indices; by default the validation abilities, sorted."""
    iter_ds, info = _build(
        data_cfg,
        path=data_cfg.valid_path,
        key="valid_path",
        selection="all",
        global_batch_size=global_batch_size,
        epochs=1,
        seed=None,
        shard_options=shard_options,
        tokenizer=tokenizer,
        ability_names=ability_names,
        manifest_path=None,
    )
    return EvalData(iter_ds, info)
