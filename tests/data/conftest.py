"""Fixtures of the data tests: the real DoIT tokenizer (skipped cleanly when ../shared is absent) and a small
dataset in the DoIT layout."""

from __future__ import annotations

from pathlib import Path

import pytest
from doit_fixtures import DOIT_TOKENIZER, make_doit_layout


@pytest.fixture(scope="session")
def doit_tokenizer_path() -> Path:
    if not (DOIT_TOKENIZER / "tokenizer.model").is_file():
        pytest.skip(f"the DoIT tokenizer is not available at {DOIT_TOKENIZER} (../shared/data is absent)")
    return DOIT_TOKENIZER


@pytest.fixture
def doit_root(tmp_path: Path) -> Path:
    return make_doit_layout(tmp_path / "doit")
