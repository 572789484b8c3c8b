"""Fixtures of the model tests: tiny transformers/jaxtune model pairs (see hf_reference.py)."""

from __future__ import annotations

import pytest
from hf_reference import VARIANTS, Pair, make_pair


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request: pytest.FixtureRequest) -> Pair:
    """One tiny model pair per variant (module scope: built once per test file and variant)."""
    return make_pair(request.param)


@pytest.fixture(scope="module")
def gqa_pair() -> Pair:
    """The grouped-query, untied, default-rope pair."""
    return make_pair("gqa-untied-default", seed=1)
