"""``jaxtune report RUN_DIR ... --out DIR``: growth curves and growth-pace tables over many evaluations
(:func:`jaxtune.study.report.report`)."""

from __future__ import annotations

import argparse
from typing import Any, Union

from jaxtune.commands.arguments import add_command


def register(subparsers: Any) -> None:
    p = add_command(subparsers, "report", run, "draw growth curves and growth-pace tables from many evaluations")
    p.add_argument("runs", nargs="+", help="evaluation directories or summary JSON files")
    p.add_argument("--out", required=True, help="output directory for PNG/SVG figures and tables")
    p.add_argument(
        "--epoch",
        type=epoch_choice,
        default="last",
        help="which epoch of each run the curves show: 'last' (default), 'best' (its best overall, chosen "
        "on the reported data), or N (the study evaluated epoch 10 of 15; runs without it are listed "
        "as not plotted)",
    )


def epoch_choice(text: str) -> Union[str, int]:
    """``last``, ``best`` or a positive epoch number."""
    if text in ("last", "best"):
        return text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected 'last', 'best' or an epoch number (e.g. 10), got {text!r}")


def run(args: argparse.Namespace) -> int:
    from jaxtune.study.report import report

    written = report(args.runs, args.out, epoch=args.epoch)
    print(f"wrote {len(written)} files to {args.out} (epoch choice: {args.epoch}):")
    print("\n".join(f"  {p.name}" for p in written))
    return 0
