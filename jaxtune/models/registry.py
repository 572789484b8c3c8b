"""The model families: ``model.family`` -> the Flax NNX class that builds it.

Every place that builds a model from a :class:`~jaxtune.config.ModelConfig` (checkpoints, sharding, the trainer,
evaluation loading, conversion) goes through :func:`create_model`, so adding a family means adding one entry here
(and its name to ``jaxtune.config.ModelFamily``). All families share one interface: ``Model(cfg, rngs)``, and
``model(input_ids, positions=None, segment_ids=None, cache=None) -> (logits, cache)`` with the KV cache of
:func:`jaxtune.models.llama.init_cache`.
"""

from __future__ import annotations

import typing
from typing import Optional

from flax import nnx

from jaxtune.config import ModelConfig, ModelFamily
from jaxtune.models.bloom import Bloom
from jaxtune.models.llama import Llama

MODEL_CLASSES: dict[str, type[nnx.Module]] = {"llama": Llama, "bloom": Bloom}
"""Family name -> model class."""

if set(MODEL_CLASSES) != set(typing.get_args(ModelFamily)):
    raise RuntimeError("jaxtune.config.ModelFamily and jaxtune.models.registry.MODEL_CLASSES name different families")


def model_class(cfg: ModelConfig) -> type[nnx.Module]:
    """The class of ``cfg.family``."""
    try:
        return MODEL_CLASSES[cfg.family]
    except KeyError:
        raise ValueError(f"model.family: unknown family {cfg.family!r} (known: {', '.join(MODEL_CLASSES)})") from None


def create_model(cfg: ModelConfig, rngs: Optional[nnx.Rngs] = None) -> nnx.Module:
    """A freshly initialised model of ``cfg``'s family (under ``nnx.eval_shape`` for shapes only)."""
    return model_class(cfg)(cfg, rngs if rngs is not None else nnx.Rngs(0))
