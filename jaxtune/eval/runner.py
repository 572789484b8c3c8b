"""``jaxtune eval``: load a checkpoint, run the named suites on it, write their results.

``evaluate(checkpoint, eval_cfg, out_dir)`` scores a jaxtune params checkpoint (``model_config.json`` +
``params/``, see :mod:`jaxtune.checkpoint.layout`) or a Hugging Face LLaMA folder (converted in memory) on
``eval_cfg.suites``: ``doit`` (the study's per-ability suite), ``ceval``, ``cmmlu``, ``agieval`` (next-token
multiple choice) and ``belle`` (generation judged by an LLM), each registered by its own file of
:mod:`jaxtune.eval.suites` (see :mod:`jaxtune.eval.suites.registry`). Every suite's data, the tokenizer and the
judge are checked before the model is loaded, so a wrong setting fails in seconds.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from jax.sharding import Mesh

from jaxtune.config.schema import EvalConfig, MeshConfig
from jaxtune.eval.distributed import (
    barrier,
    default_compute_dtype,
    is_writer,
    mesh_record,
    setup_mesh,
)
from jaxtune.eval.errors import EvalSetupError
from jaxtune.eval.judge import JUDGE_CACHE_FILE, JudgeGaveUp
from jaxtune.eval.language_model import JaxLanguageModel, sampling_from_config
from jaxtune.eval.loading import load_codec, load_model, tokenizer_location
from jaxtune.eval.progress import SuiteProgress
from jaxtune.eval.suites.registry import SuiteRun, get_suite, load_suites, suite_data_root, unknown_suites_problem
from jaxtune.eval.template_codec import TemplateChatCodec
from jaxtune.paths import as_path
from jaxtune.results import RunInfo, SuiteResult, format_table, write_result
from jaxtune.runtime.compiles import CompileCounter
from jaxtune.sharding import check_batch_rows

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------------
# Suites
# --------------------------------------------------------------------------------------------------------------------


def run_suite(
    suite: str,
    root: Path,
    lm: JaxLanguageModel,
    codec: TemplateChatCodec,
    eval_cfg: EvalConfig,
    run: RunInfo,
    judge_cache: Optional[Path] = None,
    answers_dir: Optional[Path] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Optional[SuiteResult]:
    """Run one suite (see :mod:`jaxtune.eval.suites.registry`) on its data folder ``root`` (from
    :func:`suite_data_root`). None on processes that take part without producing the result (``belle``: they
    generate, process 0 judges). ``progress(done, total)`` hears of finished items."""
    chunk = 8 * lm.generator.batch_size  # several batches per call, so that length bucketing has room to work
    return get_suite(suite).run(
        SuiteRun(
            root=root,
            lm=lm,
            codec=codec,
            eval_cfg=eval_cfg,
            run=run,
            chunk_size=chunk,
            progress=progress,
            judge_cache=judge_cache,
            answers_dir=answers_dir,
        )
    )


# --------------------------------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------------------------------

# Fields the caller may set (the rest, where the evaluation ran, are recorded by evaluate itself).
_RUN_FIELDS = ("run_name", "model_size", "data_source", "data_volume", "epoch", "step", "checkpoint")


def run_info(checkpoint: str | Path, metadata: Optional[Mapping[str, str]] = None) -> RunInfo:
    """Which run a result scores: ``metadata`` (``run_name``, ``model_size``, ``data_source``, ``data_volume``,
    ``epoch``, ``step``; strings as the command line gives them) plus the checkpoint path. (Where it ran is added by
    :func:`evaluate`, once the devices are up.)"""
    values: dict[str, Any] = {"checkpoint": str(checkpoint)}
    for key, value in (metadata or {}).items():
        if key not in _RUN_FIELDS:
            raise EvalSetupError(f"unknown result metadata {key!r} (known: {', '.join(_RUN_FIELDS)})")
        if key in ("data_volume", "epoch", "step"):
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise EvalSetupError(f"result metadata {key} must be an integer, got {value!r}") from None
        values[key] = value
    return RunInfo(**values)


@dataclass
class Evaluation:
    """What :func:`evaluate` produced: one result per suite and the files written (empty without out_dir)."""

    results: dict[str, SuiteResult]
    files: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    compiles: dict[str, float] = field(default_factory=dict)
    """The model's programs compiled for the suites (generation, likelihood): ``compiles/generation``,
    ``compile_s/generation``, ``compile_cache_hits/generation`` (:mod:`jaxtune.runtime.compiles`)."""

    def table(self) -> str:
        """Every suite's fixed-width table, with the files written."""
        parts = [format_table(r.summary) for r in self.results.values()]
        parts += [f"wrote {summary} and {items}" for summary, items in self.files.values()]
        return "\n\n".join(parts)

    def judge_failed(self) -> dict[str, list[str]]:
        """The items a judge gave up on (``details.judge_failed`` of each summary), by suite; empty when none."""
        return {
            stem: list(r.summary.details["judge_failed"])
            for stem, r in self.results.items()
            if r.summary.details.get("judge_failed")
        }

    def raise_if_judge_gave_up(self, where: str = "") -> None:
        """:class:`jaxtune.eval.judge.JudgeGaveUp` (exit 75) naming how many items the judge gave up on, if any
        (the summaries, written already, list them): running the same command again judges only them."""
        failed = self.judge_failed()
        if failed:
            counts = "; ".join(f"{len(ids)} in {stem}" for stem, ids in failed.items())
            raise JudgeGaveUp(
                f"{where}the judge gave up on {sum(map(len, failed.values()))} items ({counts}; listed in the "
                f"summary's judge_failed, left out of the scores): run the same command again to judge only them"
            )


