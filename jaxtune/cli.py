"""The ``jaxtune`` command. Each subcommand parses its arguments and calls one plain function of the package.

jaxtune quickstart                     the main job on the embedded default (CPU, demo data, tiny model)
jaxtune train CONFIG [key=value ...]   fine-tune (sharded, resumable)
jaxtune eval CKPT --suite doit ...     score a checkpoint per ability
jaxtune report RUN_DIR ... --out DIR   growth curves and growth-pace tables over many evaluations
jaxtune sweep SWEEP.yaml [--dry-run]   the study's grid: models x data types, idempotent (jaxtune/study/grid.py)
jaxtune sweep CONFIG --selections ...  train and evaluate one config at several data volumes
jaxtune prepare INPUT OUT --format F   local files -> ArrayRecord dataset (random access, low memory)
jaxtune import-hf HF_DIR OUT           Hugging Face LLaMA or BLOOM folder -> jaxtune checkpoint
jaxtune export-hf CKPT OUT_DIR         jaxtune checkpoint -> Hugging Face folder
jaxtune check-hf HF_DIR                compare jaxtune and transformers on the same checkpoint
jaxtune info [CONFIG] [key=value ...]  parameter count, FLOPs per token, memory of a model shape
jaxtune plan CONFIG --accelerator v5p-16  per-chip memory of the train step and evaluation, compiled for that slice
jaxtune select DATA_DIR TYPE OUT_DIR   write one of the study's data types as its make_data.py does
jaxtune budget EVAL_DIR --total N --out DIR  per-ability counts from a grid's growth curves (budget:PATH)
jaxtune score PRED_DIR --out DIR       score prediction files (the study's pred_*.json or *.items.jsonl)
jaxtune validate CONFIG [key=value ...] [--devices N | --accelerator v5p-16]
                                       every check a run makes before computing, without devices
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

from jaxtune.commands import budget as budget_command
from jaxtune.config.schema import load_config
from jaxtune.errors import JaxtuneError
from jaxtune.names import DATA_FORMATS, DTYPES, SCORER_MODES


def _config_files(path: Optional[str], overrides: Sequence[str]) -> tuple[object, list[str]]:
    files = [a for a in overrides if "=" not in a and a.endswith((".yaml", ".yml"))]
    rest = [a for a in overrides if a not in files]
    return ([path, *files] if files and path is not None else path), rest


def _config(path: Optional[str], overrides: Sequence[str]):
    """The config of ``path`` plus any further YAML files among the arguments (a hardware preset:
    ``train configs/doit-33b.yaml configs/hardware/v5p-16.yaml``), then the key=value overrides."""
    return load_config(*_config_files(path, overrides))


def _cmd_info(args: argparse.Namespace) -> int:
    from jaxtune.models.stats import model_info, run_storage

    overrides = list(args.overrides)
    path = args.config
    if path is not None and "=" in path:  # `jaxtune info model.preset=doit-7b`
        overrides.insert(0, path)
        path = None
    if args.preset:
        overrides.insert(0, f"model.preset={args.preset}")
    cfg = _config(path, overrides)
    print(model_info(cfg.model, seq_len=args.seq_len))
    print(run_storage(cfg))
    if cfg.data.path:
        from jaxtune.data.pipeline import epoch_plan
        from jaxtune.sharding import build_mesh, data_parallel_size

        # Rows per step (packing counted in examples) round to what this machine's mesh divides.
        row_multiple = cfg.train.microbatches * data_parallel_size(build_mesh(cfg.mesh))
        print(
            epoch_plan(
                cfg.data,
                global_batch_size=cfg.train.global_batch_size,
                batch_unit=cfg.train.batch_unit,
                epochs=cfg.train.epochs,
                row_multiple=row_multiple,
            )
        )
    return 0


def _cmd_import_hf(args: argparse.Namespace) -> int:
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


def _cmd_export_hf(args: argparse.Namespace) -> int:
    from jaxtune.convert.hf import export_hf

    export_hf(
        args.checkpoint, args.out_dir, dtype=args.dtype, max_shard_size=args.max_shard_size, overwrite=args.overwrite
    )
    print(f"wrote Hugging Face folder {args.out_dir}")
    return 0


def _cmd_check_hf(args: argparse.Namespace) -> int:
    from jaxtune.convert.hf import check_hf

    report = check_hf(args.hf_dir, num_tokens=args.tokens, max_new_tokens=args.new_tokens, tolerance=args.tolerance)
    print(report.summary())
    return 0 if report.ok else 1


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = _config(args.config, args.overrides)
    from jaxtune.train.trainer import train

    result = train(cfg)
    print(result.summary())
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from jaxtune.eval.distributed import eval_mesh_config
    from jaxtune.eval.runner import evaluate

    overrides = list(args.overrides)
    if args.suite:
        overrides.append(f"eval.suites={args.suite}")
    cfg = _config(args.config, overrides)
    result = evaluate(
        args.checkpoint,
        cfg.eval,
        out_dir=args.out,
        metadata=dict(kv.split("=", 1) for kv in args.meta),
        mesh=eval_mesh_config(cfg),
    )
    print(result.table())
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from jaxtune.study.report import report

    written = report(args.runs, args.out, epoch=args.epoch)
    print(f"wrote {len(written)} files to {args.out} (epoch choice: {args.epoch}):")
    print("\n".join(f"  {p.name}" for p in written))
    return 0


def _epoch_choice(text: str):
    """``last``, ``best`` or a positive epoch number."""
    if text in ("last", "best"):
        return text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected 'last', 'best' or an epoch number (e.g. 10), got {text!r}")


def _cmd_sweep(args: argparse.Namespace) -> int:
    from jaxtune.study.grid import cell_states, format_states, is_sweep_file, load_grid, run_grid

    if is_sweep_file(args.config):
        if args.selections or args.overrides or args.eval_epochs is not None:
            raise JaxtuneError(
                f"{args.config} is a sweep file: its models, data_types and eval_epochs say what to "
                f"run (--selections, --eval-epochs and key=value are for a run config)"
            )
        spec = load_grid(args.config)
        if args.dry_run:
            print(format_states(spec, cell_states(spec, progress=lambda t: print(t, file=sys.stderr, flush=True))))
        else:
            print(run_grid(spec).summary())
        return 0
    if not args.selections or args.dry_run:
        raise JaxtuneError(
            f"{args.config} is a run config: give --selections (a sweep file, with the top-level key "
            f"'sweep', lists its grid and supports --dry-run)"
        )
    cfg = _config(args.config, args.overrides)
    from jaxtune.study.sweep import sweep

    outputs = sweep(cfg, selections=args.selections.split(","), epochs_to_eval=args.eval_epochs or "last")
    print(outputs.summary())
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from jaxtune.data.prepare import prepare_dataset

    out = prepare_dataset(args.input, args.out, format=args.format, on_error=args.on_error, overwrite=args.overwrite)
    print(out.summary())
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from jaxtune.commands.quickstart import quickstart

    outputs = quickstart(args.out, overrides=args.overrides, selections=args.selections)
    print(outputs.summary())
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from jaxtune.commands.plan import GIB, plan

    cfg = _config(args.config, args.overrides)
    hbm = int(args.hbm_gib * GIB) if args.hbm_gib else None
    report = plan(
        cfg,
        args.accelerator,
        search=not args.no_search,
        hbm_bytes=hbm,
        max_candidates=args.max_candidates,
        evaluate=not args.no_eval,
        progress=lambda text: print(f"plan: {text}", file=sys.stderr, flush=True),
    )
    print(report.table())
    return 0 if report.fits() else 1


def _cmd_select(args: argparse.Namespace) -> int:
    from jaxtune.study.select import select_study_data

    print(select_study_data(args.data_dir, args.data_type, args.out_dir, seed=args.seed).summary())
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from jaxtune.eval.score import score_predictions

    def progress(path, n: int) -> None:
        print(f"scored {path} ({n} items)", file=sys.stderr, flush=True)

    outputs = score_predictions(
        args.pred_dir, args.out, tokenizer=args.tokenizer, mode=args.scorer_mode, on_file=progress
    )
    print(outputs.summary())
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from jaxtune.commands.validate import validate

    paths, overrides = _config_files(args.config, args.overrides)
    result = validate(paths, overrides, devices=args.devices, accelerator=args.accelerator)
    print(result.summary())
    return 0 if result.ok else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``jaxtune`` command."""
    parser = argparse.ArgumentParser(
        prog="jaxtune",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    budget_command.register(sub)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        return p

    p = add(
        "quickstart",
        _cmd_quickstart,
        "the study's grid in miniature: two tiny models x curated and synthetic "
        "generated data at several volumes, then the best exported to HF",
    )
    p.add_argument("--out", default="runs/quickstart", help="output directory (default: runs/quickstart)")
    p.add_argument(
        "--selections",
        default=None,
        help="comma-separated data types of the demo grid (default: those of jaxtune/demo/sweep.yaml)",
    )
    p.add_argument("overrides", nargs="*", help="key=value config overrides")

    p = add("train", _cmd_train, "fine-tune a model (sharded, checkpointed, resumable)")
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=3 mesh.fsdp=8")

    p = add("eval", _cmd_eval, "evaluate a jaxtune checkpoint or a Hugging Face folder per ability")
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

    p = add("report", _cmd_report, "draw growth curves and growth-pace tables from many evaluations")
    p.add_argument("runs", nargs="+", help="evaluation directories or summary JSON files")
    p.add_argument("--out", required=True, help="output directory for PNG/SVG figures and tables")
    p.add_argument(
        "--epoch",
        type=_epoch_choice,
        default="last",
        help="which epoch of each run the curves show: 'last' (default), 'best' (its best overall, chosen "
        "on the reported data), or N (the study evaluated epoch 10 of 15; runs without it are listed "
        "as not plotted)",
    )

    p = add("sweep", _cmd_sweep, "train and evaluate at several data selections (the study's grid)")
    p.add_argument(
        "config",
        help="a sweep file (top-level key 'sweep': models x data types, e.g. "
        "configs/sweeps/doit.yaml) or a run config with --selections",
    )
    p.add_argument(
        "--selections",
        help="run config only: e.g. curated-10,curated-40,synthetic-160 or belle-200k+alpaca,belle-600k+alpaca",
    )
    p.add_argument(
        "--eval-epochs",
        default=None,
        help="run config only: 'last' (default), 'all' or comma-separated epochs to evaluate",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="sweep file only: list each cell's state and planned steps, run nothing"
    )
    p.add_argument("overrides", nargs="*")

    p = add("prepare", _cmd_prepare, "convert local record files into an ArrayRecord dataset")
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

    p = add("import-hf", _cmd_import_hf, "convert a Hugging Face LLaMA or BLOOM folder into a jaxtune checkpoint")
    p.add_argument("hf_dir")
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

    p = add("export-hf", _cmd_export_hf, "write a jaxtune checkpoint as a Hugging Face folder")
    p.add_argument("checkpoint")
    p.add_argument("out_dir")
    p.add_argument("--dtype", default=None, choices=DTYPES)
    p.add_argument("--max-shard-size", default="5GB")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")

    p = add("check-hf", _cmd_check_hf, "compare jaxtune's and transformers' logits and greedy output")
    p.add_argument("hf_dir")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--tolerance", type=float, default=1e-4)

    p = add(
        "info",
        _cmd_info,
        "parameter count, FLOPs per token and memory of a model shape; with data.path set, the steps per epoch",
    )
    p.add_argument("config", nargs="?", help="YAML config (or a first key=value)")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--preset", help="named shape, e.g. doit-33b")
    p.add_argument("--seq-len", type=int, default=2048)

    p = add(
        "plan",
        _cmd_plan,
        "per-chip memory of the train step and of evaluation's generation on an accelerator (compiled ahead of "
        "time for TPU slices, estimated for GPUs); when the step does not fit, the smallest change that does",
    )
    p.add_argument("config", help="YAML config")
    p.add_argument("overrides", nargs="*")
    p.add_argument(
        "--accelerator",
        required=True,
        help="v4-32, v5p-16, v5e-64, v6e-16 (TPU; v4/v5p count TensorCores), h100-8, h200-1 (GPU), cpu-N",
    )
    p.add_argument("--no-search", action="store_true", help="do not compile candidate changes when it does not fit")
    p.add_argument("--no-eval", action="store_true", help="plan the train step only, not evaluation's generation")
    p.add_argument("--max-candidates", type=int, default=8, help="most candidate changes compiled (default 8)")
    p.add_argument("--hbm-gib", type=float, default=None, help="plan against this much memory per chip instead")

    p = add("select", _cmd_select, "write one of the study's 19 data types exactly as its make_data.py lays it out")
    p.add_argument("data_dir", help="the DoIT dataset root (the folder holding curated/ and synthetic/)")
    p.add_argument(
        "data_type",
        help="curated-10 ... curated-10000, synthetic-10 ... synthetic-40960, baseline, "
        "reconstruct, maximum, mix-0, mix-2560, mix-40960",
    )
    p.add_argument("out_dir", help="folder for the output files (one per input file)")
    p.add_argument("--seed", type=int, default=0, help="the random.seed of the selection (the study: 0)")

    p = add(
        "score",
        _cmd_score,
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
    p = add(
        "validate",
        _cmd_validate,
        "check a config, the files it names and its layout on a device count, without devices (all problems together)",
    )
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--devices", type=int, help="check the layout for N devices in one process")
    where.add_argument(
        "--accelerator",
        help="check the layout for a TPU slice: v4-8, v5p-16 (8 chips), v5e-8, "
        "v6e-16 ... (default: this machine's devices)",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``jaxtune`` console command."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow options (`eval CKPT --out D eval.batch_size=4`): argparse leaves them over.
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    if not getattr(args, "fn", None):
        parser.print_help()
        return 2
    try:
        return args.fn(args)
    except (JaxtuneError, FileNotFoundError) as e:
        print(f"jaxtune {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
