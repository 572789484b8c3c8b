"""Fixtures of the trainer tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory) -> Path:
    """A JAX persistent compilation cache shared by this session's training subprocesses (they compile the same
    programs; sharing them keeps the suite fast)."""
    return tmp_path_factory.mktemp("jax-compile-cache")
