"""The train-state manager: a run's whole train state (parameters, optimizer state, counters, RNG, each process's
data iterator and the resolved config) saved and restored with Orbax in RUN_DIR/checkpoints/<step>/ (layout in
:mod:`jaxtune.checkpoint.layout`); each finalised step is also a params-only checkpoint. A step that does not
restore is one :class:`~jaxtune.checkpoint.errors.CheckpointError` naming its folder, and can be set aside.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, Mapping, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

from jaxtune.checkpoint.errors import CheckpointError, restore_boundary
from jaxtune.checkpoint.finite import check_finite
from jaxtune.checkpoint.integrity import INTEGRITY_ITEM, disagreements, integrity_record, refuse_mixed
from jaxtune.checkpoint.layout import (
    COMMIT_MARKER,
    DAMAGED_DIR,
    DATA_ITER_ITEM,
    MODEL_CONFIG_FILE,
    RUN_CONFIG_ITEM,
    TRAIN_PARAMS_ITEM,
    TRAIN_STATE_ITEM,
    train_checkpoint_dir,
)
from jaxtune.checkpoint.params import sync_processes, write_params_side_files
from jaxtune.config.schema import ModelConfig
from jaxtune.paths import PathLike, as_path

BARRIER_PREFIX = "jaxtune_train_state"
"""The Orbax barrier keys of the train-state manager (the epoch manager has its own): see its options below."""


class TrainCheckpointManager:
    """Saves and restores the whole train state of a run (parameters, optimizer state, counters, RNG, each
    process's data iterator and the resolved config) with Orbax, asynchronously when configured.

    Every process must make the same calls (Orbax coordinates multi-process saves); files outside Orbax's items
    are written by process 0 only.

    cfg: the checkpoint section (max_to_keep, async_save). Epoch ends are kept apart, params only, by
    :class:`jaxtune.checkpoint.epochs.EpochCheckpointManager`.
    model_cfg, tokenizer_src, added_tokens: written beside each finalised step (model_config.json, tokenizer/ with
    added_tokens.json) so that the step folder doubles as a params-only checkpoint; tokenizer_src is a tokenizer
    folder or SentencePiece file, or None.
    """

    def __init__(
        self,
        run_dir: PathLike,
        cfg: Any,
        *,
        model_cfg: ModelConfig,
        tokenizer_src: Optional[PathLike] = None,
        added_tokens: Optional[Mapping[str, int]] = None,
    ):
        from orbax.checkpoint import checkpoint_managers as policies

        self.directory = train_checkpoint_dir(run_dir)
        self.model_cfg = model_cfg
        self.tokenizer_src = None if tokenizer_src is None else as_path(tokenizer_src)
        self.added_tokens = dict(added_tokens or {})
        cfg.validate()  # CheckpointConfig's rules (max_to_keep, save_every)
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=cfg.async_save,
            preservation_policy=policies.LatestN(cfg.max_to_keep),  # None keeps every checkpoint
            create=True,
            # Orbax names a manager's barriers by this prefix only ("ThreadSaveMultiHostValueHolder:set_value_start"
            # has no other suffix): two managers without one meet each other's barriers across processes.
            multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=BARRIER_PREFIX),
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self.run_id = uuid.uuid4().hex  # this launch's identity, recorded with each save (integrity/)
        # Complete steps not yet marked as params-only checkpoints (e.g. a crash came between the two).
        self._unmarked: set[int] = {s for s in self.all_steps() if not (self.step_dir(s) / MODEL_CONFIG_FILE).exists()}

    def latest_step(self) -> Optional[int]:
        """The newest complete checkpoint's step, or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, oldest first.

        Orbax lists every folder named like a step; a complete one also holds the commit marker Orbax writes just
        before its final rename (on every filesystem), so a folder copied or written only in part is left out.
        """
        return sorted(s for s in self._manager.all_steps() if (self.step_dir(s) / COMMIT_MARKER).is_file())

    def incomplete_steps(self) -> list[int]:
        """Step folders without Orbax's commit marker (interrupted copies or writes): never restored."""
        complete = set(self.all_steps())
        return sorted(s for s in self._manager.all_steps() if s not in complete)

    def step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def save(self, step: int, params: Any, train_fields: Any, data_iter: Any, config: Mapping[str, Any]) -> None:
        """Start saving step ``step`` (returns once the arrays are copied off the devices when async)."""
        # Orbax would wait for the previous save here anyway; waiting first also lets its background finalisation
        # (renames, deleting old steps) end before the finished steps are marked.
        self.wait_until_finished()
        args = ocp.args.Composite(
            **{
                TRAIN_PARAMS_ITEM: ocp.args.StandardSave(params),
                TRAIN_STATE_ITEM: ocp.args.StandardSave(train_fields),
                DATA_ITER_ITEM: _grain_save(data_iter),
                RUN_CONFIG_ITEM: ocp.args.JsonSave(dict(config)),
                INTEGRITY_ITEM: ocp.args.JsonSave(
                    integrity_record(self.run_id, step, params, train_fields, data_iter, config)
                ),
            }
        )
        self._manager.save(step, args=args, force=True)
        self._unmarked.add(step)

    def restore(self, step: int, abstract_params: Any, abstract_train_fields: Any, data_iter: Any) -> tuple[Any, Any]:
        """(params, train_fields) of step ``step`` laid out as the abstract trees' shardings say (any mesh), and
        ``data_iter`` moved to the saved position in place."""
        if step not in self.all_steps():
            raise CheckpointError(f"{self.directory}: no complete checkpoint at step {step}")
        import grain

        items = {
            TRAIN_PARAMS_ITEM: ocp.args.StandardRestore(abstract_params),
            TRAIN_STATE_ITEM: ocp.args.StandardRestore(abstract_train_fields),
            DATA_ITER_ITEM: grain.checkpoint.CheckpointRestore(data_iter),
        }
        recorded = (self.step_dir(step) / INTEGRITY_ITEM).is_dir()  # steps saved before the record existed lack it
        if recorded:
            items.update({INTEGRITY_ITEM: ocp.args.JsonRestore(), RUN_CONFIG_ITEM: ocp.args.JsonRestore()})
        with restore_boundary(self.step_dir(step), "the train state"):
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        params, fields = restored[TRAIN_PARAMS_ITEM], restored[TRAIN_STATE_ITEM]
        if recorded:  # process 0's data position is the one recorded
            own_data = data_iter if jax.process_index() == 0 else None
            mixed = disagreements(restored[INTEGRITY_ITEM], params, fields, own_data, restored[RUN_CONFIG_ITEM])
            refuse_mixed(self.step_dir(step), restored[INTEGRITY_ITEM], mixed)
        check_finite(params, self.step_dir(step), TRAIN_PARAMS_ITEM)
        check_finite(fields, self.step_dir(step), TRAIN_STATE_ITEM)
        return params, fields

    def set_aside(self, step: int) -> Path:
        """Move the step folder of a checkpoint that did not restore to RUN_DIR/checkpoints_damaged/ (kept for
        inspection, never deleted; the run saves that step afresh when it gets there again). Returns where it went."""
        target = self.directory.parent / DAMAGED_DIR / str(step)
        n = 1
        while target.exists():
            n += 1
            target = self.directory.parent / DAMAGED_DIR / f"{step}-{n}"
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            self.step_dir(step).rename(target)
        sync_processes(f"jaxtune_set_aside_{step}")
        self._manager.reload()
        self._unmarked.discard(step)
        return target

    def delete_all(self) -> None:
        """Delete every train checkpoint of the run (every process calls it; Orbax deletes from the primary)."""
        self.wait_until_finished()
        for step in self._manager.all_steps():
            self._manager.delete(step)

    def saved_config(self, step: int) -> dict:
        """The resolved run config stored with step ``step``."""
        with restore_boundary(self.step_dir(step), f"{RUN_CONFIG_ITEM}/"):
            restored = self._manager.restore(step, args=ocp.args.Composite(**{RUN_CONFIG_ITEM: ocp.args.JsonRestore()}))
        return dict(restored[RUN_CONFIG_ITEM])

    def wait_until_finished(self) -> None:
        """Block until pending saves are complete, then mark the finalised steps as params-only checkpoints."""
        self._manager.wait_until_finished()
        self._mark_finalised()

    def close(self) -> None:
        self.wait_until_finished()
        self._manager.close()

    def _mark_finalised(self) -> None:
        # A step is finalised once its commit marker exists (see all_steps). Steps the preservation policy has
        # already removed are forgotten.
        if jax.process_index() != 0:
            self._unmarked.clear()
            return
        kept = set(self._manager.all_steps())
        for step in sorted(self._unmarked):
            step_dir = self.step_dir(step)
            if step not in kept:
                self._unmarked.discard(step)
                continue
            if not (step_dir / COMMIT_MARKER).is_file():
                continue  # still being written
            write_params_side_files(step_dir, self.model_cfg, self.tokenizer_src, self.added_tokens)
            self._unmarked.discard(step)


def saved_run_config(run_dir: str | Path) -> Optional[tuple[int, dict]]:
    """(step, resolved run config) of the newest complete checkpoint of a run whose config item reads, or None
    (read without opening a CheckpointManager: the trainer compares configs before it builds anything)."""
    directory = train_checkpoint_dir(run_dir)
    if not directory.is_dir():
        return None
    steps = sorted(
        (int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / COMMIT_MARKER).is_file()), reverse=True
    )
    for step in steps:
        try:
            with (
                restore_boundary(directory / str(step), f"{RUN_CONFIG_ITEM}/"),
                ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer,
            ):
                return step, dict(checkpointer.restore(directory / str(step) / RUN_CONFIG_ITEM))
        except CheckpointError:
            continue  # the resume itself names a damaged step and falls back
    return None


def _grain_save(data_iter: Any) -> Any:
    import grain

    if not (hasattr(data_iter, "get_state") and hasattr(data_iter, "set_state")):
        raise TypeError(f"the data iterator must be a grain iterator with get_state/set_state, got {type(data_iter)}")
    return grain.checkpoint.CheckpointSave(data_iter)
