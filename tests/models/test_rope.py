"""jaxtune.models.rope against transformers' rotary embedding (frequencies, scalings and the rotate-half layout)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the rope tests compare with transformers' PyTorch implementation")

from transformers import LlamaConfig  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb  # noqa: E402

from jaxtune.config.schema import ModelConfig, RopeScalingConfig  # noqa: E402
from jaxtune.models.rope import apply_rotary, inverse_frequencies, rotary_cos_sin  # noqa: E402

SCALINGS = {
    "default": (10000.0, RopeScalingConfig()),
    "llama3": (
        500000.0,
        RopeScalingConfig(
            "llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
        ),
    ),
    "llama3-short-context": (
        10000.0,
        RopeScalingConfig(
            "llama3", factor=4.0, low_freq_factor=2.0, high_freq_factor=8.0, original_max_position_embeddings=256
        ),
    ),
    "linear": (10000.0, RopeScalingConfig("linear", factor=3.0)),
}


def configs(name: str, head_dim: int = 64) -> tuple[ModelConfig, LlamaConfig]:
    theta, scaling = SCALINGS[name]
    cfg = ModelConfig(hidden_size=4 * head_dim, num_heads=4, rope_theta=theta, rope_scaling=scaling)
    rope = {"rope_type": scaling.rope_type, "rope_theta": theta}
    if scaling.rope_type != "default":
        rope["factor"] = scaling.factor
    if scaling.rope_type == "llama3":
        rope.update(
            low_freq_factor=scaling.low_freq_factor,
            high_freq_factor=scaling.high_freq_factor,
            original_max_position_embeddings=scaling.original_max_position_embeddings,
        )
    hf = LlamaConfig(
        hidden_size=4 * head_dim,
        num_attention_heads=4,
        num_hidden_layers=1,
        intermediate_size=8,
        vocab_size=8,
        rope_parameters=rope,
    )
    return cfg, hf


@pytest.mark.parametrize("name", list(SCALINGS))
def test_inverse_frequencies_match_transformers(name: str) -> None:
    cfg, hf = configs(name)
    want = LlamaRotaryEmbedding(hf).inv_freq.numpy()
    got = inverse_frequencies(cfg)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=3e-7)  # equal up to one or two float32 ulps
    if name != "default":  # the scaling really changed something
        assert not np.allclose(
            got, inverse_frequencies(ModelConfig(hidden_size=cfg.hidden_size, num_heads=4, rope_theta=cfg.rope_theta))
        )


@pytest.mark.parametrize("name", ["default", "llama3-short-context"])
def test_rotated_queries_match_transformers(name: str) -> None:
    cfg, hf = configs(name, head_dim=32)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 3, 32)).astype(np.float32)  # (B, T, heads, D)
    # Packed / arbitrary positions. (Scaled frequencies may differ from torch's by one float32 ulp, so far
    # positions would compare float noise: stay within a few hundred.)
    positions = np.array([[0, 1, 2, 3, 4, 5, 6], [5, 300, 3, 0, 1, 2, 511]], np.int64)
    cos, sin = rotary_cos_sin(positions, inverse_frequencies(cfg))
    got = np.asarray(apply_rotary(x, cos, sin))

    xt = torch.from_numpy(x).transpose(1, 2)  # transformers: (B, heads, T, D)
    hf_cos, hf_sin = LlamaRotaryEmbedding(hf)(xt, torch.from_numpy(positions))
    want, _ = apply_rotary_pos_emb(xt, xt, hf_cos, hf_sin)
    np.testing.assert_allclose(got, want.transpose(1, 2).numpy(), atol=2e-5)


def test_rotation_preserves_norm_and_relative_position() -> None:
    """Rotate-half pairs dimension i with i + D/2: norms are kept and q.k depends only on the position gap."""
    cfg, _ = configs("default", head_dim=16)
    inv = inverse_frequencies(cfg)
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal((2, 1, 1, 1, 16)).astype(np.float32)

    def rotated(x, pos):
        cos, sin = rotary_cos_sin(np.array([[pos]]), inv)
        return np.asarray(apply_rotary(x, cos, sin))[0, 0, 0]

    assert np.linalg.norm(rotated(q, 37)) == pytest.approx(np.linalg.norm(q), rel=1e-5)
    assert rotated(q, 10) @ rotated(k, 3) == pytest.approx(rotated(q, 107) @ rotated(k, 100), abs=1e-4)
