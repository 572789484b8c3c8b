"""Fixtures of the model tests: tiny transformers/jaxtune model pairs of every family (see hf_pairs.py)."""

from __future__ import annotations

import pytest
from hf_pairs import ALL_VARIANTS, Pair, make_pair


@pytest.fixture(scope="module", params=ALL_VARIANTS, ids=[f"{f}-{v}" for f, v in ALL_VARIANTS])
def pair(request: pytest.FixtureRequest) -> Pair:
    """One tiny model pair per family and variant (module scope: built once per test file and variant)."""
    return make_pair(*request.param)


@pytest.fixture(scope="module")
def gqa_pair() -> Pair:
    """The grouped-query, untied, default-rope LLaMA pair."""
    return make_pair("llama", "gqa-untied-default", seed=1)


@pytest.fixture(scope="module")
def six_heads() -> Pair:
    """A BLOOM pair with six heads: both of ALiBi's slope sequences."""
    return make_pair("bloom", "heads6-vocab131", seed=1)


@pytest.fixture(scope="module", params=["llama", "bloom"])
def decoding_pair(request: pytest.FixtureRequest, gqa_pair: Pair, six_heads: Pair) -> Pair:
    """The pair of each family that the cache, layer-scan and packing tests run on."""
    return {"llama": gqa_pair, "bloom": six_heads}[request.param]
