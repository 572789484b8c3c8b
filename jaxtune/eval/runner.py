"""Evaluation glue: load a checkpoint, wrap it as the suites' language model, run suites, write results.

``evaluate(checkpoint, eval_cfg, out_dir)`` is what ``jaxtune eval`` calls. The checkpoint is a jaxtune params
checkpoint (``model_config.json`` + ``params/``, see :mod:`jaxtune.checkpoint`) or a Hugging Face LLaMA folder
(``config.json`` + safetensors), converted in memory. :class:`JaxLanguageModel` implements
:class:`jaxtune.eval.protocol.LanguageModel` on the Flax model with :mod:`jaxtune.eval.generate` and
:mod:`jaxtune.eval.likelihood`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxtune.checkpoint import MODEL_CONFIG_FILE
from jaxtune.config import EvalConfig, MeshConfig
from jaxtune.errors import JaxtuneError
from jaxtune.eval.generate import Generator
from jaxtune.eval.likelihood import LikelihoodScorer
from jaxtune.eval.protocol import Generation
from jaxtune.eval.results import RunInfo, SuiteResult, format_table, write_result
from jaxtune.eval.sampling import SamplingParams
from jaxtune.eval.template_codec import TemplateChatCodec
from jaxtune.models.llama import Llama

log = logging.getLogger(__name__)


class JaxLanguageModel:
    """The suites' :class:`~jaxtune.eval.protocol.LanguageModel` on a Flax LLaMA: bucketed, batched (and sharded
    when given a mesh) generation and likelihood scoring."""

    def __init__(
        self,
        model: Llama,
        *,
        batch_size: int = 8,
        bucket_multiple: int = 64,
        sampling: SamplingParams = SamplingParams(),
        seed: int = 0,
        mesh: Optional[Mesh] = None,
    ):
        """model: parameters already placed on ``mesh`` when one is given (see :func:`shard_model`).
        batch_size: rows per compiled batch for generation and scoring.
        sampling: how ``generate`` picks tokens (greedy by default, as the DoIT study decoded).
        seed: base PRNG seed of sampling (prompt i of a call draws from ``fold_in(key(seed), i)``)."""
        self.cfg = model.cfg
        self.sampling = sampling
        self.seed = seed
        pad_id = self.cfg.pad_token_id if self.cfg.pad_token_id is not None else 0
        self.generator = Generator(model, batch_size=batch_size, bucket_multiple=bucket_multiple, pad_id=pad_id,
                                   mesh=mesh)
        self.scorer = LikelihoodScorer(model, batch_size=batch_size, bucket_multiple=bucket_multiple, mesh=mesh)

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Collection[int]
    ) -> list[Generation]:
        return self.generator.generate(prompts, max_new_tokens, stop_ids, sampling=self.sampling, seed=self.seed)

    def continuation_perplexities(
        self, contexts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]
    ) -> list[float]:
        return self.scorer.continuation_perplexities(contexts, continuations)

    def next_token_logits(self, prompts: Sequence[Sequence[int]], candidate_ids: Sequence[int]) -> np.ndarray:
        return self.scorer.next_token_logits(prompts, candidate_ids)


def sampling_from_config(eval_cfg: EvalConfig) -> SamplingParams:
    """The decoding settings of an :class:`~jaxtune.config.EvalConfig` (temperature 0 = greedy)."""
    return SamplingParams(temperature=eval_cfg.temperature, top_k=eval_cfg.top_k, top_p=eval_cfg.top_p,
                          repetition_penalty=eval_cfg.repetition_penalty)


def shard_model(model: Llama, mesh: Mesh) -> Llama:
    """Place an in-memory model's parameters on ``mesh`` by jaxtune.sharding's rules (divisibility checked first)."""
    state = nnx.state(model, nnx.Param)
    params = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, _place(params, model.cfg, mesh))
    nnx.update(model, state)
    return model


# --------------------------------------------------------------------------------------------------------------------
# Loading a checkpoint
# --------------------------------------------------------------------------------------------------------------------


class EvalSetupError(JaxtuneError, ValueError):
    """The evaluation cannot start: a checkpoint, tokenizer, suite name, data folder or judge setting is wrong. The
    message names the path or config field."""


def checkpoint_kind(path: str | Path) -> str:
    """``jaxtune`` (model_config.json + params/) or ``hf`` (config.json + weights); anything else is an error."""
    p = Path(path)
    if not p.is_dir():
        raise EvalSetupError(f"checkpoint {p} is not a directory")
    if (p / MODEL_CONFIG_FILE).is_file():
        return "jaxtune"
    if (p / "config.json").is_file():
        return "hf"
    raise EvalSetupError(f"checkpoint {p} is neither a jaxtune params checkpoint ({MODEL_CONFIG_FILE} + params/) nor "
                         "a Hugging Face model folder (config.json + weights)")


def _place(params: dict, cfg, mesh: Optional[Mesh]) -> dict:
    """Host numpy params on the device(s): sharded by jaxtune.sharding's rules with a mesh (each process supplies
    its own shards), else on the default device."""
    if mesh is None:
        return jax.tree.map(jnp.asarray, params)
    from jaxtune.sharding import abstract_model, param_shardings, validate_param_layout

    _, shapes, axes = abstract_model(cfg)
    validate_param_layout(shapes, axes, mesh)
    shardings = param_shardings(axes, mesh)
    return jax.tree.map(
        lambda a, s: jax.make_array_from_callback(a.shape, s, lambda index, a=a: a[index]), params, shardings
    )


def _build(cfg, params: dict) -> Llama:
    model = nnx.eval_shape(lambda: Llama(cfg, nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


def load_model(
    checkpoint: str | Path, *, mesh: Optional[Mesh] = None, compute_dtype: Optional[str] = None
) -> Llama:
    """The model of a jaxtune params checkpoint or a Hugging Face LLaMA folder (converted in memory), its
    parameters sharded over ``mesh`` when given. compute_dtype: override the matmul dtype (None keeps the
    checkpoint's)."""
    from jaxtune.checkpoint import load_model_config, restore_model

    kind = checkpoint_kind(checkpoint)
    overrides = {} if compute_dtype is None else {"compute_dtype": compute_dtype}
    if kind == "jaxtune":
        shardings = None
        if mesh is not None:
            from jaxtune.sharding import abstract_model, param_shardings, validate_param_layout

            _, shapes, axes = abstract_model(load_model_config(checkpoint))
            validate_param_layout(shapes, axes, mesh)
            shardings = param_shardings(axes, mesh)
        return restore_model(checkpoint, shardings=shardings, **overrides)
    from jaxtune.convert.hf import load_hf_params

    cfg, params = load_hf_params(checkpoint)
    cfg = dataclasses.replace(cfg, **overrides)
    return _build(cfg, _place(params, cfg, mesh))


def tokenizer_location(checkpoint: str | Path, tokenizer: Optional[str | Path] = None) -> Path:
    """Where the tokenizer of an evaluation comes from: ``tokenizer`` when given, else the checkpoint's own."""
    if tokenizer is not None:
        return Path(tokenizer)
    from jaxtune.checkpoint import tokenizer_path

    if checkpoint_kind(checkpoint) == "jaxtune":
        found = tokenizer_path(checkpoint)
        if found is None:
            raise EvalSetupError(f"checkpoint {checkpoint} carries no tokenizer/ folder: set eval.tokenizer")
        return found
    return Path(checkpoint)


def load_codec(location: str | Path, template: str, model_vocab_size: int) -> TemplateChatCodec:
    """The chat codec of ``template`` on the tokenizer at ``location`` (a folder or a SentencePiece .model)."""
    from jaxtune.data.templates import template_backend
    from jaxtune.data.tokenizer import TokenizerError, load_tokenizer

    try:
        tokenizer = load_tokenizer(location, backend=template_backend(template))
        return TemplateChatCodec.create(template, tokenizer, model_vocab_size)
    except (TokenizerError, ValueError) as e:
        raise EvalSetupError(f"eval.tokenizer / eval.template: {e}") from None


# --------------------------------------------------------------------------------------------------------------------
# Suites
# --------------------------------------------------------------------------------------------------------------------

SUITES = ("doit", "ceval", "cmmlu", "agieval", "belle")
_SUITE_FOLDERS = {"doit": ("doit", "curated"), "ceval": ("ceval",), "cmmlu": ("cmmlu",), "agieval": ("agieval",),
                  "belle": ("belle_eval", "belle")}


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


def judge_settings(eval_cfg: EvalConfig):
    """The BELLE judge of an EvalConfig; an error naming the missing field when it is not configured."""
    from jaxtune.eval.judge import JudgeSettings

    missing = [name for name in ("judge_base_url", "judge_model") if getattr(eval_cfg, name) is None]
    if missing:
        raise EvalSetupError(f"suite 'belle' needs an LLM judge: set {', '.join('eval.' + m for m in missing)}")
    try:
        return JudgeSettings(base_url=eval_cfg.judge_base_url, model=eval_cfg.judge_model,
                             api_key_env=eval_cfg.judge_api_key_env, repeats=eval_cfg.judge_repeats,
                             concurrency=eval_cfg.judge_concurrency)
    except ValueError as e:
        raise EvalSetupError(f"eval.judge_*: {e}") from None


def run_suite(
    suite: str, root: Path, lm: JaxLanguageModel, codec: TemplateChatCodec, eval_cfg: EvalConfig, run: RunInfo,
    judge_cache: Optional[Path] = None,
) -> SuiteResult:
    """Run one suite on its data folder ``root`` (from :func:`suite_data_root`)."""
    chunk = 8 * lm.generator.batch_size  # several batches per call, so that length bucketing has room to work
    common = dict(run=run, chunk_size=chunk)

    def progress(done: int, total: int) -> None:
        log.info("%s: %d/%d items", suite, done, total)

    if suite == "doit":
        from jaxtune.eval.suites.doit import evaluate_doit, load_doit_split

        return evaluate_doit(load_doit_split(root), lm, codec, mode=eval_cfg.scorer_mode, variant=eval_cfg.split,
                             max_new_tokens=eval_cfg.max_new_tokens, max_len=eval_cfg.max_prompt_len,
                             on_progress=progress, **common)
    if suite == "ceval":
        from jaxtune.eval.suites.ceval import evaluate_ceval, load_ceval

        return evaluate_ceval(load_ceval(root, subjects=None), lm, codec, num_shots=eval_cfg.num_shots,
                              max_len=eval_cfg.max_prompt_len, **common)
    if suite == "cmmlu":
        from jaxtune.eval.suites.cmmlu import evaluate_cmmlu, load_cmmlu

        return evaluate_cmmlu(load_cmmlu(root), lm, codec, num_shots=eval_cfg.num_shots,
                              max_len=eval_cfg.max_prompt_len, **common)
    if suite == "agieval":
        from jaxtune.eval.suites.agieval import AGIEVAL_ZH_TASKS, evaluate_agieval

        tasks = [t for t in AGIEVAL_ZH_TASKS if (root / f"{t}.jsonl").is_file()]
        if not tasks:
            raise EvalSetupError(f"{root}: none of the AGIEval tasks {', '.join(AGIEVAL_ZH_TASKS)} (as <task>.jsonl)")
        setting = "zero-shot" if eval_cfg.num_shots == 0 else "few-shot"
        return evaluate_agieval(root, lm, codec, setting=setting, tasks=tasks, max_len=eval_cfg.max_prompt_len,
                                **common)
    if suite == "belle":
        from jaxtune.eval.judge import Judge
        from jaxtune.eval.suites.belle import evaluate_belle, load_belle_eval_set, load_belle_prompts

        prompts = load_belle_prompts(root / "eval_prompt.json")
        items = load_belle_eval_set(root / "eval_set.json", prompts)
        judge = Judge(judge_settings(eval_cfg), cache=judge_cache)
        return evaluate_belle(items, prompts, lm, codec, judge, max_new_tokens=eval_cfg.max_new_tokens, **common)
    raise EvalSetupError(f"eval.suites: unknown suite {suite!r} (known: {', '.join(SUITES)})")


# --------------------------------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------------------------------

_RUN_FIELDS = {f.name: f.type for f in dataclasses.fields(RunInfo)}


def run_info(checkpoint: str | Path, metadata: Optional[Mapping[str, str]] = None) -> RunInfo:
    """Which run a result scores: ``metadata`` (``run_name``, ``model_size``, ``data_source``, ``data_volume``,
    ``epoch``, ``step``; strings as the command line gives them) plus the checkpoint path."""
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
    (process 0 only; nothing is written when out_dir is None).

    metadata: the training run the checkpoint comes from (see :func:`run_info`), recorded in every summary.
    mesh: a mesh (or a MeshConfig to build one over all devices) to shard the model and batches over; None runs on
    the default device.
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
    run = run_info(checkpoint, metadata)
    location = tokenizer_location(checkpoint, eval_cfg.tokenizer)

    if isinstance(mesh, MeshConfig):
        from jaxtune.sharding import build_mesh

        mesh = build_mesh(mesh)
    model = load_model(checkpoint, mesh=mesh, compute_dtype=eval_cfg.compute_dtype)
    codec = load_codec(location, eval_cfg.template, model.cfg.vocab_size)
    lm = JaxLanguageModel(model, batch_size=eval_cfg.batch_size, bucket_multiple=eval_cfg.bucket_multiple,
                          sampling=sampling_from_config(eval_cfg), seed=eval_cfg.seed, mesh=mesh)
    log.info("evaluating %s on %s", checkpoint, ", ".join(suites))

    writes = out_dir is not None and jax.process_index() == 0
    outcome = Evaluation(results={})
    for suite in suites:
        judge_cache = Path(out_dir) / "judge_cache.jsonl" if out_dir is not None else None
        result = run_suite(suite, roots[suite], lm, codec, eval_cfg, run, judge_cache=judge_cache)
        outcome.results[result.summary.stem] = result
        if writes:
            outcome.files[result.summary.stem] = write_result(out_dir, result)
    return outcome
