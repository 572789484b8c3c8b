"""jaxtune.commands.plan: the GPU estimates, the candidate search, and real compiles for simulated CPU devices (the TPU
compiler is not in the test venv: a process that loads libtpu locks /tmp/libtpu_lockfile)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxtune.commands.plan import Setting, candidate_settings, plan
from jaxtune.config.loading import load_config

REPO = Path(__file__).resolve().parents[2]


def test_gpu_plans_are_labelled_analytic_and_33b_does_not_fit_one_h100():
    cfg = load_config(REPO / "configs" / "doit-33b.yaml")
    report = plan(cfg, "h100-1", search=False)
    assert report.train.analytic and not report.fits()
    assert "analytic estimate" in report.table()
    # fp32 master weights + AdamW of ~33B parameters alone are ~390 GB
    assert report.train.params + report.train.optimizer > 300 * 10**9
    fits8 = plan(load_config(REPO / "configs" / "doit-7b.yaml"), "h200-8", search=False)
    assert fits8.fits()


def test_gpu_evaluation_estimate_counts_bf16_parameters_and_the_kv_cache():
    """doit-33b's generation at the config's eval settings on 8 GPUs: bf16 parameters split 8 ways, and each GPU's
    KV cache (keys and values of 60 layers, its rows, prompt + new tokens, 52 heads of 128) in "batch"."""
    cfg = load_config(REPO / "configs" / "doit-33b.yaml", ["eval.batch_size=32", "mesh.fsdp=8"])
    e = plan(cfg, "h100-8", search=False).evaluation
    assert e.analytic and e.label.startswith("eval")
    assert abs(e.params - 32.5e9 * 2 / 8) < 0.05 * 32.5e9 * 2 / 8
    slots = cfg.eval.max_prompt_len + cfg.eval.max_new_tokens
    cache = 2 * 60 * (32 // 8) * slots * 52 * 128 * 2
    assert cache <= e.batch <= cache * 1.01
    assert "estimated" in plan(cfg, "h100-8", search=False).table()


def test_candidates_keep_rows_divisible_and_try_remat_and_microbatches_first():
    cfg = load_config(REPO / "configs" / "doit-33b.yaml")
    current = Setting(remat="none", microbatches=1, mesh=(1, 8, 1))
    cands = candidate_settings(current, cfg, 8)
    assert cands[0] == Setting(remat="full", microbatches=1, mesh=(1, 8, 1))
    assert all((64 // s.microbatches) % (s.mesh[0] * s.mesh[1]) == 0 for s in cands)
    assert all(s.mesh[0] * s.mesh[1] * s.mesh[2] == 8 for s in cands)


_CPU_PLAN = r"""
import dataclasses
import sys
from jaxtune.config.loading import load_config
from jaxtune.commands.plan import GIB, plan
cfg = load_config(None, ["model.preset=tiny", "model.num_layers=2", "model.hidden_size=64", "model.num_heads=4",
                         "model.intermediate_size=128", "model.vocab_size=512", "data.max_len=64",
                         "train.global_batch_size=16", "mesh.fsdp=-1",
                         "eval.batch_size=8", "eval.max_prompt_len=32", "eval.max_new_tokens=16"])
