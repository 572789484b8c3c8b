"""The processes of an emulated slice share compilation-cache entries, as a TPU slice's workers do.

Python imports this module at start-up in every process that has this folder on ``PYTHONPATH``: the workers of
the emulated slices (tests/gcp/fake_slice.py, the Ray hosts of tests/study/test_ray_sweep.py) and the multi-process
test workers (tests/cli_worker.py, tests/train/run_worker.py), which import it before JAX.

On a TPU slice JAX keys a persistent-cache entry by the slice's topology, so every worker loads what worker 0 wrote
(only process 0 writes). On CPU the topology's fingerprint is the process's own: process 1 never finds process 0's
entries and compiles every program at every start (in the Ray test, 23 s of CPU per cell against process 0's 9 s).
Here CPU entries are keyed by the devices' kind and count instead, JAX's own fallback for a platform without a
topology: the SPMD program is the same on every process, and JAX loads it for the loading process's devices. The
tests that compare multi-process runs bit for bit with single-process ones check that what is loaded computes the
same.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

MODULE = "jax._src.cache_key"


def _key_cpu_entries_by_devices(cache_key) -> None:
    by_topology = cache_key._hash_accelerator_config

    def accelerator_config(hash_obj, devices) -> None:
        if all(device.platform == "cpu" for device in devices.flat):
            cache_key._hash_devices(hash_obj, devices)
        else:
            by_topology(hash_obj, devices)

    cache_key._hash_accelerator_config = accelerator_config


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches the cache-key module once JAX imports it (importing JAX here would cost every Python start a second)."""

    def find_spec(self, name, path=None, target=None):
        if name != MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module) -> None:
            run(module)
            _key_cpu_entries_by_devices(module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("JAX_PLATFORMS", "") in ("", "cpu") and MODULE not in sys.modules:
    sys.meta_path.insert(0, _PatchOnImport())
