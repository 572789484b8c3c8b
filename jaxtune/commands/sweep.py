"""``jaxtune sweep``: the study's grid of a sweep file (:mod:`jaxtune.study.grid`: models x data types,
idempotent; ``--ray [ADDRESS]`` on a Ray cluster's slices, :mod:`jaxtune.study.ray_driver`; ``--cell`` one cell of
it), or one run config trained and evaluated at several data volumes (:func:`jaxtune.study.sweep.sweep`).
Exits 0 once every cell is trained and evaluated, 75 when SIGTERM stopped it (state saved: run it again), 1 on a
failure, 2 on bad input (:mod:`jaxtune.errors`)."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from typing import Any, Iterator

from jaxtune.commands.arguments import add_command, run_config
from jaxtune.errors import JaxtuneError
from jaxtune.study.grid import PHASES


def register(subparsers: Any) -> None:
    p = add_command(subparsers, "sweep", run, "train and evaluate at several data selections (the study's grid)")
    p.add_argument(
        "config",
        help="a sweep file (top-level key 'sweep': models x data types, e.g. "
        "configs/sweeps/doit.yaml) or a run config with --selections",
    )
    p.add_argument(
        "--selections",
        help="run config only: e.g. curated-10,curated-40,synthetic-160, budget:OUT/budget.json (jaxtune budget's "
        "counts) or belle-200k+alpaca,belle-600k+alpaca",
    )
    p.add_argument(
        "--eval-epochs",
        default=None,
        help="run config only: 'last' (default), 'all' or comma-separated epochs to evaluate",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="sweep file only: list each cell's state and planned steps (with --ray: what it would submit), run nothing",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="auto",
        default=None,
        metavar="ADDRESS",
        help="sweep file only: run the grid on a Ray cluster's slices (default address: auto; also `backend: ray`)",
    )
    p.add_argument(
        "--cell",
        metavar="MODEL/DATA_TYPE",
        help="sweep file only: run one cell (what each host of a Ray slice runs); key=value overrides apply to it",
    )
    p.add_argument("--phase", default="all", choices=PHASES, help="with --cell: train, eval or all (default)")
    p.add_argument("overrides", nargs="*")


def run(args: argparse.Namespace) -> int:
    with _sigterm_is_resumable():
        return _run(args)


@contextlib.contextmanager
def _sigterm_is_resumable() -> Iterator[None]:
    """SIGTERM outside a run's training (which saves and stops on its own): stop with exit status 75. What is lost
    is an unfinished evaluation, which the next sweep redoes (it is marked only once written)."""
    from jaxtune.train.trainer import RunStoppedEarly

    def stop(signum: int, frame: Any) -> None:
        raise RunStoppedEarly(
            "SIGTERM: the sweep stopped (runs and finished evaluations are kept); rerun it to continue"
        )

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    from jaxtune.study.grid import is_sweep_file

    if is_sweep_file(args.config):
        return _run_grid(args)
    if not args.selections or args.dry_run:
        raise JaxtuneError(
            f"{args.config} is a run config: give --selections (a sweep file, with the top-level key "
            f"'sweep', lists its grid and supports --dry-run)"
        )
    cfg = run_config(args.config, args.overrides)
    from jaxtune.study.sweep import sweep

    outputs = sweep(cfg, selections=args.selections.split(","), epochs_to_eval=args.eval_epochs or "last")
    print(outputs.summary())
    return 0


def _run_grid(args: argparse.Namespace) -> int:
    from jaxtune.study.grid import cell_states, format_states, load_grid, run_cell, run_grid

    if args.selections or args.eval_epochs is not None or (args.overrides and not args.cell):
        raise JaxtuneError(
            f"{args.config} is a sweep file: its models, data_types and eval_epochs say what to "
            f"run (--selections, --eval-epochs and key=value are for a run config, or for one --cell)"
        )
    spec = load_grid(args.config)
    if args.cell:
        return run_cell(spec, args.cell, args.phase, args.overrides)
    if args.ray is not None or spec.backend == "ray":
        from jaxtune.study.ray_driver import DriverOptions, dry_run, run_on_ray

        if args.dry_run:
            return dry_run(spec)
        return run_on_ray(spec, DriverOptions(address=None if args.ray in (None, "auto") else args.ray))
    if args.dry_run:
        print(format_states(spec, cell_states(spec, progress=lambda t: print(t, file=sys.stderr, flush=True))))
    else:
        print(run_grid(spec).summary())
    return 0
