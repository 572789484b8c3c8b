"""jaxtune.models.attention: masks, grouped-query XLA attention, the splash kernel (interpreted on CPU), fallbacks."""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune.models import attention
from jaxtune.models.attention import (
    attention_mask,
    causal_blocked_attention,
    resolve_impl,
    splash_attention,
    xla_attention,
)


def reference_attention(q, k, v, mask) -> np.ndarray:
    """Plain numpy attention, keys/values copied per query head (as transformers' repeat_kv does)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    groups = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, groups, axis=2), np.repeat(v, groups, axis=2)
    scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(np.asarray(mask)[:, None], scores, -np.inf)
    scores -= scores.max(-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", probs, v)


def packed_segments(length: int) -> np.ndarray:
    """Two rows: three documents then padding, and one document filling the whole row."""
    row0 = np.zeros(length, np.int32)
    row0[:50], row0[50:90], row0[90:120] = 1, 2, 3
    return np.stack([row0, np.ones(length, np.int32)])


def qkv(b: int, t: int, h: int, kv: int, d: int, seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(keys[0], (b, t, h, d)),
        jax.random.normal(keys[1], (b, t, kv, d)),
        jax.random.normal(keys[2], (b, t, kv, d)),
    )


def test_mask_is_causal_within_segments_only() -> None:
    seg = jnp.array([[1, 1, 2, 2, 0]])
    slots = jnp.arange(5)
    mask = np.asarray(attention_mask(seg, seg, slots, slots))[0]
    expected = np.array(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 0, 1, 0, 0],
            [0, 0, 1, 1, 0],
            [0, 0, 0, 0, 1],
        ],
        bool,
    )
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_xla_attention_matches_reference_with_grouped_heads(heads: int, kv_heads: int) -> None:
    q, k, v = qkv(2, 16, heads, kv_heads, 8)
    seg = jnp.asarray(np.array([[1] * 10 + [2] * 6, [1] * 12 + [0] * 4], np.int32))
    slots = jnp.arange(16)
    mask = attention_mask(seg, seg, slots, slots)
    got = np.asarray(xla_attention(q, k, v, mask))
    want = reference_attention(q, k, v, mask)
    np.testing.assert_allclose(got, want, atol=1e-5)


def textbook_attention(q, k, v, mask) -> jax.Array:
    """Softmax attention as the formula reads, differentiated by JAX: the reference for the hand-written backward."""
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    scores = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    probs = jax.nn.softmax(jnp.where(mask[:, None], scores, -jnp.inf), axis=-1)
    return jnp.einsum("bhts,bshd->bthd", probs, v)


def gradients(fn, q, k, v, mask, seed: int = 5):
    """Gradients of a random projection of fn's output with respect to q, k and v."""
    weights = jax.random.normal(jax.random.key(seed), q.shape)
    return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, mask) * weights), argnums=(0, 1, 2))(q, k, v)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (6, 1)])
def test_xla_attention_backward_matches_autodiff_of_the_formula(heads: int, kv_heads: int) -> None:
    """The flash-style backward (probabilities recomputed from the log-sum-exp) is the derivative of attention."""
    q, k, v = qkv(2, 16, heads, kv_heads, 8, seed=2)
    seg = jnp.asarray(np.array([[1] * 10 + [2] * 4 + [0] * 2, [1] * 16], np.int32))
    slots = jnp.arange(16)
    mask = attention_mask(seg, seg, slots, slots)
    got = gradients(xla_attention, q, k, v, mask)
    want = gradients(textbook_attention, q, k, v, mask)
    for name, g, w in zip("qkv", got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("length", [16, 18])  # 18 rows do not split into 4 blocks: the unblocked path serves them
def test_causal_blocks_compute_the_same_attention_and_gradients(length: int) -> None:
    q, k, v = qkv(2, length, 4, 2, 8, seed=3)
    row0 = np.array([1] * 7 + [2] * 6 + [0] * (length - 13), np.int32)
    seg = jnp.asarray(np.stack([row0, np.ones(length, np.int32)]))
    slots = jnp.arange(length)
    mask = attention_mask(seg, seg, slots, slots)
    np.testing.assert_allclose(
        np.asarray(causal_blocked_attention(q, k, v, mask)), np.asarray(xla_attention(q, k, v, mask)), atol=1e-6
    )
    for g, w in zip(gradients(causal_blocked_attention, q, k, v, mask), gradients(xla_attention, q, k, v, mask)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5)


def test_bfloat16_inputs_keep_their_dtype_and_value() -> None:
    q, k, v = qkv(1, 16, 4, 2, 8, seed=4)
    slots = jnp.arange(16)
    mask = attention_mask(jnp.ones((1, 16), jnp.int32), jnp.ones((1, 16), jnp.int32), slots, slots)
    low = [x.astype(jnp.bfloat16) for x in (q, k, v)]
    out = causal_blocked_attention(*low, mask)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), reference_attention(*low, mask), atol=3e-2)
    assert all(g.dtype == jnp.bfloat16 for g in gradients(causal_blocked_attention, *low, mask))


