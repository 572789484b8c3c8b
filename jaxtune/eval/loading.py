"""Loading what an evaluation needs: the model of a jaxtune params checkpoint or a Hugging Face LLaMA/BLOOM folder,
and the chat codec of its tokenizer and template.

Parameters go straight onto the mesh, in the evaluation dtype, without any device or host ever holding the whole
model: a jaxtune checkpoint is restored by Orbax with each parameter's target sharding (every process reads only
its own shards and casts them as it reads); a Hugging Face folder is streamed one stored tensor at a time, each
tensor cast on the host, split over the mesh and written into its slot of the (already sharded) stacked
parameter. A mesh that does not divide the checkpoint's shapes is refused before anything is read, with the layout
error training gives (naming the dimension, the config field and the mesh axis).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxtune.checkpoint.errors import complete_step_hint
from jaxtune.checkpoint.layout import MODEL_CONFIG_FILE
from jaxtune.checkpoint.params import expected_param_shapes, load_model_config, model_with_params, restore_model
from jaxtune.checkpoint.tokenizer_files import tokenizer_path
from jaxtune.config.schema import ModelConfig
from jaxtune.data.remote import local_input
from jaxtune.eval.errors import EvalSetupError
from jaxtune.eval.template_codec import TemplateChatCodec
from jaxtune.paths import as_path

log = logging.getLogger(__name__)


def checkpoint_kind(path: str | Path) -> str:
    """``jaxtune`` (model_config.json + params/) or ``hf`` (config.json + weights); anything else is an error."""
    p = as_path(path)
    if not p.is_dir():
        raise EvalSetupError(f"checkpoint {p} is not a directory{complete_step_hint(p)}")
    if (p / MODEL_CONFIG_FILE).is_file():
        return "jaxtune"
    if (p / "config.json").is_file():
        return "hf"
    raise EvalSetupError(
        f"checkpoint {p} is neither a jaxtune params checkpoint ({MODEL_CONFIG_FILE} + params/) nor "
        f"a Hugging Face model folder (config.json + weights){complete_step_hint(p)}"
    )


def _param_shardings(cfg: ModelConfig, mesh: Mesh) -> dict:
    """Each parameter's NamedSharding under jaxtune.sharding's rules, after checking the mesh divides the model."""
    from jaxtune.sharding import abstract_model, param_shardings, validate_param_layout

    _, shapes, axes = abstract_model(cfg)
    validate_param_layout(shapes, axes, mesh)
    return param_shardings(axes, mesh)


def _place(params: dict, cfg: ModelConfig, mesh: Optional[Mesh]) -> dict:
    """Host numpy params (consumed: each host array is dropped once placed, so the model is not held twice) on the
    device(s): sharded by jaxtune.sharding's rules with a mesh (each process supplies its own shards), else on the
    default device."""
    leaves, treedef = jax.tree.flatten(params)
    params.clear()
    shardings: list = [None] * len(leaves)
    if mesh is not None:
        tree = _param_shardings(cfg, mesh)
        if jax.tree.structure(tree) != treedef:
            raise EvalSetupError(
                f"parameters {treedef} do not match the layout of the model config {jax.tree.structure(tree)}"
            )
        shardings = jax.tree.leaves(tree)
    placed = []
    for i, sharding in enumerate(shardings):
        host, leaves[i] = leaves[i], None
        if sharding is None:
            placed.append(jnp.asarray(host))
        else:
            placed.append(jax.make_array_from_callback(host.shape, sharding, lambda index, a=host: a[index]))
        del host
    return jax.tree.unflatten(treedef, placed)


def load_model(
    checkpoint: str | Path, *, mesh: Optional[Mesh] = None, compute_dtype: Optional[str] = None
) -> nnx.Module:
    """The model of a jaxtune params checkpoint or a Hugging Face LLaMA/BLOOM folder, its parameters sharded over
    ``mesh`` when given (else on the default device). compute_dtype: the dtype parameters are restored in and matmuls
    run in (None keeps the checkpoint's)."""
    kind = checkpoint_kind(checkpoint)
    overrides = {} if compute_dtype is None else {"compute_dtype": compute_dtype}
    log.info(
        "loading %s (%s checkpoint) onto %s in %s",
        checkpoint,
        kind,
        "the default device" if mesh is None else f"mesh {dict(mesh.shape)}",
        compute_dtype or "its dtype",
    )
    if kind == "jaxtune":
        shardings = None if mesh is None else _param_shardings(load_model_config(checkpoint), mesh)
        return restore_model(checkpoint, shardings=shardings, dtype=compute_dtype, **overrides)
    cfg, params = stream_hf_params(checkpoint, mesh, dtype=compute_dtype)
    return model_with_params(dataclasses.replace(cfg, **overrides), params)


def _host_put(host: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A host array as a global array with ``sharding`` (each process supplies the shards of its own devices)."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: np.ascontiguousarray(host[index]))


def _fitted(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``array`` zero-padded at the end of each dimension up to ``shape`` (vocabulary padding)."""
    if tuple(array.shape) == tuple(shape):
        return array
    out = np.zeros(shape, array.dtype)
    out[tuple(slice(0, n) for n in array.shape)] = array
    return out


def stream_hf_params(
    hf_dir: str | Path, mesh: Optional[Mesh] = None, dtype: Optional[str] = None
) -> tuple[ModelConfig, dict]:
    """(ModelConfig, params) of a Hugging Face LLaMA, BLOOM or Qwen2 folder, read one stored tensor at a time straight onto ``mesh``
    (or the default device) in ``dtype`` (None: the stored dtype).

    The stacked layer parameters are allocated sharded (zeros) and filled layer by layer in place; at any moment a
    host holds one stored tensor and a device its shards of the model plus one layer's shard of one tensor. Missing,
    unexpected or misshapen tensors are named before any is read (as ``import-hf`` does).
    """
    from jaxtune.convert.hf_config import read_hf_config
    from jaxtune.convert.hf_families import family_of_hf
    from jaxtune.convert.hf_weights import FLOAT_DTYPES, WeightSource, check_tensors
    from jaxtune.models.dtypes import DTYPES

    hf_dir = Path(hf_dir)
    raw = read_hf_config(hf_dir)
    family = family_of_hf(raw, where=str(hf_dir / "config.json"))
    cfg = family.config_from_hf(raw, str(hf_dir / "config.json"))
    source = WeightSource(hf_dir)
    check_tensors(source, cfg, family)
    stored = {family.canonical_name(n): info for n, info in source.infos().items()}
    dtype = dtype or FLOAT_DTYPES[np.dtype(stored[family.embed].dtype)]
    cfg = dataclasses.replace(cfg, param_dtype=dtype)
    target = np.dtype(DTYPES[dtype])
    shapes = expected_param_shapes(cfg)
    if mesh is None:
        one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: one, shapes, is_leaf=lambda x: isinstance(x, tuple))
    else:
        shardings = _param_shardings(cfg, mesh)

    def zeros(shape: tuple[int, ...], sharding: jax.sharding.Sharding) -> jax.Array:
        return jax.jit(lambda: jnp.zeros(shape, target), out_shardings=sharding)()

    def layer_writer(sharding: jax.sharding.Sharding):
        # In place (donated): the stacked parameter is never held twice.
        return jax.jit(
            lambda stacked, block, i: jax.lax.dynamic_update_slice_in_dim(stacked, block, i, axis=0),
            donate_argnums=0,
            out_shardings=sharding,
        )

    layers = {name: zeros(shape, shardings["layers"][name]) for name, shape in shapes["layers"].items()}
    writers = {name: layer_writer(shardings["layers"][name]) for name in layers}
    params: dict = {}
    files_done = set()
    for stored_name, array in source.iter_arrays():
        name = family.canonical_name(stored_name)
        if family.is_ignored(name) or (name == family.lm_head and cfg.tie_word_embeddings):
            continue
        where = family.place(name, cfg)
        if where is None:
            continue
        if where.layer is None:
            host = array.T if where.param == "lm_head" else array
            params[where.param] = _host_put(_fitted(host.astype(target), shapes[where.param]), shardings[where.param])
        else:
            block = where.spec.to_jaxtune(array, cfg)[None].astype(target)
            block = _host_put(block, shardings["layers"][where.param])
            layers[where.param] = writers[where.param](layers[where.param], block, np.int32(where.layer))
        del array
        path = source.file_of(stored_name)
        if path not in files_done:
            files_done.add(path)
            log.info("streaming %s (%d/%d weight files)", path.name, len(files_done), len(source.files))
    params["layers"] = layers
    return cfg, params


def tokenizer_location(checkpoint: str | Path, tokenizer: Optional[str | Path] = None) -> Path:
    """Where the tokenizer of an evaluation comes from: ``tokenizer`` when given (a ``gs://`` one: this host's cached
    copy, :func:`jaxtune.data.remote.local_input`), else the checkpoint's own."""
    if tokenizer is not None:
        return local_input(tokenizer)
    if checkpoint_kind(checkpoint) == "jaxtune":
        found = tokenizer_path(checkpoint)
        if found is None:
            raise EvalSetupError(f"checkpoint {checkpoint} carries no tokenizer/ folder: set eval.tokenizer")
        return found
    return Path(checkpoint)


def load_codec(location: str | Path, template: str, model_vocab_size: int) -> TemplateChatCodec:
    """The chat codec of ``template`` on the tokenizer at ``location`` (a folder or a SentencePiece .model)."""
    from jaxtune.data.templates import template_backend
    from jaxtune.data.tokenizer import TokenizerError, load_tokenizer

    try:
        tokenizer = load_tokenizer(location, backend=template_backend(template))
        return TemplateChatCodec.create(template, tokenizer, model_vocab_size)
    except (TokenizerError, ValueError) as e:
        raise EvalSetupError(f"eval.tokenizer / eval.template: {e}") from None


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Place an in-memory model's parameters on ``mesh`` by jaxtune.sharding's rules (divisibility checked first)."""
    state = nnx.state(model, nnx.Param)
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, _place(params, model.cfg, mesh))
    nnx.update(model, state)
    return model
