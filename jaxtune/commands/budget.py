"""``jaxtune budget EVAL_DIR --total N --out DIR``: per-ability record counts chosen from a grid's growth curves.

The command's flags and its one function; the work is :func:`jaxtune.study.budget.budget` (output layout and the
``budget.json`` schema there). ``jaxtune/cli.py`` calls :func:`register` to add the sub-parser.
"""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    """Write the budget and print its table; 0 on success."""
    from jaxtune.study.budget import budget

    epoch = args.epoch if args.epoch in ("last", "best") else int(args.epoch)
    outputs = budget(
        args.eval_dirs,
        args.total,
        args.out,
        size=args.size,
        source=args.source,
        weights=args.weights,
        epoch=epoch,
        data_dir=args.data,
        replicates=args.bootstrap,
        seed=args.seed,
        stem=args.suite,
    )
    print(outputs.summary())
    return 0


def _epoch(text: str) -> str:
    if text in ("last", "best") or text.isdigit():
        return text
    raise argparse.ArgumentTypeError(f"expected 'last', 'best' or an epoch number, got {text!r}")


def register(subparsers) -> argparse.ArgumentParser:
    """Add ``budget`` to the ``jaxtune`` command's sub-parsers; the parsed arguments' ``fn`` is :func:`run`."""
    help = "per-ability data counts for a total, chosen from a grid's growth curves (fit, hold-out check, allocation)"
    p = subparsers.add_parser("budget", help=help, description=help)
    p.set_defaults(fn=run)
    p.add_argument("eval_dirs", nargs="+", help="evaluation folders of a grid (what jaxtune report reads)")
    p.add_argument("--total", type=int, required=True, help="records in all")
    p.add_argument("--out", required=True, help="folder for budget.json, rule.json, budget.md and budget.png")
    p.add_argument("--size", help="model size whose curves are fitted (needed when the grid has several)")
    p.add_argument("--source", default="curated", help="data source of the fitted runs (default: curated)")
    p.add_argument("--weights", help="ability=weight,... for the overall score maximised (others 1)")
    p.add_argument("--epoch", type=_epoch, default="last", help="epoch of each run: last (default), best or N")
    p.add_argument("--data", help="DoIT dataset root: caps each ability at its curated/1000 records")
    p.add_argument("--suite", default="doit-test", help="summary stem whose abilities are fitted (default doit-test)")
    p.add_argument("--bootstrap", type=int, default=100, help="bootstrap replicates over test items (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    return p