def evaluate(
    checkpoint: str | Path,
    eval_cfg: EvalConfig,
    out_dir: Optional[str | Path] = None,
    metadata: Optional[Mapping[str, str]] = None,
    *,
    mesh: Optional[Mesh | MeshConfig] = None,
) -> Evaluation:
    """``jaxtune eval CHECKPOINT``: score a jaxtune params checkpoint or a Hugging Face LLaMA folder on
        ``eval_cfg.suites``, writing ``{suite}-{variant}.summary.json`` and ``.items.jsonl`` per suite into ``out_dir``
        (process 0 only; nothing is written when out_dir is None). With several processes, every process runs the same
    call; ``belle`` results exist on process 0 only (the judge is asked once).

        metadata: the training run the checkpoint comes from (see :func:`run_info`), recorded in every summary.
        mesh: a mesh, or a MeshConfig to build one over all devices of all processes (initialising jax.distributed
        first when the launch spans several processes, see :func:`jaxtune.eval.distributed.setup_mesh`), to restore
        the parameters onto and shard the batches and KV caches over; None runs on the default device.
        The parameters are restored in ``eval.compute_dtype`` (see :func:`jaxtune.eval.distributed.default_compute_dtype`).
        Every suite's data folder, the tokenizer and the judge are checked before the model is loaded.
    """
    suites = list(eval_cfg.suites)
    if not suites:
        raise EvalSetupError("eval.suites is empty: name at least one of " + ", ".join(load_suites()))
    unknown = unknown_suites_problem(suites)
    if unknown:
        raise EvalSetupError(unknown)
    roots = {s: suite_data_root(s, eval_cfg.data_dir, eval_cfg.split) for s in suites}
    for name in suites:
        get_suite(name).check(eval_cfg, Path(out_dir) if out_dir is not None else None)
    run = run_info(checkpoint, metadata)
    location = tokenizer_location(checkpoint, eval_cfg.tokenizer)

    # Nothing above touches the devices: jax.distributed must be initialised first.
    if isinstance(mesh, MeshConfig):
        mesh = setup_mesh(mesh)
    if mesh is not None:
        check_batch_rows(eval_cfg.batch_size, mesh)
    run = dataclasses.replace(run, **mesh_record(mesh))
    model = load_model(checkpoint, mesh=mesh, compute_dtype=default_compute_dtype(eval_cfg.compute_dtype))
    codec = load_codec(location, eval_cfg.template, model.cfg.vocab_size)
    lm = JaxLanguageModel(
        model,
        batch_size=eval_cfg.batch_size,
        bucket_multiple=eval_cfg.bucket_multiple,
        sampling=dataclasses.replace(sampling_from_config(eval_cfg), known_ids=codec.tokenizer.vocab_size),
        seed=eval_cfg.seed,
        mesh=mesh,
    )
    log.info("evaluating %s on %s", checkpoint, ", ".join(suites))

    writes = out_dir is not None and is_writer()
    outcome = Evaluation(results={})
    compiles = CompileCounter()
    for suite in suites:
        judge_cache = as_path(out_dir) / JUDGE_CACHE_FILE if out_dir is not None else None
        meter = SuiteProgress(suite, tokens=lambda: lm.generated_tokens)
        with compiles, compiles.program("generation"):
            result = run_suite(
                suite,
                roots[suite],
                lm,
                codec,
                eval_cfg,
                run,
                judge_cache=judge_cache,
                answers_dir=as_path(out_dir) if out_dir is not None else None,
                progress=meter.update,
            )
        meter.finish()
        if result is None:
            continue
        outcome.results[result.summary.stem] = result
        if writes:
            outcome.files[result.summary.stem] = write_result(out_dir, result)
    outcome.compiles = compiles.scalars()
    log.info("%s", compiles.summary())
    barrier("jaxtune-evaluate-written")  # nobody reads these results before process 0 has written them
    return outcome
