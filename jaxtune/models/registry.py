"""``model.family`` -> the Flax NNX class that builds it, as each family's file declares it
(:mod:`jaxtune.families.registry`; this module names no family).

Every place that builds a model from a :class:`~jaxtune.config.schema.ModelConfig` (checkpoints, sharding, the trainer,
evaluation loading, conversion) goes through :func:`create_model`. All families share one interface, that of
:class:`jaxtune.models.decoder.DecoderModel`: ``Model(cfg, rngs)``, and
``model(input_ids, positions=None, segment_ids=None, cache=None, logit_slots=None) -> (logits, cache)`` with the KV
cache of :func:`jaxtune.models.decoder.init_cache`. Every parameter names its axes with
:data:`jaxtune.names.LOGICAL_AXES`; :func:`create_model` refuses a model naming any other.
"""

from __future__ import annotations

import importlib
from typing import Optional

from flax import nnx

from jaxtune.config.schema import ModelConfig
from jaxtune.families.registry import load_families
from jaxtune.names import check_axes, unknown_name_message


def _import_class(ref: str) -> type[nnx.Module]:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


MODEL_CLASSES: dict[str, type[nnx.Module]] = {name: _import_class(f.model) for name, f in load_families().items()}
"""Family name -> model class."""


def model_class(cfg: ModelConfig) -> type[nnx.Module]:
    """The class of ``cfg.family``."""
    try:
        return MODEL_CLASSES[cfg.family]
    except KeyError:
        raise ValueError("model.family: " + unknown_name_message("family", cfg.family, MODEL_CLASSES)) from None


def check_param_axes(model: nnx.Module) -> None:
    """Raise :class:`jaxtune.names.UnknownAxisError` naming the parameter and the axis when a parameter's logical
    axes are not all declared names (sharding would otherwise replicate a misspelt one)."""
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Variable):
            name = ".".join(str(p) for p in path)
            check_axes(var.get_metadata().get("logical_axes", ()), f"parameter {name} of {type(model).__name__}")


def create_model(cfg: ModelConfig, rngs: Optional[nnx.Rngs] = None) -> nnx.Module:
    """A freshly initialised model of ``cfg``'s family (under ``nnx.eval_shape`` for shapes only)."""
    model = model_class(cfg)(cfg, rngs if rngs is not None else nnx.Rngs(0))
    check_param_axes(model)
    return model
