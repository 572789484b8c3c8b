"""The error of an evaluation that cannot start (kept apart from :mod:`jaxtune.eval.loading`, which imports JAX and
the checkpoints, so that the suites can raise it without importing either)."""

from __future__ import annotations

from jaxtune.errors import JaxtuneError


class EvalSetupError(JaxtuneError, ValueError):
    """The evaluation cannot start: a checkpoint, tokenizer, suite name, data folder or judge setting is wrong. The
    message names the path or config field."""