@pytest.mark.parametrize("heads,kv_heads", [(2, 2), (4, 2)])
def test_splash_kernel_matches_xla_on_packed_rows(heads: int, kv_heads: int) -> None:
    """The TPU splash kernel, run by Pallas' interpreter on CPU, computes the XLA path's function on packed rows."""
    t = 128
    q, k, v = qkv(2, t, heads, kv_heads, 64, seed=1)
    seg = jnp.asarray(packed_segments(t))
    slots = jnp.arange(t)
    want = np.asarray(xla_attention(q, k, v, attention_mask(seg, seg, slots, slots)))
    got = np.asarray(splash_attention(q, k, v, seg, interpret=True))
    real = np.asarray(seg) > 0  # fully masked padding rows are arbitrary in both: compare real tokens
    np.testing.assert_allclose(got[real], want[real], atol=2e-5)


def test_splash_keeps_bfloat16() -> None:
    """The kernel returns float32 for bfloat16 inputs; the layer's residual stream must stay bfloat16 (a float32
    attention output broke the layer scan's carry type)."""
    t = 128
    q, k, v = (x.astype(jnp.bfloat16) for x in qkv(1, t, 2, 2, 64, seed=7))
    out = splash_attention(q, k, v, jnp.ones((1, t), jnp.int32), interpret=True)
    assert out.dtype == jnp.bfloat16


