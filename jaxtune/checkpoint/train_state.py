"""jaxtune checkpoints on Orbax: params-only checkpoints (import/export/eval) and, below, the train-state manager.

Params-only checkpoint layout (what ``import-hf`` writes and ``export-hf``/``eval``/``train.init_from`` read)::

    CKPT/
      params/             Orbax (StandardCheckpointer) tree: {embed_tokens, layers: {q_proj, ...}, norm, lm_head}
      model_config.json   the ModelConfig fields (jaxtune.config.schema.ModelConfig)
      tokenizer/          optional: tokenizer files (tokenizer.model, tokenizer.json, tokenizer_config.json, ...)
                          plus added_tokens.json ({token: id}) for special tokens added on top of the vocabulary

``model_config.json`` is written last: a folder without it is an incomplete checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from jaxtune.checkpoint.integrity import INTEGRITY_ITEM, disagreements, integrity_record
from jaxtune.config.loading import model_config_from_dict
from jaxtune.config.schema import ConfigError, ModelConfig
from jaxtune.errors import JaxtuneError
from jaxtune.models.registry import create_model
from jaxtune.paths import PathLike, absolute_path, as_path, copy_file, is_remote, local_copy, write_text_atomic

# ====================================================================================================================
# Params-only checkpoints
# ====================================================================================================================

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


class CheckpointError(JaxtuneError, ValueError):
    """A checkpoint folder is missing, incomplete or inconsistent; the message names the path."""


class NonFiniteParamsError(CheckpointError):
    """A checkpoint holds NaN or infinite values; the message names the folder and each affected array."""


def _damage(error: BaseException) -> str:
    """One line saying why Orbax or TensorStore could not read a checkpoint (their messages run to pages)."""
    lines = str(error).split(" See full TensorStore details")[0].strip().splitlines()
    text = lines[0].strip() if lines else ""
    if type(error) is not Exception:  # a bare Exception's name says nothing
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    cause = error.__cause__ or error.__context__
    if cause is not None and type(error) is Exception:  # Orbax wraps TensorStore's error, which names the file
        text = f"{text} ({_damage(cause)})"
    return text if len(text) <= 400 else text[:400] + " ..."


@contextlib.contextmanager
def restore_boundary(folder: str | Path, what: str) -> Iterator[None]:
    """Turn whatever Orbax raises while reading ``folder`` into one CheckpointError naming the folder.

    Orbax and TensorStore report a truncated or missing file with bare ``Exception``s, ``ValueError``s or worse
    (a ``None`` metadata tree); a damaged checkpoint must end in one line, not five tracebacks.
    """
    try:
        yield
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 -- Orbax raises bare Exception for damaged files
        raise CheckpointError(
            f"{folder}: damaged checkpoint, cannot read {what}: {_damage(e)}{complete_step_hint(folder)}"
        ) from e


def complete_step_hint(folder: str | Path) -> str:
    """For a step folder of a run (RUN/checkpoints/STEP), a sentence offering the newest other complete step;
    empty for any other folder."""
    folder = absolute_path(folder)
    for candidate in (folder, *folder.parents):
        if candidate.parent.name == CHECKPOINTS_DIR and candidate.name.isdigit():
            step_dir = candidate
            break
    else:
        return ""
    others = [s for s in complete_steps(step_dir.parent) if s != int(step_dir.name)]
    if not others:
        return f" (no other complete step in {step_dir.parent})"
    older = [s for s in others if s < int(step_dir.name)]
    offer = older[-1] if older else others[-1]
    return f"; the {'previous' if older else 'newest'} complete step is {step_dir.parent / str(offer)}"


def complete_steps(checkpoints_dir: str | Path) -> list[int]:
    """Steps in a run's checkpoints folder whose Orbax commit marker and params-only marker both exist."""
    d = as_path(checkpoints_dir)
    if not d.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in d.iterdir()
        if p.name.isdigit() and (p / _COMMIT_MARKER).is_file() and (p / MODEL_CONFIG_FILE).is_file()
    )


def intact_steps(run_dir: PathLike) -> str:
    """A sentence naming the run's newest complete train checkpoint (what a failed write leaves whole)."""
    directory = train_checkpoint_dir(run_dir)
    try:
        steps = complete_steps(directory)
    except Exception:  # noqa: BLE001 -- the store that failed the write may not answer a listing either
        return f"the complete steps in {directory} are intact (not listed: the store does not answer)"
    if not steps:
        return f"no step of this run was complete yet in {directory}"
    return f"the newest complete step, {directory / str(steps[-1])}, is intact"


