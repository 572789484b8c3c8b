"""The Hugging Face architectures jaxtune converts, keyed by ``model.family``, as :mod:`jaxtune.convert.hf` uses
them: each family's declaration (:mod:`jaxtune.families`: transformers names, config translation, tensor layout)
with ModelConfigs in and ``config.json`` out. This module names no family."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from jaxtune.config.schema import ModelConfig
from jaxtune.convert.hf_config import hf_family, model_config_from_hf, write_hf_config
from jaxtune.families.hf import Placement, TensorLayout
from jaxtune.families.registry import Family, load_families


@dataclass(frozen=True)
class HFFamily:
    """One family's architecture: its transformers names, config translation and tensor layout."""

    family: Family

    @property
    def layout(self) -> TensorLayout:
        return self.family.hf.layout

    @property
    def architecture(self) -> str:
        """The transformers class (``config.json``'s ``architectures``; also the reference model of check-hf)."""
        return self.family.hf.architecture

    @property
    def embed(self) -> str:
        """Name of the input embedding (its stored dtype is the checkpoint's)."""
        return self.layout.embed

    @property
    def lm_head(self) -> str:
        """Name of the untied LM head (older transformers also saved it when tied)."""
        return self.layout.lm_head

    def config_from_hf(self, raw: dict[str, Any], where: str) -> ModelConfig:
        """A ModelConfig of a config.json dict (see :func:`jaxtune.convert.hf_config.model_config_from_hf`)."""
        return model_config_from_hf(raw, where)

    def write_config(self, cfg: ModelConfig, out_dir: Path, dtype: str) -> None:
        """Write config.json and generation_config.json (:func:`jaxtune.convert.hf_config.write_hf_config`)."""
        write_hf_config(cfg, out_dir, dtype)

    def canonical_name(self, name: str) -> str:
        """A stored tensor name as the layout spells it (older checkpoints may drop a prefix)."""
        return self.layout.canonical_name(name)

    def place(self, name: str, cfg: ModelConfig) -> Optional[Placement]:
        """Where a (canonical) stored tensor goes, or None when it is not part of the model."""
        return self.layout.place(name, cfg)

    def hf_tensor_shapes(self, cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
        """Every tensor of the Hugging Face checkpoint of ``cfg`` in transformers' order, with its shape."""
        return self.layout.hf_tensor_shapes(cfg)

    def hf_tensor(self, name: str, params: dict, cfg: ModelConfig) -> np.ndarray:
        """The Hugging Face tensor ``name`` as a view of jaxtune params."""
        return self.layout.hf_tensor(name, params, cfg)

    def is_ignored(self, name: str) -> bool:
        """Whether a stored tensor is a known non-parameter buffer."""
        return self.layout.is_ignored(name)


FAMILIES: dict[str, HFFamily] = {name: HFFamily(f) for name, f in load_families().items()}
"""``model.family`` -> its Hugging Face architecture."""


def family_of_hf(raw: dict[str, Any], where: str = "config.json") -> HFFamily:
    """The family of a Hugging Face config dict, from ``architectures`` (or ``model_type`` when that is empty)."""
    return FAMILIES[hf_family(raw, where).name]
