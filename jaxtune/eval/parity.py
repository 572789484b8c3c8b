"""``jaxtune check-hf``: jaxtune's model against transformers' on the same Hugging Face folder and tokens.

The folder is converted (:func:`jaxtune.convert.hf.load_hf_params`) and run by both sides in one dtype (float32, or
bfloat16 on both sides: jaxtune's weights and compute, transformers' ``dtype=torch.bfloat16``), then compared:

- **the metric**: the largest absolute difference of the two sides' log-softmax over every prompt position and
  vocabulary entry, relative to the logits' spread (the root mean square over positions of transformers' logits'
  standard deviation over the vocabulary): ``max |Δ log p| / spread``. Log-probabilities make the metric blind to a
  constant shift of a position's logits (which changes no prediction); dividing by the spread makes it scale with the
  model (a 30-layer model's logits spread wider, and float32 rounding grows with them, than a tiny test model's).
  It passes at or below ``tolerance`` (:data:`DEFAULT_TOLERANCE` per dtype);
- **greedy agreement**: both continuations (KV-cache decoding on both sides, no early stop; jaxtune's through
  :class:`jaxtune.eval.generate.Generator`) agree, or they first differ where transformers' logits of its token and
  of jaxtune's are within ``2 x tolerance x spread`` of each other (a near tie that differences within the
  tolerance can flip).

A correct conversion passes both; a permuted head or a wrong rope base fails the first by orders of magnitude. The
largest absolute logit difference is reported too. Needs torch (``jaxtune[hf]``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from jaxtune.checkpoint.params import model_with_params
from jaxtune.config.schema import ModelConfig
from jaxtune.convert.hf import load_hf_params
from jaxtune.convert.hf_families import FAMILIES
from jaxtune.eval.generate import Generator

DEFAULT_TOLERANCE = {"float32": 5e-4, "bfloat16": 0.25}
"""dtype -> the largest ``max |Δ log p| / spread`` that passes. Measured (tests/eval/test_parity.py): correct
conversions of tiny and 30-layer random models show ~6e-6 / 3e-6 in float32 and 0.06-0.10 in bfloat16 (each side
rounds its activations to 8 bits of mantissa, differently); one permuted head or a 10x rope base shows 1.7e-2 (a
30-layer model with weak attention) to 5.5 (tiny models) in float32 and 2.3-5.5 in bfloat16 on the tiny models. A
real model's 1.44e-4 absolute in float32 is ~5e-5 of a logit spread of 3."""
CHECK_DTYPES = tuple(DEFAULT_TOLERANCE)


@dataclass
class CheckReport:
    """What ``check-hf`` measured: jaxtune against transformers on the same checkpoint and tokens."""

    hf_dir: str
    num_tokens: int
    max_abs_logprob_diff: float
    """max over prompt positions and vocabulary of |log-softmax(jaxtune) - log-softmax(transformers)|."""
    logit_spread: float
    """RMS over prompt positions of the standard deviation of transformers' logits over the vocabulary."""
    tolerance: float
    """The largest ``relative_error`` that passes."""
    jaxtune_tokens: list[int]
    hf_tokens: list[int]
    max_abs_logit_diff: float = float("nan")
    dtype: str = "float32"
    tie_gap: Optional[float] = None
    """At the first differing generated token: transformers' logit of its token minus its logit of jaxtune's."""

    @property
    def relative_error(self) -> float:
        """The metric: ``max_abs_logprob_diff / logit_spread``."""
        return self.max_abs_logprob_diff / max(self.logit_spread, 1e-30)

    @property
    def logits_ok(self) -> bool:
        return self.relative_error <= self.tolerance

    @property
    def greedy_match(self) -> bool:
        return self.jaxtune_tokens == self.hf_tokens

    @property
    def near_tie(self) -> bool:
        """The continuations differ first at a token where transformers' two candidates are within the tolerance."""
        return self.tie_gap is not None and self.tie_gap <= 2 * self.tolerance * self.logit_spread

    @property
    def ok(self) -> bool:
        return self.logits_ok and (self.greedy_match or self.near_tie)

    def first_divergence(self) -> Optional[int]:
        """Index of the first generated token that differs (None when the continuations agree)."""
        for i, (a, b) in enumerate(zip(self.jaxtune_tokens, self.hf_tokens)):
            if a != b:
                return i
        return (
            None
            if len(self.jaxtune_tokens) == len(self.hf_tokens)
            else min(map(len, (self.jaxtune_tokens, self.hf_tokens)))
        )

    def summary(self) -> str:
        """Human-readable lines for the CLI."""
        verdict = "OK" if self.ok else "MISMATCH"
        greedy = f"agree on all {len(self.hf_tokens)} tokens"
        if not self.greedy_match:
            tie = "a near tie, ok" if self.near_tie else "not a near tie"
            greedy = (
                f"differ from token {self.first_divergence()} ({tie}: transformers' logit gap "
                f"{self.tie_gap if self.tie_gap is not None else float('nan'):.3g}) on\n"
                f"  jaxtune:      {self.jaxtune_tokens}\n  transformers: {self.hf_tokens}"
            )
        return "\n".join(
            [
                f"check-hf {self.hf_dir} ({self.dtype}): {verdict}",
                f"  max |Δ log-softmax| / logit spread over {self.num_tokens} tokens: {self.relative_error:.3e} "
                f"(= {self.max_abs_logprob_diff:.3e} / {self.logit_spread:.3g}; tolerance {self.tolerance:g}) "
                f"{'ok' if self.logits_ok else 'TOO LARGE'}",
                f"  largest |logit difference|: {self.max_abs_logit_diff:.3e}",
                f"  greedy continuations: {greedy}",
            ]
        )


