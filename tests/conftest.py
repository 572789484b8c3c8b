"""Test-session setup: eight simulated CPU devices (the sharded and multi-device paths run on any machine), programs
compiled at LLVM's lowest level (tests/compile_level.py), and one compilation cache for the whole suite."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from compile_level import SUITE_FLAG  # noqa: E402  (tests/ is on sys.path: pytest's rootdir conftest)

# Must happen before jax is imported anywhere: XLA reads the flags when the CPU backend starts.
for _flag in ("--xla_force_host_platform_device_count=8", SUITE_FLAG):
    if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the suite: its processes (pytest-xdist's workers inherit the variable from
# the controller, which loads this file first) and every jaxtune process a test starts. The same tiny programs
# compile in many tests; a run reads them from here instead (jaxtune.runtime.compiles.run_cache_dir honours the
# variable). Tests about the cache itself or counting compiles take their own: the ``own_compilation_cache`` fixture.
SHARED_CACHE_VARIABLE = "JAXTUNE_TEST_SHARED_CACHE"
if SHARED_CACHE_VARIABLE not in os.environ:
    os.environ[SHARED_CACHE_VARIABLE] = os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(
        prefix="jaxtune-tests-compilation-cache-"
    )

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "long: a test of minutes; its file is scheduled first (see below)")


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controller (or the only process), after every worker ended
        shutil.rmtree(os.environ[SHARED_CACHE_VARIABLE], ignore_errors=True)


FIRST_FILES = ("study/test_ray_sweep.py", "train/test_trainer.py", "gcp/test_rehearsal.py")
"""The long files that start the run, in this order. pytest-xdist (``--dist loadfile``) hands the first file to
worker 0 and the second to worker 1, then another file to each worker holding two tests or fewer: the Ray grid's
file (two tests) takes the rehearsal's after it on worker 0. The two emulations of multi-host slices, four or more
processes each, so run one after the other while worker 1 runs the trainer's tests (more than two, most of them in
its own process), instead of side by side or beside the quickstart's grid (there they took 1.4-2.4 times their time
alone)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files holding a test marked ``long`` go first (:data:`FIRST_FILES` before the others): scripts/test.sh spreads
    the files over processes, and a file of several minutes started last would keep the suite waiting on it alone."""
    first = {REPO / "tests" / name: rank for rank, name in enumerate(FIRST_FILES)}
    missing = [str(path) for path in first if not path.is_file()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py FIRST_FILES names files that do not exist: {missing}")
    long_files = {item.path for item in items if item.get_closest_marker("long")}

    def rank(item: pytest.Item) -> int:
        return first.get(item.path, len(first) if item.path in long_files else len(first) + 1)

    items.sort(key=rank)  # stable: the usual order otherwise


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (real tokenizers and benchmarks); tests needing it skip without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is not present (the shared data folder lives beside the checkout)")
    return SHARED_DATA


@pytest.fixture
def own_compilation_cache(monkeypatch: pytest.MonkeyPatch):
    """No suite-wide cache for this test: runs pick their own default (RUN_DIR/compilation_cache), as outside the
    suite, so counts of compiles and cache hits are this test's alone."""
    import jax

    from jaxtune.runtime import compiles

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setattr(compiles, "_RUN_FOLDERS", set())
    before = jax.config.jax_compilation_cache_dir
    compiles.use_compilation_cache(None)
    yield
    compiles.use_compilation_cache(before)
