"""The fine-tuning run: ``train(cfg)`` checks the config and its layout (:mod:`jaxtune.train.preflight`) and
builds the mesh, the data stream, the train state's layout and the checkpoint managers (:func:`setup_train_loop`),
then starts the train state (fresh, from ``checkpoint.init_from``, or resumed) and loops over steps with logging,
validation loss per ability, asynchronous Orbax checkpoints, a guard against runs of non-finite steps and a clean
stop on SIGTERM (:func:`train_loop`).

Every process runs the same loop on its own shard of the data; only process 0 writes files outside Orbax.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from jaxtune.checkpoint.epochs import EpochCheckpointManager
from jaxtune.checkpoint.errors import CheckpointError
from jaxtune.checkpoint.layout import COMPLETED_FILE, DAMAGED_DIR
from jaxtune.checkpoint.lease import RunLeaseError, hold_run_lease
from jaxtune.checkpoint.params import expected_param_shapes, load_model_config, load_params
from jaxtune.checkpoint.storage import bound_store_retries, intact_steps, storage_boundary
from jaxtune.checkpoint.train_state import TrainCheckpointManager, saved_run_config
from jaxtune.config.loading import config_to_dict, dump_config
from jaxtune.config.schema import Config, ConfigError, max_len_problem
from jaxtune.data.host_memory import host_memory_problem
from jaxtune.errors import EXIT_OK, EXIT_RESUMABLE, JaxtuneError
from jaxtune.models.stats import model_info
from jaxtune.paths import as_path, write_text_atomic
from jaxtune.runtime.compiles import CompileCounter, run_cache_dir, use_compilation_cache
from jaxtune.sharding import (
    abstract_model,
    batch_geometry,
    check_batch_rows,
    global_batch,
    init_params,
    startup_line,
    validate_batch_layout,
    validate_param_layout,
    with_shardings,
)
from jaxtune.train.config_guard import archive_config, check_resume_config, record_changes
from jaxtune.train.heartbeat import Heartbeat
from jaxtune.train.metrics import MetricsWriter, ThroughputMeter, TrainMetrics, peak_flops_per_device, progress_line
from jaxtune.train.optim import build_optimizer
from jaxtune.train.preflight import check_run, vocabulary_problem
from jaxtune.train.step import (
    TrainState,
    init_train_state,
    make_eval_step,
    make_train_step,
    new_train_state,
    train_state_shardings,
)

TRAIN_KEYS = ("input_ids", "targets", "loss_weights", "segment_ids", "positions")
EVAL_KEYS = TRAIN_KEYS + ("ability_ids",)


class TrainingDivergedError(JaxtuneError):
    """Too many consecutive steps had a non-finite loss or gradient; the run stopped with its checkpoints intact."""


class RunStoppedEarly(JaxtuneError):
    """A run stopped on SIGTERM or Ctrl-C with its state saved (a preemption), inside a command that needs it
    finished (the sweep): the CLI exits with :data:`jaxtune.errors.EXIT_RESUMABLE`, run the same command again."""

    exit_code = EXIT_RESUMABLE


@dataclass
class RunData:
    """What the loop consumes: this process's rows of every global batch, and optional validation batches.

    iterator: a grain iterator (``next()`` -> dict of (B_local, L) numpy arrays with the keys of
      :data:`EVAL_KEYS`; ``get_state``/``set_state``) over all epochs, checkpointed with the train state.
    steps_per_epoch: global batches per epoch.
    ability_names: ``ability_ids`` index into these.
    valid: re-iterable validation batches (each ``iter()`` one full pass, this process's rows); None: no
      evaluation loss.
    tokenizer_src, added_tokens: the tokenizer trained with, copied beside each checkpoint.
    summary: a description printed at the start (process 0).
    """

    iterator: Any
    steps_per_epoch: int
    ability_names: Sequence[str]
    valid: Optional[Iterable[Mapping[str, np.ndarray]]] = None
    tokenizer_src: Optional[str] = None
    added_tokens: Mapping[str, int] = field(default_factory=dict)
    summary: str = ""
    rows_per_step: Optional[int] = None
    """Rows of a global batch; None: ``train.global_batch_size`` (it differs with packing and
    ``train.batch_unit: examples``)."""


@dataclass
class TrainResult:
    """How a run ended."""

    run_dir: str
    step: int
    """Optimizer steps done (the last checkpoint's step)."""
    total_steps: int
    stopped: str
    """``completed`` or ``preempted`` (SIGTERM: saved, resumable)."""
    resumed_from: Optional[int]
    last_loss: Optional[float]
    """Mean training loss of the last logging interval."""
    last_eval: dict[str, float]
    """The last evaluation losses (``loss`` and ``loss/<ability>``), empty without validation data."""
    skipped_steps: int
    checkpoint_steps: list[int]
    """Steps of the full train-state checkpoints kept in run_dir/checkpoints."""
    epoch_checkpoints: list[int] = field(default_factory=list)
    """Epochs with a params-only checkpoint in run_dir/epochs."""
    compiles: str = ""
    """The run's compiles per program (:meth:`jaxtune.runtime.compiles.CompileCounter.summary`)."""

    @property
    def exit_code(self) -> int:
        """The ``jaxtune train`` exit status of this ending: 0 completed, 75 preempted (state saved, run again)."""
        return EXIT_OK if self.stopped == "completed" else EXIT_RESUMABLE

    def summary(self) -> str:
        how = "finished" if self.stopped == "completed" else "stopped on SIGTERM or Ctrl-C (resumable)"
        lines = [f"training {how} at step {self.step}/{self.total_steps}; run directory {self.run_dir}"]
        if self.resumed_from is not None:
            lines.append(f"  resumed from step {self.resumed_from}")
        if self.last_loss is not None:
            lines.append(f"  last training loss {self.last_loss:.4f}")
        if self.last_eval:
            lines.append(f"  last evaluation loss {self.last_eval.get('loss', float('nan')):.4f}")
        if self.skipped_steps:
            lines.append(f"  {self.skipped_steps} steps skipped (non-finite loss or gradient)")
        lines.append(f"  checkpoints at steps {self.checkpoint_steps} in {as_path(self.run_dir) / 'checkpoints'}")
        if self.compiles:
            lines.append(f"  {self.compiles}")
        if self.epoch_checkpoints:
            lines.append(
                f"  epoch checkpoints (params only) {self.epoch_checkpoints} in {as_path(self.run_dir) / 'epochs'}"
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------


def pipeline_data(cfg: Config, eval_batch_size: int, row_multiple: int = 1) -> RunData:
    """The training stream (and validation batches when ``data.valid_path`` is set) of ``jaxtune.data.pipeline``,
    sharded by JAX process. ``row_multiple``: what the rows of a step must divide into (packing with
    ``train.batch_unit: examples`` rounds the rows per step up to it)."""
    from jaxtune.data.pipeline import build_eval_pipeline, build_train_pipeline

    problem = max_len_problem(cfg) or host_memory_problem(cfg, jax.process_count())
    if problem:  # before any row of that length is built
        raise ConfigError(problem)

    def build(epochs: int):
        return build_train_pipeline(
            cfg.data,
            global_batch_size=cfg.train.global_batch_size,
            epochs=epochs,
            manifest_path=as_path(cfg.run_dir) / "manifest.jsonl" if jax.process_index() == 0 else None,
            batch_unit=cfg.train.batch_unit,
            row_multiple=row_multiple,
        )

    stream = build(cfg.train.epochs)
    info = stream.info
    if cfg.train.max_steps is not None and cfg.train.max_steps > info.total_steps:
        stream = build(math.ceil(cfg.train.max_steps / info.steps_per_epoch))  # enough epochs for max_steps
        info = stream.info
    problem = vocabulary_problem(cfg, info.vocab_size)
    if problem:
        raise ConfigError(problem)
    valid = None
    if cfg.data.valid_path:
        valid = build_eval_pipeline(cfg.data, global_batch_size=eval_batch_size, ability_names=info.ability_names)
    return RunData(
        iterator=stream.iterator,
        steps_per_epoch=info.steps_per_epoch,
        ability_names=info.ability_names,
        valid=valid,
        tokenizer_src=cfg.data.tokenizer,
        added_tokens=info.added_tokens,
        summary=info.summary(),
        rows_per_step=info.global_batch_size,
    )


def _check_batch(local: Mapping[str, np.ndarray], keys: Sequence[str], rows: int, what: str) -> dict:
    missing = [k for k in keys if k not in local]
    if missing:
        raise JaxtuneError(f"{what} batch lacks {missing} (has {sorted(local)})")
    shapes = {k: np.shape(local[k]) for k in keys}
    if len(set(shapes.values())) != 1 or len(shapes["input_ids"]) != 2:
        raise JaxtuneError(f"{what} batch arrays must all be (rows, length), got {shapes}")
    if shapes["input_ids"][0] != rows:
        raise JaxtuneError(
            f"{what} batch has {shapes['input_ids'][0]} rows on process {jax.process_index()}, expected {rows} "
            f"(global batch / {jax.process_count()} processes)"
        )
    return {k: local[k] for k in keys}


# --------------------------------------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------------------------------------


class _StopRequest:
    """Turns SIGTERM (preemption) and a first Ctrl-C into a flag the loop checks between steps (every process agrees
    on it), so the run saves and exits cleanly; a second Ctrl-C aborts at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}
        self._depth = 0  # entered by train() for the whole start-up, and again by the step loop

    def __enter__(self) -> "_StopRequest":
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT:
            if self.requested:
                raise KeyboardInterrupt
            print(
                "Ctrl-C: finishing this step, saving a checkpoint, then exiting (Ctrl-C again to abort)",
                file=sys.stderr,
                flush=True,
            )
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)
            self._previous.clear()

    def agreed(self) -> bool:
        """Whether any process was asked to stop (a collective: every process must call it at the same step)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
        return bool(np.any(flags))


# --------------------------------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Layout:
    mesh: Mesh
    graphdef: Any
    shapes: Any
    axes: Any
    state_shardings: TrainState
    tx: optax.GradientTransformation
    schedule: optax.Schedule

    def abstract_params(self) -> Any:
        return with_shardings(self.shapes, self.state_shardings.params)

    def abstract_train_fields(self) -> dict:
        shapes = jax.eval_shape(lambda p: new_train_state(p, self.tx, 0), self.shapes)
        return with_shardings(shapes.train_fields(), self.state_shardings.train_fields())


def _layout(cfg: Config, mesh: Mesh, total_steps: int) -> _Layout:
    """Model, optimizer and every sharding of the train state; raises LayoutError for an impossible layout."""
    graphdef, shapes, axes = abstract_model(cfg.model, cfg.train.seed)
    validate_param_layout(shapes, axes, mesh)
    tx, schedule = build_optimizer(cfg.optim, total_steps)
    return _Layout(mesh, graphdef, shapes, axes, train_state_shardings(tx, shapes, axes, mesh), tx, schedule)


def _start_state(cfg: Config, layout: _Layout) -> TrainState:
    """A step-0 state: parameters from checkpoint.init_from or freshly initialised, all born sharded."""
    if cfg.checkpoint.init_from:
        source = load_model_config(cfg.checkpoint.init_from)
        if expected_param_shapes(source) != expected_param_shapes(cfg.model):
            raise ConfigError(
                f"checkpoint.init_from={cfg.checkpoint.init_from}: its parameters (hidden_size {source.hidden_size}, "
                f"{source.num_layers} layers, {source.num_heads} heads, vocabulary {source.vocab_size} padded to "
                f"{source.padded_vocab_size()}) do not match the model config (hidden_size {cfg.model.hidden_size}, "
                f"{cfg.model.num_layers} layers, {cfg.model.num_heads} heads, vocabulary {cfg.model.vocab_size} "
                f"padded to {cfg.model.padded_vocab_size()})"
            )
        _, params = load_params(
            cfg.checkpoint.init_from, shardings=layout.state_shardings.params, dtype=cfg.model.param_dtype
        )
    else:
        _, params = init_params(cfg.model, layout.mesh, cfg.train.seed)
    return init_train_state(params, layout.tx, cfg.train.seed, layout.state_shardings)


# --------------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------------


def total_steps_of(cfg: Config, steps_per_epoch: int) -> int:
    """Optimizer steps of the run: train.max_steps when set, else epochs x steps per epoch."""
    if cfg.train.max_steps is not None:  # both at least 1 (TrainConfig's rules)
        return cfg.train.max_steps
    return cfg.train.epochs * steps_per_epoch


def train(cfg: Config, data: Optional[RunData] = None, *, print_fn: Callable[[str], None] = print) -> TrainResult:
    """Fine-tune ``cfg.model`` on ``data`` (default: the pipeline of ``cfg.data``), sharded over every device of
    every process; see the module docstring. Returns when the run completes or stops on SIGTERM (after saving);
    raises TrainingDivergedError after ``train.max_consecutive_bad_steps`` non-finite steps in a row.

    SIGTERM and Ctrl-C are caught from here on: one arriving during start-up (data, restore, compilation) stops the
    run before its first step, as cleanly as one arriving later."""
    check_run(cfg)  # a refused config writes nothing, not even the lease (setup_train_loop's own check repeats it)
    bound_store_retries(cfg.checkpoint.store_retries)
    with (
        _StopRequest() as stop_request,
        hold_run_lease(cfg.run_dir, cfg.checkpoint) as lease,
        storage_boundary(str(cfg.run_dir), lambda: intact_steps(cfg.run_dir)),
    ):
        # From the start: data, restore and layout may take minutes, which a supervisor must not take for a hang.
        heartbeat = Heartbeat(cfg.run_dir, enabled=jax.process_index() == 0)
        heartbeat.beat("starting")
        try:
            return _train(cfg, data, print_fn, stop_request, lease, heartbeat)
        finally:
            heartbeat.close()  # after an exception: the last phase stays, and ages


@dataclass
class TrainSetup:
    """What the step loop of one ``train`` call runs with, built before any step (:func:`setup_train_loop`)."""

    cfg: Config
    data: RunData
    layout: _Layout
    total_steps: int
    epoch_steps: list[int]
    writer: MetricsWriter
    manager: TrainCheckpointManager
    epochs: Optional[EpochCheckpointManager]
    saved: Optional[tuple[int, dict]]
    """(step, config) of the run being resumed, None for a fresh run."""
    changes: dict
    """Keys whose values changed since the saved run (``checkpoint.allow_config_change``)."""

    def close(self) -> None:
        self.manager.close()
        if self.epochs is not None:
            self.epochs.close()
        self.writer.close()


def _train(
    cfg: Config,
    data: Optional[RunData],
    print_fn: Callable[[str], None],
    stop_request: "_StopRequest",
    lease: Any,
    heartbeat: Heartbeat,
) -> TrainResult:
    run = setup_train_loop(cfg, data, print_fn)
    try:
        return train_loop(run, stop_request, lease, heartbeat)
    finally:
        run.close()


def setup_train_loop(cfg: Config, data: Optional[RunData], print_fn: Callable[[str], None]) -> TrainSetup:
    """Everything before the first step: the checks of :func:`jaxtune.train.preflight.check_run` (the config's
    values and `jaxtune validate`'s layout checks, on abstract shapes, before any data is read or anything
    compiled), the mesh, the comparison with a resumed run's config, the data, the layout of the train state, and
    the metrics writer and checkpoint managers."""
    tc = cfg.train
    mesh = check_run(cfg)
    print(startup_line(mesh), file=sys.stderr, flush=True)  # every process: the supervisor reads each worker's log
    use_compilation_cache(run_cache_dir(tc.compilation_cache_dir, cfg.run_dir), tc.compilation_cache_min_secs)
    # A resume must apply its saved data position and schedule to the data and batch they belong to: compare
    # before anything is built or written (the manifest, config.yaml).
    saved = saved_run_config(cfg.run_dir) if cfg.checkpoint.resume == "auto" else None
    changes = (
        {}
        if saved is None
        else check_resume_config(
            saved[0], saved[1], config_to_dict(cfg), cfg.checkpoint.allow_config_change, cfg.run_dir
        )
    )
    geometry = batch_geometry(tc, mesh, jax.process_count(), packing=cfg.data.packing)
    if data is None:
        data = pipeline_data(cfg, eval_batch_size=geometry.micro_rows, row_multiple=geometry.row_multiple)
    if data.rows_per_step is not None and data.rows_per_step != tc.global_batch_size:
        validate_batch_layout(data.rows_per_step, tc.microbatches, mesh, jax.process_count())
    if data.steps_per_epoch <= 0:
        raise JaxtuneError(f"the data has {data.steps_per_epoch} steps per epoch")
    total_steps = total_steps_of(cfg, data.steps_per_epoch)
    layout = _layout(cfg, mesh, total_steps)
    epoch_steps = list(range(data.steps_per_epoch, total_steps + 1, data.steps_per_epoch))
    if not cfg.checkpoint.keep_train_state_when_done and not (
        cfg.checkpoint.keep_epoch_checkpoints and total_steps in epoch_steps
    ):
        raise ConfigError(
            "checkpoint.keep_train_state_when_done=false deletes the full train states of a finished run, so the "
            "final parameters must live in an epoch checkpoint: it needs checkpoint.keep_epoch_checkpoints=true and "
            f"a run of whole epochs (total steps {total_steps}, {data.steps_per_epoch} per epoch)"
        )
    writer = MetricsWriter(cfg.run_dir, enabled=jax.process_index() == 0, print_fn=print_fn)
    manager = TrainCheckpointManager(
        cfg.run_dir,
        cfg.checkpoint,
        model_cfg=cfg.model,
        tokenizer_src=data.tokenizer_src,
        added_tokens=data.added_tokens,
    )
    epochs = None
    if cfg.checkpoint.keep_epoch_checkpoints:
        epochs = EpochCheckpointManager(
            cfg.run_dir,
            model_cfg=cfg.model,
            dtype=cfg.checkpoint.epoch_dtype or cfg.model.compute_dtype,
            async_save=cfg.checkpoint.async_save,
            tokenizer_src=data.tokenizer_src,
            added_tokens=data.added_tokens,
        )
    return TrainSetup(cfg, data, layout, total_steps, epoch_steps, writer, manager, epochs, saved, changes)


def train_loop(
    run: TrainSetup, stop_request: "_StopRequest", lease: Any = None, heartbeat: Optional[Heartbeat] = None
) -> TrainResult:
    """Start or resume the run set up by :func:`setup_train_loop` and step until it completes or is stopped; the
    caller closes ``run``. ``lease``: the run directory's (:mod:`jaxtune.checkpoint.lease`), checked before each
    save; ``heartbeat``: RUN_DIR/heartbeat.json's writer (:mod:`jaxtune.train.heartbeat`; None: none written)."""
    cfg, data, writer, manager, epochs = run.cfg, run.data, run.writer, run.manager, run.epochs
    if data.summary:
        writer.message(data.summary)
    finished = _finished_run(cfg, manager, run.total_steps)
    if finished is not None:
        writer.message(
            f"the run in {cfg.run_dir} is finished ({COMPLETED_FILE}, train states deleted): nothing to train"
        )
        if heartbeat is not None:
            heartbeat.close("done")
        return finished
    heartbeat = heartbeat or Heartbeat(cfg.run_dir, enabled=False)
    heartbeat.total_steps = run.total_steps
    loop = _RunLoop(
        cfg, data, run.layout, manager, writer, run.total_steps, run.epoch_steps, stop_request, epochs, lease, heartbeat
    )
    return _start_and_run(run, loop, heartbeat)


def _start_and_run(run: TrainSetup, loop: "_RunLoop", heartbeat: Heartbeat) -> TrainResult:
    cfg, writer, manager, epochs = run.cfg, run.writer, run.manager, run.epochs
    resumed_from = loop.start()
    if jax.process_index() == 0:  # once the start is accepted (resume or not): a refused one changes nothing
        as_path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        heartbeat.beat(step=loop.step)  # the step resumed from
        if loop.step < run.total_steps:  # a finished run continued (more epochs or steps) is no longer complete
            (as_path(cfg.run_dir) / COMPLETED_FILE).unlink(missing_ok=True)
        archived = archive_config(cfg.run_dir, dump_config(cfg))
        if run.changes:
            record_changes(cfg.run_dir, run.saved[0], archived, run.changes)
            writer.message(
                f"checkpoint.allow_config_change: resuming from step {run.saved[0]} with changed "
                f"{', '.join(f'{k} ({old!r} -> {new!r})' for k, (old, new) in run.changes.items())}; "
                f"recorded in {as_path(cfg.run_dir) / 'configs'}"
            )
    with loop.compiles:
        stopped = loop.run()
    heartbeat.beat("saving")
    manager.wait_until_finished()
    if epochs is not None:
        epochs.wait_until_finished()
    if stopped == "completed":
        _mark_completed(cfg, manager, epochs, loop.step, run.total_steps, writer)
    heartbeat.close("done" if stopped == "completed" else "preempted")
    return TrainResult(
        run_dir=str(cfg.run_dir),
        step=loop.step,
        total_steps=run.total_steps,
        stopped=stopped,
        resumed_from=resumed_from,
        last_loss=loop.last_loss,
        last_eval=loop.last_eval,
        skipped_steps=int(jax.device_get(loop.state.skipped_steps)),
        checkpoint_steps=manager.all_steps(),
        epoch_checkpoints=[] if epochs is None else epochs.all_epochs(),
        compiles=loop.compiles.summary(),
    )


def _finished_run(cfg: Config, manager: TrainCheckpointManager, total_steps: int) -> Optional[TrainResult]:
    """The result of a run that completed and deleted its train states (checkpoint.keep_train_state_when_done),
    or None when there is a run to start or resume."""
    done = as_path(cfg.run_dir) / COMPLETED_FILE
    if cfg.checkpoint.resume != "auto" or manager.all_steps() or not done.is_file():
        return None
    record = json.loads(done.read_text(encoding="utf-8"))
    if record.get("total_steps") != total_steps:
        raise JaxtuneError(
            f"{done}: the run finished at step {record.get('total_steps')} and deleted its train states, so it cannot "
            f"continue to {total_steps} steps; choose another run_dir"
        )
    return TrainResult(
        run_dir=str(cfg.run_dir),
        step=record["step"],
        total_steps=total_steps,
        stopped="completed",
        resumed_from=record["step"],
        last_loss=None,
        last_eval={},
        skipped_steps=record.get("skipped_steps", 0),
        checkpoint_steps=[],
        epoch_checkpoints=list(record.get("epoch_checkpoints", [])),
    )


def _mark_completed(
    cfg: Config,
    manager: TrainCheckpointManager,
    epochs: Optional[EpochCheckpointManager],
    step: int,
    total_steps: int,
    writer: MetricsWriter,
) -> None:
    """Write RUN_DIR/completed.json once every checkpoint is committed (whatever keep_train_state_when_done says:
    supervisors and the sweep read it); with keep_train_state_when_done=false, then delete the full train states."""
    record = {
        "step": step,
        "total_steps": total_steps,
        "epoch_checkpoints": [] if epochs is None else epochs.all_epochs(),
        "time": round(time.time(), 3),
    }
    if jax.process_index() == 0:  # written before anything is deleted: a crash in between leaves a finished run
        write_text_atomic(as_path(cfg.run_dir) / COMPLETED_FILE, json.dumps(record) + "\n")
    if cfg.checkpoint.keep_train_state_when_done:
        return
    manager.delete_all()
    writer.message(
        f"run complete: deleted the full train states in {manager.directory} "
        f"(checkpoint.keep_train_state_when_done=false); the epoch checkpoints remain"
    )


class _RunLoop:
    """The step loop of one ``train`` call, with its host-side bookkeeping."""

    def __init__(
        self,
        cfg: Config,
        data: RunData,
        layout: _Layout,
        manager: TrainCheckpointManager,
        writer: MetricsWriter,
        total_steps: int,
        epoch_steps: Sequence[int],
        stop_request: _StopRequest,
        epochs: Optional[EpochCheckpointManager] = None,
        lease: Any = None,
        heartbeat: Optional[Heartbeat] = None,
    ):
        self.cfg, self.tc, self.data, self.layout = cfg, cfg.train, data, layout
        self.heartbeat = heartbeat or Heartbeat(cfg.run_dir, total_steps, enabled=False)
        self.lease = lease  # RUN_DIR/lock, held by process 0 (None elsewhere)
        self.stop_request = stop_request
        self.manager, self.writer, self.total_steps = manager, writer, total_steps
        self.epochs = epochs
        self.mesh = layout.mesh
        self.config_dict = config_to_dict(cfg)
        self.epoch_ends = set(epoch_steps)
        self.rows_per_step = data.rows_per_step or cfg.train.global_batch_size
        self.local_rows = self.rows_per_step // jax.process_count()
        self.meter = ThroughputMeter(_peak_flops_total(cfg, self.mesh), total_steps)
        self.flops_per_token: dict[int, float] = {}  # by row length (rows may vary without packing)
        self.interval: Optional[TrainMetrics] = None
        self.pending: Optional[tuple[int, TrainMetrics]] = None
        self.saved_steps = set(manager.all_steps())
        self.last_loss: Optional[float] = None
        self.last_eval: dict[str, float] = {}
        self.profiling_until: Optional[int] = None
        self.state: Optional[TrainState] = None
        self.step = 0
        self.bad_run = 0
        self.compiles = CompileCounter()

    def start(self) -> Optional[int]:
        """Resume from the latest complete checkpoint (checkpoint.resume=auto) or build a fresh state; returns the
        step resumed from."""
        cfg, manager, writer = self.cfg, self.manager, self.writer
        incomplete = manager.incomplete_steps()
        if incomplete:
            writer.message(f"ignoring incomplete checkpoint folders for steps {incomplete} in {manager.directory}")
        if cfg.checkpoint.resume == "never" and manager.all_steps():
            raise JaxtuneError(
                f"{manager.directory} already holds checkpoints (steps {manager.all_steps()}) and checkpoint.resume "
                f"is never: choose another run_dir, or set checkpoint.resume=auto to continue that run"
            )
        resumed_from = self._restore_newest() if cfg.checkpoint.resume == "auto" else None
        if resumed_from is not None:
            writer.message(f"resuming from step {resumed_from} ({manager.step_dir(resumed_from)})")
        else:
            self.state = _start_state(cfg, self.layout)
        writer.start_at(resumed_from or 0)  # metrics of the steps this run re-does are dropped
        self.saved_steps = set(manager.all_steps())
        self.step = int(jax.device_get(self.state.step))
        if self.step in self.epoch_ends:  # a stop between the two saves of an epoch end: write the missing one
            self._save_epoch()
        self.bad_run = int(jax.device_get(self.state.bad_steps))
        return resumed_from

    def _restore_newest(self) -> Optional[int]:
        """Restore the newest checkpoint that restores completely (finite values included) into ``self.state``;
        the step, or None without checkpoints. A step that does not restore is named with its damage, moved to
        RUN_DIR/checkpoints_damaged/ (kept, never deleted) and the next older one is tried."""
        manager, writer = self.manager, self.writer
        set_aside: list[int] = []
        for step in reversed(manager.all_steps()):
            error: Optional[CheckpointError] = None
            try:
                params, fields = manager.restore(
                    step, self.layout.abstract_params(), self.layout.abstract_train_fields(), self.data.iterator
                )
            except CheckpointError as e:
                error = e
            if _on_every_process(error is None):
                self.state = TrainState(params=params, **fields)
                return step
            where = manager.set_aside(step)
            reason = str(error) if error is not None else "another process could not restore it"
            writer.message(
                f"skipping checkpoint step {step}, it does not restore: {reason}. The folder is kept as "
                f"{where}; trying the previous checkpoint"
            )
            set_aside.append(step)
        if set_aside:
            raise CheckpointError(
                f"{manager.directory}: no checkpoint of this run restores (steps {sorted(set_aside)} were moved to "
                f"{manager.directory.parent / DAMAGED_DIR}); start again to train from scratch, or put "
                f"back a good copy of a step folder"
            )
        return None

    def run(self) -> str:
        """Steps until the end of the run or an agreed SIGTERM; returns ``completed`` or ``preempted``."""
        layout, tc = self.layout, self.tc
        step_fn = make_train_step(
            layout.graphdef,
            layout.tx,
            layout.schedule,
            mesh=self.mesh,
            state_shardings=layout.state_shardings,
            compute_dtype=self.cfg.model.compute_dtype,
            backward=self.cfg.train.backward,
        )
        step_fn = self.compiles.wrap("train_step", step_fn)
        eval_fn = None
        if self.data.valid is not None:
            eval_fn = make_eval_step(
                layout.graphdef,
                len(self.data.ability_names),
                mesh=self.mesh,
                param_shardings=layout.state_shardings.params,
            )
            eval_fn = self.compiles.wrap("eval_loss", eval_fn)
        first_step = self.step
        with self.stop_request as stop_request:
            try:
                if self.step < self.total_steps and stop_request.agreed():  # a signal during start-up
                    self.writer.message(
                        f"stop requested (SIGTERM or Ctrl-C) during start-up, before step "
                        f"{self.step + 1}: nothing new to save; exiting. Start the same command "
                        f"again to resume."
                    )
                    return "preempted"
                self.heartbeat.beat("compiling", self.step)  # the first step compiles: announced before it starts
                while self.step < self.total_steps:
                    self._train_step(step_fn, first_step)
                    at = self.step
                    epoch_end = at in self.epoch_ends
                    evaluate = eval_fn is not None and (epoch_end or bool(tc.eval_every and at % tc.eval_every == 0))
                    checkpoint = (
                        epoch_end
                        or at == self.total_steps
                        or bool(self.cfg.checkpoint.save_every and at % self.cfg.checkpoint.save_every == 0)
                    )
                    stop = stop_request.agreed()
                    if evaluate or checkpoint or stop:
                        # Settle this step's metrics first: everything up to a checkpoint is logged before it exists.
                        self._settle()
                    if evaluate:
                        self.heartbeat.beat("evaluating", at)
                        self.last_eval = _evaluate(eval_fn, self.state.params, self.data, self.mesh, self.writer, at)
                        self.meter.reset(at)
                    if checkpoint or stop:
                        self.heartbeat.beat("saving", at)
                        self._save()
                        self.meter.reset(at)  # the save's pause is not training throughput
                    if evaluate or checkpoint:
                        self.heartbeat.beat("training", at)
                    if stop:
                        self.manager.wait_until_finished()
                        self.writer.message(
                            f"stop requested (SIGTERM or Ctrl-C): saved step {at} in "
                            f"{self.manager.directory}; exiting. Start the same command again to "
                            f"resume."
                        )
                        return "preempted"
                self._settle()
                return "completed"
            finally:
                if self.profiling_until is not None:  # the run stopped inside the traced steps
                    jax.profiler.stop_trace()

    def _train_step(self, step_fn: Callable, first_step: int) -> None:
        tc = self.tc
        try:
            local = next(self.data.iterator)
        except StopIteration:
            raise JaxtuneError(
                f"the data stream ended after {self.step} steps; the run needs {self.total_steps} "
                f"({self.data.steps_per_epoch} per epoch)"
            ) from None
        local = _check_batch(local, TRAIN_KEYS, self.local_rows, "training")
        length = local["input_ids"].shape[1]
        if length not in self.flops_per_token:
            self.flops_per_token[length] = model_info(self.cfg.model, length).train_flops_per_token
        batch = global_batch(local, self.mesh, microbatches=tc.microbatches)
        self.state, metrics = step_fn(self.state, batch)
        self.step += 1
        # The previous step's metrics, read one step late so the devices never wait on the host; before this
        # step's tokens are counted, which belong to the next interval (else a step settled at once, as before a
        # checkpoint, reads 0 tokens/s).
        self._settle()
        if self.step == first_step + 1:  # time from the end of the first (compiling) step
            jax.block_until_ready(metrics)
            self.heartbeat.beat("training", self.step)
            self.meter.reset(self.step)
            if tc.profile:  # trace the three steps after the compiling one
                jax.profiler.start_trace(str(as_path(self.cfg.run_dir) / "profile"))
                self.profiling_until = min(self.step + 3, self.total_steps)
        else:
            tokens = self.rows_per_step * length
            self.meter.add_step(tokens, tokens * self.flops_per_token[length])
        self.pending = (self.step, metrics)
        if self.profiling_until is not None and self.step >= self.profiling_until:
            jax.block_until_ready(self.state.params)
            jax.profiler.stop_trace()
            self.profiling_until = None

    def _save(self) -> None:
        if not _on_every_process(self.lease is None or self.lease.held()):  # taken over: write nothing more
            if self.lease is not None:
                self.lease.check()
            raise RunLeaseError("process 0 lost the run directory's lease: stopping without writing checkpoints")
        if self.step not in self.saved_steps:
            self.manager.save(
                self.step, self.state.params, self.state.train_fields(), self.data.iterator, self.config_dict
            )
            self.saved_steps.add(self.step)
        if self.step in self.epoch_ends:
            self._save_epoch()

    def _save_epoch(self) -> None:
        """The params-only checkpoint of the epoch that ends at this step (once)."""
        epoch = self.step // self.data.steps_per_epoch
        if self.epochs is not None and epoch not in self.epochs.all_epochs():
            self.epochs.save(epoch, self.step, self.state.params)

    def _settle(self) -> None:
        """Host-side bookkeeping of the pending finished step: metrics, logging, the guard on non-finite steps."""
        if self.pending is None:
            return
        (at, metrics), self.pending = self.pending, None
        tc = self.tc
        metrics = jax.device_get(metrics)
        self.interval = metrics if self.interval is None else self.interval.merge(metrics)
        skipped = float(metrics.skipped_steps.compute()) > 0
        self.bad_run = self.bad_run + 1 if skipped else 0
        diverged = self.bad_run >= tc.max_consecutive_bad_steps
        if diverged or at % tc.log_every == 0 or at == self.total_steps:
            self._log_interval(at)
        if skipped:
            self.writer.message(f"step {at}: non-finite loss or gradient; update skipped ({self.bad_run} in a row)")
        if diverged:
            self.manager.wait_until_finished()
            good = [s for s in self.manager.all_steps() if s < at - self.bad_run + 1]
            where = (
                f"the last checkpoint before them is step {good[-1]} in {self.manager.directory}"
                if good
                else "no checkpoint was saved before them"
            )
            raise TrainingDivergedError(
                f"{self.bad_run} consecutive steps (up to step {at}) had a non-finite loss or gradient "
                f"(train.max_consecutive_bad_steps={tc.max_consecutive_bad_steps}); stopped. Those updates were "
                f"skipped and {where}. Lower optim.learning_rate, check the data, or use float32 compute."
            )

    def _log_interval(self, at: int) -> None:
        with np.errstate(invalid="ignore"):  # an interval of skipped steps only has no mean loss: NaN
            scalars = {k: float(v) for k, v in self.interval.compute().items()}
        self.interval = None
        scalars.update(self.meter.measure(at))
        scalars.update(self.compiles.scalars())
        scalars["epoch"] = at / self.data.steps_per_epoch
        self.last_loss = scalars["loss"]
        self.writer.write(at, "train", scalars)
        self.heartbeat.beat(step=at)
        self.writer.message(progress_line(at, self.total_steps, scalars["epoch"], scalars))


def _on_every_process(ok: bool) -> bool:
    """Whether ``ok`` holds on every process (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


def _peak_flops_total(cfg: Config, mesh: Mesh) -> Optional[float]:
    peak = peak_flops_per_device(mesh.devices.flat[0], cfg.train.peak_flops_per_device)
    return None if peak is None else peak * mesh.devices.size


def _evaluate(
    eval_fn: Callable, params: Any, data: RunData, mesh: Mesh, writer: MetricsWriter, step: int
) -> dict[str, float]:
    """Validation loss over one full pass: overall (token-weighted) and per ability."""
    num = len(data.ability_names)
    loss_sums = np.zeros(num, np.float64)
    weight_sums = np.zeros(num, np.float64)
    for local in data.valid:
        local = _check_batch(local, EVAL_KEYS, np.shape(local["input_ids"])[0], "validation")
        check_batch_rows(local["input_ids"].shape[0] * jax.process_count(), mesh, "validation batch rows")
        sums, weights = jax.device_get(eval_fn(params, global_batch(local, mesh)))
        loss_sums += sums
        weight_sums += weights
    scalars: dict[str, float] = {}
    total = weight_sums.sum()
    scalars["loss"] = float(loss_sums.sum() / total) if total else float("nan")
    for name, s, w in zip(data.ability_names, loss_sums, weight_sums):
        if w:
            scalars[f"loss/{name}"] = float(s / w)
    writer.write(step, "eval", scalars)
    per_ability = ", ".join(f"{k[5:]} {v:.4f}" for k, v in scalars.items() if k.startswith("loss/"))
    writer.message(f"step {step} | eval loss {scalars['loss']:.4f} | {per_ability}")
    return scalars
