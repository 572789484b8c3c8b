"""Epoch checkpoints: each kept epoch end, parameters only, cast to ``checkpoint.epoch_dtype``, in
RUN_DIR/epochs/<epoch>/ (layout in :mod:`jaxtune.checkpoint.layout`), and which checkpoint to evaluate for an epoch
of a run."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxtune.checkpoint.errors import CheckpointError
from jaxtune.checkpoint.layout import (
    COMMIT_MARKER,
    EPOCH_INFO_ITEM,
    MODEL_CONFIG_FILE,
    TRAIN_PARAMS_ITEM,
    epoch_checkpoint_dir,
    train_checkpoint_dir,
)
from jaxtune.checkpoint.params import numpy_dtype, write_params_side_files
from jaxtune.config.schema import ModelConfig
from jaxtune.paths import PathLike

BARRIER_PREFIX = "jaxtune_epochs"
"""The Orbax barrier keys of the epoch-checkpoint manager (distinct from the train-state manager's)."""


class EpochCheckpointManager:
    """Writes a params-only checkpoint of each epoch end, cast to ``dtype``, with Orbax (asynchronously when
    ``async_save``); every epoch is kept. Every process must make the same calls.

    model_cfg, tokenizer_src, added_tokens: as for :class:`jaxtune.checkpoint.train_state.TrainCheckpointManager`;
    model_config.json records ``param_dtype=dtype``.
    """

    def __init__(
        self,
        run_dir: PathLike,
        *,
        model_cfg: ModelConfig,
        dtype: str,
        async_save: bool = True,
        tokenizer_src: Optional[PathLike] = None,
        added_tokens: Optional[Mapping[str, int]] = None,
    ):
        self.directory = epoch_checkpoint_dir(run_dir)
        self.dtype = dtype
        self.model_cfg = dataclasses.replace(model_cfg, param_dtype=dtype)
        self.tokenizer_src = tokenizer_src
        self.added_tokens = dict(added_tokens or {})
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=async_save,
            create=True,
            # Its own barrier keys: the train-state manager's background finalisation may be at a barrier of the
            # same name (jaxtune.checkpoint.train_state.BARRIER_PREFIX) while this manager saves.
            multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=BARRIER_PREFIX),
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._unmarked: set[int] = {
            e for e in self.all_epochs() if not (self.epoch_dir(e) / MODEL_CONFIG_FILE).exists()
        }

    def all_epochs(self) -> list[int]:
        """Epochs with a complete (committed) checkpoint, oldest first."""
        return sorted(e for e in self._manager.all_steps() if (self.epoch_dir(e) / COMMIT_MARKER).is_file())

    def epoch_dir(self, epoch: int) -> Any:
        return self.directory / str(epoch)

    def save(self, epoch: int, step: int, params: Any) -> None:
        """Start writing epoch ``epoch`` (ended at optimizer step ``step``) from the live parameters."""
        self.wait_until_finished()
        args = ocp.args.Composite(
            **{
                TRAIN_PARAMS_ITEM: ocp.args.StandardSave(cast_params(params, self.dtype)),
                EPOCH_INFO_ITEM: ocp.args.JsonSave({"epoch": int(epoch), "step": int(step), "dtype": self.dtype}),
            }
        )
        self._manager.save(epoch, args=args, force=True)
        self._unmarked.add(epoch)

    def wait_until_finished(self) -> None:
        """Block until pending saves are complete, then mark the finalised epochs as params-only checkpoints."""
        self._manager.wait_until_finished()
        if jax.process_index() != 0:
            self._unmarked.clear()
            return
        for epoch in sorted(self._unmarked):
            if (self.epoch_dir(epoch) / COMMIT_MARKER).is_file():
                write_params_side_files(self.epoch_dir(epoch), self.model_cfg, self.tokenizer_src, self.added_tokens)
                self._unmarked.discard(epoch)

    def close(self) -> None:
        self.wait_until_finished()
        self._manager.close()


def cast_params(params: Any, dtype: str) -> Any:
    """``params`` (a tree of jax arrays) in ``dtype``, on the same shardings; floating arrays already in ``dtype``
    are returned as they are (no device copy)."""
    target = np.dtype(numpy_dtype(dtype))
    leaves = jax.tree.leaves(params)
    if all(np.dtype(x.dtype) == target for x in leaves):
        return params
    shardings = jax.tree.map(lambda x: x.sharding, params)
    return jax.jit(lambda t: jax.tree.map(lambda x: x.astype(target), t), out_shardings=shardings)(params)


def epoch_checkpoint_path(run_dir: PathLike, epoch: int, step: int) -> Any:
    """The checkpoint to evaluate for ``epoch`` of a run: its epoch checkpoint (RUN_DIR/epochs/EPOCH), else the
    train checkpoint of the step that ended it (RUN_DIR/checkpoints/STEP, e.g. the last epoch when epoch
    checkpoints are off). Either is a params-only checkpoint; neither present is an error listing what exists."""
    epoch_dir = epoch_checkpoint_dir(run_dir) / str(epoch)
    step_dir = train_checkpoint_dir(run_dir) / str(step)
    for candidate in (epoch_dir, step_dir):
        if (candidate / MODEL_CONFIG_FILE).is_file() and (candidate / COMMIT_MARKER).is_file():
            return candidate
    epochs = (
        sorted(
            int(p.name)
            for p in epoch_checkpoint_dir(run_dir).glob("*")
            if p.name.isdigit() and (p / MODEL_CONFIG_FILE).is_file()
        )
        if epoch_checkpoint_dir(run_dir).exists()
        else []
    )
    steps = (
        sorted(
            int(p.name)
            for p in train_checkpoint_dir(run_dir).glob("*")
            if p.name.isdigit() and (p / MODEL_CONFIG_FILE).is_file()
        )
        if train_checkpoint_dir(run_dir).exists()
        else []
    )
    raise CheckpointError(
        f"{run_dir}: no complete checkpoint of epoch {epoch}: neither {epoch_dir} nor {step_dir} (epoch checkpoints "
        f"there: {epochs or 'none'}; train checkpoints at steps: {steps or 'none'}; checkpoint.keep_epoch_checkpoints "
        f"writes one per epoch)"
    )
