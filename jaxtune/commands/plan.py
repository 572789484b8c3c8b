"""``jaxtune plan``: will a config fit an accelerator, per chip, before anything runs?

For a TPU slice (``v4-32``, ``v5p-16``, ``v5e-64``, ``v6e-16``...) the real train step (forward, backward, AdamW,
jaxtune's shardings, the config's mesh, batch, microbatches, remat and attention) is compiled ahead of time by XLA's
TPU compiler for that topology on any machine (deviceless; libtpu from the ``tpu`` extra), and its memory analysis
gives true per-chip bytes. When it does not fit, the smallest change that does is found by compiling candidates
(remat policy, then more microbatches, then the mesh). For GPUs (``h100-8``, ``h200-1``...) the bytes are an
analytic estimate, labelled as one. ``cpu-N`` compiles for N simulated CPU devices (for tests: the CPU backend's
memory analysis upcasts bf16 and is no planning figure). The names, each chip's memory budget and each slice's
topology are :mod:`jaxtune.hardware`'s (:func:`~jaxtune.hardware.parse_accelerator`).

Per-chip bytes are reported by kind:

- parameters and optimizer state: the per-device shards of the train state (exact, from the shardings);
- gradients/accumulators: the float32 gradient tree's per-device shards (held within the temporaries);
- batch: the input arrays' shards;
- temporaries: XLA's temporary buffers (activations, gathered weights, gradients, ...);
- peak: arguments + outputs - aliased (donated) + temporaries.

Evaluation is planned beside training (:mod:`jaxtune.eval.aot`): the generation programs of ``jaxtune eval`` at the
config's evaluation settings (``eval.batch_size`` rows, ``eval.max_prompt_len``-token prompts, ``eval.max_new_tokens``
new tokens, on ``eval.mesh`` or ``mesh``, parameters in ``eval.compute_dtype``: bfloat16 on accelerators), compiled
like the train step; its line shows the program that needs the most (prefill, refill or decode steps), its
parameters and, under "batch", the decoding rows with their KV cache. For GPUs it is an analytic estimate too.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from jaxtune.commands.arguments import add_command, run_config
from jaxtune.config.schema import Config, ConfigError
from jaxtune.hardware import GIB, Accelerator, parse_accelerator

# --------------------------------------------------------------------------------------------------------------------
# Accelerators
# --------------------------------------------------------------------------------------------------------------------


def accelerator_devices(acc: Accelerator) -> list:
    """The devices to compile for: a TPU topology's (deviceless, needs libtpu) or this process's CPU devices."""
    import jax

    if acc.platform == "tpu":
        import os

        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
        try:
            import libtpu  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"planning for {acc.name} compiles with XLA's TPU compiler: install libtpu with "
                "`pip install -e '.[tpu]'` (in its own venv: a process that loads libtpu locks /tmp/libtpu_lockfile)"
            ) from None
        from jax.experimental import topologies

        topology = topologies.get_topology_desc(
            platform="tpu",
            topology_name=acc.topology,
            chip_config_name=acc.chip_config,
            chips_per_host_bounds=acc.chips_per_host,
            num_slices=1,
            wrap=(False, False, False),
        )
        return list(topology.devices)
    if acc.platform == "cpu":
        devices = jax.devices("cpu")
        if len(devices) < acc.chips:
            raise ConfigError(
                f"--accelerator {acc.name}: this process has {len(devices)} CPU devices; set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={acc.chips}"
            )
        return devices[: acc.chips]
    raise ConfigError(f"{acc.name}: no compiler to plan with; GPUs get an analytic estimate")


# --------------------------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class MemoryEstimate:
    """Per-chip bytes of one compiled (or estimated) program."""

    label: str  # "train step", "eval: generation"
    params: int = 0
    optimizer: int = 0
    gradients: int = 0  # within temporaries
    batch: int = 0
    temporaries: int = 0
    peak: int = 0
    analytic: bool = False
    error: Optional[str] = None  # the compiler's message when it did not fit or did not compile
    kernel: Optional[str] = None  # the attention the program runs (train steps at several row lengths)

    def fits(self, hbm_bytes: int) -> bool:
        return self.error is None and self.peak <= hbm_bytes


@dataclass
class Setting:
    """The knobs a plan varies: what the config says, or a candidate change."""

    remat: str
    microbatches: int
    mesh: tuple[int, int, int]  # data, fsdp, tensor
    backward: str = "autodiff"

    def describe(self) -> str:
        return (
            f"model.remat_policy={self.remat} train.backward={self.backward} train.microbatches={self.microbatches} "
            f"mesh.data={self.mesh[0]} mesh.fsdp={self.mesh[1]} mesh.tensor={self.mesh[2]}"
        )


@dataclass
class PlanReport:
    accelerator: Accelerator
    model: str
    setting: Setting
    train: MemoryEstimate
    evaluation: Optional[MemoryEstimate] = None
    suggestion: Optional[tuple[Setting, MemoryEstimate]] = None
    tried: list[tuple[Setting, MemoryEstimate]] = field(default_factory=list)
    steps_note: Optional[str] = None
    lengths: list[MemoryEstimate] = field(default_factory=list)
    """The train step at each row length the config's batches can have (``train`` is the one with the worst peak)."""

    def fits(self) -> bool:
        ok = self.train.fits(self.accelerator.hbm_bytes) if self.accelerator.hbm_bytes else self.train.error is None
        if self.evaluation is not None and self.accelerator.hbm_bytes:
            ok = ok and self.evaluation.fits(self.accelerator.hbm_bytes)
        return ok

    def table(self) -> str:
        acc = self.accelerator
        hbm = acc.hbm_bytes
        how = (
            "analytic estimate (no compiler for GPUs)"
            if self.train.analytic
            else f"compiled for {acc.topology} ({acc.chips} chips)"
            if acc.platform == "tpu"
            else f"compiled for {acc.chips} CPU devices (CPU memory analysis: not a planning figure)"
        )
        lines = [f"plan: {self.model} on {acc.name}: {how}", f"  {self.setting.describe()}"]
        rows = (self.lengths if len(self.lengths) > 1 else [self.train]) + (
            [self.evaluation] if self.evaluation else []
        )
        head = f"  {'program':22s} {'params':>9s} {'optimizer':>10s} {'grads*':>9s} {'batch':>8s} {'temps':>9s} {'peak':>9s}"
        lines.append(head + (f"  of {hbm / GIB:.1f} GiB" if hbm else ""))
        for r in rows:
            if r.error and not r.peak:
                if "RESOURCE_EXHAUSTED" in r.error:  # the compiler's own verdict: it does not fit
                    lines.append(
                        f"  {r.label:22s} {_gib(r.params)} {_gib(r.optimizer, 10)} {_gib(r.gradients)} "
                        f"{_gib(r.batch, 8)} {'?':>9s} {'?':>9s}  DOES NOT FIT"
                    )
                    lines.append(f"    compiler: {r.error}")
                else:
                    lines.append(f"  {r.label:22s} did not compile: {r.error}")
                continue
            verdict = "" if not hbm else ("  fits" if r.fits(hbm) else "  DOES NOT FIT")
            lines.append(
                f"  {r.label:22s} {_gib(r.params)} {_gib(r.optimizer, 10)} {_gib(r.gradients)} "
                f"{_gib(r.batch, 8)} {_gib(r.temporaries)} {_gib(r.peak)}{verdict}"
            )
            if r.error:
                lines.append(f"    compiler: {r.error}")
        lines.append("  (GiB per chip; grads* = float32 gradients/accumulators, held within temps)")
        if len(self.lengths) > 1:
            kernels = ", ".join(f"@{r.label.split('@')[-1]}: {r.kernel}" for r in self.lengths)
            lines.append(
                f"  {len(self.lengths)} row lengths, one train-step program each (attention {kernels}); the worst "
                f"per-chip peak is {self.train.label}"
            )
        elif self.train.kernel:
            lines.append(f"  attention: {self.train.kernel}")
        if self.evaluation is not None:
            e = self.evaluation
            lines.append(
                f"  ({e.label}: its largest program; params in the eval dtype, batch = the decoding rows with their "
                f"KV cache{', estimated' if e.analytic else ''})"
            )
        if self.steps_note:
            lines.append(f"  {self.steps_note}")
        if self.suggestion:
            s, est = self.suggestion
            lines.append(f"  smallest change that fits: {s.describe()} (peak {est.peak / GIB:.1f} GiB)")
        elif not self.fits() and self.tried:
            lines.append(f"  no candidate fits ({len(self.tried)} compiled): a larger slice is needed")
        return "\n".join(lines)


