"""Fixtures of the conversion tests: tiny random transformers LlamaForCausalLM folders (see hf_models.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hf_models import LLAMA3_ROPE, build_hf_model, save_hf_model, torch


@pytest.fixture(scope="module")
def untied_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """Multi-head attention, untied embeddings, default rope, odd vocabulary (97), float32, one safetensors file."""
    model = build_hf_model(seed=0)
    return model, save_hf_model(model, tmp_path_factory.mktemp("hf") / "untied")


@pytest.fixture(scope="module")
def tied_gqa_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """Grouped-query attention, tied embeddings, llama3 rope, vocabulary 131, saved in shards of ~100 kB."""
    model = build_hf_model(
        seed=1, vocab_size=131, num_key_value_heads=2, tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE
    )
    return model, save_hf_model(model, tmp_path_factory.mktemp("hf") / "tied_gqa", max_shard_size="100KB")


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A bfloat16 model (the dtype of real LLaMA checkpoints)."""
    model = build_hf_model(seed=2, dtype=torch.bfloat16, num_key_value_heads=1, vocab_size=103)
    return model, save_hf_model(model, tmp_path_factory.mktemp("hf") / "bf16")
