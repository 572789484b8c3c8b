"""Size and cost of a model shape: parameter count, FLOPs per token, memory of weights and AdamW state.

Conventions (stated in the output too):

- Parameters are counted as transformers counts the family's ``...ForCausalLM`` (real vocabulary), from the layer
  counts each family declares (:class:`jaxtune.families.registry.LayerCounts`: biases and norm scales included); the
  allocated count adds jaxtune's vocabulary padding rows.
- A matmul of an (n, k) by (k, m) array costs 2nkm FLOPs. Forward FLOPs per token = 2 x (every weight used in a
  matmul: attention and MLP projections and the LM head; not the embedding lookup) + the attention scores and
  weighted sum, 4 x layers x heads x head_dim x context, where a causal token attends to (seq_len + 1) / 2 keys on
  average. Norms, biases, rotary embeddings, ALiBi and softmax are left out (well under 1%).
- Training costs 3x the forward (the backward pass computes two matmuls per forward matmul); full
  rematerialisation adds one more forward.
- Memory: weights and gradients in ``param_dtype``; AdamW keeps two moments per parameter, in the parameters'
  dtype (optax's default).
"""

from __future__ import annotations

from dataclasses import dataclass

from jaxtune.config.schema import Config, ModelConfig
from jaxtune.families.registry import family

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelInfo:
    """Counts for one ModelConfig at one sequence length (see the module docstring for conventions)."""

    name: str
    num_params: int
    """Parameters as transformers counts them (real vocabulary)."""
    num_params_allocated: int
    """Parameters jaxtune allocates (vocabulary padded to vocab_pad_multiple)."""
    embedding_params: int
    """Input embedding plus untied LM head (real vocabulary)."""
    seq_len: int
    matmul_flops_per_token: int
    """Forward FLOPs of the weight matmuls per token (2 x matmul weights)."""
    attention_flops_per_token: int
    """Forward FLOPs of causal attention (scores and weighted values) per token at seq_len."""
    param_bytes: int
    """Bytes per parameter (param_dtype)."""

    @property
    def forward_flops_per_token(self) -> int:
        return self.matmul_flops_per_token + self.attention_flops_per_token

    @property
    def train_flops_per_token(self) -> int:
        """Forward plus backward (3x forward), without rematerialisation."""
        return 3 * self.forward_flops_per_token

    @property
    def weights_bytes(self) -> int:
        return self.num_params_allocated * self.param_bytes

    @property
    def adamw_bytes(self) -> int:
        """First and second moments, each one value per parameter in param_dtype."""
        return 2 * self.num_params_allocated * self.param_bytes

    @property
    def train_state_bytes(self) -> int:
        """Weights + gradients + AdamW moments (activations not included)."""
        return self.weights_bytes * 2 + self.adamw_bytes

    def __str__(self) -> str:
        rows = [
            ("parameters", f"{self.num_params:,} ({_si(self.num_params)})"),
            ("  embeddings + LM head", f"{self.embedding_params:,}"),
            ("  allocated (padded vocab)", f"{self.num_params_allocated:,}"),
            (
                f"forward FLOPs/token @ {self.seq_len}",
                f"{_si(self.forward_flops_per_token)}FLOP "
                f"(matmuls {_si(self.matmul_flops_per_token)}FLOP, "
                f"causal attention {_si(self.attention_flops_per_token)}FLOP)",
            ),
            ("training FLOPs/token", f"{_si(self.train_flops_per_token)}FLOP (3x forward; +1 forward with full remat)"),
            ("weights", _bytes(self.weights_bytes)),
            ("gradients", _bytes(self.weights_bytes)),
            ("AdamW state (2 moments)", _bytes(self.adamw_bytes)),
            ("train state total", f"{_bytes(self.train_state_bytes)} (before activations, across all devices)"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join([f"model {self.name}"] + [f"  {k:<{width}}  {v}" for k, v in rows])


def count_params(cfg: ModelConfig, vocab: int) -> tuple[int, int]:
    """(total, embedding) parameter counts with ``vocab`` vocabulary rows."""
    counts = family(cfg.family).layer_counts(cfg)
    embedding = vocab * cfg.hidden_size * (1 if cfg.tie_word_embeddings else 2)
    return cfg.num_layers * counts.layer_params + counts.other_params + embedding, embedding


def model_info(cfg: ModelConfig, seq_len: int = 2048) -> ModelInfo:
    """Parameter count, FLOPs per token at ``seq_len`` and memory of ``cfg`` (print it for a table)."""
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    e, h, d, n = cfg.hidden_size, cfg.num_heads, cfg.resolved_head_dim(), cfg.num_layers
    total, embedding = count_params(cfg, cfg.vocab_size)
    allocated, _ = count_params(cfg, cfg.padded_vocab_size())
    matmul_weights = n * family(cfg.family).layer_counts(cfg).layer_matmul_weights + e * cfg.padded_vocab_size()
    # Query position t (1-based) attends to t keys: sum over t = 1..T of 4 * n * h * d * t, divided by T tokens.
    attention = 2 * n * h * d * (seq_len + 1)
    return ModelInfo(
        name=cfg.preset or f"{n}x{e}",
        num_params=total,
        num_params_allocated=allocated,
        embedding_params=embedding,
        seq_len=seq_len,
        matmul_flops_per_token=2 * matmul_weights,
        attention_flops_per_token=attention,
        param_bytes=DTYPE_BYTES[cfg.param_dtype],
    )


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:g} "


def _bytes(x: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x} B"


@dataclass(frozen=True)
class RunStorage:
    """Bytes a run keeps on disk, from the shapes (array data; Orbax's metadata adds kilobytes per checkpoint).

    An epoch checkpoint (run_dir/epochs/EPOCH) holds the parameters in checkpoint.epoch_dtype; a full train-state
    checkpoint (run_dir/checkpoints/STEP) holds the master parameters, AdamW's two moments (the first in
    optim.mu_dtype) and a few scalars. A run keeps one epoch checkpoint per epoch and max_to_keep full ones.
    """

    name: str
    epoch_checkpoint_bytes: int
    train_checkpoint_bytes: int
    epochs: int
    """Epoch checkpoints kept (train.epochs; 0 without checkpoint.keep_epoch_checkpoints)."""
    train_checkpoints: int
    """Full train-state checkpoints kept (checkpoint.max_to_keep; None counts as one per epoch)."""

    @property
    def epochs_bytes(self) -> int:
        return self.epochs * self.epoch_checkpoint_bytes

    @property
    def run_bytes(self) -> int:
        """Everything the run keeps: its epoch checkpoints and its newest full train states."""
        return self.epochs_bytes + self.train_checkpoints * self.train_checkpoint_bytes

    def __str__(self) -> str:
        rows = [
            ("epoch checkpoint (params only)", _bytes(self.epoch_checkpoint_bytes)),
            ("full train-state checkpoint", _bytes(self.train_checkpoint_bytes)),
            (f"{self.epochs} epoch checkpoints", _bytes(self.epochs_bytes)),
            (f"run total (+ {self.train_checkpoints} full)", _bytes(self.run_bytes)),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join([f"checkpoints of {self.name}"] + [f"  {k:<{width}}  {v}" for k, v in rows])


def run_storage(cfg: Config) -> RunStorage:
    """The checkpoint bytes of a run of ``cfg`` (see :class:`RunStorage`)."""
    m, ck = cfg.model, cfg.checkpoint
    params, _ = count_params(m, m.padded_vocab_size())
    epoch_dtype = ck.epoch_dtype or m.compute_dtype
    mu_dtype = cfg.optim.mu_dtype or m.param_dtype
    train = params * (2 * DTYPE_BYTES[m.param_dtype] + DTYPE_BYTES[mu_dtype])
    epochs = cfg.train.epochs if ck.keep_epoch_checkpoints else 0
    return RunStorage(
        name=m.preset or f"{m.num_layers}x{m.hidden_size}",
        epoch_checkpoint_bytes=params * DTYPE_BYTES[epoch_dtype],
        train_checkpoint_bytes=train,
        epochs=epochs,
        train_checkpoints=ck.max_to_keep if ck.max_to_keep is not None else max(cfg.train.epochs, 1),
    )
