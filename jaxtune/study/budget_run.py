"""Train and evaluate one run on a ``budget:PATH`` selection, labelled so the report places it (data source
``budget`` or ``reconstruct-scaled``, :mod:`jaxtune.study.budget_report`; the total as its data volume).

Layout: ``run_dir`` is the run (``manifest.jsonl`` lists its records), its last epoch evaluated into
``run_dir/eval/epoch-E`` as the sweep does (:func:`jaxtune.study.sweep.eval_dir_of`); a finished evaluation is read
back, not recomputed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from jaxtune.config.schema import Config
from jaxtune.data.mixtures import BUDGET_PREFIX, read_budget_counts
from jaxtune.errors import JaxtuneError
from jaxtune.study.sweep import eval_dir_of, has_summaries


def train_and_evaluate_budget(
    cfg: Config,
    budget_path: Path,
    run_dir: Path,
    *,
    model_size: str,
    source: str = "budget",
    print_fn: Callable[[str], None] = print,
) -> Path:
    """Train ``cfg`` on ``budget:budget_path`` into ``run_dir``, evaluate its last epoch on ``cfg.eval``; returns the
    evaluation folder."""
    from jaxtune.checkpoint.epochs import epoch_checkpoint_path
    from jaxtune.eval.distributed import eval_mesh_config
    from jaxtune.eval.runner import evaluate
    from jaxtune.train.trainer import train

    total = sum(read_budget_counts(budget_path).values())
    selection = f"{BUDGET_PREFIX}{budget_path}"
    run_cfg = dataclasses.replace(cfg, run_dir=str(run_dir), data=dataclasses.replace(cfg.data, selection=selection))
    epoch = cfg.train.epochs
    eval_dir = eval_dir_of(run_dir, epoch)
    if has_summaries(eval_dir):
        return eval_dir
    print_fn(f"{model_size} {source}-{total}: training on {selection}")
    result = train(run_cfg, print_fn=print_fn)
    if result.stopped != "completed":
        raise JaxtuneError(f"run {run_dir} stopped early ({result.stopped}); rerun to resume it")
    step = result.total_steps
    metadata = {
        "run_name": f"{source}-{total}",
        "model_size": model_size,
        "data_source": source,
        "data_volume": str(total),
        "epoch": str(epoch),
        "step": str(step),
    }
    print_fn(f"{model_size} {source}-{total}: evaluating epoch {epoch}")
    evaluate(
        epoch_checkpoint_path(run_dir, epoch, step),
        cfg.eval,
        out_dir=eval_dir,
        metadata=metadata,
        mesh=eval_mesh_config(cfg),
    )
    return eval_dir
