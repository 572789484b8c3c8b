"""The optimizer from config: AdamW with optional no-decay mask, gradient clipping and learning-rate schedules.

Everything is optax; this module only translates :class:`~jaxtune.config.schema.OptimConfig`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax

from jaxtune.config.schema import ConfigError, OptimConfig
from jaxtune.models.dtypes import DTYPES
from jaxtune.names import unknown_name_message


def warmup_steps(cfg: OptimConfig, total_steps: int) -> int:
    """Warmup length: optim.warmup_steps, else optim.warmup_ratio of the run, rounded."""
    cfg.validate()
    steps = cfg.warmup_steps if cfg.warmup_steps > 0 else int(round(cfg.warmup_ratio * total_steps))
    if steps > total_steps:
        raise ConfigError(f"optim.warmup_steps={steps} is longer than the run ({total_steps} steps)")
    return steps


def _linear_from_peak(peak: float, end: float, warm: int, total: int) -> optax.Schedule:
    return optax.linear_schedule(peak, end, total)


def _warmup_cosine(peak: float, end: float, warm: int, total: int) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(0.0, peak, warm, total, end)


def _after_warmup(peak: float, warm: int, schedule: optax.Schedule) -> optax.Schedule:
    if warm == 0:
        return schedule
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), schedule], [warm])


def _warmup_linear(peak: float, end: float, warm: int, total: int) -> optax.Schedule:
    return _after_warmup(peak, warm, optax.linear_schedule(peak, end, max(1, total - warm)))


def _constant(peak: float, end: float, warm: int, total: int) -> optax.Schedule:
    return _after_warmup(peak, warm, optax.constant_schedule(peak))


SCHEDULES: dict[str, Callable[[float, float, int, int], optax.Schedule]] = {
    "linear_from_peak": _linear_from_peak,
    "warmup_cosine": _warmup_cosine,
    "warmup_linear": _warmup_linear,
    "constant": _constant,
}
"""``optim.schedule`` name -> ``(peak, end, warmup steps, total steps) -> schedule``."""


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """The learning rate as a function of the number of optimizer updates applied so far.

    - ``linear_from_peak`` (the study's, as transformers' linear schedule without warmup): the peak at the first
      update, then linear to ``end_learning_rate_ratio`` x peak at ``total_steps``.
    - ``warmup_cosine``: linear from 0 to the peak over the warmup, then cosine to the end value.
    - ``warmup_linear``: linear from 0 to the peak over the warmup, then linear to the end value.
    - ``constant``: the peak throughout (after a linear warmup when one is set).
    """
    if total_steps <= 0:
        raise ConfigError(f"the run has {total_steps} optimizer steps; it needs at least one")
    if cfg.schedule not in SCHEDULES:
        raise ConfigError("optim.schedule: " + unknown_name_message("schedule", cfg.schedule, SCHEDULES))
    peak = cfg.learning_rate
    return SCHEDULES[cfg.schedule](
        peak, peak * cfg.end_learning_rate_ratio, warmup_steps(cfg, total_steps), total_steps
    )


def _decayed(path: tuple[Any, ...]) -> bool:
    """Whether a parameter at this path takes weight decay when norms and embeddings are excluded."""
    name = str(getattr(path[-1], "key", path[-1]))
    return not (name.endswith("norm") or name == "embed_tokens")


def weight_decay_mask(params: Any) -> Any:
    """True for the parameters that take weight decay when ``decay_norms_and_embeddings`` is False: every weight
    matrix except the input embedding; RMSNorm weights are excluded."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _decayed(path), params)


def build_optimizer(cfg: OptimConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(transformation, schedule): clip by global norm (when set), then AdamW with the schedule.

    optax's AdamW decays as torch.optim.AdamW does (``p -= lr * weight_decay * p`` beside the Adam step).
    """
    cfg.validate()  # OptimConfig's rules: b1, b2 in [0, 1), eps > 0, finite non-negative rates...
    schedule = learning_rate_schedule(cfg, total_steps)
    adamw = optax.adamw(
        learning_rate=schedule,
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mu_dtype=None if cfg.mu_dtype is None else DTYPES[cfg.mu_dtype],
        mask=None if cfg.decay_norms_and_embeddings else weight_decay_mask,
    )
    parts = [adamw] if cfg.max_grad_norm is None else [optax.clip_by_global_norm(cfg.max_grad_norm), adamw]
    return optax.chain(*parts), schedule


def optimizer_state_shardings(
    tx: optax.GradientTransformation, abstract_params: Any, param_shardings: Any, replicated: Any
) -> Any:
    """Shardings of the optimizer state: every leaf that mirrors a parameter (Adam's moments) takes that
    parameter's sharding; scalars (step counts) take ``replicated``."""
    state_shapes = jax.eval_shape(tx.init, abstract_params)
    return optax.tree_map_params(
        tx,
        lambda _, sharding: sharding,
        state_shapes,
        param_shardings,
        transform_non_params=lambda _: replicated,
    )
