"""Next-token selection: greedy, or sampling with temperature, top-k, top-p and a repetition penalty.

The logits pipeline follows transformers' ``generate`` so that settings mean the same thing in both tools: the
repetition penalty (applied for greedy decoding too), then, only when sampling, temperature, top-k and top-p, in
that order (``RepetitionPenaltyLogitsProcessor``, ``TemperatureLogitsWarper``, ``TopKLogitsWarper``,
``TopPLogitsWarper``; one token is always kept). One deliberate difference: transformers counts a left-padded
batch's pad tokens as "seen" by the repetition penalty (they are in its ``input_ids``); jaxtune does not, so a
prompt's result does not depend on how much padding its batch needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class SamplingParams:
    """How each new token is chosen from the model's logits (hashable: it is a static argument of the jitted loop)."""

    temperature: float = 0.0
    """0 means greedy decoding (argmax, first index on ties); above 0, sample from softmax(logits / temperature)."""
    top_k: int = 0
    """Sampling only: keep the k highest logits (ties with the k-th kept); 0 disables."""
    top_p: float = 1.0
    """Sampling only: keep the smallest set of most likely tokens whose probability reaches top_p; 1.0 disables."""
    repetition_penalty: float = 1.0
    """Logits of tokens already in the prompt or the reply: divided by this when positive, multiplied when negative
    (greedy and sampling); 1.0 disables."""
    known_ids: int = 0
    """Ids at or above this are never chosen (0: every id may be): a model whose vocabulary is larger than its
    tokenizer's (Qwen2.5's 152,064 rows for 151,665 tokens, a padded embedding) must not emit ids that have no text."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1.0 = off), got {self.repetition_penalty}")
        if self.known_ids < 0:
            raise ValueError(f"known_ids must be >= 0 (0 = every id), got {self.known_ids}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def uses_penalty(self) -> bool:
        return self.repetition_penalty != 1.0


def apply_repetition_penalty(logits: jnp.ndarray, seen: jnp.ndarray, penalty: float) -> jnp.ndarray:
    """transformers' RepetitionPenaltyLogitsProcessor: for tokens marked in ``seen`` (B, V) bool, a negative logit
    is multiplied by ``penalty`` and a positive one divided by it."""
    penalized = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, penalized, logits)


def top_k_filter(logits: jnp.ndarray, k: int) -> jnp.ndarray:
    """Logits below the k-th largest of their row become -inf (ties with the k-th survive, as in transformers)."""
    k = min(k, logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_filter(logits: jnp.ndarray, p: float) -> jnp.ndarray:
    """Nucleus filtering exactly as transformers' TopPLogitsWarper: sort ascending, drop tokens whose cumulative
    probability is <= 1 - p, always keep the most likely token."""
    order = jnp.argsort(logits, axis=-1)  # ascending; stable, like torch.sort on distinct values
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    remove_sorted = cumulative <= (1.0 - p)
    remove_sorted = remove_sorted.at[..., -1].set(False)
    rows = jnp.arange(logits.shape[0])[:, None]
    remove = jnp.zeros_like(remove_sorted).at[rows, order].set(remove_sorted)
    return jnp.where(remove, -jnp.inf, logits)


def drop_unknown_ids(logits: jnp.ndarray, known_ids: int) -> jnp.ndarray:
    """``logits`` (..., V) with ids at or above ``known_ids`` set to -inf (0, or V and more: unchanged), so they are
    never chosen (see :attr:`SamplingParams.known_ids`)."""
    if 0 < known_ids < logits.shape[-1]:
        return jnp.where(jnp.arange(logits.shape[-1]) >= known_ids, -jnp.inf, logits)
    return logits


def process_logits(logits: jnp.ndarray, seen: jnp.ndarray | None, params: SamplingParams) -> jnp.ndarray:
    """The logits a token is chosen from: ids beyond ``known_ids`` removed, penalty, then (sampling only)
    temperature, top-k, top-p."""
    logits = drop_unknown_ids(logits, params.known_ids)
    if params.uses_penalty:
        if seen is None:
            raise ValueError("a repetition penalty needs the mask of tokens already seen")
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        return logits
    if params.temperature != 1.0:
        logits = logits / params.temperature
    if params.top_k:
        logits = top_k_filter(logits, params.top_k)
    if params.top_p < 1.0:
        logits = top_p_filter(logits, params.top_p)
    return logits


def select_tokens(
    logits: jnp.ndarray, seen: jnp.ndarray | None, row_keys: jnp.ndarray, step: jnp.ndarray, params: SamplingParams
) -> jnp.ndarray:
    """One token id per row (B,) int32 from float32 logits (B, V).

    row_keys: (B,) typed PRNG keys, one per prompt (so a prompt's sample does not depend on its batch mates);
    the key of a step is ``fold_in(row_key, step)``, step being the index of the token in the row's reply (a
    scalar, or (B,) when rows started at different times). Unused when greedy.
    """
    processed = process_logits(logits, seen, params)
    if params.greedy:
        return jnp.argmax(processed, axis=-1).astype(jnp.int32)
    steps = jnp.broadcast_to(step, row_keys.shape)
    step_keys = jax.vmap(jax.random.fold_in)(row_keys, steps)
    return jax.vmap(jax.random.categorical)(step_keys, processed).astype(jnp.int32)
