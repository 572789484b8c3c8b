"""The run configuration's schema: one typed, documented dataclass per section, each checking its own values.

Every stage of jaxtune reads one section of :class:`Config`:

- ``model``: the LLaMA, BLOOM or Qwen2 shape and numerics (:class:`ModelConfig`, with :class:`RopeScalingConfig`),
- ``data``: where records come from and how they become token batches (:class:`DataConfig`),
- ``mesh``: how devices are arranged (:class:`MeshConfig`),
- ``optim``: AdamW, clipping and the learning-rate schedule (:class:`OptimConfig`),
- ``train``: the run loop (:class:`TrainConfig`),
- ``checkpoint``: Orbax checkpointing (:class:`CheckpointConfig`),
- ``eval``: evaluation suites (:class:`EvalConfig`).

Each section checks its own values in ``problems`` (``validate`` raises them): a value no run can use
(``optim.learning_rate=nan``, ``model.rms_norm_eps=-1``, ``train.epochs=0``...) is one message naming its dotted key
and the value. :meth:`Config.problems` gathers every section's, so a section added later only needs its own
``_rules``. :class:`ConfigError` lists every problem found.

Reading YAML files and ``key=value`` overrides into these dataclasses (types, unknown and repeated keys, presets) is
:mod:`jaxtune.config.loading`; this module knows nothing of files.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional, Sequence, Union

from jaxtune.errors import JaxtuneError
from jaxtune.families.registry import load_families
from jaxtune.names import (
    AttentionImpl,
    Backward,
    DataFormat,
    DType,
    MaskStrategy,
    ModelFamily,
    RematPolicy,
    Schedule,
    ScorerMode,
    TemplateName,
)


class ConfigError(JaxtuneError, ValueError):
    """Configuration values are unknown, ill-typed or unusable. ``problems`` holds one message per problem, each
    naming its dotted key; the message lists them all."""

    def __init__(self, problems: Union[str, Sequence[str]]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            text = self.problems[0]
        else:
            text = f"{len(self.problems)} problems in the config:\n" + "\n".join(f"  {p}" for p in self.problems)
        super().__init__(text)


def dotted_key(where: str, name: str) -> str:
    """``where.name``, or ``name`` at the top level (``where`` empty): the dotted key every message names."""
    return f"{where}.{name}" if where else name


class _Rules:
    """Collects the problems of one section; every message names the dotted key and the value it got. A field
    already found wrong (e.g. non-finite) is not reported again by later rules."""

    def __init__(self, section: Any, where: str):
        self.section, self.where = section, where
        self.problems: list[str] = []
        self._reported: set[str] = set()

    def fine(self, *names: str) -> bool:
        """Whether none of these fields has been reported (rules relating them would only repeat the problem)."""
        return not self._reported.intersection(names)

    def add(self, message: str, *names: str) -> None:
        self.problems.append(message)
        self._reported.update(names)

    def check(self, names: Sequence[str], ok: Callable[[Any], bool], rule: str, optional: bool = False) -> None:
        for name in names:
            value = getattr(self.section, name)
            if name in self._reported or (optional and value is None):
                continue
            if not ok(value):
                self.add(f"{dotted_key(self.where, name)} must be {rule}, got {value!r}", name)

    def at_least(self, low: int, *names: str, optional: bool = False) -> None:
        self.check(names, lambda v: v >= low, f"at least {low}" + (" or null" if optional else ""), optional)

    def positive(self, *names: str, optional: bool = False) -> None:
        self.check(names, lambda v: v > 0, "positive" + (" or null" if optional else ""), optional)

    def non_negative(self, *names: str) -> None:
        self.check(names, lambda v: v >= 0, "at least 0")

    def finite_floats(self) -> None:
        """Every float field must be a finite number (YAML reads ``.nan``/``.inf``, the command line ``nan``)."""
        for f in dataclasses.fields(self.section):
            value = getattr(self.section, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                self.add(f"{dotted_key(self.where, f.name)} must be a finite number, got {value!r}", f.name)


class _Section:
    """A config section that checks its own values. Subclasses add rules in ``_rules``; nested sections are
    checked under their own dotted prefix."""

    SECTION = ""
    """The section's key in :class:`Config` (the default ``where`` of its messages)."""

    def _rules(self, rules: _Rules) -> None:
        pass

    def problems(self, where: Optional[str] = None) -> list[str]:
        """Every problem of this section's values (and of its nested sections), each naming its dotted key."""
        where = self.SECTION if where is None else where
        rules = _Rules(self, where)
        rules.finite_floats()
        self._rules(rules)
        out = list(rules.problems)
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, _Section):
                out += value.problems(dotted_key(where, f.name))
        return out

    def validate(self, where: Optional[str] = None) -> None:
        """Raise :class:`ConfigError` listing every problem of :meth:`problems`."""
        problems = self.problems(where)
        if problems:
            raise ConfigError(problems)


