"""jaxtune.families.registry: each family declared once, readable without jax, and complete."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from jaxtune.families.registry import FAMILIES, family, load_families, register
from jaxtune.models.decoder import DecoderModel
from jaxtune.models.registry import MODEL_CLASSES
from jaxtune.names import MODEL_FAMILIES


def test_loading_a_config_with_a_preset_imports_neither_jax_nor_flax_nor_the_models() -> None:
    code = (
        "import sys\n"
        "from jaxtune.config.loading import load_config, preset_values\n"
        "from jaxtune.families.registry import load_families\n"
        "assert preset_values('bloom-tiny')['family'] == 'bloom' and len(load_families()) > 1\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax') or m.startswith('jaxtune.models')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_declared_family_is_registered_with_a_decoder_model_and_presets() -> None:
    assert list(load_families()) == list(MODEL_FAMILIES)
    for name, declared in load_families().items():
        assert issubclass(MODEL_CLASSES[name], DecoderModel), declared.model
        assert declared.presets, f"family {name} declares no preset"
        assert declared.hf.layout.embed in declared.hf.layout.hf_tensor_shapes(_any_config(name))


def _any_config(name: str):
    from jaxtune.models.configs import model_config

    preset = next(iter(family(name).presets))
    return model_config(preset)


def test_register_refuses_an_undeclared_name_and_a_second_declaration() -> None:
    llama = family("llama")
    with pytest.raises(ValueError, match="'qwen9' is not declared in jaxtune.names.ModelFamily"):
        register(dataclasses.replace(llama, name="qwen9"))
    with pytest.raises(ValueError, match="'llama' is registered twice"):
        register(dataclasses.replace(llama, presets={}))
    assert FAMILIES["llama"] is llama


def test_an_unknown_family_names_the_key_and_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"model.family: unknown family 'lama' \(did you mean 'llama'\?\); known"):
        family("lama")


@pytest.mark.parametrize(
    "preset,change,message",
    [
        ("tiny-gqa", {"head_dim": 15}, r"model.head_dim must be even for rotary embeddings, got 15"),
        ("bloom-tiny", {"num_kv_heads": 2}, r"model.num_kv_heads=2: BLOOM has one key/value head per query head"),
    ],
)
def test_each_family_s_config_rules_reach_model_config_validation(preset: str, change: dict, message: str) -> None:
    from jaxtune.config.loading import model_config_from_dict, preset_values
    from jaxtune.config.schema import ConfigError

    model_config_from_dict(preset_values(preset))  # the preset itself is fine
    with pytest.raises(ConfigError, match=message):
        model_config_from_dict(dict(preset_values(preset), **change))
