"""``jaxtune eval CKPT --suite doit ...``: score a checkpoint per ability (:func:`jaxtune.eval.runner.evaluate`)."""

from __future__ import annotations

import argparse
from typing import Any

from jaxtune.commands.arguments import add_command, run_config


def register(subparsers: Any) -> None:
    p = add_command(subparsers, "eval", run, "evaluate a jaxtune checkpoint or a Hugging Face folder per ability")
    p.add_argument("checkpoint")
    p.add_argument("--suite", help="comma-separated suites: doit, ceval, cmmlu, agieval, belle")
    p.add_argument("--config", help="YAML config whose eval section to use")
    p.add_argument("--out", required=True, help="directory for per-item JSON Lines and summaries")
    p.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata recorded with the result: run_name, model_size, data_source, data_volume, epoch, step "
        "(e.g. --meta data_volume=160 --meta data_source=curated)",
    )
    p.add_argument(
        "overrides", nargs="*", help="key=value overrides (eval.batch_size=16, mesh.tensor=2 or eval.mesh.tensor=2 ...)"
    )


def run(args: argparse.Namespace) -> int:
    from jaxtune.eval.distributed import eval_mesh_config
    from jaxtune.eval.runner import evaluate

    overrides = list(args.overrides)
    if args.suite:
        overrides.append(f"eval.suites={args.suite}")
    cfg = run_config(args.config, overrides, checkpoint=args.checkpoint)
    result = evaluate(
        args.checkpoint,
        cfg.eval,
        out_dir=args.out,
        metadata=dict(kv.split("=", 1) for kv in args.meta),
        mesh=eval_mesh_config(cfg),
    )
    print(result.table())
    return 0
