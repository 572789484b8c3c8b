"""Named model shapes (``model.preset``), gathered from every family's declaration (:mod:`jaxtune.families`): the
DoIT base models, LLaMA-2, BLOOM (the BELLE study's Bloomz-7b1-mt), and tiny shapes for tests and the quickstart.
A preset sets ``family`` too: ``model.preset=bloom-tiny`` alone selects a BLOOM.

Plain data: each preset is a mapping of :class:`jaxtune.config.schema.ModelConfig` fields. It lives below
:mod:`jaxtune.config.loading` (which reads it when a config names a preset), and the family files are plain data and
numpy, so loading a config never imports the models; :mod:`jaxtune.models.configs` builds ModelConfigs from it."""

from __future__ import annotations

from typing import Any

from jaxtune.families.registry import load_families


def _gather() -> dict[str, dict[str, Any]]:
    presets: dict[str, dict[str, Any]] = {}
    for family in load_families().values():
        for name, values in family.presets.items():
            if name in presets:
                raise ValueError(f"model preset {name!r} is declared by two families")
            presets[name] = dict(values, family=family.name)
    return presets


PRESETS: dict[str, dict[str, Any]] = _gather()
"""Preset name -> ModelConfig fields (``family`` included)."""
