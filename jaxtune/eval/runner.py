"""``jaxtune eval``: load a checkpoint, run the named suites on it, write their results.

``evaluate(checkpoint, eval_cfg, out_dir)`` scores a jaxtune params checkpoint (``model_config.json`` +
``params/``, see :mod:`jaxtune.checkpoint`) or a Hugging Face LLaMA folder (converted in memory) on
``eval_cfg.suites``: ``doit`` (the study's per-ability suite), ``ceval``, ``cmmlu``, ``agieval`` (next-token
multiple choice) and ``belle`` (generation judged by an LLM). Every suite's data, the tokenizer and the judge are
checked before the model is loaded, so a wrong setting fails in seconds.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from jax import process_count
from jax.sharding import Mesh

from jaxtune.config import EvalConfig, MeshConfig
from jaxtune.eval.distributed import (
    barrier,
    check_eval_batch,
    default_compute_dtype,
    is_writer,
    mesh_record,
    setup_mesh,
)
from jaxtune.eval.judge import Judge, JudgeCache, JudgeSettings
from jaxtune.eval.language_model import JaxLanguageModel, sampling_from_config
from jaxtune.eval.loading import EvalSetupError, load_codec, load_model, tokenizer_location
from jaxtune.eval.progress import SuiteProgress
from jaxtune.eval.template_codec import TemplateChatCodec
from jaxtune.paths import as_path
from jaxtune.results import RunInfo, SuiteResult, format_table, write_result

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------------
# Suites
# --------------------------------------------------------------------------------------------------------------------

SUITES = ("doit", "ceval", "cmmlu", "agieval", "belle")
_SUITE_FOLDERS = {
    "doit": ("doit", "curated"),
    "ceval": ("ceval",),
    "cmmlu": ("cmmlu",),
    "agieval": ("agieval",),
    "belle": ("belle_eval", "belle"),
}


def _looks_like(suite: str, root: Path, split: str) -> bool:
    if suite == "doit":
        return (root / "curated" / split).is_dir() or (root / split).is_dir() or any(root.glob("*.json"))
    if suite == "ceval":
        return (root / "subject_mapping.json").is_file()
    if suite == "cmmlu":
        return (root / "subject_categories.json").is_file()
    if suite == "agieval":
        return any(root.glob("*.jsonl"))
    return (root / "eval_set.json").is_file() and (root / "eval_prompt.json").is_file()


def suite_data_root(suite: str, data_dir: Optional[str | Path], split: str = "test") -> Path:
    """The folder holding ``suite``'s data: ``data_dir/<suite folder>`` or ``data_dir`` itself (see
    :attr:`jaxtune.config.EvalConfig.data_dir`). For DoIT, the split folder with the ability files."""
    if data_dir is None:
        raise EvalSetupError(f"eval.data_dir is not set: suite {suite!r} needs its data folder")
    base = Path(data_dir)
    if not base.is_dir():
        raise EvalSetupError(f"eval.data_dir: {base} is not a directory")
    candidates = [base / name for name in _SUITE_FOLDERS[suite]] + [base]
    for root in candidates:
        if root.is_dir() and _looks_like(suite, root, split):
            if suite == "doit":
                for sub in (root / "curated" / split, root / split):
                    if sub.is_dir():
                        return sub
            return root
    tried = ", ".join(str(c) for c in candidates)
    raise EvalSetupError(f"eval.data_dir: no {suite} data found (looked in {tried})")


def judge_settings(eval_cfg: EvalConfig) -> JudgeSettings:
    """The BELLE judge of an EvalConfig; an error naming the missing field when it is not configured."""
    missing = [name for name in ("judge_base_url", "judge_model") if getattr(eval_cfg, name) is None]
    if missing:
        raise EvalSetupError(f"suite 'belle' needs an LLM judge: set {', '.join('eval.' + m for m in missing)}")
    try:
        return JudgeSettings(
            base_url=eval_cfg.judge_base_url,
            model=eval_cfg.judge_model,
            api_key_env=eval_cfg.judge_api_key_env,
            repeats=eval_cfg.judge_repeats,
            concurrency=eval_cfg.judge_concurrency,
        )
    except ValueError as e:
        raise EvalSetupError(f"eval.judge_*: {e}") from None


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
    """Run one suite on its data folder ``root`` (from :func:`suite_data_root`). None on processes other than 0
    for ``belle`` (they generate, process 0 judges). ``belle`` keeps its generated answers in ``answers_dir``
    (before judging) and takes those already there. ``progress(done, total)`` hears of finished items."""
    chunk = 8 * lm.generator.batch_size  # several batches per call, so that length bucketing has room to work
    common = dict(run=run, chunk_size=chunk, on_progress=progress)

    if suite == "doit":
        from jaxtune.eval.suites.doit import evaluate_doit, load_doit_split

        return evaluate_doit(
            load_doit_split(root),
            lm,
            codec,
            mode=eval_cfg.scorer_mode,
            variant=eval_cfg.split,
            max_new_tokens=eval_cfg.max_new_tokens,
            max_len=eval_cfg.max_prompt_len,
            **common,
        )
    if suite == "ceval":
        from jaxtune.eval.suites.ceval import evaluate_ceval, load_ceval

        return evaluate_ceval(
            load_ceval(root, subjects=None),
            lm,
            codec,
            num_shots=eval_cfg.num_shots,
            max_len=eval_cfg.max_prompt_len,
            **common,
        )
    if suite == "cmmlu":
        from jaxtune.eval.suites.cmmlu import evaluate_cmmlu, load_cmmlu

        return evaluate_cmmlu(
            load_cmmlu(root), lm, codec, num_shots=eval_cfg.num_shots, max_len=eval_cfg.max_prompt_len, **common
        )
    if suite == "agieval":
        from jaxtune.eval.suites.agieval import AGIEVAL_ZH_TASKS, evaluate_agieval

        tasks = [t for t in AGIEVAL_ZH_TASKS if (root / f"{t}.jsonl").is_file()]
        if not tasks:
            raise EvalSetupError(f"{root}: none of the AGIEval tasks {', '.join(AGIEVAL_ZH_TASKS)} (as <task>.jsonl)")
        setting = "zero-shot" if eval_cfg.num_shots == 0 else "few-shot"
        return evaluate_agieval(
            root, lm, codec, setting=setting, tasks=tasks, max_len=eval_cfg.max_prompt_len, **common
        )
    if suite == "belle":
        from jaxtune.eval.suites.belle import (
            ANSWERS_FILE,
            AnswerStore,
            decoding_settings,
            generate_answers,
            load_belle_eval_set,
            load_belle_prompts,
            score_belle,
        )

        prompts = load_belle_prompts(root / "eval_prompt.json")
        items = load_belle_eval_set(root / "eval_set.json", prompts)
        first = is_writer()
        # Opened before generating, so that a corrupt cache line is reported before the long part.
        judge = Judge(judge_settings(eval_cfg), cache=judge_cache) if first else None
        generation = {
            "checkpoint": run.checkpoint,
            "template": eval_cfg.template,
            **{
                k: getattr(eval_cfg, k)
                for k in (
                    "max_new_tokens",
                    "max_prompt_len",
                    "temperature",
                    "top_k",
                    "top_p",
                    "repetition_penalty",
                    "seed",
                    "compute_dtype",
                    "tokenizer",
                )
            },
        }
        store = AnswerStore(answers_dir / ANSWERS_FILE, generation, items) if first and answers_dir else None
        kept = store.saved() if store is not None else []
        start = len(kept)
        if process_count() > 1:  # every process takes part in generating the rest: agree on where it starts
            import numpy as np
            from jax.experimental import multihost_utils

            start = int(multihost_utils.broadcast_one_to_all(np.int32(start)))
        if store is not None:
            if kept:
                log.info("belle: %d of %d answers taken from %s", start, len(items), store.path)
            store.start(kept)
        # Every process takes part in the (sharded) generation; only process 0 asks the judge.
        answers = kept + generate_answers(
            items[start:],
            lm,
            codec,
            max_new_tokens=eval_cfg.max_new_tokens,
            chunk_size=chunk,
            on_progress=progress,
            on_answers=store.append if store is not None else None,
        )
        if judge is None:
            return None
        decoding = decoding_settings(
            eval_cfg.max_new_tokens,
            eval_cfg.temperature,
            eval_cfg.top_k,
            eval_cfg.top_p,
            eval_cfg.repetition_penalty,
            eval_cfg.seed,
        )
        return score_belle(
            items, answers, prompts, judge, run=run, max_new_tokens=eval_cfg.max_new_tokens, decoding=decoding
        )
    raise EvalSetupError(f"eval.suites: unknown suite {suite!r} (known: {', '.join(SUITES)})")


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

    def table(self) -> str:
        """Every suite's fixed-width table, with the files written."""
        parts = [format_table(r.summary) for r in self.results.values()]
        parts += [f"wrote {summary} and {items}" for summary, items in self.files.values()]
        return "\n\n".join(parts)


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
        raise EvalSetupError("eval.suites is empty: name at least one of " + ", ".join(SUITES))
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise EvalSetupError(f"eval.suites: unknown suite(s) {unknown} (known: {', '.join(SUITES)})")
    roots = {s: suite_data_root(s, eval_cfg.data_dir, eval_cfg.split) for s in suites}
    if "belle" in suites:
        judge_settings(eval_cfg)
        if out_dir is not None and is_writer():
            JudgeCache(Path(out_dir) / "judge_cache.jsonl")  # a corrupt line is named before anything is loaded
    run = run_info(checkpoint, metadata)
    location = tokenizer_location(checkpoint, eval_cfg.tokenizer)

    # Nothing above touches the devices: jax.distributed must be initialised first.
    if isinstance(mesh, MeshConfig):
        mesh = setup_mesh(mesh)
    if mesh is not None:
        check_eval_batch(eval_cfg.batch_size, mesh)
    run = dataclasses.replace(run, **mesh_record(mesh))
    model = load_model(checkpoint, mesh=mesh, compute_dtype=default_compute_dtype(eval_cfg.compute_dtype))
    codec = load_codec(location, eval_cfg.template, model.cfg.vocab_size)
    lm = JaxLanguageModel(
        model,
        batch_size=eval_cfg.batch_size,
        bucket_multiple=eval_cfg.bucket_multiple,
        sampling=sampling_from_config(eval_cfg),
        seed=eval_cfg.seed,
        mesh=mesh,
    )
    log.info("evaluating %s on %s", checkpoint, ", ".join(suites))

    writes = out_dir is not None and is_writer()
    outcome = Evaluation(results={})
    for suite in suites:
        judge_cache = as_path(out_dir) / "judge_cache.jsonl" if out_dir is not None else None
        meter = SuiteProgress(suite, tokens=lambda: lm.generated_tokens)
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
    barrier("jaxtune-evaluate-written")  # nobody reads these results before process 0 has written them
    return outcome
