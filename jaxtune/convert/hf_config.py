"""A Hugging Face ``config.json`` of any registered family <-> :class:`ModelConfig`.

The family comes from ``architectures`` (or ``model_type`` when that is empty); each family's file translates the
fields (:class:`jaxtune.families.hf.HFArchitecture`: ``config_fields`` one way, ``config_kwargs`` the other), and
this module names no family. Exports are written by transformers' own config class of the family
(``save_pretrained``) so that they are exactly what the pinned transformers expects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jaxtune.config.schema import ModelConfig, RopeScalingConfig
from jaxtune.families.hf import HFConfigError
from jaxtune.families.registry import Family, family, load_families


def read_hf_config(hf_dir: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a Hugging Face model folder."""
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise HFConfigError(f"{hf_dir}: no config.json (is this a Hugging Face model folder?)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise HFConfigError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise HFConfigError(f"{path}: expected a JSON object")
    return raw


def hf_family(raw: dict[str, Any], where: str = "config.json") -> Family:
    """The family of a Hugging Face config dict, from ``architectures`` (or ``model_type`` when that is empty)."""
    families = load_families().values()
    by_arch = {f.hf.architecture: f for f in families}
    by_type = {f.hf.model_type: f for f in families}
    archs = raw.get("architectures") or []
    model_type = raw.get("model_type")
    if archs:
        unsupported = [a for a in archs if a not in by_arch]
        if unsupported:
            raise HFConfigError(
                f"{where}: unsupported architecture {', '.join(unsupported)} (jaxtune converts {', '.join(by_arch)})"
            )
        found = by_arch[archs[0]]
        if model_type not in (None, found.hf.model_type):
            raise HFConfigError(
                f"{where}: model_type {model_type!r} does not match architecture {archs[0]} "
                f"(expected {found.hf.model_type!r})"
            )
        return found
    if model_type not in by_type:
        raise HFConfigError(
            f"{where}: unsupported model_type {model_type!r} (jaxtune converts "
            f"{', '.join(repr(t) for t in by_type)} models)"
        )
    return by_type[model_type]


def model_config_from_hf(raw: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """A :class:`ModelConfig` for a Hugging Face config dict of any supported architecture; HFConfigError names the
    architecture or field jaxtune does not support."""
    found = hf_family(raw, where)
    fields = dict(found.hf.config_fields(raw, where), family=found.name)
    if "rope_scaling" in fields:
        fields["rope_scaling"] = RopeScalingConfig(**fields["rope_scaling"])
    cfg = ModelConfig(**fields)
    try:
        cfg.validate("model")
    except ValueError as e:
        raise HFConfigError(f"{where}: {e}") from None
    return cfg


def hf_config_dict(cfg: ModelConfig, dtype: str) -> dict[str, Any]:
    """The keyword arguments of the transformers config class of ``cfg``'s family (``LlamaConfig``, ``BloomConfig``)
    describing ``cfg`` with weights stored in ``dtype``."""
    return family(cfg.family).hf.config_kwargs(cfg, dtype)


def write_hf_config(cfg: ModelConfig, out_dir: str | Path, dtype: str) -> None:
    """Write ``config.json`` (by the family's transformers config class) and ``generation_config.json`` (``cfg``'s
    special tokens) with transformers' own writers."""
    import transformers

    config_class = getattr(transformers, family(cfg.family).hf.config_class)
    config_class(**hf_config_dict(cfg, dtype)).save_pretrained(out_dir)
    transformers.GenerationConfig(
        bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id
    ).save_pretrained(out_dir)