def _gib(x: int, width: int = 9) -> str:
    return f"{x / GIB:{width}.2f}"


def _shard_bytes(tree: Any) -> int:
    """Bytes of one device's shards of a tree of ShapeDtypeStructs carrying shardings."""
    import jax
    import numpy as np

    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


def _compiler_message(error: Exception) -> str:
    text = str(error)
    for line in text.splitlines():
        if "RESOURCE_EXHAUSTED" in line or "exceeds" in line or "memory" in line.lower():
            return line.strip()[:400]
    return text.strip().splitlines()[0][:400] if text.strip() else type(error).__name__


def _with_setting(cfg: Config, s: Setting) -> Config:
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, remat_policy=s.remat),
        train=dataclasses.replace(cfg.train, microbatches=s.microbatches, backward=s.backward),
        mesh=dataclasses.replace(cfg.mesh, data=s.mesh[0], fsdp=s.mesh[1], tensor=s.mesh[2], dcn_data=1),
    )


def compile_train_step(
    cfg: Config, devices: Sequence[Any], *, total_steps: int = 1000, length: Optional[int] = None
) -> MemoryEstimate:
    """Compile the real train step for ``devices`` (deviceless for a TPU topology) at rows of ``length`` tokens
    (default ``data.max_len``) and measure it per chip."""
    return compiled_train_step(cfg, devices, total_steps=total_steps, length=length)[0]


