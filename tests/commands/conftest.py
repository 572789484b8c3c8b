"""Fixtures of the command tests: a tiny params checkpoint carrying the demo tokenizer and DoIT's tokens (random
weights: what it says does not matter, only that every command can load it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from flax import nnx

from jaxtune.checkpoint.params import save_params
from jaxtune.demo import DEMO_TOKENIZER
from jaxtune.models.configs import model_config
from jaxtune.models.llama import Llama

DOIT_ADDED = {"<user>": 1000, "<assistant>": 1001, "<eot>": 1002, "<pad>": 1003}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny LLaMA (the demo vocabulary plus DoIT's four tokens) as a params-only checkpoint."""
    cfg = model_config("tiny-gqa", vocab_size=1004, max_position_embeddings=256)
    path = tmp_path_factory.mktemp("commands") / "ckpt"
    save_params(path, nnx.state(Llama(cfg, nnx.Rngs(0)), nnx.Param), cfg, tokenizer_dir=DEMO_TOKENIZER,
                added_tokens=DOIT_ADDED)  # fmt: skip
    return path
