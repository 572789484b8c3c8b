"""The Hugging Face architectures jaxtune converts, keyed by ``model.family``: how to read and write each one's
``config.json`` and where each of its tensors goes (:mod:`jaxtune.convert.hf` uses only this table)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from jaxtune.config.schema import ModelConfig
from jaxtune.convert import hf_bloom_config, hf_bloom_layout, hf_config, hf_layout
from jaxtune.convert.hf_config import HFConfigError
from jaxtune.convert.hf_layout import Placement


@dataclass(frozen=True)
class HFFamily:
    """One architecture: its transformers names, config translation and tensor layout."""

    architecture: str
    """The transformers class (``config.json``'s ``architectures``; also the reference model of check-hf)."""
    model_type: str
    config_from_hf: Callable[[dict[str, Any], str], ModelConfig]
    write_config: Callable[[ModelConfig, Path, str], None]
    canonical_name: Callable[[str], str]
    """A stored tensor name as the layout spells it (older checkpoints may drop a prefix)."""
    place: Callable[[str, ModelConfig], Optional[Placement]]
    hf_tensor_shapes: Callable[[ModelConfig], dict[str, tuple[int, ...]]]
    hf_tensor: Callable[[str, dict, ModelConfig], np.ndarray]
    is_ignored: Callable[[str], bool]
    embed: str
    """Name of the input embedding (its stored dtype is the checkpoint's)."""
    lm_head: str
    """Name of the untied LM head (older transformers also saved it when tied)."""


FAMILIES: dict[str, HFFamily] = {
    "llama": HFFamily(
        architecture="LlamaForCausalLM",
        model_type="llama",
        config_from_hf=hf_config.model_config_from_hf,
        write_config=hf_config.write_hf_config,
        canonical_name=lambda name: name,
        place=hf_layout.place,
        hf_tensor_shapes=hf_layout.hf_tensor_shapes,
        hf_tensor=hf_layout.hf_tensor,
        is_ignored=hf_layout.is_ignored,
        embed=hf_layout.EMBED,
        lm_head=hf_layout.LM_HEAD,
    ),
    "bloom": HFFamily(
        architecture=hf_bloom_config.ARCHITECTURE,
        model_type="bloom",
        config_from_hf=hf_bloom_config.bloom_config_from_hf,
        write_config=hf_bloom_config.write_bloom_config,
        canonical_name=hf_bloom_layout.canonical_name,
        place=hf_bloom_layout.place,
        hf_tensor_shapes=hf_bloom_layout.hf_tensor_shapes,
        hf_tensor=hf_bloom_layout.hf_tensor,
        is_ignored=hf_bloom_layout.is_ignored,
        embed=hf_bloom_layout.EMBED,
        lm_head=hf_bloom_layout.LM_HEAD,
    ),
}
"""``model.family`` -> its Hugging Face architecture."""


def family_of_hf(raw: dict[str, Any], where: str = "config.json") -> HFFamily:
    """The family of a Hugging Face config dict, from ``architectures`` (or ``model_type`` when that is empty)."""
    by_arch = {f.architecture: f for f in FAMILIES.values()}
    by_type = {f.model_type: f for f in FAMILIES.values()}
    archs = raw.get("architectures") or []
    model_type = raw.get("model_type")
    supported = ", ".join(by_arch)
    if archs:
        unsupported = [a for a in archs if a not in by_arch]
        if unsupported:
            raise HFConfigError(
                f"{where}: unsupported architecture {', '.join(unsupported)} (jaxtune converts {supported})"
            )
        family = by_arch[archs[0]]
        if model_type not in (None, family.model_type):
            raise HFConfigError(
                f"{where}: model_type {model_type!r} does not match architecture {archs[0]} "
                f"(expected {family.model_type!r})"
            )
        return family
    if model_type not in by_type:
        raise HFConfigError(
            f"{where}: unsupported model_type {model_type!r} (jaxtune converts "
            f"{', '.join(repr(t) for t in by_type)} models)"
        )
    return by_type[model_type]


def model_config_from_any_hf(raw: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """A :class:`ModelConfig` for a Hugging Face config dict of any supported architecture."""
    return family_of_hf(raw, where).config_from_hf(raw, where)