@functools.lru_cache(maxsize=None)
def _nonfinite_counter(treedef: Any) -> Any:
    import jax.numpy as jnp

    def count(leaves: list) -> Any:  # one program over the whole tree: a vector of per-array counts
        return jnp.stack([jnp.sum(~jnp.isfinite(x)).astype(jnp.int32) for x in leaves])

    return jax.jit(count)


def nonfinite_counts(tree: Any) -> dict[str, int]:
    """{dotted name: count} of the floating-point arrays of ``tree`` holding NaN or inf values.

    Device arrays are checked by one jitted reduction over the tree (one small transfer back), on whatever devices
    and shardings they live; host numpy arrays array by array (no device memory needed).
    """
    flat = [
        (k, x)
        for k, x in jax.tree_util.tree_flatten_with_path(tree)[0]
        if jax.numpy.issubdtype(x.dtype, jax.numpy.inexact)
    ]  # numpy's issubdtype misses bfloat16
    if not flat:
        return {}
    on_device = [(k, x) for k, x in flat if isinstance(x, jax.Array)]
    on_host = [(k, x) for k, x in flat if not isinstance(x, jax.Array)]
    counts = {_dotted(k): _host_nonfinite(x) for k, x in on_host}
    if on_device:
        leaves = [x for _, x in on_device]
        device_counts = np.asarray(jax.device_get(_nonfinite_counter(jax.tree.structure(leaves))(leaves)))
        counts.update({_dotted(k): int(c) for (k, _), c in zip(on_device, device_counts)})
    return {k: c for k, c in counts.items() if c}


_HOST_CHUNK = 1 << 24  # elements per np.isfinite pass: bounds the temporary mask to 16 MB on any model size


def _host_nonfinite(x: Any) -> int:
    flat = np.asarray(x).reshape(-1)
    return sum(
        int(chunk.size - np.count_nonzero(np.isfinite(chunk)))
        for chunk in (flat[i : i + _HOST_CHUNK] for i in range(0, flat.size, _HOST_CHUNK))
    )


def check_finite(tree: Any, where: str | Path, what: str = "params") -> None:
    """Raise NonFiniteParamsError naming ``where`` and each array of ``tree`` that holds NaN or inf."""
    bad = nonfinite_counts(tree)
    if bad:
        listed = ", ".join(f"{what}.{k} ({c} values)" for k, c in sorted(bad.items()))
        raise NonFiniteParamsError(
            f"{where}: non-finite values (NaN or inf) in {listed}: the checkpoint is damaged "
            f"or the run diverged before it was saved{complete_step_hint(where)}"
        )


def params_to_pure_dict(params: Any) -> dict:
    """A nested dict of arrays from an ``nnx.State`` of params (or a nested dict already)."""
    if isinstance(params, nnx.State):
        return nnx.to_pure_dict(params)
    if not isinstance(params, Mapping):
        raise TypeError(f"expected an nnx.State or a nested dict of arrays, got {type(params).__name__}")
    return {k: params_to_pure_dict(v) if isinstance(v, (Mapping, nnx.State)) else v for k, v in params.items()}


def copy_tokenizer_files(src: PathLike, dst: PathLike) -> list[str]:
    """Copy the tokenizer files of ``src`` (a folder, or a SentencePiece ``.model`` file) into ``dst``."""
    src, dst = as_path(src), as_path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    if src.is_file():
        if src.suffix != ".model":
            raise CheckpointError(f"{src}: expected a tokenizer folder or a SentencePiece .model file")
        copy_file(src, dst / "tokenizer.model")
        return ["tokenizer.model"]
    if not src.is_dir():
        raise CheckpointError(f"{src}: no such tokenizer folder or file")
    copied = [name for name in TOKENIZER_FILE_NAMES if (src / name).is_file()]
    if not copied:
        raise CheckpointError(f"{src}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILE_NAMES)})")
    for name in copied:
        copy_file(src / name, dst / name)
    return copied


def read_added_tokens(directory: PathLike) -> dict[str, int]:
    """The {token: id} map of ``added_tokens.json`` in a tokenizer folder (empty when absent)."""
    path = as_path(directory) / ADDED_TOKENS_FILE
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(values, dict) or not all(isinstance(v, int) for v in values.values()):
        raise CheckpointError(f"{path}: expected an object mapping token strings to integer ids")
    return dict(values)


