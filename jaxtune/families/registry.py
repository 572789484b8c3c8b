"""The model families: everything family-specific, declared once per family in one file of :mod:`jaxtune.families`.

A family (``model.family``) registers one :class:`Family`:

- ``model``: its Flax NNX model class, as ``"module:Class"`` (:mod:`jaxtune.models.registry` imports it; this
  package never imports jax, so the config layer can read it);
- ``layer_counts``: parameter and matmul-weight counts of one layer and of what lies outside the layers
  (:mod:`jaxtune.models.stats` derives parameter counts, FLOPs and bytes from them);
- ``hf``: its Hugging Face architecture (:class:`jaxtune.families.hf.HFArchitecture`: the transformers classes,
  the ``config.json`` translation both ways and the tensor layout; :mod:`jaxtune.convert` does the rest);
- ``presets``: its named shapes (``model.preset``), plain ModelConfig fields (:mod:`jaxtune.config.presets` adds
  ``family``);
- ``config_rules``: the ModelConfig values the family cannot represent (checked with every config).

The code that uses these (``jaxtune.models.registry``, ``models.stats``, ``convert.hf_config``, ``convert.hf``,
``convert.hf_weights``, ``config.presets``, ``config.schema``'s model rules) names no family. Adding one, e.g. a Qwen2 (LLaMA plus q/k/v biases),
touches three files: the model (``jaxtune/models/qwen2.py``, a :class:`jaxtune.models.decoder.DecoderModel` with
its ``prepare``, ``layer`` and ``final_norm``), the family file (``jaxtune/families/qwen2.py``, ending with
``register(Family(name="qwen2", ...))``), and the name (``jaxtune.names.ModelFamily``). :func:`load_families`
imports every module of the package, and ``tests/test_names.py`` checks that every declared name has its family.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from jaxtune.families.hf import Cfg, HFArchitecture
from jaxtune.names import MODEL_FAMILIES, unknown_name_message

_KIT = ("hf", "registry")
"""Modules of the package that declare no family."""


@dataclass(frozen=True)
class LayerCounts:
    """A family's counts of one decoder layer, and of what lies outside the layers besides the embedding tables."""

    layer_params: int
    layer_matmul_weights: int
    """Weights used in a matmul (2 FLOPs per weight and token)."""
    other_params: int


def no_rules(cfg: Cfg, where: str) -> list[tuple[str, str]]:
    """The ``config_rules`` of a family that adds none."""
    return []


@dataclass(frozen=True)
class Family:
    """Everything family-specific (see the module docstring)."""

    name: str
    """``model.family``; declared in :data:`jaxtune.names.ModelFamily`."""
    model: str
    """The model class as ``"module:Class"`` (e.g. ``"jaxtune.models.llama:Llama"``)."""
    layer_counts: Callable[[Cfg], LayerCounts]
    hf: HFArchitecture
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Named shapes: preset name -> ModelConfig fields (without ``family``)."""
    config_rules: Callable[[Cfg, str], list[tuple[str, str]]] = no_rules
    """``(ModelConfig, "model") -> [(problem, field)]``: what the family cannot represent, beyond the shape rules
    every ModelConfig obeys (:meth:`jaxtune.config.schema.ModelConfig.validate` reports each, naming the key)."""


FAMILIES: dict[str, Family] = {}
"""Family name -> its declaration (complete after :func:`load_families`)."""


def register(family: Family) -> Family:
    """Add a family; its name must be declared in :data:`jaxtune.names.MODEL_FAMILIES` and registered once."""
    if family.name not in MODEL_FAMILIES:
        raise ValueError(
            f"family {family.name!r} is not declared in jaxtune.names.ModelFamily "
            f"(declared: {', '.join(MODEL_FAMILIES)})"
        )
    if family.name in FAMILIES and FAMILIES[family.name] != family:
        raise ValueError(f"family {family.name!r} is registered twice")
    FAMILIES[family.name] = family
    return family


@functools.cache
def _import_family_modules() -> None:
    package = importlib.import_module("jaxtune.families")
    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in _KIT:
            importlib.import_module(f"{package.__name__}.{module.name}")


def load_families() -> dict[str, Family]:
    """Every registered family, in the order of :data:`jaxtune.names.MODEL_FAMILIES`, after importing each family
    module of :mod:`jaxtune.families`."""
    _import_family_modules()
    return {name: FAMILIES[name] for name in MODEL_FAMILIES if name in FAMILIES}


def family(name: str) -> Family:
    """The family ``name``; a ValueError naming ``model.family`` and listing the known ones for an unknown name."""
    families = load_families()
    if name not in families:
        raise ValueError("model.family: " + unknown_name_message("family", name, families))
    return families[name]