def attention_kernel(cfg: Config, platform: str, length: int) -> str:
    """The attention a train step at rows of ``length`` really runs on ``platform`` (as
    :func:`jaxtune.models.attention.resolve_impl` picks it), in words."""
    from jaxtune.models.attention import IMPL_PLATFORMS

    impl = cfg.model.attention_impl
    platforms, _ = IMPL_PLATFORMS[impl]
    if platforms and platform not in platforms:
        return "xla"
    if impl == "splash" and cfg.model.family == "bloom":
        return "xla (ALiBi)"
    if impl == "splash" and length % 128:
        return "xla (rows not a multiple of 128)"
    return impl


MAX_PLANNED_LENGTHS = 16
"""With ``data.pad_to_multiple`` a plan compiles every multiple up to max_len when there are at most this many
(BELLE's recipes: 64 up to 1024), else max_len alone (the largest)."""


def plan_lengths(cfg: Config) -> list[int]:
    """The row lengths whose train steps a plan compiles: every one a run of ``cfg`` can meet
    (:meth:`jaxtune.config.schema.DataConfig.row_lengths`); with ``data.pad_to_multiple`` every multiple of it up to
    max_len when there are at most :data:`MAX_PLANNED_LENGTHS`, else max_len alone (the longest is the largest)."""
    lengths = cfg.data.row_lengths()
    if lengths:
        return lengths
    m, top = cfg.data.pad_to_multiple, cfg.data.max_len
    multiples = list(range(m, top, m)) + [top]
    return multiples if len(multiples) <= MAX_PLANNED_LENGTHS else [top]


