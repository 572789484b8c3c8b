"""The on-disk layout of jaxtune checkpoints: folder, file and Orbax item names, and where a run keeps them.

A params-only checkpoint (what ``import-hf`` writes and ``export-hf``/``eval``/``train.init_from`` read;
:mod:`jaxtune.checkpoint.params`)::

    CKPT/
      params/             Orbax (StandardCheckpointer) tree: {embed_tokens, layers: {q_proj, ...}, norm, lm_head}
      model_config.json   the ModelConfig fields (jaxtune.config.schema.ModelConfig)
      tokenizer/          optional: tokenizer files (tokenizer.model, tokenizer.json, tokenizer_config.json, ...)
                          plus added_tokens.json ({token: id}) for special tokens added on top of the vocabulary

``model_config.json`` is written last: a folder without it is an incomplete checkpoint.

A run's train-state checkpoints (:mod:`jaxtune.checkpoint.train_state`) live in RUN_DIR/checkpoints/<step>/ (Orbax
CheckpointManager, one Composite per step)::

    params/             the parameters, in the same format as a params-only checkpoint's params/
    train_state/        optimizer state, step counters and the run's PRNG key
    data_iter/          each process's grain iterator state (process_<i>-of-<n>.json)
    config/             the resolved run config (JSON)
    integrity/          the writer's id and fingerprints of every part (:mod:`jaxtune.checkpoint.integrity`):
                        a step whose parts disagree with it is refused like a damaged one
    model_config.json   written by process 0 once the step is finalised, with tokenizer/ when one is known:
                        from then on the step folder is also a params-only checkpoint (eval, export-hf,
                        train.init_from read it directly)

Orbax writes each step into a temporary folder, puts a commit marker (``commit_success.txt``) in it and renames it
on completion; only folders holding the marker count as checkpoints, so a half-written (or half-copied,
half-deleted) step is never restored. Steps that did not restore are moved to RUN_DIR/checkpoints_damaged/<step>/
(kept for inspection, never deleted).

Each kept epoch end (:mod:`jaxtune.checkpoint.epochs`) is written to RUN_DIR/epochs/<epoch>/ (1-based), parameters
only, in checkpoint.epoch_dtype::

    params/             the parameters (the same Orbax tree as a params-only checkpoint's params/)
    epoch/              JSON: {"epoch": E, "step": S, "dtype": "bfloat16"}
    model_config.json   written once the folder is finalised (param_dtype = the epoch dtype), with tokenizer/:
                        the folder is then a params-only checkpoint like import-hf's (eval, export-hf,
                        checkpoint.init_from and the sweep read it)

No optimizer state and no data iterator: an epoch checkpoint is 2 bytes per parameter in bfloat16 where a full
train state is 12 (float32 weights and two AdamW moments). Resuming always uses RUN_DIR/checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from etils import epath

from jaxtune.paths import PathLike, absolute_path, as_path

# A params-only checkpoint
PARAMS_DIR = "params"
MODEL_CONFIG_FILE = "model_config.json"
TOKENIZER_DIR = "tokenizer"
ADDED_TOKENS_FILE = "added_tokens.json"
# Files of a tokenizer folder worth carrying (never weights, model configs or anything executable).
TOKENIZER_FILE_NAMES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    ADDED_TOKENS_FILE,
    "chat_template.jinja",
    "chat_template.json",
)

# A run's folders
CHECKPOINTS_DIR = "checkpoints"
DAMAGED_DIR = "checkpoints_damaged"  # RUN_DIR/checkpoints_damaged/<step>: steps set aside because they did not restore
EPOCHS_DIR = "epochs"
COMMIT_MARKER = "commit_success.txt"  # orbax.checkpoint's atomicity_types.COMMIT_SUCCESS_FILE
COMPLETED_FILE = "completed.json"  # RUN_DIR/completed.json: written last, atomically, once a run completes
HEARTBEAT_FILE = "heartbeat.json"  # RUN_DIR/heartbeat.json: {"step", "phase", "time"}, refreshed by process 0

# Orbax items of a train-state step and of an epoch checkpoint
TRAIN_PARAMS_ITEM, TRAIN_STATE_ITEM, DATA_ITER_ITEM, RUN_CONFIG_ITEM = "params", "train_state", "data_iter", "config"
EPOCH_INFO_ITEM = "epoch"


def train_checkpoint_dir(run_dir: PathLike) -> epath.Path:
    """Where a run keeps its train-state checkpoints."""
    return absolute_path(run_dir) / CHECKPOINTS_DIR


def epoch_checkpoint_dir(run_dir: PathLike) -> epath.Path:
    """Where a run keeps its params-only epoch checkpoints."""
    return absolute_path(run_dir) / EPOCHS_DIR


def complete_steps(checkpoints_dir: str | Path) -> list[int]:
    """Steps in a run's checkpoints folder whose Orbax commit marker and params-only marker both exist."""
    d = as_path(checkpoints_dir)
    if not d.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in d.iterdir()
        if p.name.isdigit() and (p / COMMIT_MARKER).is_file() and (p / MODEL_CONFIG_FILE).is_file()
    )
