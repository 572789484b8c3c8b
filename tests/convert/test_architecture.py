"""The model's architecture from the checkpoint a run starts from (jaxtune/convert/architecture.py, through
``commands.arguments.run_config``): a jaxtune params checkpoint's model_config.json or a Hugging Face folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxtune.commands.arguments import run_config
from jaxtune.config.presets import PRESETS
from jaxtune.config.schema import ConfigError


@pytest.fixture
def params_checkpoint(tmp_path: Path) -> Path:
    """A folder with the model_config.json of the qwen2-tiny preset (all run_config reads)."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model_config.json").write_text(json.dumps(dict(PRESETS["qwen2-tiny"], max_position_embeddings=128)))
    return folder


@pytest.fixture
def hf_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "hf"
    folder.mkdir()
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": 151936,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
        "bos_token_id": 151643,
        "eos_token_id": 151643,
        "use_sliding_window": False,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return str(path)


def test_init_from_gives_the_model_every_field_the_config_leaves_unset(tmp_path, params_checkpoint) -> None:
    cfg = run_config(write_config(tmp_path, f"checkpoint:\n  init_from: {params_checkpoint}\n"), [])
    assert (cfg.model.family, cfg.model.hidden_size, cfg.model.num_kv_heads) == ("qwen2", 64, 2)
    assert cfg.model.vocab_size == 1000 and cfg.model.tie_word_embeddings and cfg.model.max_position_embeddings == 128


def test_fields_the_config_sets_win_when_they_agree_or_are_free(tmp_path, params_checkpoint) -> None:
    text = f"model:\n  hidden_size: 64\n  max_position_embeddings: 512\ncheckpoint:\n  init_from: {params_checkpoint}\n"
    cfg = run_config(write_config(tmp_path, text), ["model.compute_dtype=bfloat16"])
    assert cfg.model.max_position_embeddings == 512 and cfg.model.compute_dtype == "bfloat16"
    assert cfg.model.family == "qwen2"


def test_a_contradicting_config_is_refused_naming_each_field(tmp_path, params_checkpoint) -> None:
    text = f"model:\n  hidden_size: 128\n  num_layers: 3\ncheckpoint:\n  init_from: {params_checkpoint}\n"
    with pytest.raises(ConfigError) as e:
        run_config(write_config(tmp_path, text), ["model.rope_theta=10000"])
    message = str(e.value)
    for field in ("model.hidden_size=128", "model.num_layers=3", "model.rope_theta=10000.0"):
        assert field in message and "contradicts checkpoint.init_from" in message
    assert "model.vocab_size" not in message


def test_a_preset_counts_as_set(tmp_path, params_checkpoint) -> None:
    with pytest.raises(ConfigError, match=r"model.family='llama' contradicts"):
        run_config(None, [f"checkpoint.init_from={params_checkpoint}", "model.preset=tiny-gqa"])


def test_a_hugging_face_folder_and_an_evaluated_checkpoint_give_the_architecture_too(tmp_path, hf_folder) -> None:
    cfg = run_config(None, [f"checkpoint.init_from={hf_folder}"])
    assert (cfg.model.family, cfg.model.num_layers, cfg.model.num_kv_heads) == ("qwen2", 24, 2)
    assert cfg.model.rope_theta == 1000000.0 and cfg.model.eos_token_id == 151643
    with pytest.raises(ConfigError, match=r"model.num_heads=32 contradicts checkpoint .*hf \(its num_heads is 14\)"):
        run_config(None, ["model.num_heads=32"], checkpoint=str(hf_folder))


def test_without_a_checkpoint_nothing_changes(tmp_path) -> None:
    cfg = run_config(None, ["model.preset=tiny-gqa", f"checkpoint.init_from={tmp_path / 'missing'}"])
    assert cfg.model.family == "llama" and cfg.model.hidden_size == 64