def compile_every_length(cfg: Config, devices: Sequence[Any], platform: str) -> list[MemoryEstimate]:
    """The train step compiled at each of :func:`plan_lengths`, labelled with its length and attention kernel."""
    out = []
    for length in plan_lengths(cfg):
        est = compile_train_step(cfg, devices, length=length)
        est.label = f"train step @{length}"
        est.kernel = attention_kernel(cfg, platform, length)
        out.append(est)
    return out


def compiled_train_step(
    cfg: Config, devices: Sequence[Any], *, total_steps: int = 1000, length: Optional[int] = None
) -> tuple[MemoryEstimate, Any]:
    """:func:`compile_train_step`'s measure and the compiled step itself (None when it did not compile)."""
    import jax
    import numpy as np

    from jaxtune.sharding import (
        LayoutError,
        abstract_model,
        activation_rules,
        batch_sharding,
        build_mesh,
        validate_batch_layout,
        validate_param_layout,
        with_shardings,
    )
    from jaxtune.train.optim import build_optimizer
    from jaxtune.train.step import make_train_step, new_train_state, train_state_shardings

    est = MemoryEstimate(label="train step")
    try:
        mesh = build_mesh(cfg.mesh, devices)
        graphdef, shapes, axes = abstract_model(cfg.model)
        validate_param_layout(shapes, axes, mesh)
        validate_batch_layout(cfg.train.global_batch_size, cfg.train.microbatches, mesh)
    except (LayoutError, ConfigError) as e:
        est.error = str(e)
        return est, None
    tx, schedule = build_optimizer(cfg.optim, total_steps)
    shardings = train_state_shardings(tx, shapes, axes, mesh)
    state = with_shardings(jax.eval_shape(lambda p: new_train_state(p, tx, 0), shapes), shardings)
    micro = cfg.train.microbatches
    rows = cfg.train.global_batch_size // micro
    spec = batch_sharding(mesh, microbatched=True)
    length = length or cfg.data.max_len
    batch = {
        name: jax.ShapeDtypeStruct((micro, rows, length), dtype, sharding=spec)
        for name, dtype in (
            ("input_ids", np.int32),
            ("targets", np.int32),
            ("loss_weights", np.float32),
            ("segment_ids", np.int32),
            ("positions", np.int32),
        )
    }
    est.params = _shard_bytes(state.params)
    est.optimizer = _shard_bytes(state.opt_state)
    est.batch = _shard_bytes(batch)
    grads = with_shardings(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, np.float32), shapes), shardings.params)
    est.gradients = _shard_bytes(grads)
    step = make_train_step(
        graphdef,
        tx,
        schedule,
        mesh=mesh,
        state_shardings=shardings,
        compute_dtype=cfg.model.compute_dtype,
        backward=cfg.train.backward,
    )
    try:
        with activation_rules(mesh):
            compiled = step.jitted.trace(state, batch).lower().compile()
    except Exception as e:  # XLA raises its own error types (RESOURCE_EXHAUSTED among them)
        est.error = _compiler_message(e)
        return est, None
    _fill_from_compiled(est, compiled)
    return est, compiled


def _fill_from_compiled(est: MemoryEstimate, compiled: Any) -> None:
    memory = compiled.memory_analysis()
    est.temporaries = int(memory.temp_size_in_bytes)
    est.peak = int(
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
    )


