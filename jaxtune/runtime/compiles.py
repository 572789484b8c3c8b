"""XLA compiles counted per program through JAX's own monitoring hooks, and the persistent compilation cache.

Counting: JAX records ``/jax/core/compile/backend_compile_duration`` (seconds, with the jitted function's name) for
every backend compile, one served from the persistent cache included, and ``/jax/compilation_cache/cache_hits``
just before the duration of a compile the cache served. A :class:`CompileCounter` attributes each compile to the
program named by the innermost ``counter.program(name)`` block open on the thread that compiles (a jitted call
compiles synchronously on the calling thread; ``counter.wrap(name, fn)`` puts every call of ``fn`` in one), so the
run loop names its train step (``train_step``) and evaluation-loss step (``eval_loss``). Compiles outside any block
(small helpers, the state's initialisation) are not counted.

Figures per program NAME (:meth:`CompileCounter.scalars`, written to ``metrics.jsonl``): ``compiles/NAME`` (fresh
compiles), ``compile_s/NAME`` (seconds in them), ``compile_cache_hits/NAME`` (programs read from the persistent
cache instead).

The cache: :func:`use_compilation_cache` points ``jax_compilation_cache_dir`` at a folder (local or ``gs://``) before
the first compile; every later process with the same programs, devices and JAX version reads them from there.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import jax
from jax import monitoring

from jaxtune.paths import as_path

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
"""JAX's event for one backend compile (``jax._src.dispatch.BACKEND_COMPILE_EVENT``), with its duration."""
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
"""JAX's event for a compile served from the persistent cache (recorded inside the compile's duration)."""


@dataclass
class ProgramCompiles:
    """One program's compiles: fresh ones, their seconds, and those read from the persistent cache."""

    compiles: int = 0
    seconds: float = 0.0
    cache_hits: int = 0
    cache_seconds: float = 0.0


class CompileCounter:
    """Counts the compiles of named programs while it is entered (``with CompileCounter() as counter:``)."""

    def __init__(self) -> None:
        self.programs: dict[str, ProgramCompiles] = {}
        self._local = threading.local()
        self._lock = threading.Lock()

    def __enter__(self) -> "CompileCounter":
        monitoring.register_event_listener(self._on_event)
        monitoring.register_event_duration_secs_listener(self._on_duration)
        return self

    def __exit__(self, *exc: Any) -> None:
        monitoring.unregister_event_listener(self._on_event)
        monitoring.unregister_event_duration_listener(self._on_duration)

    @contextlib.contextmanager
    def program(self, name: str, function: Optional[str] = None) -> Iterator[None]:
        """Attribute the compiles of this block (on this thread) to program ``name``; with ``function``, only those
        of the jitted function of that name (``step``: not the small helpers the block also compiles)."""
        outer = getattr(self._local, "name", None), getattr(self._local, "function", None)
        self._local.name, self._local.function = name, function
        try:
            yield
        finally:
            self._local.name, self._local.function = outer

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` (a jitted program) with its calls' compiles attributed to program ``name``."""

        def counted(*args: Any, **kwargs: Any) -> Any:
            with self.program(name):
                return fn(*args, **kwargs)

        return counted

    def _on_event(self, event: str, **kwargs: Any) -> None:
        if event == CACHE_HIT_EVENT and getattr(self._local, "name", None) is not None:
            self._local.hit = True

    def _on_duration(self, event: str, duration: float, **kwargs: Any) -> None:
        name = getattr(self._local, "name", None)
        if event != BACKEND_COMPILE_EVENT or name is None:
            return
        hit, self._local.hit = getattr(self._local, "hit", False), False
        function = getattr(self._local, "function", None)
        if function is not None and kwargs.get("fun_name") != f"jit({function})":
            return
        with self._lock:
            figures = self.programs.setdefault(name, ProgramCompiles())
            if hit:
                figures.cache_hits += 1
                figures.cache_seconds += duration
            else:
                figures.compiles += 1
                figures.seconds += duration

    def scalars(self) -> dict[str, float]:
        """``compiles/NAME``, ``compile_s/NAME`` and ``compile_cache_hits/NAME`` of every program seen."""
        out: dict[str, float] = {}
        for name, p in sorted(self.programs.items()):
            out[f"compiles/{name}"] = float(p.compiles)
            out[f"compile_s/{name}"] = round(p.seconds, 3)
            out[f"compile_cache_hits/{name}"] = float(p.cache_hits)
        return out

    def summary(self) -> str:
        """One line: each program's fresh compiles and seconds, and what the persistent cache served."""
        if not self.programs:
            return "compiles: none counted"
        parts = []
        for name, p in sorted(self.programs.items()):
            cached = f", {p.cache_hits} from the cache ({p.cache_seconds:.1f} s)" if p.cache_hits else ""
            parts.append(f"{name} {p.compiles} ({p.seconds:.1f} s{cached})")
        return "compiles: " + "; ".join(parts)


def progress_part(scalars: dict[str, Any]) -> Optional[str]:
    """The progress line's compile figure (fresh compiles and their seconds over all programs so far), or None."""
    counts = [v for k, v in scalars.items() if k.startswith("compiles/")]
    if not counts:
        return None
    seconds = sum(v for k, v in scalars.items() if k.startswith("compile_s/"))
    return f"compiles {int(sum(counts))} ({seconds:.0f} s)"


_RUN_FOLDERS: set[str] = set()
"""The RUN_DIR/compilation_cache folders chosen by default in this process (a later run picks its own)."""


def run_cache_dir(configured: Optional[str], run_dir: str) -> str:
    """The cache folder of a run: ``train.compilation_cache_dir`` when set, else the folder this process already
    uses (``JAX_COMPILATION_CACHE_DIR``, or the one a sweep or the quickstart set for all its cells), else
    ``RUN_DIR/compilation_cache``."""
    if configured:
        return configured
    current = jax.config.jax_compilation_cache_dir
    if current and current not in _RUN_FOLDERS:  # set for the whole process, not by an earlier run's default
        return current
    folder = str(as_path(run_dir) / "compilation_cache")
    _RUN_FOLDERS.add(folder)
    return folder


def use_compilation_cache(path: str, min_compile_secs: Optional[float] = None) -> str:
    """Read and write compiled programs in ``path`` (local or ``gs://``) from the next compile on; programs
    compiling in under ``min_compile_secs`` (None: the process's setting) are not written. Returns ``path``."""
    from jax.experimental.compilation_cache import compilation_cache

    if jax.config.jax_compilation_cache_dir != path:
        jax.config.update("jax_compilation_cache_dir", path)
        compilation_cache.reset_cache()  # a cache already opened elsewhere is reopened at the new folder
    if min_compile_secs is not None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_secs)
    return path
