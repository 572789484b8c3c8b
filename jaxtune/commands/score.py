"""``jaxtune score PRED_DIR --out DIR``: score prediction files without a model (the study's pred_*.json or
jaxtune's *.items.jsonl; :func:`jaxtune.eval.score.score_predictions`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from jaxtune.commands.arguments import add_command
from jaxtune.names import SCORER_MODES


def register(subparsers: Any) -> None:
    p = add_command(
        subparsers,
        "score",
        run,
        "score predictions without a model: the study's pred_*.json files (evaluate/pred.py) "
        "or jaxtune's *.items.jsonl",
    )
    p.add_argument("pred_dir", help="folder of pred_<name>.json files or *.items.jsonl files")
    p.add_argument("--out", required=True, help="folder for the summaries and study_totals.json")
    p.add_argument(
        "--tokenizer",
        help="SentencePiece model (or folder holding tokenizer.model) that gives the ids of "
        "the answer pieces ▁A..▁D (default: LLaMA's ids 319, 350, 315, 360)",
    )
    p.add_argument(
        "--scorer-mode",
        default="study",
        choices=SCORER_MODES,
        help="the study's scorer, quirks included, or its errors fixed",
    )


def run(args: argparse.Namespace) -> int:
    from jaxtune.eval.score import score_predictions

    def progress(path: Any, n: int) -> None:
        print(f"scored {path} ({n} items)", file=sys.stderr, flush=True)

    outputs = score_predictions(
        args.pred_dir, args.out, tokenizer=args.tokenizer, mode=args.scorer_mode, on_file=progress
    )
    print(outputs.summary())
    return 0
