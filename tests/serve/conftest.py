"""Fixtures of the serving tests: two tiny checkpoints carrying the demo tokenizer and DoIT's tokens, and a real
server on 127.0.0.1.

- ``random_checkpoint``: a tiny LLaMA with random weights (peaked logits, so greedy choices are far from ties).
- ``judge_checkpoint``: the same shape built to answer every DoIT prompt ``得分:1`` and stop: its attention and MLP
  outputs are zero, so the next token depends on the current token alone, and the embeddings of the reply's tokens
  are orthogonal, so the LM head maps ``<assistant>`` -> ``得分`` pieces -> ``<eot>`` exactly. A judge that can be
  served, whose verdicts are known in advance.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from jaxtune.checkpoint.params import save_params
from jaxtune.config.schema import EvalConfig
from jaxtune.demo import DEMO_TOKENIZER
from jaxtune.models.configs import model_config
from jaxtune.models.llama import Llama

DOIT_ADDED = {"<user>": 1000, "<assistant>": 1001, "<eot>": 1002, "<pad>": 1003}
JUDGE_REPLY = (521, 815, 814, 548, 542)
"""The demo tokenizer's pieces of ``得分:1``."""
CONTEXT = 192
ROWS = 4


def tiny_config():
    return model_config("tiny-gqa", vocab_size=1004, max_position_embeddings=256, initializer_range=0.2)


def judge_params(params: dict) -> dict:
    """``params`` (a pure dict) rewritten into the judge of the module docstring."""
    chain = (DOIT_ADDED["<assistant>"], *JUDGE_REPLY, DOIT_ADDED["<eot>"])
    embed = np.array(params["embed_tokens"])
    width = embed.shape[1]
    head = np.zeros_like(np.array(params["lm_head"]))
    for i, (token, following) in enumerate(zip(chain, chain[1:])):
        embed[token] = 0.0
        embed[token, i] = np.sqrt(width)
        head[i, following] = 10.0
    layers = dict(params["layers"])
    layers["o_proj"] = np.zeros_like(np.array(layers["o_proj"]))
    layers["down_proj"] = np.zeros_like(np.array(layers["down_proj"]))
    return {**params, "embed_tokens": embed, "lm_head": head, "norm": np.ones_like(np.array(params["norm"])),
            "layers": layers}  # fmt: skip


def _save(path: Path, params: dict) -> Path:
    save_params(path, jax.tree.map(np.asarray, params), tiny_config(), tokenizer_dir=DEMO_TOKENIZER,
                added_tokens=DOIT_ADDED)  # fmt: skip
    return path


@pytest.fixture(scope="session")
def tiny_params() -> dict:
    return nnx.to_pure_dict(nnx.state(Llama(tiny_config(), nnx.Rngs(0)), nnx.Param))


@pytest.fixture(scope="session")
def random_checkpoint(tiny_params, tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("serve") / "random", tiny_params)


@pytest.fixture(scope="session")
def judge_checkpoint(tiny_params, tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("serve") / "judge", judge_params(tiny_params))


def serve_config(**overrides) -> EvalConfig:
    """The eval settings the tests serve with (float32 on CPU, small buckets)."""
    return EvalConfig(batch_size=ROWS, max_new_tokens=24, max_prompt_len=CONTEXT - 24, bucket_multiple=32,
                      compute_dtype="float32", **overrides)  # fmt: skip


@pytest.fixture(scope="session")
def server(random_checkpoint):
    from jaxtune.serve.server import RunningServer, free_port, load_for_serving

    loaded = load_for_serving(random_checkpoint, serve_config(), max_queue=8)
    with RunningServer(loaded, port=free_port()) as running:
        yield running
