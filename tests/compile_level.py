"""The suite compiles at LLVM's lowest optimisation level (tests/conftest.py adds :data:`SUITE_FLAG` to
``XLA_FLAGS``, which every process of the suite inherits).

The suite's programs are tiny: compiling them is most of their cost, and at level 0 a compile-bound test file used a
fifth less CPU (tests/models/test_attention.py: 77 s -> 61 s). What the tests check holds at any level: results
are compared with references within tolerances, and bit-for-bit checks compare runs of the same program (a resumed
run with an uninterrupted one). A test comparing two different programs bit for bit compiles them at XLA's default
level, as jaxtune does: ``jax.jit(..., compiler_options=DEFAULT_LEVEL)``.

:func:`start_cpu_process` prepares a child test process the same way, and also makes the processes of an emulated
slice share compilation-cache entries (tests/cpu_slice/sitecustomize.py, found through :data:`CPU_SLICE`).
"""

import importlib
import os
import sys
from pathlib import Path

SUITE_FLAG = "--xla_backend_optimization_level=0"

DEFAULT_LEVEL = {"xla_backend_optimization_level": 3}
"""XLA's default (xla/debug_options_flags.cc), for a program compiled as outside the suite."""


def xla_flags(devices: int) -> str:
    """``XLA_FLAGS`` for a child process with ``devices`` CPU devices, keeping the suite's other flags (this level)."""
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    return " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])


CPU_SLICE = str(Path(__file__).resolve().with_name("cpu_slice"))
"""The folder whose ``sitecustomize`` keys CPU cache entries as a TPU slice does, for a child's ``PYTHONPATH``."""


def start_cpu_process(devices: int) -> None:
    """In a test's child process, before JAX is imported: ``devices`` CPU devices, the suite's flags, and the cache
    entries shared with the other processes of its emulated slice."""
    os.environ["XLA_FLAGS"] = xla_flags(devices)
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, CPU_SLICE)
    importlib.import_module("sitecustomize")
