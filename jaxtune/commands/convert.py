"""``jaxtune import-hf``, ``export-hf`` and ``check-hf``: Hugging Face folders <-> jaxtune checkpoints
(:mod:`jaxtune.convert.hf`), and the comparison of both implementations on one checkpoint.

``export-hf`` into a run directory holds the run's lease while it writes (:mod:`jaxtune.checkpoint.lease`, with the
default ``checkpoint.lease_timeout_s``): refused in one line (exit 2) while a live training owns the run. Holding
it, the export removes every ``.NAME.partial-*`` folder a killed export left there; elsewhere only those older than
:data:`jaxtune.paths.PARTIAL_GRACE_S`."""

from __future__ import annotations

import argparse
from typing import Any

from jaxtune.commands.arguments import add_command
from jaxtune.names import DTYPES


def register(subparsers: Any) -> None:
    _register_import(subparsers)
    p = add_command(subparsers, "export-hf", run_export, "write a jaxtune checkpoint as a Hugging Face folder")
    p.add_argument("checkpoint")
    p.add_argument("out_dir")
    p.add_argument("--dtype", default=None, choices=DTYPES)
    p.add_argument("--max-shard-size", default="5GB")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")

    p = add_command(subparsers, "check-hf", run_check, "compare jaxtune's and transformers' logits and greedy output")
    p.add_argument("hf_dir")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="largest max |Δ log-softmax| / logit spread that passes (default: 5e-4 in float32, 0.25 in bfloat16)",
    )
    p.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16"), help="both sides' weights and compute"
    )


def _register_import(subparsers: Any) -> None:
    p = add_command(
        subparsers,
        "import-hf",
        run_import,
        "convert a Hugging Face LLaMA, BLOOM or Qwen2 folder into a jaxtune checkpoint",
    )
    p.add_argument(
        "hf_dir", help="a Hugging Face folder, local or gs:// (fetched once per host, jaxtune/data/remote.py)"
    )
    p.add_argument("out")
    p.add_argument(
        "--dtype",
        default=None,
        choices=DTYPES,
        help="parameter dtype of the checkpoint (default: the stored dtype)",
    )
    p.add_argument("--vocab-pad-multiple", type=int, default=1, help="pad the vocabulary (128 suits TPUs)")
    p.add_argument(
        "--added-tokens", help="special tokens to append and resize for, e.g. '<user>,<assistant>,<eot>,<pad>' (DoIT)"
    )
    p.add_argument("--tokenizer", help="tokenizer folder to store with the checkpoint (default: HF_DIR's files)")
    p.add_argument(
        "--new-token-init",
        default="mean",
        choices=["normal", "mean"],
        help="rows of the added tokens: 'normal' draws them from normal(0, initializer_range) as the DoIT "
        "study's transformers 4.30 did (its recipes use this); 'mean' copies the mean of the old rows "
        "(transformers 5's default)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def run_import(args: argparse.Namespace) -> int:
    from jaxtune.convert.hf import import_hf

    added = tuple(t for t in (args.added_tokens or "").split(",") if t)
    import_hf(
        args.hf_dir,
        args.out,
        param_dtype=args.dtype,
        vocab_pad_multiple=args.vocab_pad_multiple,
        added_tokens=added,
        tokenizer_dir=args.tokenizer,
        overwrite=args.overwrite,
        new_token_init=args.new_token_init,
    )
    print(f"wrote jaxtune checkpoint {args.out}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from jaxtune.checkpoint.lease import hold_enclosing_run_lease
    from jaxtune.config.schema import CheckpointConfig
    from jaxtune.convert.hf import export_hf

    command = f"jaxtune export-hf {args.checkpoint} {args.out_dir}"
    with hold_enclosing_run_lease(args.out_dir, CheckpointConfig(), command=command) as lease:
        export_hf(
            args.checkpoint,
            args.out_dir,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            overwrite=args.overwrite,
            # Holding the run's lease, no other writer can be at work on the folder: its leftovers go at once.
            **({"partial_grace_s": 0.0} if lease is not None else {}),
        )
    print(f"wrote Hugging Face folder {args.out_dir}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from jaxtune.eval.parity import check_hf

    report = check_hf(
        args.hf_dir,
        num_tokens=args.tokens,
        max_new_tokens=args.new_tokens,
        tolerance=args.tolerance,
        dtype=args.dtype,
    )
    print(report.summary())
    return 0 if report.ok else 1
