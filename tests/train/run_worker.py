"""Runs ``jaxtune.train.trainer.train`` on the synthetic stream in a fresh process (the tests' subprocess runs).

    python run_worker.py '{"config": {...}, "overrides": [...], "data": {...}, "devices": 8}'

``config`` feeds tests/train/synthetic_stream.tiny_config's sections; ``data`` the synthetic_data arguments (the
process index and count come from JAX). Multi-process runs pass mesh.coordinator_address, mesh.num_processes and
mesh.process_id as overrides, which is how the trainer itself initialises jax.distributed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(spec: dict) -> int:
    # Before jax is imported: this process's CPU device count (the test session's XLA_FLAGS may say otherwise).
    here = Path(__file__).resolve()
    sys.path[:0] = [str(here.parent), str(here.parents[1]), str(here.parents[2])]  # tests/train, tests/, the repo
    from compile_level import start_cpu_process

    start_cpu_process(spec.get("devices", 8))

    import jax
    from synthetic_stream import synthetic_data, tiny_config

    from jaxtune.sharding import initialize_distributed
    from jaxtune.train.trainer import train

    cfg = tiny_config(spec["run_dir"], tuple(spec.get("overrides", ())), **spec.get("config", {}))
    initialize_distributed(cfg.mesh)  # before reading jax.process_index() for the data shard
    data = synthetic_data(process_index=jax.process_index(), process_count=jax.process_count(), **spec["data"])
    result = train(cfg, data)
    print(result.summary(), flush=True)
    return result.exit_code  # as `jaxtune train` exits: 0 completed, 75 preempted


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
