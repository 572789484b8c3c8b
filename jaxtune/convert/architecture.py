"""A run's model architecture taken from the checkpoint it starts from (``checkpoint.init_from``, or the checkpoint
``jaxtune eval`` scores): a jaxtune params checkpoint's ``model_config.json`` or a Hugging Face folder's
``config.json`` (read by :func:`jaxtune.convert.hf_config.model_config_from_hf`).

Each of :data:`ARCHITECTURE_FIELDS` the config leaves unset (neither in its ``model`` section nor in the preset it
names) is the checkpoint's; one the config sets must equal the checkpoint's, or the config is refused with one
problem per differing field. :data:`INHERITED_FIELDS` are taken when unset and may differ (a run may train longer
sequences or use other special tokens). :func:`inherit_architecture` works on the config's raw nested dict, before
:func:`jaxtune.config.loading.config_from_dict` builds it (its ``model_source`` hook).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

from jaxtune.checkpoint.layout import MODEL_CONFIG_FILE
from jaxtune.config.loading import model_config_from_dict, preset_values
from jaxtune.config.schema import ConfigError, ModelConfig
from jaxtune.convert.hf_config import model_config_from_hf, read_hf_config
from jaxtune.families.hf import HFConfigError
from jaxtune.paths import as_path

ARCHITECTURE_FIELDS = (
    "family",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "rms_norm_eps",
    "layer_norm_epsilon",
    "rope_theta",
    "rope_scaling",
    "tie_word_embeddings",
)
"""ModelConfig fields that decide the parameters' shapes and what they compute."""
INHERITED_FIELDS = ("max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")
"""Fields taken from the checkpoint when the config leaves them unset, and free to differ."""

_RESOLVED = {"num_kv_heads": ModelConfig.resolved_num_kv_heads, "head_dim": ModelConfig.resolved_head_dim}


def checkpoint_model_config(path: str) -> Optional[ModelConfig]:
    """The ModelConfig of a jaxtune params checkpoint or a Hugging Face folder at ``path``; None where there is no
    such folder (the checks of the files a config names report it)."""
    folder = as_path(path)
    try:
        if (folder / MODEL_CONFIG_FILE).is_file():
            return model_config_from_dict(json.loads((folder / MODEL_CONFIG_FILE).read_text(encoding="utf-8")))
        if (folder / "config.json").is_file():
            return model_config_from_hf(read_hf_config(folder), f"{path}/config.json")
    except (json.JSONDecodeError, ConfigError, HFConfigError) as e:
        raise ConfigError(f"{path}: its model config cannot be read: {e}") from None
    return None


def _value(cfg: ModelConfig, name: str) -> Any:
    return _RESOLVED[name](cfg) if name in _RESOLVED else getattr(cfg, name)


def inherit_architecture(tree: dict, source: Optional[str] = None) -> list[str]:
    """Fill ``tree["model"]`` (a config's raw nested dict) from the checkpoint ``source`` (default: the tree's
    ``checkpoint.init_from``); the problems of a config that contradicts it, one per differing field."""
    where = "checkpoint" if source else "checkpoint.init_from"
    source = source or (tree.get("checkpoint") or {}).get("init_from")
    if not source:
        return []
    stored = checkpoint_model_config(str(source))
    if stored is None:
        return []
    model = tree.setdefault("model", {}) or {}
    tree["model"] = model
    explicit = set(model)
    if model.get("preset"):
        explicit |= set(preset_values(model["preset"]))
    try:
        configured = model_config_from_dict(dict(model))
    except ConfigError:
        configured = None  # the config's own problems are reported when it is built
    problems = []
    for name in ARCHITECTURE_FIELDS + INHERITED_FIELDS:
        if name not in explicit:
            value = getattr(stored, name)
            model[name] = dataclasses.asdict(value) if name == "rope_scaling" else value
        elif name in ARCHITECTURE_FIELDS and configured is not None:
            mine, theirs = _value(configured, name), _value(stored, name)
            if mine != theirs:
                problems.append(f"model.{name}={mine!r} contradicts {where} {source} (its {name} is {theirs!r})")
    return problems
