"""Typed run configuration: YAML files plus ``key=value`` overrides, validated into dataclasses.

Every stage of jaxtune reads one section of :class:`Config`:

- ``model``: the LLaMA shape and numerics (:class:`ModelConfig`),
- ``data``: where records come from and how they become token batches (:class:`DataConfig`),
- ``mesh``: how devices are arranged (:class:`MeshConfig`),
- ``optim``: AdamW, clipping and the learning-rate schedule (:class:`OptimConfig`),
- ``train``: the run loop (:class:`TrainConfig`),
- ``checkpoint``: Orbax checkpointing (:class:`CheckpointConfig`),
- ``eval``: evaluation suites (:class:`EvalConfig`).

Loading is strict: an unknown key or a value of the wrong type raises :class:`ConfigError` naming the dotted key
(and the closest valid key), and the YAML file it came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from jaxtune.errors import JaxtuneError


class ConfigError(JaxtuneError, ValueError):
    """A configuration value is unknown, ill-typed or inconsistent. The message names the dotted key."""


# --------------------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------------------

RematPolicy = Literal["none", "full", "dots", "dots_no_batch", "qkv_proj", "projections"]
AttentionImpl = Literal["xla", "cudnn", "splash"]
DType = Literal["float32", "bfloat16", "float16"]


@dataclass
class RopeScalingConfig:
    """RoPE frequency scaling as transformers' ``rope_parameters`` describes it."""

    rope_type: Literal["default", "llama3", "linear"] = "default"
    """``default``: plain RoPE; ``llama3``: LLaMA-3.1 frequency smoothing; ``linear``: positions divided by factor."""
    factor: float = 1.0
    """Scale factor (llama3 and linear)."""
    low_freq_factor: float = 1.0
    """llama3: wavelengths above original_max_position_embeddings / low_freq_factor are scaled by 1/factor."""
    high_freq_factor: float = 4.0
    """llama3: wavelengths below original_max_position_embeddings / high_freq_factor are kept."""
    original_max_position_embeddings: int = 8192
    """llama3: the context length the base model was pre-trained with."""