# --------------------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class RopeScalingConfig(_Section):
    """RoPE frequency scaling as transformers' ``rope_parameters`` describes it."""

    SECTION = "model.rope_scaling"

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

    def _rules(self, rules: _Rules) -> None:
        rules.positive("factor", "low_freq_factor", "high_freq_factor")
        rules.at_least(1, "original_max_position_embeddings")
        if self.rope_type == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            rules.add(
                f"{dotted_key(rules.where, 'high_freq_factor')}={self.high_freq_factor!r} must exceed "
                f"{dotted_key(rules.where, 'low_freq_factor')}={self.low_freq_factor!r} (llama3 smooths between them)",
                "high_freq_factor",
            )


@dataclass
class ModelConfig(_Section):
    """Shape and numerics of a decoder: a LLaMA (transformers' ``LlamaConfig``), a BLOOM (``BloomConfig``) or a
    Qwen2 (``Qwen2Config``)."""

    SECTION = "model"

    preset: Optional[str] = None
    """Named shape from :mod:`jaxtune.config.presets` (``doit-7b``, ``llama2-7b``, ``bloomz-7b1-mt``, ``tiny``,
    ``bloom-tiny``...). Fields set explicitly next to ``preset`` override the preset's values."""
    family: ModelFamily = "llama"
    """Architecture: ``llama`` (RMSNorm, rotary positions, SwiGLU MLP) or ``bloom`` (transformers'
    BloomForCausalLM: LayerNorms with biases, ALiBi, fused query/key/value with biases, tanh-GeLU MLP). For bloom,
    ``intermediate_size`` is the MLP width (4 x hidden_size in every BLOOM checkpoint), ``num_kv_heads`` stays
    unset, and the rms_norm_eps/rope_* fields are unused. BLOOM presets set it. ``qwen2`` is ``llama`` with
    biases on the query, key and value projections (Qwen1.5, Qwen2, Qwen2.5)."""
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
    """llama: epsilon of the RMSNorms."""
    layer_norm_epsilon: float = 1e-5
    """bloom: epsilon of the LayerNorms (transformers' ``BloomConfig.layer_norm_epsilon``)."""
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

    def _rules(self, rules: _Rules) -> None:
        where = rules.where
        rules.positive(
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "rms_norm_eps",
            "layer_norm_epsilon",
            "rope_theta",
            "max_position_embeddings",
        )
        rules.positive("num_kv_heads", "head_dim", optional=True)
        rules.at_least(1, "vocab_pad_multiple")
        rules.non_negative("initializer_range")
        if not rules.fine("hidden_size", "num_heads", "num_kv_heads", "head_dim"):
            return  # the shape rules below divide by these
        if self.head_dim is None and self.hidden_size % self.num_heads:
            rules.add(
                f"{where}.hidden_size={self.hidden_size} is not divisible by {where}.num_heads={self.num_heads}; "
                f"set {where}.head_dim explicitly",
                "hidden_size",
            )
        family = load_families().get(self.family)
        for message, key in family.config_rules(self, where) if family else ():
            rules.add(message, key)
        kv = self.resolved_num_kv_heads()
        if self.num_heads % kv:
            rules.add(
                f"{where}.num_heads={self.num_heads} must be a multiple of {where}.num_kv_heads={kv}", "num_kv_heads"
            )


