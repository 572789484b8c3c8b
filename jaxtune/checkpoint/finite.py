"""The finiteness scan: which arrays of a restored tree hold NaN or inf (a damaged checkpoint, or a run that
diverged before it was saved)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxtune.checkpoint.errors import CheckpointError, complete_step_hint


class NonFiniteParamsError(CheckpointError):
    """A checkpoint holds NaN or infinite values; the message names the folder and each affected array."""


@functools.lru_cache(maxsize=None)
def _nonfinite_counter(treedef: Any) -> Any:
    import jax.numpy as jnp

    def count(leaves: list) -> Any:  # one program over the whole tree: a vector of per-array counts
        return jnp.stack([jnp.sum(~jnp.isfinite(x)).astype(jnp.int32) for x in leaves])

    return jax.jit(count)


def nonfinite_counts(tree: Any) -> dict[str, int]:
    """{dotted name: count} of the floating-point arrays of ``tree`` holding NaN or inf values.

    Device arrays are checked by one jitted reduction over the tree (one small transfer back), on whatever devices
    and shardings they live; host numpy arrays array by array (no device memory needed).
    """
    flat = [
        (k, x)
        for k, x in jax.tree_util.tree_flatten_with_path(tree)[0]
        if jax.numpy.issubdtype(x.dtype, jax.numpy.inexact)
    ]  # numpy's issubdtype misses bfloat16
    if not flat:
        return {}
    on_device = [(k, x) for k, x in flat if isinstance(x, jax.Array)]
    on_host = [(k, x) for k, x in flat if not isinstance(x, jax.Array)]
    counts = {dotted_key(k): _host_nonfinite(x) for k, x in on_host}
    if on_device:
        leaves = [x for _, x in on_device]
        device_counts = np.asarray(jax.device_get(_nonfinite_counter(jax.tree.structure(leaves))(leaves)))
        counts.update({dotted_key(k): int(c) for (k, _), c in zip(on_device, device_counts)})
    return {k: c for k, c in counts.items() if c}


_HOST_CHUNK = 1 << 24  # elements per np.isfinite pass: bounds the temporary mask to 16 MB on any model size


def _host_nonfinite(x: Any) -> int:
    flat = np.asarray(x).reshape(-1)
    return sum(
        int(chunk.size - np.count_nonzero(np.isfinite(chunk)))
        for chunk in (flat[i : i + _HOST_CHUNK] for i in range(0, flat.size, _HOST_CHUNK))
    )


def check_finite(tree: Any, where: str | Path, what: str = "params") -> None:
    """Raise NonFiniteParamsError naming ``where`` and each array of ``tree`` that holds NaN or inf."""
    bad = nonfinite_counts(tree)
    if bad:
        listed = ", ".join(f"{what}.{k} ({c} values)" for k, c in sorted(bad.items()))
        raise NonFiniteParamsError(
            f"{where}: non-finite values (NaN or inf) in {listed}: the checkpoint is damaged "
            f"or the run diverged before it was saved{complete_step_hint(where)}"
        )


def dotted_key(path: tuple) -> str:
    """``layers.q_proj`` from a key path of ``jax.tree_util.tree_flatten_with_path``."""
    return ".".join(str(getattr(p, "key", getattr(p, "name", p))) for p in path)