def write_added_tokens(directory: PathLike, added: Mapping[str, int]) -> None:
    """Merge ``added`` into the folder's ``added_tokens.json``; a token or an id recorded differently is an error."""
    merged = read_added_tokens(directory)
    for token, token_id in added.items():
        if token in merged and merged[token] != token_id:
            raise CheckpointError(f"{directory}: token {token!r} already has id {merged[token]}, not {token_id}")
        merged[token] = int(token_id)
    ids = list(merged.values())
    if len(set(ids)) != len(ids):
        raise CheckpointError(f"{directory}: added tokens share ids: {merged}")
    write_text_atomic(as_path(directory) / ADDED_TOKENS_FILE, json.dumps(merged, ensure_ascii=False, indent=2) + "\n")


def save_params(
    path: PathLike,
    params_state: Any,
    model_cfg: ModelConfig,
    tokenizer_dir: Optional[PathLike] = None,
    added_tokens: Optional[Mapping[str, int]] = None,
    overwrite: bool = False,
    compress: bool = False,
) -> epath.Path:
    """Write a params-only checkpoint (see the module docstring) and return its path.

    params_state: an ``nnx.State`` of the model's params or the same tree as a nested dict of numpy or jax arrays
    (numpy arrays are written as they are, without a device copy: import-hf streams into them).
    tokenizer_dir: a tokenizer folder or SentencePiece ``.model`` file to copy into ``tokenizer/``.
    added_tokens: {token: id} of special tokens added on top of that tokenizer (DoIT's role tokens), recorded in
    ``tokenizer/added_tokens.json`` so that export-hf can write them into the Hugging Face tokenizer files.
    overwrite: replace an existing checkpoint at ``path`` (otherwise that is an error).
    compress: zstd-compress the arrays (about 20% smaller on disk for bfloat16 weights, but saving then buffers the
    compressed checkpoint in host memory).
    """
    path = absolute_path(path)
    params = params_to_pure_dict(params_state)
    _check_params_match_config(params, model_cfg, str(path))
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise CheckpointError(f"{path}: already exists and is not empty (choose another path or overwrite)")
    primary = jax.process_index() == 0  # with several processes, one writes the side files; all write arrays
    if primary:
        if path.exists():
            path.rmtree()
        path.mkdir(parents=True)
        if tokenizer_dir is not None:
            copy_tokenizer_files(tokenizer_dir, path / TOKENIZER_DIR)
        if added_tokens:
            (path / TOKENIZER_DIR).mkdir(exist_ok=True)
            write_added_tokens(path / TOKENIZER_DIR, added_tokens)
    _sync_processes("jaxtune_save_params_prepared")
    with _params_checkpointer(params, compress) as checkpointer:
        checkpointer.save(path / PARAMS_DIR, args=ocp.args.PyTreeSave(params))
    if primary:
        config = dataclasses.asdict(model_cfg)
        config["preset"] = None  # the fields are resolved; a preset name would re-apply its values on load
        write_text_atomic(path / MODEL_CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    _sync_processes("jaxtune_save_params_done")
    return path


def _sync_processes(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _params_checkpointer(params: dict, compress: bool) -> ocp.Checkpointer:
    """A synchronous Orbax checkpointer that writes host (numpy) arrays in place, one large array at a time.

    Orbax's default numpy handler deep-copies every host array before writing, which doubles peak memory (import-hf
    holds the whole model in numpy). Here nothing is copied: the save is synchronous, so the arrays cannot change
    meanwhile. Compression is off by default because the OCDBT writer keeps every compressed chunk in memory until
    the checkpoint commits (measured: +0.8x the model's size at peak; benchmarks/convert_memory.py); uncompressed
    data is written straight from the arrays.
    """
    registry = ocp.type_handlers.create_type_handler_registry(
        (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, ocp.type_handlers.get_type_handler(jax.Array)),
    )
    largest = max(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(params))
    in_flight_gb = max(largest + 1, 2**28) / 10**9  # Orbax counts decimal GB; a request must stay below the limit
    handler = ocp.PyTreeCheckpointHandler(
        type_handler_registry=registry, save_concurrent_gb=in_flight_gb, use_compression=compress
    )
    return ocp.Checkpointer(handler)


def load_model_config(path: PathLike) -> ModelConfig:
    """The ModelConfig stored beside a params checkpoint."""
    file = as_path(path) / MODEL_CONFIG_FILE
    if not as_path(path).is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder{complete_step_hint(path)}")
    if not file.is_file():
        raise CheckpointError(
            f"{path}: not a jaxtune params checkpoint, or an incomplete step (no "
            f"{MODEL_CONFIG_FILE}){complete_step_hint(path)}"
        )
    try:
        return model_config_from_dict(json.loads(file.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ConfigError) as e:
        raise CheckpointError(f"{file}: {e}{complete_step_hint(path)}") from None


def load_params(
    path: PathLike,
    shardings: Any = None,
    dtype: Optional[str] = None,
    as_numpy: bool = False,
) -> tuple[ModelConfig, dict]:
    """Read a params-only checkpoint: (model config, nested dict of arrays).

    shardings: a ``jax.sharding.Sharding`` for every array, or a tree of them shaped like the params (e.g. from
    jaxtune.sharding); None places everything on the default device.
    dtype: cast every array to this dtype while reading (and report it as the config's ``param_dtype``).
    as_numpy: return host numpy arrays (export-hf: no device memory needed).
    """
    path = absolute_path(path)
    cfg = load_model_config(path)
    params_path = path / PARAMS_DIR
    if not params_path.is_dir():
        raise CheckpointError(f"{path}: no {PARAMS_DIR}/ folder (incomplete checkpoint){complete_step_hint(path)}")
    with ocp.PyTreeCheckpointer() as checkpointer, restore_boundary(path, f"{PARAMS_DIR}/"):
        item_metadata = checkpointer.metadata(params_path).item_metadata
        if item_metadata is None or item_metadata.tree is None:  # Orbax returns None for a missing or cut _METADATA
            raise CheckpointError(
                f"{path}: damaged checkpoint: the metadata of {PARAMS_DIR}/ is unreadable (_METADATA "
                f"or manifest.ocdbt missing or cut){complete_step_hint(path)}"
            )
        metadata = item_metadata.tree
        target_dtype = None if dtype is None else np.dtype(_numpy_dtype(dtype))
        cast = target_dtype is not None and any(np.dtype(m.dtype) != target_dtype for m in jax.tree.leaves(metadata))
        if as_numpy:
            restore_args = jax.tree.map(
                lambda m: ocp.RestoreArgs(restore_type=np.ndarray, dtype=target_dtype), metadata
            )
        else:
            if shardings is None:
                shardings = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            if isinstance(shardings, nnx.State):
                shardings = nnx.to_pure_dict(shardings)
            if isinstance(shardings, jax.sharding.Sharding):
                shardings = jax.tree.map(lambda _: shardings, metadata)
            restore_args = jax.tree.map(
                lambda m, s: ocp.ArrayRestoreArgs(sharding=s, global_shape=tuple(m.shape), dtype=target_dtype),
                metadata,
                shardings,
            )
        params = checkpointer.restore(params_path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    if dtype is not None:
        cfg = dataclasses.replace(cfg, param_dtype=dtype)
    _check_params_match_config(params, cfg, str(path))
    if (
        path / INTEGRITY_ITEM
    ).is_dir() and not cast:  # a train step read as saved: its params must be the recorded ones
        with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as reader, restore_boundary(path, f"{INTEGRITY_ITEM}/"):
            record = reader.restore(path / INTEGRITY_ITEM)
        _refuse_mixed(path, record, disagreements(record, params))
    check_finite(params, path)
    return cfg, params


def model_with_params(cfg: ModelConfig, params: dict) -> nnx.Module:
    """A model of ``cfg``'s family holding ``params`` (a nested dict of jax arrays, used as they are: no initialisation)."""
    model = nnx.eval_shape(lambda: create_model(cfg, nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


def restore_model(
    path: PathLike, shardings: Any = None, dtype: Optional[str] = None, **cfg_overrides: Any
) -> nnx.Module:
    """A model (of the checkpoint's ``model.family``, see :mod:`jaxtune.models.registry`) with the parameters of a
    params-only checkpoint.

    cfg_overrides: ModelConfig fields to change that do not affect parameter shapes (compute_dtype,
    attention_impl, scan_layers, remat_policy...).
    """
    cfg, params = load_params(path, shardings=shardings, dtype=dtype)
    return model_with_params(dataclasses.replace(cfg, **cfg_overrides), params)


def tokenizer_path(path: PathLike) -> Optional[epath.Path]:
    """The checkpoint's ``tokenizer/`` folder, or None when it carries none; from an object store, a local copy
    (SentencePiece and transformers read local files only)."""
    d = as_path(path) / TOKENIZER_DIR
    if not d.is_dir():
        return None
    return local_copy(d) if is_remote(d) else d


def expected_param_shapes(cfg: ModelConfig) -> dict:
    """The params tree of ``cfg`` as nested dicts of shape tuples (traced from the model itself, nothing allocated)."""
    model = nnx.eval_shape(lambda: create_model(cfg, nnx.Rngs(0)))
    return jax.tree.map(lambda x: tuple(x.shape), nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def _check_params_match_config(params: dict, cfg: ModelConfig, where: str) -> None:
    expected = expected_param_shapes(cfg)
    flat_expected = {
        _dotted(k): s
        for k, s in jax.tree_util.tree_flatten_with_path(expected, is_leaf=lambda x: isinstance(x, tuple))[0]
    }
    flat_params = {_dotted(k): tuple(a.shape) for k, a in jax.tree_util.tree_flatten_with_path(params)[0]}
    missing = sorted(set(flat_expected) - set(flat_params))
    unexpected = sorted(set(flat_params) - set(flat_expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: params do not match the model config: missing {missing}, unexpected {unexpected}"
        )
    for key, shape in flat_expected.items():
        if flat_params[key] != shape:
            raise CheckpointError(f"{where}: param {key} has shape {flat_params[key]}, the model config needs {shape}")


def _dotted(path: tuple) -> str:
    return ".".join(str(getattr(p, "key", getattr(p, "name", p))) for p in path)


def _numpy_dtype(name: str) -> Any:
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


# ====================================================================================================================
# Train state
# ====================================================================================================================
#
# A run's checkpoints live in RUN_DIR/checkpoints/<step>/ (Orbax CheckpointManager, one Composite per step):
#
#     params/             the parameters, in the same format as a params-only checkpoint's params/
#     train_state/        optimizer state, step counters and the run's PRNG key
#     data_iter/          each process's grain iterator state (process_<i>-of-<n>.json)
#     config/             the resolved run config (JSON)
#     integrity/          the writer's identity and fingerprints of every part (jaxtune.checkpoint.integrity): restore
#                         refuses a step whose parts disagree with it
#     model_config.json   written by process 0 once the step is finalised, with tokenizer/ when one is known:
#                         from then on the step folder is also a params-only checkpoint (eval, export-hf,
#                         train.init_from read it directly)
#
# Orbax writes each step into a temporary folder, puts a commit marker in it and renames it on completion; only
# folders holding the marker count as checkpoints, so a half-written (or half-copied, half-deleted) step is never
# restored.
#
# A complete step can still be damaged afterwards (a file truncated or deleted, flipped bytes): every read goes
# through restore_boundary, which turns Orbax's and TensorStore's errors into one CheckpointError naming the step
# folder, and restored values are checked finite. The trainer then moves the step to RUN_DIR/checkpoints_damaged/
# (TrainCheckpointManager.set_aside) and resumes from the previous one.

CHECKPOINTS_DIR = "checkpoints"
DAMAGED_DIR = "checkpoints_damaged"  # RUN_DIR/checkpoints_damaged/<step>: steps set aside because they did not restore
_COMMIT_MARKER = "commit_success.txt"  # orbax.checkpoint's atomicity_types.COMMIT_SUCCESS_FILE
TRAIN_PARAMS_ITEM, TRAIN_STATE_ITEM, DATA_ITER_ITEM, RUN_CONFIG_ITEM = "params", "train_state", "data_iter", "config"


def train_checkpoint_dir(run_dir: PathLike) -> epath.Path:
    """Where a run keeps its train-state checkpoints."""
    return absolute_path(run_dir) / CHECKPOINTS_DIR


class TrainCheckpointManager:
    """Saves and restores the whole train state of a run (parameters, optimizer state, counters, RNG, each
    process's data iterator and the resolved config) with Orbax, asynchronously when configured.

    Every process must make the same calls (Orbax coordinates multi-process saves); files outside Orbax's items
    are written by process 0 only.

    cfg: the checkpoint section (max_to_keep, async_save). Epoch ends are kept apart, params only, by
    :class:`EpochCheckpointManager`.
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
        return sorted(s for s in self._manager.all_steps() if (self.step_dir(s) / _COMMIT_MARKER).is_file())

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
            _refuse_mixed(self.step_dir(step), restored[INTEGRITY_ITEM], mixed)
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
        _sync_processes(f"jaxtune_set_aside_{step}")
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
            if not (step_dir / _COMMIT_MARKER).is_file():
                continue  # still being written
            _write_params_side_files(step_dir, self.model_cfg, self.tokenizer_src, self.added_tokens)
            self._unmarked.discard(step)


def _refuse_mixed(step_dir: Any, record: Mapping[str, Any], parts: list[str]) -> None:
    if parts:
        raise CheckpointError(
            f"{step_dir}: the step mixes two writers: {'; '.join(parts)} disagree with the integrity record of "
            f"run {record.get('run')} at step {record.get('step')} (two runs wrote into one run directory)"
            f"{complete_step_hint(step_dir)}"
        )


def _write_params_side_files(
    step_dir: Any, model_cfg: ModelConfig, tokenizer_src: Any, added_tokens: Mapping[str, int]
) -> None:
    """Make a finalised Orbax step folder holding a ``params`` item a params-only checkpoint: tokenizer/ (when one
    is known), then model_config.json, written last and atomically (its presence marks the checkpoint usable)."""
    step_dir = as_path(step_dir)
    if tokenizer_src is not None and not (step_dir / TOKENIZER_DIR).exists():
        copy_tokenizer_files(tokenizer_src, step_dir / TOKENIZER_DIR)
        if added_tokens:
            write_added_tokens(step_dir / TOKENIZER_DIR, added_tokens)
    config = dataclasses.asdict(model_cfg)
    config["preset"] = None  # resolved fields, as save_params writes them
    write_text_atomic(step_dir / MODEL_CONFIG_FILE, json.dumps(config, indent=2) + "\n")


def saved_run_config(run_dir: str | Path) -> Optional[tuple[int, dict]]:
    """(step, resolved run config) of the newest complete checkpoint of a run whose config item reads, or None
    (read without opening a CheckpointManager: the trainer compares configs before it builds anything)."""
    directory = train_checkpoint_dir(run_dir)
    if not directory.is_dir():
        return None
    steps = sorted(
        (int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / _COMMIT_MARKER).is_file()), reverse=True
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


# ====================================================================================================================
# Epoch checkpoints
# ====================================================================================================================
#
# Each kept epoch end is written to RUN_DIR/epochs/<epoch>/ (1-based), parameters only, in checkpoint.epoch_dtype:
#
#     params/             the parameters (the same Orbax tree as a params-only checkpoint's params/)
#     epoch/              JSON: {"epoch": E, "step": S, "dtype": "bfloat16"}
#     model_config.json   written once the folder is finalised (param_dtype = the epoch dtype), with tokenizer/:
#                         the folder is then a params-only checkpoint like import-hf's (eval, export-hf,
#                         checkpoint.init_from and the sweep read it)
#
# No optimizer state and no data iterator: an epoch checkpoint is 2 bytes per parameter in bfloat16 where a full
# train state is 12 (float32 weights and two AdamW moments). Resuming always uses RUN_DIR/checkpoints.

EPOCHS_DIR = "epochs"
EPOCH_INFO_ITEM = "epoch"


def epoch_checkpoint_dir(run_dir: PathLike) -> Any:
    """Where a run keeps its params-only epoch checkpoints."""
    return absolute_path(run_dir) / EPOCHS_DIR


class EpochCheckpointManager:
    """Writes a params-only checkpoint of each epoch end, cast to ``dtype``, with Orbax (asynchronously when
    ``async_save``); every epoch is kept. Every process must make the same calls.

    model_cfg, tokenizer_src, added_tokens: as for :class:`TrainCheckpointManager`; model_config.json records
    ``param_dtype=dtype``.
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
        options = ocp.CheckpointManagerOptions(enable_async_checkpointing=async_save, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._unmarked: set[int] = {
            e for e in self.all_epochs() if not (self.epoch_dir(e) / MODEL_CONFIG_FILE).exists()
        }

    def all_epochs(self) -> list[int]:
        """Epochs with a complete (committed) checkpoint, oldest first."""
        return sorted(e for e in self._manager.all_steps() if (self.epoch_dir(e) / _COMMIT_MARKER).is_file())

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
            if (self.epoch_dir(epoch) / _COMMIT_MARKER).is_file():
                _write_params_side_files(self.epoch_dir(epoch), self.model_cfg, self.tokenizer_src, self.added_tokens)
                self._unmarked.discard(epoch)

    def close(self) -> None:
        self.wait_until_finished()
        self._manager.close()


def cast_params(params: Any, dtype: str) -> Any:
    """``params`` (a tree of jax arrays) in ``dtype``, on the same shardings; floating arrays already in ``dtype``
    are returned as they are (no device copy)."""
    target = np.dtype(_numpy_dtype(dtype))
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
        if (candidate / MODEL_CONFIG_FILE).is_file() and (candidate / _COMMIT_MARKER).is_file():
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