@dataclass
class ModelConfig:
    """Shape and numerics of a LLaMA-family decoder (as transformers' ``LlamaConfig`` defines it)."""

    preset: Optional[str] = None
    """Named shape from :mod:`jaxtune.models.configs` (``doit-7b``, ``llama2-7b``, ``tiny``...). Fields set
    explicitly next to ``preset`` override the preset's values."""
    vocab_size: int = 32000
    """Number of real token ids (the tokenizer's size including added special tokens)."""
    hidden_size: int = 4096
    intermediate_size: int = 11008
    """Width of the SwiGLU MLP."""
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: Optional[int] = None
    """Key/value heads for grouped-query attention; None means num_heads (multi-head attention)."""
    head_dim: Optional[int] = None
    """Per-head width; None means hidden_size // num_heads."""
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScalingConfig = field(default_factory=RopeScalingConfig)
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    """Share the input embedding with the LM head."""
    bos_token_id: Optional[int] = 1
    eos_token_id: Optional[int] = 2
    pad_token_id: Optional[int] = None
    vocab_pad_multiple: int = 1
    """Pad the embedding/LM-head rows to a multiple of this (128 suits TPUs). Logits are cut back to vocab_size and
    export-hf strips the padding."""
    param_dtype: DType = "float32"
    """dtype of the stored (master) parameters."""
    compute_dtype: DType = "float32"
    """dtype of matmuls and activations (bfloat16 on accelerators); norms and softmax run in float32."""
    attention_impl: AttentionImpl = "xla"
    """``xla``: plain einsum attention (works everywhere); ``cudnn``: fused kernel of jax.nn.dot_product_attention on
    NVIDIA GPUs; ``splash``: the Pallas splash-attention kernel on TPU. A kernel the platform lacks falls back to
    ``xla`` with one warning."""
    remat_policy: RematPolicy = "none"
    """Rematerialisation of each decoder layer in the backward pass: ``none`` saves everything, ``full`` saves only
    layer inputs, ``dots`` saves matmul outputs, ``dots_no_batch`` saves matmuls without a batch dimension (weights),
    ``projections`` saves those plus attention's output and log-sum-exp (recomputing only norms, RoPE and
    activations: less memory than ``none`` and the fastest step on one CPU device), ``qkv_proj`` saves the attention
    projections."""
    scan_layers: bool = True
    """Run the stacked layers with jax.lax.scan (compile time independent of depth); False unrolls a Python loop."""
    initializer_range: float = 0.02
    """Standard deviation of the normal initialiser of weights (as transformers)."""

    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    def resolved_num_kv_heads(self) -> int:
        return self.num_kv_heads if self.num_kv_heads is not None else self.num_heads

    def padded_vocab_size(self) -> int:
        m = max(1, self.vocab_pad_multiple)
        return -(-self.vocab_size // m) * m

    def validate(self, where: str = "model") -> None:
        """Raise ConfigError for shapes that cannot form a LLaMA model."""
        positive = ["vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{where}.{name} must be positive, got {getattr(self, name)}")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ConfigError(
                f"{where}.hidden_size={self.hidden_size} is not divisible by {where}.num_heads={self.num_heads}; "
                f"set {where}.head_dim explicitly"
            )
        if self.resolved_head_dim() % 2:
            raise ConfigError(f"{where}.head_dim must be even for rotary embeddings, got {self.resolved_head_dim()}")
        kv = self.resolved_num_kv_heads()
        if kv <= 0 or self.num_heads % kv:
            raise ConfigError(f"{where}.num_heads={self.num_heads} must be a multiple of {where}.num_kv_heads={kv}")


@dataclass
class DataConfig:
    """Where training records come from and how they become batches of token ids."""

    format: Literal["doit", "belle", "belle_conversations", "alpaca", "sharegpt", "messages"] = "doit"
    """Record format of the input files."""
    path: Optional[str] = None
    """A JSON Lines file, a JSON array file, a directory of them (DoIT layout), or a prepared ArrayRecord dataset."""
    valid_path: Optional[str] = None
    """Validation records (same format); evaluation loss is reported per ability on them."""
    tokenizer: Optional[str] = None
    """A Hugging Face tokenizer folder or a SentencePiece ``.model`` file."""
    template: Literal["doit", "belle", "hf_chat"] = "doit"
    """Chat template: the DoIT role tokens, BELLE's ``Human:/Assistant:`` text, or the tokenizer's own template."""
    mask: Literal["assistant", "last_assistant", "all"] = "assistant"
    """Which tokens carry loss: every assistant turn, only the last one, or every token."""
    selection: str = "all"
    """Records to train on: ``all``, ``curated-N``, ``synthetic-N``, ``reconstruct``, ``maximum``, ``mix-N``, or a
    per-ability count map like ``biology:16,math:64``."""
    selection_seed: int = 0
    """Seed of the study's ``random.seed`` before sampling a selection."""
    max_len: int = 2048
    """Tokens per example (longer examples keep their first max_len tokens) and per packed row."""
    packing: bool = True
    """Pack several examples per row (segment ids keep them apart); False pads each example to its own row."""
    padding_side: Literal["right", "left"] = "right"
    """Side of the padding when packing is off (the study padded on the left)."""
    pad_to_multiple: int = 0
    """Without packing, pad each batch only to a multiple of this length (the study used 8); 0 pads every row to
    max_len (one compiled shape)."""
    on_error: Literal["raise", "skip"] = "raise"
    """Bad records raise an error naming file, line and field, or are skipped, counted and summarised."""
    shuffle_seed: int = 0
    """Seed of grain's per-epoch shuffle."""
    num_workers: int = 0
    """grain worker processes (0: in the main process). Workers start with spawn; the program's entry point must be
    guarded by ``if __name__ == "__main__":``."""
    read_threads: int = 1
    """grain threads building batches in each process (tokenizing is mostly Python, so more than 1-2 rarely helps)."""
    prefetch: int = 2
    """Batches prefetched per process (and per worker)."""


@dataclass
class MeshConfig:
    """Device mesh. Product of the sizes must equal the number of devices; one size may be -1 (the rest)."""

    data: int = 1
    """Pure data parallelism (replicated parameters)."""
    fsdp: int = -1
    """Fully sharded data parallelism: parameters, gradients and optimizer state sharded, batch split too."""
    tensor: int = 1
    """Tensor (model) parallelism over heads and MLP width."""
    dcn_data: int = 1
    """Data parallelism across slices (multi-slice TPU, over the data-centre network). The mesh's ``data`` axis
    then spans slices: its size is dcn_data x data, and data/fsdp/tensor describe one slice."""
    coordinator_address: Optional[str] = None
    """``host:port`` of process 0 for ``jax.distributed.initialize``. None: read the environment (TPU pods,
    SLURM and ``JAX_COORDINATOR_ADDRESS`` need no settings); a single machine runs as one process."""
    num_processes: Optional[int] = None
    """Number of processes (with coordinator_address; None lets JAX read it from the environment)."""
    process_id: Optional[int] = None
    """This process's index (with coordinator_address; None lets JAX read it from the environment)."""


@dataclass
class OptimConfig:
    """AdamW, gradient clipping and the learning-rate schedule (optax)."""

    learning_rate: float = 1e-5
    """Peak learning rate."""
    schedule: Literal["linear_from_peak", "warmup_cosine", "warmup_linear", "constant"] = "linear_from_peak"
    """``linear_from_peak``: the study's (peak at step 1, linear to 0 at the last step)."""
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    """Warmup as a share of total steps, used when warmup_steps is 0."""
    end_learning_rate_ratio: float = 0.0
    """Final learning rate as a share of the peak (cosine and linear schedules)."""
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_norms_and_embeddings: bool = True
    """Apply weight decay to norms and embeddings too (the study decays all parameters). False masks RMSNorm
    weights and the input embedding out of the decay (the LM head is still decayed unless tied)."""
    max_grad_norm: Optional[float] = 1.0
    """Clip gradients by global norm; None disables clipping."""
    mu_dtype: Optional[DType] = None
    """dtype of Adam's first moment; None keeps the master parameters' dtype (model.param_dtype)."""


@dataclass
class TrainConfig:
    """The fine-tuning run."""

    global_batch_size: int = 64
    """Rows per optimizer step over all hosts and microbatches."""
    microbatches: int = 1
    """Gradient accumulation steps per optimizer step."""
    epochs: int = 1
    max_steps: Optional[int] = None
    """Stop after this many optimizer steps (overrides epochs when set)."""
    seed: int = 0
    log_every: int = 10
    eval_every: Optional[int] = None
    """Steps between validation-loss evaluations (also done at each epoch end when valid data is set)."""
    max_consecutive_bad_steps: int = 5
    """Stop after this many consecutive steps with non-finite loss or gradients (each such step is skipped: the
    parameters and optimizer state are left as they were)."""
    profile: bool = False
    """Write a JAX profiler trace of the three steps after the first (compiling) one into run_dir/profile."""
    peak_flops_per_device: Optional[float] = None
    """Peak FLOP/s of one device for the MFU figure; None looks the device kind up (TPU v4/v5e/v5p/v6e, A100,
    H100/H200) and omits MFU for unknown devices."""


@dataclass
class CheckpointConfig:
    """Orbax checkpoints of the train state and data iterator."""

    save_every: Optional[int] = 500
    """Steps between saves (None: only at epoch ends). The last step, each epoch end and a SIGTERM always save."""
    max_to_keep: Optional[int] = 3
    """Newest checkpoints kept (None: all); epoch-end ones are kept besides when keep_epoch_checkpoints."""
    keep_epoch_checkpoints: bool = True
    """Keep every epoch-end checkpoint regardless of max_to_keep (the study evaluates per epoch)."""
    async_save: bool = True
    """Write checkpoints in the background (training continues once the arrays are copied off the devices)."""
    resume: Literal["auto", "never"] = "auto"
    """``auto`` continues from the latest complete checkpoint in run_dir/checkpoints (a half-written one is never
    picked); ``never`` starts fresh and refuses a run directory that already holds checkpoints."""
    init_from: Optional[str] = None
    """Parameters to start from when not resuming: a params-only checkpoint (``jaxtune import-hf``) or a train
    checkpoint's step folder (RUN_DIR/checkpoints/STEP); None initialises randomly from train.seed."""
    allow_config_change: bool = False
    """Resume even though the config changes keys that decide the data order, the batch or the schedule (data.*
    except its worker/thread/prefetch counts and valid_path, optim.*, train.global_batch_size/epochs/max_steps/seed).
    False refuses such a resume, naming each changed key; true allows it and records the changes in
    RUN_DIR/configs/changes.jsonl (the saved data position and schedule are then applied to the new settings)."""


@dataclass
class EvalConfig:
    """Evaluation suites run on a checkpoint."""

    suites: list[str] = field(default_factory=lambda: ["doit"])
    """Suites to run: ``doit``, ``ceval``, ``cmmlu``, ``agieval``, ``belle``."""
    data_dir: Optional[str] = None
    """Where suite data lives: a folder holding each suite's data under its own name (``doit/`` or ``curated/``,
    ``ceval/``, ``cmmlu/``, ``agieval/``, ``belle_eval/``), or, with one suite, that suite's folder itself."""
    split: Literal["valid", "test"] = "test"
    batch_size: int = 8
    """Rows per compiled batch for generation and scoring (a multiple of the mesh's data-parallel size)."""
    max_new_tokens: int = 1024
    """Most tokens generated per reply (the DoIT study: 1024)."""
    max_prompt_len: int = 2048
    num_shots: int = 5
    """Few-shot examples for C-Eval and CMMLU (and AGIEval: 0 = zero-shot, otherwise its few-shot setting)."""
    temperature: float = 0.0
    """0 = greedy decoding (the studies' setting); above 0, sampling at this temperature."""
    top_k: int = 0
    """Sampling only: keep the k most likely tokens (0 = off)."""
    top_p: float = 1.0
    """Sampling only: nucleus probability mass (1.0 = off)."""
    repetition_penalty: float = 1.0
    """transformers' repetition penalty on prompt and reply tokens (1.0 = off; applies to greedy decoding too)."""
    seed: int = 0
    """PRNG seed of sampling (unused by greedy decoding)."""
    tokenizer: Optional[str] = None
    """Tokenizer folder or SentencePiece ``.model``; None: the checkpoint's own (a jaxtune checkpoint's
    ``tokenizer/``, or the Hugging Face folder itself)."""
    template: Literal["doit", "belle", "hf_chat"] = "doit"
    """Chat template the model was trained with; prompts are rendered with it."""
    scorer_mode: Literal["study", "corrected"] = "study"
    """DoIT scorer: the study's per-item decisions, quirks included, or the corrected ones."""
    bucket_multiple: int = 64
    """Prompts are padded to powers of two up to this length, then to multiples of it (bounds recompiles)."""
    compute_dtype: Optional[DType] = None
    """dtype of the model's matmuls during evaluation; None keeps the checkpoint's model config."""
    judge_base_url: Optional[str] = None
    judge_model: Optional[str] = None
    judge_api_key_env: str = "JUDGE_API_KEY"
    """Name of the environment variable holding the judge's API key (the key itself is never logged or written)."""
    judge_concurrency: int = 4
    judge_repeats: int = 3


@dataclass
class Config:
    """A whole jaxtune run."""

    run_dir: str = "runs/default"
    """Directory of checkpoints, metrics, manifests and evaluation results."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return repr(tp).replace("typing.", "")
    return getattr(tp, "__name__", repr(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (int -> float, str -> Path...)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{key}: expected one of {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):  # "a,b" on the command line
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def _unknown_key_error(cls: type, name: str, prefix: str) -> ConfigError:
    valid = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown config key '{prefix}{name}'{hint}")


def _build(cls: type, values: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    pre = f"{prefix}." if prefix else ""
    for k in values:
        if k not in names:
            raise _unknown_key_error(cls, str(k), pre)
    if cls is ModelConfig and values.get("preset"):
        from jaxtune.models.configs import preset_values  # named shapes live with the model

        merged = dict(preset_values(values["preset"], key=f"{pre}preset"))
        merged.update(values)
        values = merged
    kwargs = {k: _coerce(v, hints[k], f"{pre}{k}") for k, v in values.items()}
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.sub=value`` into the dotted key and the YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.epochs=3)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def config_from_dict(values: dict, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a validated :class:`Config` from a nested dict and ``key=value`` overrides."""
    tree = _deep_copy(values)
    for text in overrides:
        try:
            key, value = parse_override(text)
            tp = _check_path(key)
            if not _is_dataclass_type(tp):
                _coerce(value, tp, key)  # type errors of an override are reported as the override's
            if key == "model.preset" and value:
                from jaxtune.models.configs import preset_values

                preset_values(value, key=key)
        except ConfigError as e:
            raise ConfigError(f"command-line override {text!r}: {e}") from None
        _set_dotted(tree, key, value)
    config = _build(Config, tree, "")
    config.model.validate("model")
    return config


def _check_path(dotted: str) -> Any:
    """Fail early on an override whose key names no field, before it is merged; return the field's type."""
    cls: Any = Config
    prefix = ""
    for part in dotted.split("."):
        if not _is_dataclass_type(cls):
            raise ConfigError(f"unknown config key '{dotted}': '{prefix.rstrip('.')}' has no sub-keys")
        hints = typing.get_type_hints(cls)
        if part not in hints:
            raise _unknown_key_error(cls, part, prefix)
        tp = hints[part]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        cls = args[0] if typing.get_origin(tp) in (Union, types.UnionType) and len(args) == 1 else tp
        prefix += part + "."
    return tp


def _deep_copy(values: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in values.items()}


def load_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config file (or the defaults when ``path`` is None) and apply ``key=value`` overrides.

    Raises ConfigError naming the file and the dotted key of any unknown or ill-typed value.
    """
    values: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level, got {type(loaded).__name__}")
        values = loaded
    try:
        return config_from_dict(values, overrides)
    except ConfigError as e:
        if path is not None and not str(e).startswith("command-line override"):
            raise ConfigError(f"{path}: {e}") from None
        raise


def config_to_dict(config: Any) -> dict:
    """The config as a plain nested dict (for YAML dumps and checkpoints)."""
    return dataclasses.asdict(config)


def dump_config(config: Config) -> str:
    """The resolved config as YAML text; load_config reads it back to an equal Config."""
    values = config_to_dict(config)
    values["model"]["preset"] = None  # the resolved fields already hold the preset's values
    return yaml.safe_dump(values, sort_keys=False, allow_unicode=True)


def model_config_from_dict(values: dict) -> ModelConfig:
    """A :class:`ModelConfig` from a dict (e.g. one stored beside a checkpoint)."""
    cfg = _build(ModelConfig, dict(values), "model")
    cfg.validate("model")
    return cfg
