"""``jaxtune eval CKPT --suite doit ...``: score a checkpoint per ability (:func:`jaxtune.eval.runner.evaluate`).

An ``--out`` inside a run directory is written under that run's lease (:mod:`jaxtune.checkpoint.lease`): refused in
one line (exit 2) while a live training owns the run. When the judge gave up on some BELLE items the summaries are
written (those items listed in ``judge_failed``) and the command ends with one line naming how many, exit 75: run it
again to judge only them.
"""

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
    from jaxtune.checkpoint.lease import hold_enclosing_run_lease
    from jaxtune.eval.distributed import eval_mesh_config
    from jaxtune.eval.runner import evaluate
    from jaxtune.sharding import initialize_distributed

    overrides = list(args.overrides)
    if args.suite:
        overrides.append(f"eval.suites={args.suite}")
    cfg = run_config(args.config, overrides, checkpoint=args.checkpoint)
    mesh = eval_mesh_config(cfg)
    initialize_distributed(mesh)  # every process takes part in the lease's agreement
    with hold_enclosing_run_lease(args.out, cfg.checkpoint, command=f"jaxtune eval {args.checkpoint} --out {args.out}"):
        result = evaluate(
            args.checkpoint,
            cfg.eval,
            out_dir=args.out,
            metadata=dict(kv.split("=", 1) for kv in args.meta),
            mesh=mesh,
        )
    print(result.table())
    result.raise_if_judge_gave_up()
    return 0
