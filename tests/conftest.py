"""Test-session setup: eight simulated CPU devices (the sharded and multi-device paths run on any machine)."""

from __future__ import annotations

import os
from pathlib import Path

# Must happen before jax is imported anywhere: XLA reads the flag when the CPU backend starts.
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "long: a test of minutes; its file is scheduled first (see below)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files holding a test marked ``long`` go first: scripts/test.sh spreads the files over processes, and a file
    of several minutes started last would keep the suite waiting on it alone."""
    long_files = {item.path for item in items if item.get_closest_marker("long")}
    items.sort(key=lambda item: item.path not in long_files)  # stable: the usual order otherwise


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (real tokenizers and benchmarks); tests needing it skip without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is not present (the shared data folder lives beside the checkout)")
    return SHARED_DATA
