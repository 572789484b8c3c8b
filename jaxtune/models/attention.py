"""Dot-product attention with segment ids: plain XLA, cuDNN (GPU) and Pallas splash (TPU) implementations.

All implementations compute the same function. A query at slot ``i`` of a row attends to key slot ``j`` when
``j <= i`` (causal by slot) and both slots carry the same segment id. Packed rows therefore never attend across
documents, and padding (segment 0) only ever attends to padding.

ALiBi (BLOOM): with an :class:`Alibi`, head ``h`` adds ``slope[h] * (kv_position[j] - q_position[i])`` to the
scaled scores, a linear penalty on the distance within the row's positions. The bias is built inside the score
computation from the (H,) slopes and the (B, T) / (B, S) positions, never stored as a (B, H, T, S) tensor, on the
XLA path and in its hand-written backward; the cuDNN path passes it as ``jax.nn.dot_product_attention``'s
``bias``; the splash kernel takes no bias, so it falls back to the XLA path with one warning.

The XLA path is written for speed on CPU (where the test suite and the quickstart train): a hand-written
flash-style backward that stores no (T, S) tensor, an additive mask bias that fuses with the matmuls, and, for
self-attention, query blocks that skip the key blocks causality masks entirely.
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec as P

from jaxtune.models.axes import BATCH, HEADS, KV_HEADS, LENGTH

logger = logging.getLogger(__name__)

_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


class Alibi(NamedTuple):
    """Attention with linear biases: per-head slopes (H,) float32, and the positions of queries (B, T) and keys
    (B, S) that distances are measured in (int32)."""

    slopes: jnp.ndarray
    q_positions: jnp.ndarray
    kv_positions: jnp.ndarray


def alibi_slopes(num_heads: int) -> np.ndarray:
    """transformers' ``_get_alibi_slopes``: for the closest power of two n at or below ``num_heads``, slopes
    2^(-8k/n) for k = 1..n; the remaining heads take the odd terms of the sequence for 2n. Computed in float64 and
    rounded once to float32 (torch's float32 ``pow`` can be 1 ulp away from these)."""
    closest = 2 ** int(np.floor(np.log2(num_heads)))
    slopes = 2.0 ** (-8.0 * np.arange(1, 1 + closest, dtype=np.float64) / closest)
    if closest != num_heads:
        remaining = min(closest, num_heads - closest)
        extra = 2.0 ** (-8.0 * np.arange(1, 1 + 2 * remaining, 2, dtype=np.float64) / (2 * closest))
        slopes = np.concatenate([slopes, extra])
    return slopes.astype(np.float32)


def _alibi_bias(alibi: Alibi, kv_heads: int) -> jnp.ndarray:
    """The ALiBi bias (B, KV, G, T, S) in float32, for scores laid out as :func:`_group_queries` groups them."""
    distance = (alibi.kv_positions[:, None, :] - alibi.q_positions[:, :, None]).astype(jnp.float32)  # (B, T, S)
    slopes = alibi.slopes.astype(jnp.float32).reshape(kv_heads, -1)
    return slopes[None, :, :, None, None] * distance[:, None, None, :, :]


def alibi_bias(alibi: Alibi) -> jnp.ndarray:
    """The ALiBi bias as a dense (B, H, T, S) float32 array (for kernels that take an additive bias)."""
    bias = _alibi_bias(alibi, alibi.slopes.shape[0])
    b, h, _, t, s = bias.shape
    return bias.reshape(b, h, t, s)


def attention_mask(
    q_segment_ids: jnp.ndarray, kv_segment_ids: jnp.ndarray, q_slots: jnp.ndarray, kv_slots: jnp.ndarray
) -> jnp.ndarray:
    """Boolean (B, T, S) mask: same segment and key slot not after the query slot.

    Segment ids are (B, T) and (B, S); slots are the row positions (T,) and (S,) shared by every row, or query slots
    (B, T) per row (a KV cache whose rows fill independently).
    """
    same_segment = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    q_slots = q_slots if q_slots.ndim == 2 else q_slots[None]
    causal = kv_slots[None, None, :] <= q_slots[:, :, None]
    return same_segment & causal


def _group_queries(q: jnp.ndarray, kv_heads: int) -> jnp.ndarray:
    """q (B, T, H, D) -> (B, KV, G*T, D), a group's queries side by side (keys and values go to (B, KV, S, D)).

    Both attention matmuls are then plain batched matmuls over (B, KV), which XLA:CPU runs about 1.5x faster than the
    same einsums in (B, T, heads, D) layout, and grouped-query heads never copy keys and values per query head.
    """
    b, t, h, d = q.shape
    g = h // kv_heads
    return q.reshape(b, t, kv_heads, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kv_heads, g * t, d)


def _from_grouped(x: jnp.ndarray, b: int, t: int, h: int) -> jnp.ndarray:
    """Inverse of :func:`_group_queries`: (B, KV, G*T, D) -> (B, T, H, D)."""
    kv, d = x.shape[1], x.shape[-1]
    return x.reshape(b, kv, h // kv, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def _masked_scores(qh: jnp.ndarray, kh: jnp.ndarray, bias: jnp.ndarray, alibi: Optional[Alibi] = None) -> jnp.ndarray:
    """Float32 scores (B, KV, G*T, S) of already scaled queries, plus the additive mask bias (B, T, S) and, with
    ``alibi``, the ALiBi bias (built here, elementwise, so that it fuses with the scores)."""
    b, kv, gt, _ = qh.shape
    t, s = bias.shape[1], bias.shape[2]
    scores = jnp.einsum("bkqd,bksd->bkqs", qh, kh, preferred_element_type=jnp.float32)
    # Adding a bias fuses with the matmul and the softmax on XLA:CPU, where a select on a boolean mask does not.
    scores = scores.reshape(b, kv, gt // t, t, s) + bias[:, None, None, :, :]
    if alibi is not None:
        scores = scores + _alibi_bias(alibi, kv)
    return scores.reshape(b, kv, gt, s)


def _mask_bias(mask: jnp.ndarray) -> jnp.ndarray:
    """0 where attention is allowed, -1e30 elsewhere (finite: every row keeps at least its own slot)."""
    return jnp.where(mask, 0.0, -1e30).astype(jnp.float32)


def _attention_forward(q, k, v, mask, alibi=None):
    b, t, h, d = q.shape
    # Scaling the queries, not the (T, S) scores, keeps constants out of the matmul fusions.
    qh, kh, vh = _group_queries(q * (1.0 / np.sqrt(d)), k.shape[2]), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    scores = _masked_scores(qh, kh, _mask_bias(mask), alibi)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    probs = jnp.exp(scores - row_max)  # unnormalised: the division happens on the (T, D) output, not on (T, S)
    row_sum = jnp.sum(probs, axis=-1, keepdims=True)
    out = jnp.einsum("bkqs,bksd->bkqd", probs.astype(v.dtype), vh, preferred_element_type=jnp.float32) / row_sum
    out = checkpoint_name(out.astype(q.dtype), "attention_out")
    log_sum_exp = checkpoint_name(row_max + jnp.log(row_sum), "attention_lse")
    return _from_grouped(out, b, t, h), (q, k, v, mask, alibi, out, log_sum_exp)


@jax.custom_vjp
def xla_attention(
    q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray, alibi: Optional[Alibi] = None
) -> jnp.ndarray:
    """Softmax attention in plain XLA. q (B, T, H, D), k/v (B, S, KV, D) with H a multiple of KV, mask (B, T, S)
    -> (B, T, H, D), with an optional ALiBi bias. Scores and softmax run in float32.

    The backward pass is written out flash-attention style: it keeps only the inputs, the output and each row's
    log-sum-exp, and recomputes the probabilities from them, so no (T, S) tensor is stored between the passes
    (saved per layer, those dominated the memory traffic of a training step on CPU).
    """
    return _attention_forward(q, k, v, mask, alibi)[0]


def _attention_vjp_backward(residuals, d_out):
    q, k, v, mask, alibi, out, log_sum_exp = residuals
    b, t, h, d = q.shape
    scale = 1.0 / np.sqrt(d)
    kv = k.shape[2]
    qh, kh, vh = _group_queries(q * scale, kv), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    d_out_h = _group_queries(d_out, kv)
    probs = jnp.exp(_masked_scores(qh, kh, _mask_bias(mask), alibi) - log_sum_exp)
    d_v = jnp.einsum("bkqs,bkqd->bksd", probs.astype(v.dtype), d_out_h, preferred_element_type=jnp.float32)
    d_probs = jnp.einsum("bkqd,bksd->bkqs", d_out_h, vh, preferred_element_type=jnp.float32)
    row_dot = jnp.sum(d_out_h.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    d_scores = (probs * (d_probs - row_dot)).astype(q.dtype)  # with respect to the scaled scores
    d_q = jnp.einsum("bkqs,bksd->bkqd", d_scores, kh, preferred_element_type=jnp.float32) * scale
    d_k = jnp.einsum("bkqs,bkqd->bksd", d_scores, qh, preferred_element_type=jnp.float32)
    return (
        _from_grouped(d_q, b, t, h).astype(q.dtype),
        d_k.transpose(0, 2, 1, 3).astype(k.dtype),
        d_v.transpose(0, 2, 1, 3).astype(v.dtype),
        None,
        None if alibi is None else jax.tree.map(jnp.zeros_like, alibi),  # slopes and positions are constants
    )


xla_attention.defvjp(_attention_forward, _attention_vjp_backward)


QUERY_BLOCKS = 4
"""Query blocks of :func:`causal_blocked_attention`: 4 skips 3/8 of the (T, S) work; on a 2-core CPU at T = 256 it
beat 1, 2 and 8 blocks (fwd + bwd 33 ms against 48, 40 and 42 ms for one layer of 8 x 8 heads)."""


def causal_blocked_attention(
    q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray, alibi: Optional[Alibi] = None
) -> jnp.ndarray:
    """:func:`xla_attention` over a whole row (self-attention: query slot i is key slot i), skipping the key blocks
    that causality masks entirely: the queries are cut into :data:`QUERY_BLOCKS` blocks and block i attends only to
    keys up to its last slot. Same result as :func:`xla_attention`; rows not divisible into blocks use it directly."""
    t = q.shape[1]
    if t % QUERY_BLOCKS or t < 2 * QUERY_BLOCKS:
        return xla_attention(q, k, v, mask, alibi)
    size = t // QUERY_BLOCKS
    blocks = []
    for i in range(QUERY_BLOCKS):
        start, end = i * size, (i + 1) * size
        block_alibi = (
            None if alibi is None else Alibi(alibi.slopes, alibi.q_positions[:, start:end], alibi.kv_positions[:, :end])
        )
        blocks.append(xla_attention(q[:, start:end], k[:, :end], v[:, :end], mask[:, start:end, :end], block_alibi))
    return jnp.concatenate(blocks, axis=1)


def cudnn_attention(
    q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray, alibi: Optional[Alibi] = None
) -> jnp.ndarray:
    """cuDNN fused attention through jax.nn.dot_product_attention (NVIDIA GPUs, bf16/fp16 inputs); ALiBi goes in
    as its additive ``bias`` (B, H, T, S)."""
    dtype = q.dtype
    if dtype not in (jnp.bfloat16, jnp.float16):
        q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    bias = None if alibi is None else alibi_bias(alibi).astype(q.dtype)
    out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask[:, None, :, :], implementation="cudnn")
    return out.astype(dtype)


def splash_attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    segment_ids: jnp.ndarray,
    *,
    interpret: bool = False,
    block_size: int = 512,
) -> jnp.ndarray:
    """Pallas splash attention (TPU) for self-attention over a whole row (training, prefill without a cache).

    ``interpret=True`` runs the same kernel in Pallas' interpreter, which is how it is tested on CPU. Query and key
    lengths must be multiples of 128.
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

    b, t, h, d = q.shape
    kv = k.shape[2]
    if kv != h:  # the MHA kernel wants one key/value head per query head
        k = jnp.repeat(k, h // kv, axis=2)
        v = jnp.repeat(v, h // kv, axis=2)
    block = min(block_size, t)
    sizes = splash.BlockSizes(
        block_q=block,
        block_kv_compute=block,
        block_kv=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((t, t)) for _ in range(h)])
    kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
    scale = 1.0 / np.sqrt(d)
    # The kernel works on one row with heads first: (H, T, D).
    qh = jnp.swapaxes(q * scale, 1, 2)
    kh = jnp.swapaxes(k, 1, 2)
    vh = jnp.swapaxes(v, 1, 2)

    def one_row(q1, k1, v1, seg1):
        return kernel(q1, k1, v1, segment_ids=splash.SegmentIds(q=seg1, kv=seg1))

    out = jax.vmap(one_row)(qh, kh, vh, segment_ids)
    return jnp.swapaxes(out, 1, 2).astype(q.dtype)  # the kernel returns float32 for bfloat16 inputs


def on_local_shards(kernel: Callable[..., jnp.ndarray]) -> Callable[..., jnp.ndarray]:
    """Run an attention kernel ``kernel(q, k, v, segment_ids)`` on each device's shard under the installed mesh.

    A Pallas kernel is opaque to XLA's partitioner, which would gather its inputs onto every device. Rows and heads
    are independent in attention, so under :func:`jax.shard_map` each device runs the kernel on its own rows and
    heads, laid out as the sharding rules lay out the activations (no mesh installed: the kernel runs as is).
    """

    def run(q, k, v, segment_ids):
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty:
            return kernel(q, k, v, segment_ids)
        q_spec = nn.logical_to_mesh_axes((BATCH, LENGTH, HEADS, None))
        kv_spec = nn.logical_to_mesh_axes((BATCH, LENGTH, KV_HEADS, None))
        rows_spec = P(q_spec[0], q_spec[1])
        sharded = jax.shard_map(
            kernel, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, rows_spec), out_specs=q_spec, check_vma=False
        )
        return sharded(q, k, v, segment_ids)

    return run


def target_platform() -> str:
    """The platform being compiled for: the installed mesh's devices (an ahead-of-time compile for a TPU topology runs
    on a CPU host), else JAX's default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty and mesh.abstract_device is not None and mesh.abstract_device.platform:
        return mesh.abstract_device.platform
    return jax.default_backend()


IMPL_PLATFORMS: dict[str, tuple[tuple[str, ...], str]] = {
    "xla": ((), "any platform"),
    "cudnn": (("gpu", "cuda"), "an NVIDIA GPU"),
    "splash": (("tpu",), "a TPU"),
}
"""``model.attention_impl`` name -> (the platforms its kernel runs on, empty for all; what that is in words)."""


def resolve_impl(impl: str, *, has_cache: bool, seq_len: int, has_bias: bool = False) -> str:
    """The implementation actually used: a kernel the platform lacks (or that cannot take the ALiBi bias,
    ``has_bias``) falls back to ``xla`` with one warning."""
    if impl not in IMPL_PLATFORMS:
        raise ValueError(
            f"model.attention_impl: unknown implementation {impl!r} (expected {', '.join(IMPL_PLATFORMS)})"
        )
    platforms, needs = IMPL_PLATFORMS[impl]
    if not platforms:
        return impl
    backend = target_platform()
    if backend not in platforms:
        _warn_once(f"attention_impl={impl!r} needs {needs}; the backend is {backend!r}: using 'xla'")
        return "xla"
    if impl == "splash":
        if has_bias:
            _warn_once(
                "attention_impl='splash': the splash kernel takes no additive bias, so ALiBi (BLOOM) "
                "attention runs on 'xla'"
            )
            return "xla"
        if has_cache or seq_len % 128:
            # Decoding with a KV cache, or rows not a multiple of the kernel's block: the XLA path serves these.
            return "xla"
    return impl


def dot_product_attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    *,
    q_segment_ids: jnp.ndarray,
    kv_segment_ids: jnp.ndarray,
    q_slots: jnp.ndarray,
    kv_slots: jnp.ndarray,
    impl: str = "xla",
    has_cache: bool = False,
    alibi: Optional[Alibi] = None,
) -> jnp.ndarray:
    """Attention of q (B, T, H, D) over k/v (B, S, KV, D) with segment ids and causal slots, and optionally an
    ALiBi bias; see module docs."""
    chosen = resolve_impl(impl, has_cache=has_cache, seq_len=q.shape[1], has_bias=alibi is not None)
    if chosen == "splash":
        return on_local_shards(splash_attention)(q, k, v, q_segment_ids)
    mask = attention_mask(q_segment_ids, kv_segment_ids, q_slots, kv_slots)
    if chosen == "cudnn":
        return cudnn_attention(q, k, v, mask, alibi)
    if not has_cache:
        return causal_blocked_attention(q, k, v, mask, alibi)
    return xla_attention(q, k, v, mask, alibi)
