"""ModelConfigs of the named shapes of :mod:`jaxtune.config.presets` (``doit-7b``, ``llama2-7b``, ``bloomz-7b1-mt``,
``tiny``...)."""

from __future__ import annotations

from typing import Any

from jaxtune.config.loading import model_config_from_dict, preset_values
from jaxtune.config.presets import PRESETS
from jaxtune.config.schema import ModelConfig

__all__ = ["PRESETS", "model_config", "preset_values"]


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """A :class:`~jaxtune.config.schema.ModelConfig` for a named shape, with field overrides."""
    return model_config_from_dict(dict(preset_values(name), **overrides))
