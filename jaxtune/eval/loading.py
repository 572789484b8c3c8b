"""Loading what an evaluation needs: the model of a jaxtune params checkpoint or a Hugging Face LLaMA folder
(converted in memory, optionally sharded over a mesh), and the chat codec of its tokenizer and template.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxtune.checkpoint import (
    MODEL_CONFIG_FILE,
    complete_step_hint,
    load_model_config,
    model_with_params,
    restore_model,
    tokenizer_path,
)
from jaxtune.config import ModelConfig
from jaxtune.errors import JaxtuneError
from jaxtune.eval.template_codec import TemplateChatCodec
from jaxtune.models.llama import Llama


class EvalSetupError(JaxtuneError, ValueError):
    """The evaluation cannot start: a checkpoint, tokenizer, suite name, data folder or judge setting is wrong. The
    message names the path or config field."""


def checkpoint_kind(path: str | Path) -> str:
    """``jaxtune`` (model_config.json + params/) or ``hf`` (config.json + weights); anything else is an error."""
    p = Path(path)
    if not p.is_dir():
        raise EvalSetupError(f"checkpoint {p} is not a directory{complete_step_hint(p)}")
    if (p / MODEL_CONFIG_FILE).is_file():
        return "jaxtune"
    if (p / "config.json").is_file():
        return "hf"
    raise EvalSetupError(f"checkpoint {p} is neither a jaxtune params checkpoint ({MODEL_CONFIG_FILE} + params/) nor "
                         f"a Hugging Face model folder (config.json + weights){complete_step_hint(p)}")


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
            raise EvalSetupError(f"parameters {treedef} do not match the layout of the model config "
                                 f"{jax.tree.structure(tree)}")
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
) -> Llama:
    """The model of a jaxtune params checkpoint or a Hugging Face LLaMA folder (converted in memory), its
    parameters sharded over ``mesh`` when given. compute_dtype: override the matmul dtype (None keeps the
    checkpoint's)."""
    kind = checkpoint_kind(checkpoint)
    overrides = {} if compute_dtype is None else {"compute_dtype": compute_dtype}
    if kind == "jaxtune":
        shardings = None if mesh is None else _param_shardings(load_model_config(checkpoint), mesh)
        return restore_model(checkpoint, shardings=shardings, **overrides)
    from jaxtune.convert.hf import load_hf_params

    cfg, params = load_hf_params(checkpoint)
    cfg = dataclasses.replace(cfg, **overrides)
    return model_with_params(cfg, _place(params, cfg, mesh))


def tokenizer_location(checkpoint: str | Path, tokenizer: Optional[str | Path] = None) -> Path:
    """Where the tokenizer of an evaluation comes from: ``tokenizer`` when given, else the checkpoint's own."""
    if tokenizer is not None:
        return Path(tokenizer)
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


def shard_model(model: Llama, mesh: Mesh) -> Llama:
    """Place an in-memory model's parameters on ``mesh`` by jaxtune.sharding's rules (divisibility checked first)."""
    state = nnx.state(model, nnx.Param)
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, _place(params, model.cfg, mesh))
    nnx.update(model, state)
    return model