@dataclass
class DataConfig(_Section):
    """Where training records come from and how they become batches of token ids."""

    SECTION = "data"

    format: DataFormat = "doit"
    """Record format of the input files."""
    path: Optional[str] = None
    """A JSON Lines file, a JSON array file, a directory of them (DoIT layout), or a prepared ArrayRecord dataset."""
    valid_path: Optional[str] = None
    """Validation records (same format); evaluation loss is reported per ability on them."""
    tokenizer: Optional[str] = None
    """A Hugging Face tokenizer folder or a SentencePiece ``.model`` file."""
    template: TemplateName = "doit"
    """Chat template: the DoIT role tokens, BELLE's ``Human:/Assistant:`` text, or the tokenizer's own template."""
    mask: MaskStrategy = "assistant"
    """Which tokens carry loss: every assistant turn, only the last one, or every token."""
    selection: str = "all"
    """Records to train on: ``all``, ``curated-N``, ``synthetic-N``, ``reconstruct``, ``maximum``, ``mix-N``, a
    per-ability count map like ``biology:16,math:64``, or a BELLE volume (``belle-200k``, ``belle-600k``,
    ``belle-1m``, ``belle-2m``, ``belle-N``, ``belle-all``; ``+alpaca`` mixes in ``alpaca_path``): nested seeded
    subsets of the corpus at ``path``, a prepared dataset or JSON Lines (:mod:`jaxtune.data.belle_volumes`)."""
    alpaca_path: Optional[str] = None
    """Stanford Alpaca's ``alpaca_data.json`` (``{instruction, input, output}`` records), mixed into a BELLE volume
    by a ``+alpaca`` selection as the released BELLE models were trained."""
    selection_seed: int = 0
    """Seed of the study's ``random.seed`` before sampling a selection (BELLE volumes: of the one permutation whose
    prefixes are the nested volumes)."""
    max_len: int = 2048
    """Tokens per example (longer examples keep their first max_len tokens) and per packed row."""
    packing: bool = True
    """Pack several examples per row (segment ids keep them apart); False pads each example to its own row."""
    padding_side: Literal["right", "left"] = "right"
    """Side of the padding when packing is off (the study padded on the left)."""
    pad_to_multiple: int = 0
    """Without packing, pad each batch only to a multiple of this length (the study used 8); 0 pads every row to
    max_len (one compiled shape). Every distinct length is a compile of the train step: ``length_buckets`` bounds
    them."""
    length_buckets: list[int] = field(default_factory=list)
    """Without packing, pad each batch to the smallest of these row lengths that holds its longest example (a batch
    longer than every bucket pads to max_len), so a run compiles at most one train step per bucket; with
    ``attention_impl: splash`` each must be a multiple of 128. The study's recipes: 256, 512, 1024, 1536, 2048. With
    left padding the loss and gradients do not depend on the bucket (positions count from each example's first
    token). Unused with packing (rows are max_len long). Empty: ``pad_to_multiple`` decides."""
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

    def _rules(self, rules: _Rules) -> None:
        rules.at_least(2, "max_len")
        rules.non_negative("pad_to_multiple", "num_workers", "read_threads")
        rules.at_least(1, "prefetch")
        self._bucket_rules(rules)
        rules.check(("shuffle_seed",), lambda v: 0 <= v < 2**32, "in [0, 2**32) (grain's shuffle seeds)")

    def _bucket_rules(self, rules: _Rules) -> None:
        buckets, key = self.length_buckets, dotted_key(rules.where, "length_buckets")
        if not buckets:
            return
        if any(not 1 <= b <= self.max_len for b in buckets) or list(buckets) != sorted(set(buckets)):
            rules.add(f"{key} must be increasing row lengths in [1, max_len={self.max_len}], got {buckets!r}", key)
        elif self.pad_to_multiple:
            rules.add(
                f"{key}={buckets!r} and data.pad_to_multiple={self.pad_to_multiple} both set batch lengths; "
                f"set one (pad_to_multiple=0 with buckets)",
                key,
            )

    def row_lengths(self) -> list[int]:
        """Every row length a batch of this config can have: the buckets (and max_len, the length of a batch longer
        than every bucket), or max_len alone when rows are packed or padded to max_len; empty when
        ``pad_to_multiple`` lets the batches decide (any multiple of it up to max_len)."""
        if self.packing or not (self.length_buckets or self.pad_to_multiple):
            return [self.max_len]
        if self.length_buckets:
            return sorted({*self.length_buckets, self.max_len})
        return []