def test_splash_kernel_runs_on_each_devices_rows_and_heads_under_a_mesh() -> None:
    """Under a data x fsdp x tensor mesh the kernel sees only its device's rows and heads (shard_map), and the
    result is still the XLA path's attention."""
    from jaxtune.config.schema import MeshConfig
    from jaxtune.sharding import activation_rules, build_mesh

    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets XLA_FLAGS for 8 CPU devices)")
    t = 128
    q, k, v = qkv(4, t, 4, 2, 64, seed=6)
    seg = jnp.asarray(np.concatenate([packed_segments(t), packed_segments(t)[::-1]]))
    slots = jnp.arange(t)
    want = np.asarray(xla_attention(q, k, v, attention_mask(seg, seg, slots, slots)))
    local_shapes = []

    def kernel(q, k, v, segment_ids):
        local_shapes.append((q.shape, k.shape, segment_ids.shape))
        return splash_attention(q, k, v, segment_ids, interpret=True)

    with activation_rules(build_mesh(MeshConfig(data=2, fsdp=2, tensor=2))):
        got = np.asarray(jax.jit(attention.on_local_shards(kernel))(q, k, v, seg))
    # 4 rows over data x fsdp = 4 devices, 4 query and 2 key/value heads over tensor = 2.
    assert local_shapes == [((1, t, 2, 64), (1, t, 1, 64), (1, t))]
    real = np.asarray(seg) > 0
    np.testing.assert_allclose(got[real], want[real], atol=2e-5)


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget which fallback warnings were already given (they are once per process)."""
    monkeypatch.setattr(attention, "_warned", set())


@pytest.mark.parametrize("impl,needs", [("splash", "TPU"), ("cudnn", "GPU")])
def test_missing_kernel_falls_back_to_xla_with_one_warning(fresh_warnings, impl: str, needs: str) -> None:
    if jax.default_backend() != "cpu":
        pytest.skip("the fallback is only observable on a backend without the kernel")
    with pytest.warns(UserWarning, match=rf"attention_impl='{impl}' needs .*{needs}.*using 'xla'") as record:
        assert resolve_impl(impl, has_cache=False, seq_len=128) == "xla"
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise
        assert resolve_impl(impl, has_cache=False, seq_len=128) == "xla"


def test_unknown_impl_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown implementation 'flash'"):
        resolve_impl("flash", has_cache=False, seq_len=8)


def test_model_with_unavailable_kernel_computes_the_same_logits(fresh_warnings) -> None:
    from flax import nnx

    from jaxtune.models.configs import model_config
    from jaxtune.models.llama import Llama

    if jax.default_backend() != "cpu":
        pytest.skip("checks the CPU fallback")
    cfg = model_config("tiny-gqa")
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (1, 8)), jnp.int32)
    logits = nnx.jit(lambda m, x: m(x)[0])
    xla_logits = logits(Llama(cfg, nnx.Rngs(3)), ids)
    with pytest.warns(UserWarning, match="splash"):
        splash_logits = logits(Llama(dataclasses.replace(cfg, attention_impl="splash"), nnx.Rngs(3)), ids)
    np.testing.assert_array_equal(np.asarray(splash_logits), np.asarray(xla_logits))


# ALiBi (BLOOM) -------------------------------------------------------------------------------------------------------


def alibi_of(seg: jnp.ndarray, heads: int) -> attention.Alibi:
    """ALiBi positions counted from the segment ids (padding does not advance them), as the BLOOM model builds it."""
    real = (seg != 0).astype(jnp.int32)
    positions = (jnp.cumsum(real, axis=-1) - 1) * real
    return attention.Alibi(jnp.asarray(attention.alibi_slopes(heads)), positions, positions)


def textbook_alibi_attention(q, k, v, mask, alibi) -> jax.Array:
    """softmax(q k^T / sqrt(d) + slope_h * (j - i) masked) v, as Press et al. write it, differentiated by JAX."""
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    scores = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(q.shape[-1])
    distance = alibi.kv_positions[:, None, None, :] - alibi.q_positions[:, None, :, None]
    scores = scores + alibi.slopes[None, :, None, None] * distance
    probs = jax.nn.softmax(jnp.where(mask[:, None], scores, -jnp.inf), axis=-1)
    return jnp.einsum("bhts,bshd->bthd", probs, v)


def test_alibi_slopes_are_transformers_slopes() -> None:
    torch = pytest.importorskip("torch")
    from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

    for heads in (1, 2, 3, 4, 6, 8, 12, 16, 32, 112):
        want = _get_alibi_slopes(heads, torch.device("cpu")).numpy()
        np.testing.assert_allclose(attention.alibi_slopes(heads), want, rtol=1e-6, atol=0, err_msg=f"{heads} heads")


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 6), (4, 2)])
def test_alibi_forward_and_backward_match_autodiff_of_the_formula(heads: int, kv_heads: int) -> None:
    """The XLA path with ALiBi, and its flash-style backward, against JAX's derivative of the textbook formula, on
    packed and left-padded rows (query blocks included: 16 rows split into 4)."""
    q, k, v = qkv(2, 16, heads, kv_heads, 8, seed=12)
    seg = jnp.asarray(np.array([[1] * 10 + [2] * 4 + [0] * 2, [0] * 5 + [1] * 11], np.int32))
    slots = jnp.arange(16)
    mask = attention_mask(seg, seg, slots, slots)
    alibi = alibi_of(seg, heads)
    real = np.asarray(seg) > 0
    want = textbook_alibi_attention(q, k, v, mask, alibi)
    for fn in (xla_attention, causal_blocked_attention):
        np.testing.assert_allclose(np.asarray(fn(q, k, v, mask, alibi))[real], np.asarray(want)[real], atol=1e-5)
    # Padding rows are fully masked in the formula (NaN); weight only real rows' outputs.
    weights = jax.random.normal(jax.random.key(3), q.shape) * jnp.asarray(real)[:, :, None, None]

    def grads(fn):
        def loss(q, k, v):
            out = fn(q, k, v, mask, alibi)
            return jnp.sum(jnp.where(jnp.asarray(real)[:, :, None, None], out, 0.0) * weights)

        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    reference = grads(textbook_alibi_attention)
    for fn in (xla_attention, causal_blocked_attention):
        for name, g, w in zip("qkv", grads(fn), reference):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, err_msg=f"{fn.__name__} d{name}")
    # The bias matters: without it the result differs.
    assert np.max(np.abs(np.asarray(xla_attention(q, k, v, mask)) - np.asarray(want))[real]) > 1e-2


def test_alibi_as_a_dense_bias_of_jax_dot_product_attention() -> None:
    """The (B, H, T, S) bias the cuDNN path hands to jax.nn.dot_product_attention gives the XLA path's result (run
    here with JAX's own XLA implementation of the same call)."""
    q, k, v = qkv(2, 12, 4, 4, 8, seed=13)
    seg = jnp.asarray(np.array([[1] * 7 + [2] * 5, [0] * 3 + [1] * 9], np.int32))
    slots = jnp.arange(12)
    mask = attention_mask(seg, seg, slots, slots)
    alibi = alibi_of(seg, 4)
    got = jax.nn.dot_product_attention(
        q, k, v, bias=attention.alibi_bias(alibi), mask=mask[:, None], implementation="xla"
    )
    real = np.asarray(seg) > 0
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(xla_attention(q, k, v, mask, alibi))[real], atol=1e-5)


def test_splash_cannot_take_alibi_and_falls_back_with_one_warning(fresh_warnings, monkeypatch) -> None:
    monkeypatch.setattr(attention, "target_platform", lambda: "tpu")
    assert resolve_impl("splash", has_cache=False, seq_len=128) == "splash"
    with pytest.warns(UserWarning, match="splash.*no additive bias.*ALiBi.*'xla'") as record:
        assert resolve_impl("splash", has_cache=False, seq_len=128, has_bias=True) == "xla"
    assert len(record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_impl("splash", has_cache=False, seq_len=128, has_bias=True) == "xla"
