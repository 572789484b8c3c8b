"""``jaxtune info [CONFIG] [key=value ...]``: parameter count, FLOPs per token and memory of a model shape
(:mod:`jaxtune.models.stats`); with ``data.path`` set, the steps per epoch on this machine's mesh."""

from __future__ import annotations

import argparse
from typing import Any

from jaxtune.commands.arguments import add_command, run_config


def register(subparsers: Any) -> None:
    p = add_command(
        subparsers,
        "info",
        run,
        "parameter count, FLOPs per token and memory of a model shape; with data.path set, the steps per epoch",
    )
    p.add_argument("config", nargs="?", help="YAML config (or a first key=value)")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--preset", help="named shape, e.g. doit-33b")
    p.add_argument("--seq-len", type=int, default=2048)


def run(args: argparse.Namespace) -> int:
    from jaxtune.models.stats import model_info, run_storage

    overrides = list(args.overrides)
    path = args.config
    if path is not None and "=" in path:  # `jaxtune info model.preset=doit-7b`
        overrides.insert(0, path)
        path = None
    if args.preset:
        overrides.insert(0, f"model.preset={args.preset}")
    cfg = run_config(path, overrides)
    print(model_info(cfg.model, seq_len=args.seq_len))
    print(run_storage(cfg))
    if cfg.data.path:
        import jax

        from jaxtune.data.pipeline import epoch_plan
        from jaxtune.sharding import batch_geometry, build_mesh

        # Rows per step (packing counted in examples) round to what this machine's mesh and processes divide.
        geometry = batch_geometry(cfg.train, build_mesh(cfg.mesh), jax.process_count(), packing=cfg.data.packing)
        print(
            epoch_plan(
                cfg.data,
                global_batch_size=cfg.train.global_batch_size,
                batch_unit=cfg.train.batch_unit,
                epochs=cfg.train.epochs,
                row_multiple=geometry.row_multiple,
            )
        )
    return 0
