"""``jaxtune prepare INPUT OUT --format F``: local record files -> an ArrayRecord dataset
(:func:`jaxtune.data.prepare.prepare_dataset`)."""

from __future__ import annotations

import argparse
from typing import Any

from jaxtune.commands.arguments import add_command
from jaxtune.names import DATA_FORMATS


def register(subparsers: Any) -> None:
    p = add_command(subparsers, "prepare", run, "convert local record files into an ArrayRecord dataset")
    p.add_argument("input")
    p.add_argument("out")
    p.add_argument("--format", required=True, choices=DATA_FORMATS)
    p.add_argument(
        "--on-error",
        default="raise",
        choices=["raise", "skip"],
        help="raise on the first bad record, or skip, count and list bad records",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")


def run(args: argparse.Namespace) -> int:
    from jaxtune.data.prepare import prepare_dataset

    out = prepare_dataset(args.input, args.out, format=args.format, on_error=args.on_error, overwrite=args.overwrite)
    print(out.summary())
    return 0