@dataclass
class MeshConfig(_Section):
    """Device mesh. Product of the sizes must equal the number of devices; one size may be -1 (the rest)."""

    SECTION = "mesh"

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

    def _rules(self, rules: _Rules) -> None:
        where = rules.where
        rules.check(
            ("data", "fsdp", "tensor"), lambda v: v >= 1 or v == -1, "a positive size or -1 (the rest of the devices)"
        )
        free = [name for name in ("data", "fsdp", "tensor") if getattr(self, name) == -1]
        if len(free) > 1:
            rules.add(
                f"only one mesh size may be -1, got -1 for {', '.join(dotted_key(where, n) for n in free)}", *free
            )
        rules.at_least(1, "dcn_data")
        rules.at_least(1, "num_processes", optional=True)
        # eval.mesh takes the process settings it leaves unset from the training mesh (eval_mesh_config).
        inherits = where.endswith("eval.mesh")
        if (
            (self.num_processes is not None or self.process_id is not None)
            and not self.coordinator_address
            and not inherits
        ):
            rules.add(
                f"{where}.num_processes and {where}.process_id need {where}.coordinator_address",
                "num_processes",
                "process_id",
            )
        if self.process_id is not None and not 0 <= self.process_id < (self.num_processes or self.process_id + 1):
            rules.add(
                f"{where}.process_id must be in 0..{where}.num_processes-1, got {self.process_id!r}", "process_id"
            )