def _to_device(params: dict) -> dict:
    """numpy tree -> jax arrays, releasing each numpy array as soon as its copy exists."""
    import jax.numpy as jnp

    out = {}
    for key in list(params):
        value = params.pop(key)
        out[key] = _to_device(value) if isinstance(value, dict) else jnp.asarray(value)
    return out


def build_model(cfg: ModelConfig, params: dict):
    """A jaxtune model of ``cfg``'s family holding ``params`` (a nested dict of numpy arrays, consumed: each is
    released once copied)."""
    return model_with_params(cfg, _to_device(params))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log-softmax over the last axis in float64."""
    x = np.asarray(logits, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def jaxtune_side(cfg: ModelConfig, params: dict, ids: np.ndarray, max_new_tokens: int) -> tuple[np.ndarray, list]:
    """jaxtune's float32 logits (T, V) of the prompt ``ids`` (1, T) and its greedy continuation."""
    import jax

    model = build_model(cfg, params)
    logits = np.asarray(jax.jit(lambda m, x: m(x)[0])(model, ids), np.float32)[0]
    tokens = Generator(model, batch_size=1).generate([ids[0].tolist()], max_new_tokens, stop_ids=())[0].tokens
    return logits, [int(t) for t in tokens]


def hf_side(
    hf_dir: Path, cfg: ModelConfig, ids: np.ndarray, max_new_tokens: int, dtype: str
) -> tuple[np.ndarray, list, Any]:
    """transformers' logits (T, V) of the prompt, its greedy continuation and its logits at each generated step."""
    import torch
    import transformers

    hf_class = getattr(transformers, FAMILIES[cfg.family].architecture)
    hf_model = hf_class.from_pretrained(hf_dir, dtype=getattr(torch, dtype), attn_implementation="eager").eval()
    with torch.no_grad():
        torch_ids = torch.from_numpy(ids.astype(np.int64))
        logits = hf_model(torch_ids).logits[0].float().numpy()
        out = hf_model.generate(
            torch_ids,
            attention_mask=torch.ones_like(torch_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=cfg.pad_token_id if cfg.pad_token_id is not None else 0,
            output_scores=True,
            return_dict_in_generate=True,
        )
    steps = [s[0].float().numpy() for s in out.scores]
    return logits, [int(t) for t in out.sequences[0, ids.shape[1] :]], steps


def check_hf(
    hf_dir: str | Path,
    num_tokens: int = 32,
    max_new_tokens: int = 16,
    tolerance: Optional[float] = None,
    prompt_ids: Optional[Sequence[int]] = None,
    seed: int = 0,
    dtype: str = "float32",
) -> CheckReport:
    """``jaxtune check-hf HF_DIR``: convert the folder, run jaxtune's and transformers' model in ``dtype`` on the
    same tokens and compare them (see the module docstring for the metric; ``tolerance`` defaults to
    :data:`DEFAULT_TOLERANCE` of the dtype). prompt_ids default to ``num_tokens`` seeded random ids. Needs torch
    (jaxtune[hf]) and host memory for two copies of the model."""
    if dtype not in DEFAULT_TOLERANCE:
        raise ValueError(f"check-hf dtype must be one of {', '.join(CHECK_DTYPES)}, got {dtype!r}")
    hf_dir = Path(hf_dir)
    cfg, params = load_hf_params(hf_dir, param_dtype=dtype)
    cfg = dataclasses.replace(cfg, compute_dtype=dtype)
    if prompt_ids is None:
        prompt_ids = np.random.default_rng(seed).integers(0, cfg.vocab_size, size=num_tokens).tolist()
    ids = np.asarray(prompt_ids, np.int32)[None, :]
    jax_logits, jax_tokens = jaxtune_side(cfg, params, ids, max_new_tokens)
    hf_logits, hf_tokens, hf_steps = hf_side(hf_dir, cfg, ids, max_new_tokens, dtype)
    report = CheckReport(
        hf_dir=str(hf_dir),
        num_tokens=int(ids.shape[1]),
        max_abs_logprob_diff=float(np.max(np.abs(log_softmax(jax_logits) - log_softmax(hf_logits)))),
        logit_spread=float(np.sqrt(np.mean(np.var(hf_logits.astype(np.float64), axis=-1)))),
        tolerance=DEFAULT_TOLERANCE[dtype] if tolerance is None else tolerance,
        jaxtune_tokens=jax_tokens,
        hf_tokens=hf_tokens,
        max_abs_logit_diff=float(np.max(np.abs(jax_logits - hf_logits))),
        dtype=dtype,
    )
    at = report.first_divergence()
    if at is not None and at < min(len(jax_tokens), len(hf_tokens)):
        report.tie_gap = float(hf_steps[at][hf_tokens[at]] - hf_steps[at][jax_tokens[at]])
    return report
