"""Bucketed shapes, rows split over a mesh, and the compiled-function cache shared by model instances."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from jaxtune.config.schema import MeshConfig
from jaxtune.eval.batching import bucket_length, jitted, put_rows
from jaxtune.models.configs import model_config
from jaxtune.models.llama import Llama
from jaxtune.sharding import build_mesh


def test_bucket_length():
    assert [bucket_length(n) for n in (1, 16, 17, 33, 64, 65, 128, 129, 2000)] == [
        16,
        16,
        32,
        64,
        64,
        128,
        128,
        192,
        2048,
    ]
    assert bucket_length(5, multiple=8) == 8 and bucket_length(9, multiple=8) == 16
    with pytest.raises(ValueError, match="positive"):
        bucket_length(0)


def test_rows_are_split_over_the_data_parallel_axes():
    mesh = build_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    rows = np.arange(8 * 3, dtype=np.int32).reshape(8, 3)
    (placed,) = put_rows([rows], mesh)
    np.testing.assert_array_equal(np.asarray(placed), rows)
    # Each of the 4 data-parallel groups holds 2 rows (replicated over the tensor axis).
    assert {s.data.shape for s in placed.addressable_shards} == {(2, 3)}
    assert put_rows([rows], None)[0] is rows


def test_compiled_functions_are_shared_by_equal_configs():
    def fn(graphdef, x):
        return x + 1

    cfg = model_config("tiny-gqa")
    graphdef = nnx.split(nnx.eval_shape(lambda: Llama(cfg, nnx.Rngs(0))))[0]
    first = jitted(fn, graphdef, cfg, None)
    assert jitted(fn, graphdef, model_config("tiny-gqa"), None) is first
    assert jitted(fn, graphdef, model_config("tiny-gqa", vocab_size=1004), None) is not first
    assert int(first(jax.numpy.int32(1))) == 2
