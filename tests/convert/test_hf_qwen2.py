"""import-hf / export-hf / check-hf on Qwen2 folders, against transformers' own files and PyTorch Qwen2ForCausalLM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from hf_models import build_hf_qwen2, hf_logits, save_hf_model, stored_tensors

from jaxtune.checkpoint.params import restore_model
from jaxtune.config.presets import PRESETS
from jaxtune.config.schema import ModelConfig
from jaxtune.convert.hf import export_hf, import_hf, load_hf_params
from jaxtune.convert.hf_config import model_config_from_hf
from jaxtune.errors import JaxtuneError
from jaxtune.eval.parity import check_hf
from jaxtune.models.qwen2 import Qwen2
from jaxtune.models.stats import count_params

TOL = 1e-4


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """4 heads over 2 key/value heads, tied embeddings, vocabulary 131, float32, one safetensors file."""
    model = build_hf_qwen2(seed=0)
    return model, save_hf_model(model, tmp_path_factory.mktemp("hf") / "qwen2")


@pytest.fixture(scope="module")
def qwen2_bf16_untied_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """Multi-head attention, untied LM head, vocabulary 97, bfloat16, shards of ~60 kB."""
    model = build_hf_qwen2(
        seed=1, dtype=torch.bfloat16, vocab_size=97, num_key_value_heads=4, tie_word_embeddings=False
    )
    return model, save_hf_model(model, tmp_path_factory.mktemp("hf") / "qwen2_bf16", max_shard_size="60KB")


@pytest.mark.parametrize("fixture", ["qwen2_dir", "qwen2_bf16_untied_dir"])
def test_import_then_export_round_trips_every_tensor_bit_for_bit(fixture: str, request, tmp_path: Path) -> None:
    hf_model, hf_dir = request.getfixturevalue(fixture)
    cfg = import_hf(hf_dir, tmp_path / "ckpt")
    assert cfg.family == "qwen2" and cfg.rope_theta == 1000000.0
    assert cfg.param_dtype == ("bfloat16" if "bf16" in fixture else "float32")
    export_hf(tmp_path / "ckpt", tmp_path / "out", max_shard_size="60KB" if "bf16" in fixture else "5GB")
    original, exported = stored_tensors(hf_dir), stored_tensors(tmp_path / "out")
    assert set(exported) == set(original)
    assert {n for n in original if n.endswith("bias")} == {
        f"model.layers.{i}.self_attn.{p}_proj.bias" for i in range(2) for p in "qkv"
    }
    for name, tensor in original.items():
        assert exported[name].dtype == tensor.dtype and torch.equal(exported[name], tensor), name
    exported_model, original_model = (
        transformers.Qwen2ForCausalLM.from_pretrained(d).eval() for d in (tmp_path / "out", hf_dir)
    )
    assert exported_model.config.model_type == "qwen2" and not exported_model.config.use_sliding_window
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 9))
    np.testing.assert_array_equal(hf_logits(exported_model, ids), hf_logits(original_model, ids))


def test_imported_model_matches_transformers_logits(qwen2_dir, tmp_path: Path) -> None:
    hf_model, hf_dir = qwen2_dir
    cfg = import_hf(hf_dir, tmp_path / "ckpt", vocab_pad_multiple=128)
    model = restore_model(tmp_path / "ckpt")
    assert isinstance(model, Qwen2) and cfg.resolved_num_kv_heads() == 2
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, 20))
    got = np.asarray(model(ids.astype(np.int32))[0])
    assert got.shape == (2, 20, cfg.vocab_size)
    assert np.max(np.abs(got - hf_logits(hf_model, ids))) < TOL


def test_check_hf_reports_agreement_on_qwen2(qwen2_dir) -> None:
    report = check_hf(qwen2_dir[1], num_tokens=12, max_new_tokens=10)
    assert report.ok, report.summary()
    assert len(report.hf_tokens) == 10


def test_eval_loads_a_qwen2_folder_directly(qwen2_dir) -> None:
    from jaxtune.eval.loading import load_model

    hf_model, hf_dir = qwen2_dir
    model = load_model(hf_dir)
    assert isinstance(model, Qwen2)
    ids = np.random.default_rng(3).integers(0, 131, (1, 10))
    assert np.max(np.abs(np.asarray(model(ids.astype(np.int32))[0]) - hf_logits(hf_model, ids))) < TOL


# Qwen2.5-7B's config.json as released (transformers v4 spelling: top-level rope_theta, torch_dtype).
QWEN25_7B = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 131072,
    "max_window_layers": 28,
    "model_type": "qwen2",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 131072,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.1",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 152064,
}


def test_released_config_reads_as_the_preset() -> None:
    cfg = model_config_from_hf(QWEN25_7B)
    preset = ModelConfig(**PRESETS["qwen2.5-7b"])
    for key in PRESETS["qwen2.5-7b"]:
        assert getattr(cfg, key) == getattr(preset, key), key
    assert cfg.param_dtype == "bfloat16"


# The Qwen2.5 model cards' parameter counts (total, non-embedding), in billions.
CARDS = {"qwen2.5-7b": (7.61, 6.53), "qwen2.5-14b": (14.7, 13.1), "qwen2.5-32b": (32.5, 31.0)}


@pytest.mark.parametrize("name", sorted(CARDS))
def test_presets_have_the_model_cards_sizes(name: str) -> None:
    cfg = ModelConfig(**PRESETS[name])
    total, embedding = count_params(cfg, cfg.vocab_size)
    assert cfg.family == "qwen2"
    np.testing.assert_allclose([total / 1e9, (total - embedding) / 1e9], CARDS[name], rtol=0.01)


@pytest.mark.parametrize(
    "change", [{"use_sliding_window": True}, {"layer_types": ["full_attention", "sliding_attention"]}]
)
def test_sliding_window_attention_is_refused(qwen2_dir, tmp_path: Path, change: dict) -> None:
    hf_dir = tmp_path / "sliding"
    shutil.copytree(qwen2_dir[1], hf_dir)
    config = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(JaxtuneError, match="sliding-window attention"):
        load_hf_params(hf_dir)
