"""Dot-product attention with segment ids: plain XLA, cuDNN (GPU) and Pallas splash (TPU) implementations.

All implementations compute the same function. A query at slot ``i`` of a row attends to key slot ``j`` when
``j <= i`` (causal by slot) and both slots carry the same segment id. Packed rows therefore never attend across
documents, and padding (segment 0) only ever attends to padding.
"""

from __future__ import annotations

import logging
import warnings

import jax
import jax.numpy as jnp
import numpy as np

logger = logging.getLogger(__name__)

_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


def attention_mask(
    q_segment_ids: jnp.ndarray, kv_segment_ids: jnp.ndarray, q_slots: jnp.ndarray, kv_slots: jnp.ndarray
) -> jnp.ndarray:
    """Boolean (B, T, S) mask: same segment and key slot not after the query slot.

    Segment ids are (B, T) and (B, S); slots are the row positions (T,) and (S,) shared by every row.
    """
    same_segment = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    causal = kv_slots[None, None, :] <= q_slots[None, :, None]
    return same_segment & causal


def xla_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Einsum attention. q (B, T, H, D), k/v (B, S, KV, D) with H a multiple of KV, mask (B, T, S) -> (B, T, H, D).

    Grouped-query heads are handled by a reshape, never by copying keys and values per query head. Scores and
    softmax run in float32.
    """
    b, t, h, d = q.shape
    s, kv = k.shape[1], k.shape[2]
    g = h // kv
    # Heads first and a group's queries side by side, (B, KV, G*T, D): both matmuls are then plain batched matmuls
    # over (B, KV), which XLA:CPU runs about 1.5x faster than the same einsums in (B, T, heads, D) layout.
    qh = q.reshape(b, t, kv, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, d)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    scores = jnp.einsum("bkqd,bksd->bkqs", qh, kh, preferred_element_type=jnp.float32).reshape(b, kv, g, t, s)
    scores = scores * (1.0 / np.sqrt(d))
    big_negative = jnp.finfo(jnp.float32).min
    scores = jnp.where(mask[:, None, None, :, :], scores, big_negative)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, kv, g * t, s)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, vh).reshape(b, kv, g, t, d).transpose(0, 3, 1, 2, 4)
    return out.reshape(b, t, h, d)


def cudnn_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """cuDNN fused attention through jax.nn.dot_product_attention (NVIDIA GPUs, bf16/fp16 inputs)."""
    dtype = q.dtype
    if dtype not in (jnp.bfloat16, jnp.float16):
        q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, :, :], implementation="cudnn")
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
        block_q=block, block_kv_compute=block, block_kv=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
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
    return jnp.swapaxes(out, 1, 2)


def resolve_impl(impl: str, *, has_cache: bool, seq_len: int) -> str:
    """The implementation actually used: a kernel the platform lacks falls back to ``xla`` with one warning."""
    if impl == "xla":
        return "xla"
    backend = jax.default_backend()
    if impl == "cudnn":
        if backend != "gpu":
            _warn_once(f"attention_impl='cudnn' needs an NVIDIA GPU; the backend is {backend!r}: using 'xla'")
            return "xla"
        return "cudnn"
    if impl == "splash":
        if backend != "tpu":
            _warn_once(f"attention_impl='splash' needs a TPU; the backend is {backend!r}: using 'xla'")
            return "xla"
        if has_cache or seq_len % 128:
            # Decoding with a KV cache, or rows not a multiple of the kernel's block: the XLA path serves these.
            return "xla"
        return "splash"
    raise ValueError(f"model.attention_impl: unknown implementation {impl!r} (expected xla, cudnn or splash)")


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
) -> jnp.ndarray:
    """Attention of q (B, T, H, D) over k/v (B, S, KV, D) with segment ids and causal slots; see module docs."""
    chosen = resolve_impl(impl, has_cache=has_cache, seq_len=q.shape[1])
    if chosen == "splash":
        return splash_attention(q, k, v, q_segment_ids)
    mask = attention_mask(q_segment_ids, kv_segment_ids, q_slots, kv_slots)
    if chosen == "cudnn":
        return cudnn_attention(q, k, v, mask)
    return xla_attention(q, k, v, mask)
