"""jaxtune.runtime.compiles: compiles counted per named program through JAX's monitoring hooks, and a warm
persistent cache serving a second process's (here: a second, freshly jitted function's) programs."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtune.runtime import compiles
from jaxtune.runtime.compiles import CompileCounter, progress_part, run_cache_dir, use_compilation_cache


def _fresh_program():
    """A newly jitted function each call: JAX's in-memory caches miss, only the persistent cache can serve it."""

    def train_step(x):
        return jnp.tanh(x @ x.T).sum() * 3.0

    return jax.jit(train_step)


def test_compiles_are_counted_per_program_and_only_inside_its_block():
    inputs = {n: jnp.ones((n, 2)) for n in (3, 4, 5, 6)}
    other = jnp.ones(9)
    with CompileCounter() as counter:
        step = counter.wrap("train_step", _fresh_program())
        for n in (3, 4, 3, 5):  # three shapes, one met twice
            step(inputs[n])
        jax.jit(lambda x: x + 1)(other)  # outside any block: not counted
        with counter.program("eval_loss"):
            jax.jit(lambda x: x - 1)(other)
    step(inputs[6])  # after the counter closed: not counted
    assert counter.programs["train_step"].compiles == 3 and counter.programs["eval_loss"].compiles == 1
    scalars = counter.scalars()
    assert scalars["compiles/train_step"] == 3.0 and scalars["compile_s/train_step"] > 0
    assert scalars["compile_cache_hits/train_step"] == 0.0
    assert progress_part(scalars).startswith("compiles 4 (") and progress_part({"loss": 1.0}) is None
    assert counter.summary().startswith("compiles: eval_loss 1 (")
    with CompileCounter() as only, only.program("train_step", function="train_step"):
        _fresh_program()(inputs[3])
        jax.jit(lambda x: x * 2)(other)  # a helper in the same block: left out
    assert only.programs["train_step"].compiles == 1


def test_a_warm_persistent_cache_compiles_nothing_new(tmp_path, monkeypatch):
    before = jax.config.jax_compilation_cache_dir
    try:
        use_compilation_cache(str(tmp_path / "cache"), min_compile_secs=0.0)
        runs = []
        for _ in range(2):
            inputs = [jnp.ones((n, 2)) for n in (11, 12)]
            with CompileCounter() as counter, counter.program("train_step"):
                step = _fresh_program()
                for x in inputs:
                    step(x)
            runs.append(counter.programs["train_step"])
        assert (runs[0].compiles, runs[0].cache_hits) == (2, 0)
        assert (runs[1].compiles, runs[1].cache_hits) == (0, 2)
        assert list((tmp_path / "cache").iterdir())
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def test_the_run_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(compiles, "_RUN_FOLDERS", set())
    before = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        assert run_cache_dir("gs://b/cache", "runs/a") == "gs://b/cache"
        first = run_cache_dir(None, str(tmp_path / "a"))
        assert first == str(tmp_path / "a" / "compilation_cache")
        jax.config.update("jax_compilation_cache_dir", first)
        assert run_cache_dir(None, str(tmp_path / "b")) == str(tmp_path / "b" / "compilation_cache")  # its own
        jax.config.update("jax_compilation_cache_dir", "/shared")
        assert run_cache_dir(None, str(tmp_path / "c")) == "/shared"  # the process's (a sweep's, the environment's)
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
