"""The JAX dtype of each name of :data:`jaxtune.names.DTYPES` (``model.param_dtype``, ``optim.mu_dtype``...)."""

from __future__ import annotations

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
"""dtype name -> JAX dtype."""
