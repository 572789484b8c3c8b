"""jaxtune.checkpoint.finite: which arrays hold NaN or inf, on device and on the host, and the error naming them."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxtune.checkpoint.finite import NonFiniteParamsError, check_finite, nonfinite_counts


def test_nonfinite_counts_name_only_the_floating_arrays_holding_nan_or_inf() -> None:
    tree = {"a": jnp.ones(3), "b": {"c": jnp.array([1.0, np.nan])}, "i": jnp.arange(3)}
    assert nonfinite_counts(tree) == {"b.c": 1}
    host = {"w": np.array([np.inf, -np.inf, 1.0], np.float32), "b16": np.array([np.nan, 0], jnp.bfloat16)}
    assert nonfinite_counts(host) == {"w": 2, "b16": 1}  # bfloat16 too (numpy's issubdtype misses it)


def test_check_finite_names_the_folder_and_each_array() -> None:
    check_finite({"w": np.ones(2, np.float32)}, "/ck")
    with pytest.raises(NonFiniteParamsError, match=r"^/ck: non-finite values \(NaN or inf\) in state\.w \(1 values\)"):
        check_finite({"w": np.array([1.0, np.nan], np.float32)}, "/ck", "state")