def estimate_train_step(cfg: Config, acc: Accelerator) -> MemoryEstimate:
    """An analytic per-GPU estimate: the train state split over fsdp (x tensor), fp32 gradients likewise, saved
    layer inputs (remat full) or all activations (remat none), one layer's gathered weights, the logits, and with
    ``train.backward: autodiff`` a microbatch's gradient tree and the weights cast to the compute dtype."""
    from jaxtune.models.stats import model_info

    m = cfg.model
    info = model_info(m, cfg.data.max_len)
    shards = max(1, _mesh_sizes(cfg, acc.chips)[1] * _mesh_sizes(cfg, acc.chips)[2])
    param_bytes = 4 if m.param_dtype == "float32" else 2
    compute_bytes = 4 if m.compute_dtype == "float32" else 2
    est = MemoryEstimate(label="train step", analytic=True)
    est.params = info.num_params * param_bytes // shards
    mu = param_bytes if cfg.optim.mu_dtype is None else (4 if cfg.optim.mu_dtype == "float32" else 2)
    est.optimizer = info.num_params * (mu + param_bytes) // shards
    est.gradients = info.num_params * 4 // shards
    dp = max(1, _mesh_sizes(cfg, acc.chips)[0] * _mesh_sizes(cfg, acc.chips)[1])
    rows = max(1, cfg.train.global_batch_size // cfg.train.microbatches // dp)
    tokens = rows * cfg.data.max_len
    per_layer_act = tokens * m.hidden_size * compute_bytes
    if m.remat_policy == "full":
        saved = per_layer_act * m.num_layers
    else:  # attention in/out, MLP in/out and the MLP's wide activations per layer
        saved = m.num_layers * tokens * compute_bytes * (6 * m.hidden_size + 3 * m.intermediate_size)
    layer_weights = (info.num_params - 2 * m.padded_vocab_size() * m.hidden_size) // max(1, m.num_layers)
    gathered = layer_weights * compute_bytes * 2  # this layer's and the prefetched next one's
    logits = tokens * m.padded_vocab_size() * 4 * 2  # float32 logits and their gradient
    est.temporaries = est.gradients + saved + gathered + logits
    if cfg.train.backward == "autodiff":  # the microbatch's gradient tree, and the weights cast up front
        copies = 2 if compute_bytes != param_bytes else 1
        est.temporaries += info.num_params * compute_bytes * copies // shards
    est.batch = tokens * 4 * 5
    est.peak = est.params + est.optimizer + est.batch + est.temporaries
    return est


def _eval_setting(cfg: Config, platform: str) -> tuple[Any, str]:
    """The evaluation's mesh config and dtype: ``eval.mesh`` or ``mesh``; ``eval.compute_dtype``, else bfloat16 on
    accelerators and float32 on CPU, as ``jaxtune eval`` picks them."""
    from jaxtune.eval.distributed import eval_mesh_config

    mesh_cfg = dataclasses.replace(eval_mesh_config(cfg), dcn_data=1)
    dtype = cfg.eval.compute_dtype or ("float32" if platform == "cpu" else "bfloat16")
    return mesh_cfg, dtype


def compile_evaluation(cfg: Config, devices: Sequence[Any]) -> MemoryEstimate:
    """Compile evaluation's generation programs for ``devices`` at the config's eval settings (see the module
    docstring) and measure the one that needs the most per chip; a program the compiler refuses is reported with
    its message."""
    from jaxtune.eval.aot import compile_generation, eval_model_config
    from jaxtune.sharding import (
        LayoutError,
        abstract_model,
        activation_rules,
        build_mesh,
        check_batch_rows,
        param_shardings,
        validate_param_layout,
        with_shardings,
    )

    mesh_cfg, dtype = _eval_setting(cfg, devices[0].platform)
    model = eval_model_config(cfg.model, dtype)
    est = MemoryEstimate(label="eval: generation")
    try:
        mesh = build_mesh(mesh_cfg, devices)
        _, shapes, axes = abstract_model(model)
        validate_param_layout(shapes, axes, mesh)
        check_batch_rows(cfg.eval.batch_size, mesh)
    except (LayoutError, ConfigError) as e:
        est.error = str(e)
        return est
    est.params = _shard_bytes(with_shardings(shapes, param_shardings(axes, mesh)))
    with activation_rules(mesh):
        programs = compile_generation(
            model,
            mesh,
            batch=cfg.eval.batch_size,
            prompt_len=cfg.eval.max_prompt_len,
            new_tokens=cfg.eval.max_new_tokens,
        )
    measured = []
    for name, program in programs:
        if isinstance(program, Exception):
            est.label, est.error = f"eval: {name}", _compiler_message(program)
            return est
        one = MemoryEstimate(label=f"eval: {name}")
        _fill_from_compiled(one, program)
        memory = program.memory_analysis()
        one.batch = int(memory.argument_size_in_bytes) - est.params  # the rows (KV cache included) and prompts
        measured.append(one)
    worst = max(measured, key=lambda m: m.peak)
    est.label, est.batch, est.temporaries, est.peak = worst.label, worst.batch, worst.temporaries, worst.peak
    return est


def estimate_evaluation(cfg: Config, acc: Accelerator) -> MemoryEstimate:
    """An analytic per-GPU estimate of generation at the eval settings: parameters split over fsdp x tensor, the KV
    cache (prompt + new tokens) and the prefill's own cache split over the rows (data x fsdp) and heads (tensor),
    one layer's float32 attention scores of the prefill, one layer's gathered weights, the last-token logits."""
    from jaxtune.eval.aot import eval_model_config
    from jaxtune.models.stats import model_info

    mesh_cfg, dtype = _eval_setting(cfg, acc.platform)
    m = eval_model_config(cfg.model, dtype)
    info = model_info(m, cfg.eval.max_prompt_len)
    data, fsdp, tensor = _mesh_sizes(dataclasses.replace(cfg, mesh=mesh_cfg), acc.chips)
    width = 4 if dtype == "float32" else 2
    rows = max(1, cfg.eval.batch_size // (data * fsdp))
    prompt, slots = cfg.eval.max_prompt_len, cfg.eval.max_prompt_len + cfg.eval.max_new_tokens
    kv = m.resolved_num_kv_heads() * m.resolved_head_dim() * width * 2 // tensor  # keys and values, per token
    est = MemoryEstimate(label="eval: generation", analytic=True)
    est.params = info.num_params * width // (fsdp * tensor)
    est.batch = m.num_layers * rows * slots * kv + rows * m.vocab_size * 4
    prefill_cache = m.num_layers * rows * prompt * kv
    scores = rows * (m.num_heads // tensor) * prompt * prompt * 4 * 2  # scores and their softmax, one layer
    layer_weights = (info.num_params - 2 * m.padded_vocab_size() * m.hidden_size) // max(1, m.num_layers)
    est.temporaries = prefill_cache + scores + layer_weights * width * 2 // tensor + rows * m.padded_vocab_size() * 4
    est.peak = est.params + est.batch + est.temporaries
    return est


def _mesh_sizes(cfg: Config, chips: int) -> tuple[int, int, int]:
    from jaxtune.sharding import resolve_mesh_shape

    sizes = resolve_mesh_shape(dataclasses.replace(cfg.mesh, dcn_data=1), chips)
    return sizes["data"], sizes["fsdp"], sizes["tensor"]


# --------------------------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------------------------


def candidate_settings(current: Setting, cfg: Config, chips: int) -> list[Setting]:
    """Changes to try when the config does not fit, smallest first: remat full, then the layer-by-layer backward pass
    (train.backward=layerwise), then doubling microbatches (while rows still divide the data-parallel size), then the
    mesh (all fsdp; fsdp x tensor 2, 4, 8)."""
    out: list[Setting] = []
    remats = [current.remat] if current.remat == "full" else [current.remat, "full"]
    batch = cfg.train.global_batch_size
    micro_options = [m for m in (current.microbatches * 2**k for k in range(0, 7)) if batch % m == 0]
    meshes = [current.mesh, (1, chips, 1)] + [(1, chips // t, t) for t in (2, 4, 8) if chips % t == 0 and chips > t]
    seen = set()
    for mesh in meshes:
        for micro in micro_options:
            for remat in remats:
                backwards = (
                    [current.backward] if remat != "full" else list(dict.fromkeys([current.backward, "layerwise"]))
                )
                for backward in backwards:
                    s = Setting(remat=remat, microbatches=micro, mesh=mesh, backward=backward)
                    key = (s.remat, s.backward, s.microbatches, s.mesh)
                    if key in seen or key == (current.remat, current.backward, current.microbatches, current.mesh):
                        continue
                    dp = mesh[0] * mesh[1]
                    if (batch // micro) % dp:
                        continue
                    seen.add(key)
                    out.append(s)
    return out


def plan(
    cfg: Config,
    accelerator: str | Accelerator,
    *,
    search: bool = True,
    hbm_bytes: Optional[int] = None,
    max_candidates: int = 8,
    evaluate: bool = True,
    progress: Callable[[str], None] = lambda _: None,
) -> PlanReport:
    """Measure ``cfg``'s train step (and, with ``evaluate``, its evaluation's generation at the eval settings) on
    ``accelerator``; when the train step does not fit and ``search``, compile candidate changes until one fits.
    ``hbm_bytes`` overrides the chip's memory (tests plan against a small budget on CPU devices)."""
    acc = parse_accelerator(accelerator) if isinstance(accelerator, str) else accelerator
    if hbm_bytes is not None:
        acc = dataclasses.replace(acc, hbm_bytes=hbm_bytes)
    sizes = _mesh_sizes(cfg, acc.chips)
    current = Setting(
        remat=cfg.model.remat_policy, microbatches=cfg.train.microbatches, mesh=sizes, backward=cfg.train.backward
    )
    cfg = _with_setting(cfg, current)
    model_name = cfg.model.preset or f"{cfg.model.num_layers}-layer model"
    if acc.platform == "gpu":
        report = PlanReport(acc, model_name, current, estimate_train_step(cfg, acc))
        if evaluate:
            report.evaluation = estimate_evaluation(cfg, acc)
        if search and not report.train.fits(acc.hbm_bytes):
            for s in candidate_settings(current, cfg, acc.chips):
                est = estimate_train_step(_with_setting(cfg, s), acc)
                report.tried.append((s, est))
                if est.fits(acc.hbm_bytes):
                    report.suggestion = (s, est)
                    break
        return report
    devices = accelerator_devices(acc)
    lengths = plan_lengths(cfg)
    progress(f"compiling the train step for {acc.name} ({current.describe()}) at row lengths {lengths}")
    per_length = compile_every_length(cfg, devices, acc.platform)
    worst = max(per_length, key=lambda e: (e.error is not None and not e.peak, e.peak))
    report = PlanReport(acc, model_name, current, worst, lengths=per_length)
    if evaluate:
        progress(
            f"compiling evaluation's generation ({cfg.eval.batch_size} rows, {cfg.eval.max_prompt_len}-token prompts "
            f"+ {cfg.eval.max_new_tokens} new tokens)"
        )
        report.evaluation = compile_evaluation(cfg, devices)
    if search and acc.hbm_bytes and not report.train.fits(acc.hbm_bytes):
        for s in candidate_settings(current, cfg, acc.chips)[:max_candidates]:
            progress(f"does not fit; compiling candidate {s.describe()}")
            est = compile_train_step(_with_setting(cfg, s), devices)
            report.tried.append((s, est))
            if est.fits(acc.hbm_bytes):
                report.suggestion = (s, est)
                break
    return report


# --------------------------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    """Add ``jaxtune plan CONFIG --accelerator NAME`` to the ``jaxtune`` parser."""
    p = add_command(
        subparsers,
        "plan",
        run,
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


def run(args: argparse.Namespace) -> int:
    """``jaxtune plan``: print the plan's table; exit 1 when the train step does not fit."""
    cfg = run_config(args.config, args.overrides)
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