@dataclass
class OptimConfig(_Section):
    """AdamW, gradient clipping and the learning-rate schedule (optax)."""

    SECTION = "optim"

    learning_rate: float = 1e-5
    """Peak learning rate."""
    schedule: Schedule = "linear_from_peak"
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

    def _rules(self, rules: _Rules) -> None:
        rules.non_negative("learning_rate", "warmup_steps", "weight_decay", "end_learning_rate_ratio")
        rules.check(("warmup_ratio",), lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
        rules.check(("b1", "b2"), lambda v: 0.0 <= v < 1.0, "in [0, 1)")
        rules.positive("eps")
        rules.positive("max_grad_norm", optional=True)


@dataclass
class TrainConfig(_Section):
    """The fine-tuning run."""

    SECTION = "train"

    global_batch_size: int = 64
    """Rows (or, with ``batch_unit: examples``, examples) per optimizer step over all hosts and microbatches."""
    batch_unit: Literal["rows", "examples"] = "rows"
    """What ``global_batch_size`` counts. Without packing one row holds one example and the two agree (the study:
    64 examples per step, ``ceil(N / 64)`` steps per epoch). With packing, ``rows`` gives ``ceil(packed rows /
    global_batch_size)`` steps per epoch; ``examples`` keeps the study's ``ceil(N / global_batch_size)`` steps and
    deals each epoch's packed rows evenly over them (rows per step rounded up to what the mesh and microbatches
    divide), so packing stays a speed option that leaves the schedule's length as the study had it."""
    microbatches: int = 1
    """Gradient accumulation steps per optimizer step."""
    backward: Backward = "autodiff"
    """How gradients are computed. ``autodiff``: ``jax.value_and_grad`` of each microbatch's loss (with
    ``model.remat_policy``), its gradient tree then added into the float32 accumulator. ``layerwise``: the forward
    pass keeps each layer's input, the backward pass walks the layers in reverse recomputing one layer at a time and
    adds that layer's gradient straight into its slice of the accumulator (jaxtune.train.layerwise), so no
    per-microbatch gradient tree nor whole-model bf16 weight copy exists: the least memory (33b on 8 v5p chips at
    the study's batch), the compute of ``remat_policy: full``, which it requires."""
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
    compilation_cache_dir: Optional[str] = None
    """JAX's persistent compilation cache, local or ``gs://``, set before the first compile: a later run (or a
    restarted one) with the same programs reads them instead of compiling. A shared ``gs://`` folder serves every
    worker and every run of a sweep. None: the folder the process already uses (``JAX_COMPILATION_CACHE_DIR``, a
    sweep's shared ``compilation_cache``), else ``RUN_DIR/compilation_cache``."""
    compilation_cache_min_secs: Optional[float] = None
    """Programs compiling faster than this are not written to the cache (JAX's
    ``jax_persistent_cache_min_compile_time_secs``); None keeps the process's setting (JAX's 1 s, or 0 in the
    quickstart): a large model's train step is written, the many small helpers are not."""
    peak_flops_per_device: Optional[float] = None
    """Peak FLOP/s of one device for the MFU figure; None looks the device kind up in :mod:`jaxtune.hardware` (TPU
    v4/v5e/v5p/v6e, A100, H100/H200) and omits MFU for unknown devices."""

    def _rules(self, rules: _Rules) -> None:
        rules.at_least(1, "global_batch_size", "microbatches", "epochs", "log_every", "max_consecutive_bad_steps")
        rules.at_least(1, "max_steps", "eval_every", optional=True)
        rules.positive("peak_flops_per_device", optional=True)
        rules.check(("compilation_cache_min_secs",), lambda v: v >= 0, "at least 0 or null", optional=True)
        if rules.fine("global_batch_size", "microbatches") and self.global_batch_size % self.microbatches:
            rules.add(
                f"{rules.where}.global_batch_size={self.global_batch_size} is not divisible by "
                f"{rules.where}.microbatches={self.microbatches}",
                "global_batch_size",
            )


@dataclass
class CheckpointConfig(_Section):
    """Orbax checkpoints of the train state and data iterator."""

    SECTION = "checkpoint"

    save_every: Optional[int] = 500
    """Steps between saves (None: only at epoch ends). The last step, each epoch end and a SIGTERM always save."""
    max_to_keep: Optional[int] = 3
    """Newest full train-state checkpoints kept in run_dir/checkpoints (None: all)."""
    keep_epoch_checkpoints: bool = True
    """Write a params-only checkpoint of every epoch end into run_dir/epochs/EPOCH (the study evaluates per epoch);
    only the newest max_to_keep checkpoints in run_dir/checkpoints hold the full train state and data iterator."""
    keep_train_state_when_done: bool = True
    """False: once the run completes, delete its full train states (run_dir/checkpoints) and keep only the epoch
    checkpoints and run_dir/completed.json, so a finished run holds 2 bytes per parameter per epoch (a doit-33b run
    of 15 epochs: 916 GiB, not 1.25 TiB or more); a rerun then reports the run as finished, but it can no longer be
    extended. Needs keep_epoch_checkpoints and a last step that ends an epoch."""
    epoch_dtype: Optional[DType] = None
    """dtype of the epoch checkpoints' parameters; None: the model's compute_dtype (bfloat16 for the study's
    recipes, 2 bytes per parameter); ``float32`` keeps the master weights exactly."""
    async_save: bool = True
    """Write checkpoints in the background (training continues once the arrays are copied off the devices)."""
    resume: Literal["auto", "never"] = "auto"
    """``auto`` continues from the latest complete checkpoint in run_dir/checkpoints (a half-written one is never
    picked); ``never`` starts fresh and refuses a run directory that already holds checkpoints."""
    init_from: Optional[str] = None
    """Parameters to start from when not resuming: a params-only checkpoint (``jaxtune import-hf``, an epoch
    checkpoint RUN_DIR/epochs/EPOCH) or a train checkpoint's step folder (RUN_DIR/checkpoints/STEP), local or
    ``gs://``; None initialises randomly from train.seed. From the command line, the
    model's architecture fields the config leaves unset are the checkpoint's, and one it sets otherwise is refused
    (:mod:`jaxtune.convert.architecture`)."""
    allow_config_change: bool = False
    """Resume even though the config changes keys that decide the data order, the batch or the schedule (data.*
    except its worker/thread/prefetch counts and valid_path, optim.*, train.global_batch_size/epochs/max_steps/seed).
    False refuses such a resume, naming each changed key; true allows it and records the changes in
    RUN_DIR/configs/changes.jsonl (the saved data position and schedule are then applied to the new settings)."""

    lease_timeout_s: float = 300.0
    """Seconds without a heartbeat after which another launch may take over the run directory's lease
    (RUN_DIR/lock, refreshed every quarter of this; see :mod:`jaxtune.checkpoint.lease`). Until then a second
    writer refuses, naming the owner; a holder on the same host whose process is gone is taken over at once."""
    force_takeover: bool = False
    """Take the run directory's lease even from a live holder (logged; that holder stops before its next
    checkpoint). For a holder known dead on another host, without waiting for lease_timeout_s."""
    store_retries: Optional[int] = None
    """Tries of one object-store request (``gs://``) before a save, a restore or a run file gives up: gcsfs's and
    tensorstore's retry loops (:mod:`jaxtune.checkpoint.storage`). None keeps the libraries' own: gcsfs 6 tries
    (about 35 s of backoff), tensorstore 32 (about 15 minutes). A store down longer than that ends the run in one
    line naming the path and the cause, exit 75, the previous complete step intact."""

    def _rules(self, rules: _Rules) -> None:
        rules.at_least(1, "save_every", "max_to_keep", "store_retries", optional=True)
        rules.positive("lease_timeout_s")


@dataclass
class EvalConfig(_Section):
    """Evaluation suites run on a checkpoint."""

    SECTION = "eval"

    suites: list[str] = field(default_factory=lambda: ["doit"])
    """Suites to run: ``doit``, ``ceval``, ``cmmlu``, ``agieval``, ``belle`` (:data:`jaxtune.names.EVAL_SUITES`; an
    unknown name is reported by ``validate`` and ``eval`` together with the layout's problems)."""
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
    """0 = greedy decoding (DoIT's setting); above 0, sampling at this temperature (the BELLE recipes sample as the
    BELLE-7B model cards do: see :mod:`jaxtune.eval.suites.belle`)."""
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
    template: TemplateName = "doit"
    """Chat template the model was trained with; prompts are rendered with it."""
    scorer_mode: ScorerMode = "study"
    """DoIT scorer: the study's per-item decisions, quirks included, or the corrected ones."""
    bucket_multiple: int = 64
    """Prompts are padded to powers of two up to this length, then to multiples of it (bounds recompiles)."""
    compute_dtype: Optional[DType] = None
    """dtype the parameters are restored in (cast shard by shard while reading) and the matmuls run in during
    evaluation; None: bfloat16 on accelerators (TPU, GPU), float32 on CPU."""
    mesh: Optional[MeshConfig] = None
    """Device mesh of evaluation when it wants another layout than training (e.g. ``eval.mesh.tensor=8`` for a
    wide-head model at a small batch); None uses the top-level ``mesh`` section. The process settings
    (coordinator_address, num_processes, process_id) left unset here are taken from the top-level ``mesh``."""
    judge_base_url: Optional[str] = None
    judge_model: Optional[str] = None
    judge_api_key_env: str = "JUDGE_API_KEY"
    """Name of the environment variable holding the judge's API key (the key itself is never logged or written)."""
    judge_concurrency: int = 4
    judge_repeats: int = 3
    judge_max_tokens: Optional[int] = 3000
    """``max_tokens`` of each judge request (BELLE's page: 3000); null leaves it to the server (a ``jaxtune serve``
    judge refuses a prompt + max_tokens beyond its context)."""
    judge_timeout_s: float = 60.0
    """Seconds one judge request may take before it counts as failed (and is retried)."""
    judge_retries: int = 5
    """Retries of one judge request after a timeout or a transport failure (each logged on a line of its own); then
    the judge gives up on that item with an error naming the endpoint and the last failure."""

    def _rules(self, rules: _Rules) -> None:
        rules.at_least(
            1, "batch_size", "max_new_tokens", "max_prompt_len", "bucket_multiple", "judge_concurrency", "judge_repeats"
        )
        rules.positive("judge_timeout_s")
        rules.non_negative("judge_retries")
        rules.non_negative("num_shots", "temperature", "top_k")
        rules.check(("top_p",), lambda v: 0.0 < v <= 1.0, "in (0, 1]")
        rules.positive("repetition_penalty")
        rules.check(("judge_max_tokens",), lambda v: v >= 1, "at least 1 or null", optional=True)
        rules.check(
            ("judge_base_url",),
            lambda v: v.startswith(("http://", "https://")),
            "an http:// or https:// URL or null",
            optional=True,
        )


@dataclass
class Config(_Section):
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

    def _rules(self, rules: _Rules) -> None:
        rules.check(("run_dir",), lambda v: bool(v.strip()), "a directory path")
        if self.train.backward == "layerwise" and self.model.remat_policy != "full":
            rules.add(
                f"train.backward=layerwise recomputes every layer in the backward pass (remat 'full'); it needs "
                f"model.remat_policy=full, got {self.model.remat_policy!r} (or set train.backward=autodiff)",
                "train",
            )
        bucketed = self.data.length_buckets and not self.data.packing
        odd = [b for b in self.data.row_lengths() if b % 128] if bucketed else []
        if self.model.attention_impl == "splash" and odd:
            rules.add(
                f"model.attention_impl=splash needs rows that are a multiple of 128 (its block); "
                f"data.length_buckets (with max_len) give {odd}: batches at those lengths would run XLA attention "
                f"instead (choose multiples of 128, or attention_impl=xla)",
                "data",
            )


def max_len_problem(cfg: Config) -> Optional[str]:
    """The problem of rows longer than the model has positions, if any (checked where ``data.max_len`` is used: a
    run reading ``data.path``, and ``validate``; it also bounds a batch's host memory, which ``data.max_len`` alone
    does not)."""
    if cfg.data.max_len <= cfg.model.max_position_embeddings:
        return None
    return (
        f"data.max_len={cfg.data.max_len} is longer than the model's positions (model.max_position_embeddings="
        f"{cfg.model.max_position_embeddings}): lower data.max_len"
    )
