"""``jaxtune check-hf``: jaxtune's model against transformers' on the same Hugging Face folder and tokens.

The folder is converted (:func:`jaxtune.convert.hf.load_hf_params`) and run by both sides in float32: the largest
absolute difference of their logits over the prompt, and their greedy continuations (KV-cache decoding on both
sides, no early stop; jaxtune's through :class:`jaxtune.eval.generate.Generator`). Needs torch (``jaxtune[hf]``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from jaxtune.checkpoint.params import model_with_params
from jaxtune.config.schema import ModelConfig
from jaxtune.convert.hf import load_hf_params
from jaxtune.convert.hf_families import FAMILIES
from jaxtune.eval.generate import Generator


@dataclass
class CheckReport:
    """What ``check-hf`` measured: jaxtune against transformers on the same checkpoint and tokens (float32)."""

    hf_dir: str
    num_tokens: int
    max_abs_logit_diff: float
    tolerance: float
    jaxtune_tokens: list[int]
    hf_tokens: list[int]

    @property
    def logits_ok(self) -> bool:
        return self.max_abs_logit_diff <= self.tolerance

    @property
    def greedy_match(self) -> bool:
        return self.jaxtune_tokens == self.hf_tokens

    @property
    def ok(self) -> bool:
        return self.logits_ok and self.greedy_match

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
        greedy = (
            f"agree on all {len(self.hf_tokens)} tokens"
            if self.greedy_match
            else f"differ from token {self.first_divergence()} on\n  jaxtune:      {self.jaxtune_tokens}\n"
            f"  transformers: {self.hf_tokens}"
        )
        return "\n".join(
            [
                f"check-hf {self.hf_dir}: {verdict}",
                f"  largest |logit difference| over {self.num_tokens} tokens: {self.max_abs_logit_diff:.3e} "
                f"(tolerance {self.tolerance:g}) {'ok' if self.logits_ok else 'TOO LARGE'}",
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
    """A jaxtune model of ``cfg``'s family holding ``params`` (a nested dict of numpy arrays, consumed: each is released once copied)."""
    return model_with_params(cfg, _to_device(params))


def check_hf(
    hf_dir: str | Path,
    num_tokens: int = 32,
    max_new_tokens: int = 16,
    tolerance: float = 1e-4,
    prompt_ids: Optional[Sequence[int]] = None,
    seed: int = 0,
) -> CheckReport:
    """``jaxtune check-hf HF_DIR``: convert the folder, run jaxtune's and transformers' model in float32 on the same
    tokens and compare the largest absolute logit difference and the greedy continuations (KV-cache decoding on
    both sides, no early stop). prompt_ids default to ``num_tokens`` seeded random ids. Needs torch (jaxtune[hf])
    and host memory for two float32 copies of the model."""
    import jax
    import torch
    import transformers

    hf_dir = Path(hf_dir)
    cfg, params = load_hf_params(hf_dir, param_dtype="float32")
    cfg = dataclasses.replace(cfg, compute_dtype="float32")
    if prompt_ids is None:
        rng = np.random.default_rng(seed)
        prompt_ids = rng.integers(0, cfg.vocab_size, size=num_tokens).tolist()
    ids = np.asarray(prompt_ids, np.int32)[None, :]

    model = build_model(cfg, params)
    jax_logits = np.asarray(jax.jit(lambda m, x: m(x)[0])(model, ids))[0]
    jax_tokens = list(Generator(model, batch_size=1).generate([ids[0].tolist()], max_new_tokens, stop_ids=())[0].tokens)
    del model

    hf_class = getattr(transformers, FAMILIES[cfg.family].architecture)
    hf_model = hf_class.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        torch_ids = torch.from_numpy(ids.astype(np.int64))
        hf_logits = hf_model(torch_ids).logits[0].numpy()
        out = hf_model.generate(
            torch_ids,
            attention_mask=torch.ones_like(torch_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=cfg.pad_token_id if cfg.pad_token_id is not None else 0,
        )
    hf_tokens = out[0, ids.shape[1] :].tolist()
    return CheckReport(
        hf_dir=str(hf_dir),
        num_tokens=int(ids.shape[1]),
        max_abs_logit_diff=float(np.max(np.abs(jax_logits - hf_logits))),
        tolerance=tolerance,
        jaxtune_tokens=[int(t) for t in jax_tokens],
        hf_tokens=[int(t) for t in hf_tokens],
    )
