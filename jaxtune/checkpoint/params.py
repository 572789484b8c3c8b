"""Params-only checkpoints (layout in :mod:`jaxtune.checkpoint.layout`): save, load (onto any shardings, cast, or
to host numpy), the model of a checkpoint, and the side files (``model_config.json``, ``tokenizer/``) that make a
finalised train-state or epoch step folder a params-only checkpoint too."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from typing import Any, Iterator, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from jaxtune.checkpoint.errors import CheckpointError, complete_step_hint, restore_boundary
from jaxtune.checkpoint.finite import check_finite, dotted_key
from jaxtune.checkpoint.integrity import check_recorded_params
from jaxtune.checkpoint.layout import MODEL_CONFIG_FILE, PARAMS_DIR, TOKENIZER_DIR
from jaxtune.checkpoint.tokenizer_files import copy_tokenizer_files, write_added_tokens
from jaxtune.config.loading import model_config_from_dict
from jaxtune.config.schema import ConfigError, ModelConfig
from jaxtune.models.registry import create_model
from jaxtune.paths import PathLike, absolute_path, as_path, write_text_atomic


def params_to_pure_dict(params: Any) -> dict:
    """A nested dict of arrays from an ``nnx.State`` of params (or a nested dict already)."""
    if isinstance(params, nnx.State):
        return nnx.to_pure_dict(params)
    if not isinstance(params, Mapping):
        raise TypeError(f"expected an nnx.State or a nested dict of arrays, got {type(params).__name__}")
    return {k: params_to_pure_dict(v) if isinstance(v, (Mapping, nnx.State)) else v for k, v in params.items()}


def save_params(
    path: PathLike,
    params_state: Any,
    model_cfg: ModelConfig,
    tokenizer_dir: Optional[PathLike] = None,
    added_tokens: Optional[Mapping[str, int]] = None,
    overwrite: bool = False,
    compress: bool = False,
) -> epath.Path:
    """Write a params-only checkpoint (see :mod:`jaxtune.checkpoint.layout`) and return its path.

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
    sync_processes("jaxtune_save_params_prepared")
    with _params_checkpointer(params, compress) as checkpointer:
        checkpointer.save(path / PARAMS_DIR, args=ocp.args.PyTreeSave(params))
    if primary:
        write_model_config(path, model_cfg)
    sync_processes("jaxtune_save_params_done")
    return path


def write_model_config(path: PathLike, model_cfg: ModelConfig) -> None:
    """Write ``model_config.json`` into the checkpoint folder ``path``, atomically (its presence marks the
    checkpoint complete, so it is written last)."""
    config = dataclasses.asdict(model_cfg)
    config["preset"] = None  # the fields are resolved; a preset name would re-apply its values on load
    write_text_atomic(as_path(path) / MODEL_CONFIG_FILE, json.dumps(config, indent=2) + "\n")


def write_params_side_files(
    step_dir: Any, model_cfg: ModelConfig, tokenizer_src: Any, added_tokens: Mapping[str, int]
) -> None:
    """Make a finalised Orbax step folder holding a ``params`` item a params-only checkpoint: tokenizer/ (when one
    is known), then model_config.json, written last and atomically (its presence marks the checkpoint usable)."""
    step_dir = as_path(step_dir)
    if tokenizer_src is not None and not (step_dir / TOKENIZER_DIR).exists():
        copy_tokenizer_files(tokenizer_src, step_dir / TOKENIZER_DIR)
        if added_tokens:
            write_added_tokens(step_dir / TOKENIZER_DIR, added_tokens)
    write_model_config(step_dir, model_cfg)


def sync_processes(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (nothing to wait for with one process)."""
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


class _NoStepMetadataWarning(logging.Filter):
    """Drops Orbax's warning that ``{params_dir}/_CHECKPOINT_METADATA`` is missing (see :func:`quiet_step_metadata`)."""

    def __init__(self, params_dir: epath.Path):
        super().__init__()
        self.missing = str(params_dir / "_CHECKPOINT_METADATA")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Metadata file does not exist") and self.missing in message)


@contextlib.contextmanager
def quiet_step_metadata(params_dir: epath.Path) -> Iterator[None]:
    """Silence Orbax's absl warning "Metadata file does not exist: PARAMS/_CHECKPOINT_METADATA" while ``params_dir``
    is read: the params/ item of a train-state or epoch step is written by a CheckpointManager, which keeps that file
    one level up (in the step folder), so its absence is the layout, not damage (damaged metadata is still reported:
    ``_METADATA`` is checked by :func:`load_params`)."""
    absl_logger = logging.getLogger("absl")
    quiet = _NoStepMetadataWarning(params_dir)
    absl_logger.addFilter(quiet)
    try:
        yield
    finally:
        absl_logger.removeFilter(quiet)


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
    with (
        quiet_step_metadata(params_path),
        ocp.PyTreeCheckpointer() as checkpointer,
        restore_boundary(path, f"{PARAMS_DIR}/"),
    ):
        item_metadata = checkpointer.metadata(params_path).item_metadata
        if item_metadata is None or item_metadata.tree is None:  # Orbax returns None for a missing or cut _METADATA
            raise CheckpointError(
                f"{path}: damaged checkpoint: the metadata of {PARAMS_DIR}/ is unreadable (_METADATA "
                f"or manifest.ocdbt missing or cut){complete_step_hint(path)}"
            )
        metadata = item_metadata.tree
        target_dtype = None if dtype is None else np.dtype(numpy_dtype(dtype))
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
    if not cast:  # a train step read as saved: its params must be the ones its integrity record names
        check_recorded_params(path, params)
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


def expected_param_shapes(cfg: ModelConfig) -> dict:
    """The params tree of ``cfg`` as nested dicts of shape tuples (traced from the model itself, nothing allocated)."""
    model = nnx.eval_shape(lambda: create_model(cfg, nnx.Rngs(0)))
    return jax.tree.map(lambda x: tuple(x.shape), nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def _check_params_match_config(params: dict, cfg: ModelConfig, where: str) -> None:
    expected = expected_param_shapes(cfg)
    flat_expected = {
        dotted_key(k): s
        for k, s in jax.tree_util.tree_flatten_with_path(expected, is_leaf=lambda x: isinstance(x, tuple))[0]
    }
    flat_params = {dotted_key(k): tuple(a.shape) for k, a in jax.tree_util.tree_flatten_with_path(params)[0]}
    missing = sorted(set(flat_expected) - set(flat_params))
    unexpected = sorted(set(flat_params) - set(flat_expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: params do not match the model config: missing {missing}, unexpected {unexpected}"
        )
    for key, shape in flat_expected.items():
        if flat_params[key] != shape:
            raise CheckpointError(f"{where}: param {key} has shape {flat_params[key]}, the model config needs {shape}")


def numpy_dtype(name: str) -> Any:
    """The numpy dtype of a config's dtype name (``float32``, ``bfloat16``, ``float16``)."""
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]
