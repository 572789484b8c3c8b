"""Training metrics: clu.metrics collections built inside the jitted step, and the writers of process 0
(TensorBoard event files through tensorboardX, ``metrics.jsonl``, one progress line per interval).

MFU (model FLOPs utilisation) = training FLOPs per token x tokens/s / peak FLOP/s of all devices, with the
training FLOPs of :func:`jaxtune.models.stats.model_info`: 3 x the forward pass, whose FLOPs are 2 x every weight
used in a matmul (6 x parameters x tokens overall, the embedding lookup excluded, the LM head included) plus causal
attention, 4 x layers x heads x head_dim x (seq_len + 1) / 2 per token. Rematerialisation is not counted (that would
be hardware FLOPs utilisation). Tokens are all row positions (B x L), padding included, since they are computed.
The peak is ``train.peak_flops_per_device``, else the device kind's in :mod:`jaxtune.hardware` (no MFU when unknown).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics

from jaxtune.errors import JaxtuneError
from jaxtune.hardware import peak_flops_of_device_kind
from jaxtune.paths import append_text, as_path, write_text_atomic
from jaxtune.runtime.compiles import progress_part


@flax.struct.dataclass
class Sum(clu_metrics.Metric):
    """The sum of a value over steps (clu.metrics has averages but no plain sum)."""

    total: jnp.ndarray

    @classmethod
    def empty(cls) -> "Sum":
        return cls(total=jnp.array(0, jnp.float32))

    @classmethod
    def from_model_output(cls, values: jnp.ndarray, **_: Any) -> "Sum":
        return cls(total=jnp.sum(values).astype(jnp.float32))

    def merge(self, other: "Sum") -> "Sum":
        return type(self)(total=self.total + other.total)

    def compute(self) -> jnp.ndarray:
        return self.total


def _when_finite(name: str) -> Callable[..., dict]:
    """Average ``name`` only over steps whose loss and gradients were finite (a skipped step's NaN is left out)."""

    def fun(finite: jnp.ndarray, **outputs: Any) -> dict:
        return {"values": jnp.reshape(outputs[name], (1,)), "mask": jnp.reshape(finite, (1,))}

    return fun


# Collection.create rather than a class body: clu reads the field types from annotations, which
# ``from __future__ import annotations`` would turn into strings.
TrainMetrics = clu_metrics.Collection.create(
    loss=clu_metrics.Average.from_fun(_when_finite("loss")),
    grad_norm=clu_metrics.Average.from_fun(_when_finite("grad_norm")),
    learning_rate=clu_metrics.LastValue.from_output("learning_rate"),
    tokens=Sum.from_output("tokens"),
    supervised_tokens=Sum.from_output("supervised_tokens"),
    skipped_steps=Sum.from_output("skipped"),
)
"""Per-interval training metrics (a clu.metrics Collection). Built in the step from: loss, grad_norm (before
clipping), learning_rate, finite, tokens (non-padding input tokens), supervised_tokens, skipped (1 when the step
was skipped). Loss and grad norm are averaged over the steps that were not skipped."""


def peak_flops_per_device(device: jax.Device, configured: Optional[float] = None) -> Optional[float]:
    """Peak FLOP/s of one device: the configured value, else the accelerator table's for its ``device_kind``
    (:func:`jaxtune.hardware.peak_flops_of_device_kind`), else None."""
    if configured is not None:
        return configured
    return peak_flops_of_device_kind(getattr(device, "device_kind", ""))


def format_duration(seconds: float) -> str:
    """H:MM:SS (or D days, H:MM:SS)."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    text = f"{h}:{m:02d}:{s:02d}"
    return f"{days}d {text}" if days else text


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        value = value.item() if np.ndim(value) == 0 else np.asarray(value).tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf: keep them readable rather than invalid
    return value


def summary_writer_class() -> type:
    """tensorboardX's ``SummaryWriter``, imported without torch when torch is not loaded yet.

    tensorboardX imports torch whenever it is installed, only to accept torch tensors (2.7 s and 200 MB at each run
    start on a 2-core machine); jaxtune passes it floats. ``sys.modules["torch"] = None`` makes
    that import fail the way a missing torch would, for the time of this import only."""
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """Writes scalars as TensorBoard events and JSON lines, and prints progress lines; inactive (writes nothing)
    unless ``enabled`` (process 0 only).

    ``metrics.jsonl`` holds one object per record: ``{"step": N, "kind": "train"|"eval", ...scalars}``.
    """

    def __init__(self, run_dir: str | Path, enabled: bool, print_fn: Callable[[str], None] = print):
        self.enabled = enabled
        self.run_dir = as_path(run_dir)
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self._print = print_fn
        self._tb = None
        if enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def start_at(self, step: int) -> None:
        """Begin (or resume) a run at ``step``: drop the records after it from metrics.jsonl and open the
        TensorBoard writer with ``purge_step=step + 1``, so TensorBoard discards the events of the steps the run
        re-does instead of showing them twice."""
        if not self.enabled:
            return
        self.truncate_after(step)
        self._open_tensorboard(purge_step=step + 1 if step > 0 else None)

    def _open_tensorboard(self, purge_step: Optional[int]) -> None:
        SummaryWriter = summary_writer_class()
        if self._tb is not None:
            self._tb.close()
        # tensorboardX writes gs:// itself (google-cloud-storage), re-uploading the event file on each flush.
        # Event files are named by the second they were opened in: the suffix keeps a quick restart from reusing a name.
        self._tb = SummaryWriter(
            logdir=str(self.run_dir / "tensorboard"),
            purge_step=purge_step,
            filename_suffix=f".{os.getpid()}.{purge_step or 0}",
        )

    def truncate_after(self, step: int) -> None:
        """Drop records after ``step`` from metrics.jsonl (a resumed run re-does those steps), rewriting the file
        atomically (a temporary file, then os.replace). A torn last line (a kill during a write) is dropped and
        named; an unreadable line elsewhere is an error naming its line."""
        if not self.enabled or not self.jsonl_path.exists():
            return
        lines = self.jsonl_path.read_bytes().decode("utf-8", errors="replace").split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the newline ending the last record
        kept = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"expected an object, got {type(record).__name__}")
            except ValueError as e:
                if number == len(lines):
                    self.message(
                        f"{self.jsonl_path}: dropped the torn last line {number} (a write cut short: {e}): "
                        f"{line[:80]!r}"
                    )
                    continue
                raise JaxtuneError(
                    f"{self.jsonl_path}, line {number}: not a JSON object ({e}); fix or remove that "
                    f"line before resuming"
                ) from None
            if record.get("step", 0) <= step:
                kept.append(line)
        write_text_atomic(self.jsonl_path, "".join(k + "\n" for k in kept))

    def write(self, step: int, kind: str, scalars: Mapping[str, Any]) -> None:
        """Record ``scalars`` at ``step`` (TensorBoard tags ``{kind}/{name}``)."""
        if not self.enabled:
            return
        values = {k: _jsonable(v) for k, v in scalars.items()}
        append_text(self.jsonl_path, json.dumps({"step": step, "kind": kind, **values}) + "\n")
        if self._tb is None:
            self._open_tensorboard(purge_step=None)
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tb.add_scalar(f"{kind}/{name}", value, step)
        self._tb.flush()

    def message(self, text: str) -> None:
        """Print a line (process 0 only)."""
        if self.enabled:
            self._print(text)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class ThroughputMeter:
    """Wall-clock throughput over a logging interval: tokens/s, MFU and the ETA of the run."""

    def __init__(self, peak_flops_total: Optional[float], total_steps: int):
        self.peak_flops_total = peak_flops_total
        self.total_steps = total_steps
        self.reset(step=0)

    def reset(self, step: int) -> None:
        """Start a new interval at ``step`` (also after pauses such as evaluation)."""
        self._t0 = time.perf_counter()
        self._step0 = step
        self._tokens = 0
        self._flops = 0.0

    def add_step(self, tokens: int, flops: float) -> None:
        """Count one step of ``tokens`` row positions costing ``flops`` model FLOPs."""
        self._tokens += tokens
        self._flops += flops

    def measure(self, step: int) -> dict[str, float]:
        """Figures for the steps since the last reset, then reset; empty when no step has been timed (the
        first, compiling step is left out)."""
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        steps = step - self._step0
        if steps <= 0:
            return {}
        out = {
            "tokens_per_s": self._tokens / elapsed,
            "step_time_s": elapsed / steps,
            "eta_s": (self.total_steps - step) * elapsed / steps,
        }
        if self.peak_flops_total:
            out["mfu"] = self._flops / elapsed / self.peak_flops_total
        self.reset(step)
        return out


def progress_line(step: int, total_steps: int, epoch: float, scalars: Mapping[str, Any]) -> str:
    """One human-readable line: step, epoch, loss, learning rate, grad norm, tokens/s, MFU, compiles so far, ETA."""
    parts = [
        f"step {step}/{total_steps}",
        f"epoch {epoch:.2f}",
        f"loss {scalars['loss']:.4f}",
        f"lr {scalars['learning_rate']:.3e}",
        f"grad_norm {scalars['grad_norm']:.3f}",
    ]
    if "tokens_per_s" in scalars:
        parts.append(f"{scalars['tokens_per_s']:,.0f} tok/s")
    if "mfu" in scalars:
        parts.append(f"MFU {100 * scalars['mfu']:.1f}%")
    if scalars.get("skipped_steps"):
        parts.append(f"skipped {int(scalars['skipped_steps'])}")
    compiles = progress_part(scalars)
    if compiles:
        parts.append(compiles)
    if "eta_s" in scalars:
        parts.append(f"ETA {format_duration(scalars['eta_s'])}")
    return " | ".join(parts)
