"""``jaxtune select DATA_DIR TYPE OUT_DIR``: one of the study's data types, written as its make_data.py does
(:func:`jaxtune.study.select.select_study_data`)."""

from __future__ import annotations

import argparse
from typing import Any

from jaxtune.commands.arguments import add_command


def register(subparsers: Any) -> None:
    p = add_command(
        subparsers, "select", run, "write one of the study's 19 data types exactly as its make_data.py lays it out"
    )
    p.add_argument("data_dir", help="the DoIT dataset root (the folder holding curated/ and synthetic/)")
    p.add_argument(
        "data_type",
        help="curated-10 ... curated-10000, synthetic-10 ... synthetic-40960, baseline, "
        "reconstruct, maximum, mix-0, mix-2560, mix-40960, or budget:PATH (a budget.json of jaxtune budget)",
    )
    p.add_argument("out_dir", help="folder for the output files (one per input file)")
    p.add_argument("--seed", type=int, default=0, help="the random.seed of the selection (the study: 0)")


def run(args: argparse.Namespace) -> int:
    from jaxtune.study.select import select_study_data

    print(select_study_data(args.data_dir, args.data_type, args.out_dir, seed=args.seed).summary())
    return 0