free = plan(cfg, "cpu-8", search=False)
print("PEAK", free.train.peak, free.train.params, free.train.optimizer, free.train.temporaries)
e = free.evaluation
print("EVAL", e.label.replace(" ", "_"), e.params, e.batch, e.temporaries, e.peak, e.error)
print(free.table())
odd = plan(dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, batch_size=4)), "cpu-8", search=False)
print("ODD", odd.evaluation.error)
assert plan(cfg, "cpu-8", search=False, evaluate=False).evaluation is None
budget = int(free.train.peak * 0.9)
tight = plan(cfg, "cpu-8", hbm_bytes=budget, max_candidates=4)
print(tight.table())
s, est = tight.suggestion
print("SUGGEST", s.remat, s.microbatches, s.mesh, est.peak, budget)
"""


def test_cpu_plan_compiles_measures_and_finds_a_change_that_fits(tmp_path):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)
    )
    out = subprocess.run([sys.executable, "-c", _CPU_PLAN], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    peak, params, opt, temps = (int(x) for x in out.stdout.split("PEAK")[1].split()[:4])
    assert params > 0 and 2 * params <= opt <= 2 * params + 64 and temps > 0 and peak > params + opt
    line = out.stdout.split("SUGGEST")[1].split()
    assert int(line[-2]) <= int(line[-1])  # the suggested setting's peak is within the budget
    assert "DOES NOT FIT" in out.stdout and "smallest change that fits" in out.stdout
    # Evaluation's generation beside the step: float32 parameters on CPU, as the train step's; each device's KV cache
    # (keys and values of 2 layers, 1 of 8 rows, 32 + 16 slots, 4 heads of 16) within its "batch".
    label, e_params, e_batch, e_temps, e_peak, error = out.stdout.split("EVAL")[1].split()[:6]
    assert label.startswith("eval:") and error == "None", out.stdout
    assert int(e_params) == params and int(e_temps) > 0 and int(e_peak) >= int(e_params) + int(e_batch)
    cache = 2 * 2 * 1 * (32 + 16) * 4 * 16 * 4
    assert cache <= int(e_batch) <= cache + 64 * 1024
    assert "  eval: " in out.stdout.split("EVAL")[1]
    assert "eval.batch_size=4 is not a positive multiple of the data-parallel size 8" in out.stdout


def test_plan_command_without_libtpu_says_how_to_install_it(tmp_path):
    pytest.importorskip("jax")
    try:
        import libtpu  # noqa: F401

        pytest.skip("libtpu is installed here")
    except ImportError:
        pass
    from jaxtune.cli import main

    code = main(["plan", str(REPO / "configs" / "doit-7b.yaml"), "--accelerator", "v5p-16"])
    assert code == 2


_BUCKET_PLAN = r"""
from jaxtune.config.loading import load_config
from jaxtune.commands.plan import plan
cfg = load_config(None, ["model.preset=tiny", "model.num_layers=2", "model.hidden_size=64", "model.num_heads=4",
                         "model.intermediate_size=128", "model.vocab_size=512", "data.max_len=384",
                         "data.packing=false", "data.length_buckets=[128,256]", "model.attention_impl=splash",
                         "train.global_batch_size=8", "mesh.fsdp=-1"])
report = plan(cfg, "cpu-8", search=False, evaluate=False)
for e in report.lengths:
    print("LENGTH", e.label.split("@")[1], e.peak, e.kernel.replace(" ", "_"))
print("WORST", report.train.label.split("@")[1])
print(report.table())
"""


def test_plan_compiles_the_train_step_at_every_bucket_and_names_the_worst(tmp_path):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO)
    )
    out = subprocess.run([sys.executable, "-c", _BUCKET_PLAN], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line.split()[1:] for line in out.stdout.splitlines() if line.startswith("LENGTH")]
    assert [r[0] for r in rows] == ["128", "256", "384"]  # the buckets and max_len (a batch longer than them)
    peaks = [int(r[1]) for r in rows]
    assert peaks == sorted(peaks) and peaks[0] < peaks[-1]
    assert all(r[2] == "xla" for r in rows)  # splash needs a TPU: the CPU plan says what really runs
    assert out.stdout.split("WORST")[1].split()[0] == "384"
    assert (
        "3 row lengths, one train-step program each" in out.stdout
        and "the worst per-chip peak is train step @384" in out.stdout
    )


def test_plan_lengths_are_every_length_a_run_can_meet():
    from jaxtune.commands.plan import attention_kernel, plan_lengths

    doit = load_config(REPO / "configs" / "doit-33b.yaml")
    assert plan_lengths(doit) == [256, 512, 1024, 1536, 2048]
    assert attention_kernel(doit, "tpu", 256) == "splash" and attention_kernel(doit, "cpu", 256) == "xla"
    belle = load_config(REPO / "configs" / "belle-bloomz-7b1-mt.yaml", ["model.attention_impl=splash"])
    assert plan_lengths(belle) == [256, 512, 768, 1024]  # its length buckets
    assert attention_kernel(belle, "tpu", 1024) == "xla (ALiBi)"
    eights = load_config(REPO / "configs" / "doit-7b.yaml", ["data.length_buckets=[]", "data.pad_to_multiple=8"])
    assert plan_lengths(eights) == [2048]  # 256 multiples: the largest stands for them
    assert attention_kernel(eights, "tpu", 1000) == "xla (rows not a multiple of 128)"
